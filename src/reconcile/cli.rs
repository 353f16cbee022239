//! Flags and entry points of `bootvolume ironic-apply` and `bootvolume reconcile`.
//!
//! Every flag reads `BOOTVOLUME_<FLAG>` too. The entry points are synchronous (they build
//! their own Tokio runtime) so `main` stays a plain dispatch.

use super::{
    Error,
    controller::{self, Context, ControllerConfig, LeaseConfig},
    metrics::Metrics,
    oneshot,
};
use crate::ironic::{ClientConfig, IronicClient};
use clap::Args;
use kube::runtime::events::Reporter;
use std::{io::Write, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

/// How to reach Ironic (shared by both subcommands).
#[derive(Clone, Debug, Args)]
pub struct IronicArgs {
    /// Ironic API endpoint, e.g. `http://ironic:6385` (a trailing `/v1` is accepted).
    #[arg(long, env = "BOOTVOLUME_IRONIC_URL")]
    pub ironic_url: String,
    /// File holding the HTTP basic auth user name (metal3 `ironic-credentials` style).
    #[arg(
        long,
        env = "BOOTVOLUME_IRONIC_USERNAME_FILE",
        requires = "ironic_password_file"
    )]
    pub ironic_username_file: Option<PathBuf>,
    /// File holding the HTTP basic auth password.
    #[arg(
        long,
        env = "BOOTVOLUME_IRONIC_PASSWORD_FILE",
        requires = "ironic_username_file"
    )]
    pub ironic_password_file: Option<PathBuf>,
    /// PEM CA bundle for Ironic's TLS certificate (the only trust root when given).
    #[arg(long, env = "BOOTVOLUME_IRONIC_CA_FILE")]
    pub ironic_ca_file: Option<PathBuf>,
    /// Per-request timeout in seconds (bounds how long an unreachable Ironic can stall us).
    #[arg(long, default_value_t = 30, env = "BOOTVOLUME_IRONIC_TIMEOUT")]
    pub ironic_timeout: u64,
    /// Ironic requests in flight at once (a cold start of thousands of hosts must not
    /// flood Ironic); a 503 or 429 also slows the next requests down.
    #[arg(long, default_value_t = crate::ironic::DEFAULT_MAX_IN_FLIGHT, value_parser = clap::value_parser!(usize), env = "BOOTVOLUME_IRONIC_MAX_IN_FLIGHT")]
    pub ironic_max_in_flight: usize,
}

impl IronicArgs {
    /// Builds the client (reads the credential and CA files).
    pub fn client(&self) -> Result<IronicClient, Error> {
        let mut config = ClientConfig::new(&self.ironic_url, Duration::from_secs(self.ironic_timeout.max(1)));
        config.max_in_flight = self.ironic_max_in_flight.max(1);
        let config = config
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
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_delimiter = ',',
        env = "BOOTVOLUME_FILENAME"
    )]
    pub files: Vec<PathBuf>,
    /// Ironic connection.
    #[command(flatten)]
    pub ironic: IronicArgs,
    /// Print what would change without writing to Ironic.
    #[arg(long, env = "BOOTVOLUME_DRY_RUN", conflicts_with = "adopt")]
    pub dry_run: bool,
    /// Standalone Ironic (no baremetal-operator): after configuring, set a persistent PXE
    /// boot device, manage, adopt, power on and wait for `active`; exit 0 only when the node
    /// boots from its volume.
    #[arg(long, env = "BOOTVOLUME_ADOPT")]
    pub adopt: bool,
    /// With `--adopt`: seconds to wait for each host to become `active`.
    #[arg(long, default_value_t = 300, env = "BOOTVOLUME_ADOPT_TIMEOUT")]
    pub adopt_timeout: u64,
}

