//! Table tests of the handshake decision: one row per step and per reason not to take it.

use super::*;

#[test]
fn phase_labels_are_the_metric_names() {
    let labels: Vec<&str> = Phase::ALL.iter().map(|p| p.label()).collect();
    assert_eq!(
        labels,
        [
            "configuring",
            "waiting",
            "handed_over",
            "booting_from_volume",
            "adopted_without_boot_volume",
            "stale"
        ]
    );
}
