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

const NODE: &str = "11111111-2222-3333-4444-555555555555";
const TARGET: &str = "99999999-8888-7777-6666-555555555555";

/// A host BMO shows as `available`, generation 3, never handed over.
fn host() -> HostFacts {
    HostFacts {
        generation: Some(3),
        provisioning_state: "available".into(),
        ..Default::default()
    }
}

/// A configured, powered-off `manageable` node whose boot device we set.
fn node() -> NodeFacts {
    NodeFacts {
        uuid: NODE.into(),
        provision_state: "manageable".into(),
        power_state: Some("power off".into()),
        boot_device_recorded: true,
        ..Default::default()
    }
}

/// In sync, with our boot target.
fn synced() -> SyncFacts {
    SyncFacts {
        in_sync: true,
        adoptable: true,
        boot_target: Some(TARGET.into()),
        volume_changed: false,
    }
}

fn hand_over(reboot: bool) -> Step {
    Step::HandOver {
        generation: Some(3),
        reboot,
    }
}

fn active(bfv: Option<&str>) -> NodeFacts {
    NodeFacts {
        provision_state: "active".into(),
        power_state: Some("power on".into()),
        boot_from_volume: bfv.map(str::to_owned),
        ..node()
    }
}

type Row = (
    &'static str,
    HostFacts,
    NodeFacts,
    SyncFacts,
    Options,
    Vec<Step>,
    Phase,
);