/// `reconcile` flags.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Ironic connection.
    #[command(flatten)]
    pub ironic: IronicArgs,
    /// Plain-HTTP listen address for /metrics and /healthz.
    #[arg(long, default_value = "0.0.0.0:8080", env = "BOOTVOLUME_METRICS_LISTEN")]
    pub metrics_listen: SocketAddr,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "BOOTVOLUME_NAMESPACE")]
    pub namespace: Option<String>,
    /// Label selector for the Secret watch (e.g. `environment.metal3.io=baremetal`).
    #[arg(long, env = "BOOTVOLUME_SECRET_LABEL_SELECTOR")]
    pub secret_label_selector: Option<String>,
    /// Seconds between fleet syncs: list calls over all nodes, connectors and targets that
    /// find drift (e.g. targets deleted by an undeploy) and re-run only the hosts affected.
    #[arg(long, default_value_t = 600, env = "BOOTVOLUME_RESYNC_INTERVAL")]
    pub resync_interval: u64,
    /// Hosts reconciled in parallel.
    #[arg(long, default_value_t = 4, env = "BOOTVOLUME_CONCURRENCY")]
    pub concurrency: u16,
    /// Plan and report (Events, logs) without writing to Ironic.
    #[arg(long, env = "BOOTVOLUME_DRY_RUN")]
    pub dry_run: bool,
    /// Hand configured hosts to baremetal-operator for adoption by setting
    /// `spec.externallyProvisioned: true` (per-host opt-out: annotation
    /// `bootvolume.metal3.io/handoff: "false"`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "BOOTVOLUME_HANDOFF")]
    pub handoff: bool,
    /// Only act while holding the Lease (set false for a single replica without RBAC on leases).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "BOOTVOLUME_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Name of the coordination.k8s.io Lease.
    #[arg(long, default_value = "bootvolume-reconciler", env = "BOOTVOLUME_LEASE_NAME")]
    pub lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace, else the kubeconfig's).
    #[arg(long, env = "BOOTVOLUME_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Lease duration in seconds: how long a dead leader blocks the standby.
    #[arg(long, default_value_t = 15, env = "BOOTVOLUME_LEASE_DURATION")]
    pub lease_duration: u64,
    /// Our holder identity (default: $POD_NAME, else $HOSTNAME).
    #[arg(long, env = "BOOTVOLUME_LEADER_ELECTION_IDENTITY")]
    pub leader_election_identity: Option<String>,
    /// Seconds from SIGTERM until the process gives up waiting (for running reconciles, the
    /// Lease release) and exits with status 1; keep it under the Pod's
    /// terminationGracePeriodSeconds.
    #[arg(long, default_value_t = 20, env = "BOOTVOLUME_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: u64,
}

/// Exit status of a shutdown that overran `--shutdown-timeout`.
pub const SHUTDOWN_TIMEOUT_EXIT: i32 = 1;

/// Installs the ring crypto provider (the crate is built ring-only) and, when the binary
/// has not set one up, a plain stderr log subscriber.
fn init_process() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Runtime::new().map_err(|e| Error::Input(format!("cannot start the async runtime: {e}")))
}

/// Runs `ironic-apply`; returns the process exit code ([`oneshot::ExitStatus`]).
pub fn run_ironic_apply(args: IronicApplyArgs) -> Result<u8, Error> {
    let IronicApplyArgs {
        files,
        ironic,
        dry_run,
        adopt,
        adopt_timeout,
    } = args;
    let adopt_within = adopt.then(|| Duration::from_secs(adopt_timeout.max(1)));
    init_process();
    let inputs = oneshot::read_inputs(&files)?;
    let client = ironic.client()?;
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
    let status = runtime()?
        .block_on(oneshot::run(
            &client,
            &inputs,
            dry_run,
            adopt_within,
            &mut out,
            &mut err,
        ))
        .map_err(|e| Error::Input(format!("writing output: {e}")))?;
    let _ = out.flush();
    Ok(status.code())
}

/// Runs the `reconcile` controller until SIGTERM/SIGINT.
pub fn run_reconcile(args: ReconcileArgs) -> Result<(), Error> {
    init_process();
    let runtime = runtime()?;
    let result = runtime.block_on(reconcile_main(args));
    // Tasks still parked (a watch request, a blocking DNS lookup) must not hold the exit.
    runtime.shutdown_timeout(Duration::from_millis(500));
    result
}

