//! Logging setup: `--log-format text|json`, `--log-level` as a tracing EnvFilter.

use crate::cli::{LogArgs, LogFormat};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; call once from `main`. Logs go to stderr so `check`
/// and `ironic-apply` keep stdout for their results.
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = match args.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
