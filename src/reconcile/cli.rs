//! Flags and entry points of `bootvolume ironic-apply` and `bootvolume reconcile`.
//!
//! Every flag reads `BOOTVOLUME_<FLAG>` too. The entry points are synchronous (they build
//! their own Tokio runtime) so `main` stays a plain dispatch.

use super::{Error, oneshot};
use crate::ironic::{ClientConfig, IronicClient};
use clap::Args;
use std::{io::Write, path::PathBuf, time::Duration};

/// How to reach Ironic (shared by both subcommands).
#[derive(Clone, Debug, Args)]
pub struct IronicArgs {
    /// Ironic API endpoint, e.g. `http://ironic:6385` (a trailing `/v1` is accepted).
    #[arg(long, env = "BOOTVOLUME_IRONIC_URL")]
    pub ironic_url: String,
    /// File holding the HTTP basic auth user name (metal3 `ironic-credentials` style).
    #[arg(long, env = "BOOTVOLUME_IRONIC_USERNAME_FILE", requires = "ironic_password_file")]
    pub ironic_username_file: Option<PathBuf>,
    /// File holding the HTTP basic auth password.
    #[arg(long, env = "BOOTVOLUME_IRONIC_PASSWORD_FILE", requires = "ironic_username_file")]
    pub ironic_password_file: Option<PathBuf>,
    /// PEM CA bundle for Ironic's TLS certificate (the only trust root when given).
    #[arg(long, env = "BOOTVOLUME_IRONIC_CA_FILE")]
    pub ironic_ca_file: Option<PathBuf>,
    /// Per-request timeout in seconds (bounds how long an unreachable Ironic can stall us).
    #[arg(long, default_value_t = 30, env = "BOOTVOLUME_IRONIC_TIMEOUT")]
    pub ironic_timeout: u64,
}

impl IronicArgs {
    /// Builds the client (reads the credential and CA files).
    pub fn client(&self) -> Result<IronicClient, Error> {
        let config = ClientConfig::new(&self.ironic_url, Duration::from_secs(self.ironic_timeout.max(1)))
            .with_files(
                self.ironic_username_file.as_deref(),
                self.ironic_password_file.as_deref(),
                self.ironic_ca_file.as_deref(),
            )
            .map_err(|e| Error::ironic("client", e))?;
        IronicClient::new(config).map_err(|e| Error::ironic("client", e))
    }
}

/// `ironic-apply` flags.
#[derive(Debug, Args)]
pub struct IronicApplyArgs {
    /// Manifest files with BareMetalHosts and the Secrets they reference (`-` = stdin).
    #[arg(short = 'f', long = "filename", required = true, value_delimiter = ',', env = "BOOTVOLUME_FILENAME")]
    pub files: Vec<PathBuf>,
    /// Ironic connection.
    #[command(flatten)]
    pub ironic: IronicArgs,
    /// Print what would change without writing to Ironic.
    #[arg(long, env = "BOOTVOLUME_DRY_RUN")]
    pub dry_run: bool,
}

/// `reconcile` flags.
#[derive(Debug, Args)]
pub struct ReconcileArgs {}

/// Installs the ring crypto provider (the crate is built ring-only) and, when the binary
/// has not set one up, a plain stderr log subscriber.
fn init_process() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Runtime::new().map_err(|e| Error::Input(format!("cannot start the async runtime: {e}")))
}

/// Runs `ironic-apply`; returns the process exit code ([`oneshot::ExitStatus`]).
pub fn run_ironic_apply(args: IronicApplyArgs) -> Result<u8, Error> {
    let IronicApplyArgs { files, ironic, dry_run } = args;
    init_process();
    let inputs = oneshot::read_inputs(&files)?;
    let client = ironic.client()?;
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
    let status = runtime()?
        .block_on(oneshot::run(&client, &inputs, dry_run, &mut out, &mut err))
        .map_err(|e| Error::Input(format!("writing output: {e}")))?;
    let _ = out.flush();
    Ok(status.code())
}

/// Runs the `reconcile` controller until SIGTERM/SIGINT.
pub fn run_reconcile(_args: ReconcileArgs) -> Result<(), Error> {
    init_process();
    Err(Error::Input("not built yet".into()))
}