async fn reconcile_main(args: ReconcileArgs) -> Result<(), Error> {
    let ReconcileArgs {
        ironic,
        metrics_listen,
        namespace,
        secret_label_selector,
        resync_interval,
        concurrency,
        dry_run,
        handoff,
        leader_elect,
        lease_name,
        lease_namespace,
        lease_duration,
        leader_election_identity,
        shutdown_timeout,
    } = args;
    // First of all: from here on SIGTERM is ours (before, the default action kills the
    // process, which then holds nothing). Polling once installs the handlers.
    let mut signal = Box::pin(crate::cli::shutdown_signal());
    let _ = futures::poll!(&mut signal);
    tracing::info!(dry_run, handoff, leader_elect, "reconciler starting");
    let metrics = Arc::new(Metrics::new());
    let ironic = ironic.client()?.with_observer(metrics.ironic_observer());
    let kube = kube::Client::try_default()
        .await
        .map_err(|e| Error::Kube(format!("client: {e}")))?;
    let identity = leader_election_identity
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("bootvolume-{}", std::process::id()));
    let reporter = Reporter {
        controller: "bootvolume-reconciler".into(),
        instance: Some(identity.clone()),
    };
    let resync = Duration::from_secs(resync_interval.max(1));
    let ctx = Arc::new(
        Context::new(kube.clone(), ironic, metrics.clone(), reporter, dry_run, resync).with_handoff(handoff),
    );
    let config = ControllerConfig {
        namespace,
        secret_label_selector,
        concurrency: concurrency.max(1),
    };

    let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let progress = ctx.progress();
    let deadline = Duration::from_secs(shutdown_timeout);
    let watchdog = progress.clone();
    tokio::spawn(async move {
        signal.await;
        tracing::info!(shutdown_timeout_secs = deadline.as_secs(), "shutting down");
        let _ = shutdown_tx.send(true);
        // A thread, not a task: it must fire even if the runtime is wedged.
        std::thread::spawn(move || {
            std::thread::sleep(deadline);
            tracing::error!(
                shutdown_timeout_secs = deadline.as_secs(),
                stuck = %watchdog.describe(),
                "shutdown did not finish in time; exiting"
            );
            std::process::exit(SHUTDOWN_TIMEOUT_EXIT);
        });
    });
    let listener = tokio::net::TcpListener::bind(metrics_listen)
        .await
        .map_err(|e| Error::Input(format!("cannot listen on {metrics_listen}: {e}")))?;
    let mut metrics_shutdown = shutdown.clone();
    let server = axum::serve(listener, super::metrics::router(metrics)).with_graceful_shutdown(async move {
        let _ = metrics_shutdown.wait_for(|s| *s).await;
    });
    let server = tokio::spawn(async move { server.await });
    tracing::info!(%metrics_listen, "serving /metrics and /healthz");

    let result = if leader_elect {
        let lease = LeaseConfig {
            name: lease_name,
            namespace: lease_namespace.unwrap_or_else(|| pod_namespace(&kube)),
            identity,
            duration_secs: lease_duration,
        };
        controller::lead(kube, &lease, shutdown, &progress, |stop| {
            controller::run_controller(ctx.clone(), &config, stop)
        })
        .await
    } else {
        progress.set_phase("reconciling");
        let mut sd = shutdown;
        controller::run_controller(ctx, &config, async move {
            let _ = sd.wait_for(|s| *s).await;
        })
        .await;
        Ok(())
    };
    // On shutdown the server is already draining; on an early failure (e.g. no RBAC for the
    // Lease) it must not keep the process alive.
    server.abort();
    let _ = server.await;
    if result.is_ok() {
        tracing::info!("stopped");
    }
    result
}

/// The namespace we run in (service account mount), else the client's default.
fn pod_namespace(kube: &kube::Client) -> String {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| kube.default_namespace().to_owned())
}