#[test]
fn handshake_table() {
    let on = Options::default();
    let rows: Vec<Row> = vec![
        // Step 1: configuration and the boot device.
        (
            "not_in_sync_configures_first",
            host(),
            NodeFacts {
                provision_state: "enroll".into(),
                boot_device_recorded: false,
                ..node()
            },
            SyncFacts {
                in_sync: false,
                adoptable: false,
                boot_target: None,
                volume_changed: true,
            },
            on.clone(),
            vec![],
            Phase::Configuring,
        ),
        (
            "boot_device_set_once_configured_then_hand_over",
            host(),
            NodeFacts {
                boot_device_recorded: false,
                ..node()
            },
            synced(),
            on.clone(),
            vec![Step::SetBootDevice, hand_over(false)],
            Phase::HandedOver,
        ),
        (
            "boot_device_never_reasserted",
            HostFacts {
                externally_provisioned: true,
                ..host()
            },
            node(),
            synced(),
            on.clone(),
            vec![],
            Phase::HandedOver,
        ),
        (
            "boot_device_waits_for_the_lock",
            host(),
            NodeFacts {
                boot_device_recorded: false,
                locked: true,
                ..node()
            },
            synced(),
            on.clone(),
            vec![],
            Phase::Waiting,
        ),
        (
            "boot_device_not_set_on_an_active_node",
            host(),
            NodeFacts {
                boot_device_recorded: false,
                ..active(Some(TARGET))
            },
            synced(),
            on.clone(),
            vec![],
            Phase::BootingFromVolume,
        ),
        // Step 2: hand-over and its negative cases.
        (
            "hand_over_manageable_node_powered_off_no_reboot",
            host(),
            node(),
            synced(),
            on.clone(),
            vec![hand_over(false)],
            Phase::HandedOver,
        ),
        (
            "hand_over_powered_on_node_asks_one_reboot",
            host(),
            NodeFacts {
                power_state: Some("power on".into()),
                ..node()
            },
            synced(),
            on.clone(),
            vec![hand_over(true)],
            Phase::HandedOver,
        ),
        (
            "hand_over_of_an_online_host_asks_one_reboot_even_while_off",
            HostFacts {
                online: true,
                ..host()
            },
            node(),
            synced(),
            on.clone(),
            vec![hand_over(true)],
            Phase::HandedOver,
        ),
        (
            "available_node_is_managed_first",
            host(),
            NodeFacts {
                provision_state: "available".into(),
                ..node()
            },
            synced(),
            on.clone(),
            vec![Step::Manage, hand_over(false)],
            Phase::HandedOver,
        ),
        (
            "no_hand_over_out_of_sync",
            host(),
            node(),
            SyncFacts {
                in_sync: false,
                ..synced()
            },
            on.clone(),
            vec![],
            Phase::Configuring,
        ),
        (
            "no_hand_over_with_image",
            HostFacts {
                has_image: true,
                ..host()
            },
            node(),
            synced(),
            on.clone(),
            vec![],
            Phase::Waiting,
        ),
        (
            "no_hand_over_with_custom_deploy",
            HostFacts {
                has_custom_deploy: true,
                ..host()
            },
            node(),
            synced(),
            on.clone(),
            vec![],
            Phase::Waiting,
        ),
        (
            "no_hand_over_with_the_opt_out_annotation",
            HostFacts {
                opted_out: true,
                ..host()
            },
            node(),
            synced(),
            on.clone(),
            vec![],
            Phase::Waiting,
        ),
        (
            "no_hand_over_with_handoff_false",
            host(),
            node(),
            synced(),
            Options::new(false, false),
            vec![],
            Phase::Waiting,
        ),
        (
            "no_hand_over_twice_in_one_generation",
            HostFacts {
                handed_over_generation: Some(3),
                ..host()
            },
            node(),
            synced(),
            on.clone(),
            vec![],
            Phase::Waiting,
        ),
        (
            "hand_over_again_in_a_new_generation",
            HostFacts {
                handed_over_generation: Some(2),
                ..host()
            },
            node(),
            synced(),
            on.clone(),
            vec![hand_over(false)],
            Phase::HandedOver,
        ),
        (
            "no_hand_over_when_not_available",
            HostFacts {
                provisioning_state: "ready".into(),
                ..host()
            },
            node(),
            synced(),
            on.clone(),
            vec![],
            Phase::Waiting,
        ),
        (
            "no_hand_over_while_inspecting",
            HostFacts {
                provisioning_state: "inspecting".into(),
                ..host()
            },
            NodeFacts {
                provision_state: "inspecting".into(),
                ..node()
            },
            synced(),
            on.clone(),
            vec![],
            Phase::Waiting,
        ),
        (
            "no_hand_over_when_already_externally_provisioned",
            HostFacts {
                externally_provisioned: true,
                ..host()
            },
            node(),
            synced(),
            on.clone(),
            vec![],
            Phase::HandedOver,
        ),
        (
            "no_hand_over_while_the_node_is_locked",
            host(),
            NodeFacts {
                locked: true,
                ..node()
            },
            synced(),
            on.clone(),
            vec![],
            Phase::Waiting,
        ),
        (
            "dry_run_never_writes",
            host(),
            NodeFacts {
                provision_state: "available".into(),
                boot_device_recorded: false,
                ..node()
            },
            synced(),
            Options::new(true, true),
            vec![],
            Phase::Waiting,
        ),
        // Failed adoption (BMO was first): poke BMO once the node is configured.
        (
            "adopt_failed_configured_requests_a_retry",
            HostFacts {
                externally_provisioned: true,
                provisioning_state: "externally provisioned".into(),
                adoption_failure_recorded: true,
                ..host()
            },
            NodeFacts {
                provision_state: "adopt failed".into(),
                provision_updated_at: Some("t1".into()),
                ..node()
            },
            SyncFacts {
                in_sync: false,
                ..synced()
            },
            on.clone(),
            vec![Step::RequestAdoptionRetry {
                token: format!("{NODE}@t1"),
            }],
            Phase::HandedOver,
        ),
        (
            "adopt_failed_not_yet_seen_by_bmo_waits",
            HostFacts {
                externally_provisioned: true,
                provisioning_state: "externally provisioned".into(),
                ..host()
            },
            NodeFacts {
                provision_state: "adopt failed".into(),
                provision_updated_at: Some("t1".into()),
                ..node()
            },
            synced(),
            on.clone(),
            vec![],
            Phase::HandedOver,
        ),
        (
            "adopt_failed_retry_requested_once",
            HostFacts {
                externally_provisioned: true,
                adoption_failure_recorded: true,
                adopt_retry: Some(format!("{NODE}@t1")),
                ..host()
            },
            NodeFacts {
                provision_state: "adopt failed".into(),
                provision_updated_at: Some("t1".into()),
                ..node()
            },
            synced(),
            on.clone(),
            vec![],
            Phase::HandedOver,
        ),
        (
            "adopt_failed_not_configured_no_retry",
            HostFacts {
                externally_provisioned: true,
                adoption_failure_recorded: true,
                ..host()
            },
            NodeFacts {
                provision_state: "adopt failed".into(),
                ..node()
            },
            SyncFacts {
                in_sync: false,
                adoptable: false,
                ..synced()
            },
            on.clone(),
            vec![],
            Phase::Configuring,
        ),
        // Steps 3-5: the outcome.
        (
            "active_with_our_target_boots_from_volume",
            HostFacts {
                externally_provisioned: true,
                ..host()
            },
            active(Some(TARGET)),
            synced(),
            on.clone(),
            vec![],
            Phase::BootingFromVolume,
        ),
        (
            "active_without_our_target_is_never_fought",
            HostFacts {
                externally_provisioned: true,
                ..host()
            },
            active(None),
            SyncFacts {
                in_sync: false,
                boot_target: None,
                volume_changed: true,
                ..synced()
            },
            on.clone(),
            vec![],
            Phase::AdoptedWithoutBootVolume,
        ),
        (
            "active_with_another_target",
            HostFacts {
                externally_provisioned: true,
                ..host()
            },
            active(Some("other")),
            synced(),
            on.clone(),
            vec![],
            Phase::AdoptedWithoutBootVolume,
        ),
        (
            "change_while_active_is_stale_and_recorded",
            HostFacts {
                externally_provisioned: true,
                ..host()
            },
            active(Some(TARGET)),
            SyncFacts {
                volume_changed: true,
                ..synced()
            },
            on.clone(),
            vec![Step::RecordStale],
            Phase::Stale,
        ),
        (
            "stale_stays_stale_without_writing_again",
            HostFacts {
                externally_provisioned: true,
                ..host()
            },
            NodeFacts {
                stale_recorded: true,
                ..active(Some(TARGET))
            },
            synced(),
            on.clone(),
            vec![],
            Phase::Stale,
        ),
    ];
    let mut failures = Vec::new();
    for (name, h, n, s, o, want_steps, want_phase) in rows {
        let d = decide(&h, &n, &s, &o);
        if d.steps != want_steps || d.phase != Some(want_phase) {
            failures.push(format!(
                "{name}: steps {:?} phase {:?}, want {want_steps:?} {want_phase:?}",
                d.steps, d.phase
            ));
        }
        let writes_host = d
            .steps
            .iter()
            .any(|s| matches!(s, Step::HandOver { .. } | Step::RequestAdoptionRetry { .. }));
        if n.provision_state == "active" && writes_host {
            failures.push(format!("{name}: wrote the host of an active node"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn dry_run_reports_what_it_would_do() {
    let n = NodeFacts {
        provision_state: "available".into(),
        boot_device_recorded: false,
        power_state: Some("power on".into()),
        ..node()
    };
    let d = decide(&host(), &n, &synced(), &Options::new(true, true));
    assert!(d.steps.is_empty());
    assert_eq!(d.would, [Step::SetBootDevice, Step::Manage, hand_over(true)]);
}

#[test]
fn events_fire_on_phase_changes_only() {
    let ep = HostFacts {
        externally_provisioned: true,
        ..host()
    };
    let reasons = |h: &HostFacts, n: &NodeFacts, s: &SyncFacts| {
        decide(h, n, s, &Options::default())
            .events
            .iter()
            .map(|e| (e.kind, e.reason))
            .collect::<Vec<_>>()
    };
    let booting = active(Some(TARGET));
    assert_eq!(
        reasons(&ep, &booting, &synced()),
        [(EventKind::Normal, REASON_BOOTING)]
    );
    let again = HostFacts {
        previous_phase: Some(Phase::BootingFromVolume),
        ..ep.clone()
    };
    assert!(reasons(&again, &booting, &synced()).is_empty(), "no repeat");
    assert_eq!(
        reasons(&ep, &active(None), &synced()),
        [(EventKind::Warning, REASON_ADOPTED_WITHOUT)]
    );
    let changed = SyncFacts {
        volume_changed: true,
        ..synced()
    };
    assert_eq!(
        reasons(&again, &booting, &changed),
        [(EventKind::Warning, REASON_STALE)]
    );
    // Notes name the node, never fight: no power or delete advice beyond re-adoption.
    let d = decide(&ep, &active(None), &synced(), &Options::default());
    assert!(d.events[0].note.contains(NODE) && d.events[0].note.contains("re-attach"));
}

#[test]
fn blockers_explain_themselves() {
    let why = |h: HostFacts| handover_blocker(&h, &node(), &synced(), &Options::default());
    assert_eq!(why(host()), None);
    assert!(
        why(HostFacts {
            provisioning_state: "provisioned".into(),
            ..host()
        })
        .unwrap()
        .contains("provisioned")
    );
    assert!(
        why(HostFacts {
            opted_out: true,
            ..host()
        })
        .unwrap()
        .contains(HANDOFF_ANNOTATION)
    );
}
