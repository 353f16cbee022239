//! Command line: one binary, one subcommand per job (docs/architecture.md).
//!
//! Every flag also reads `BOOTVOLUME_<FLAG>` so the Deployments can configure the binary
//! from the environment, kube-component style. Each subcommand's args turn into a plain
//! config struct that tests build directly.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::{net::SocketAddr, path::PathBuf};

/// Admission webhook and Ironic reconciler for metal3 BareMetalHost `spec.bootVolume`.
#[derive(Debug, Parser)]
#[command(name = "bootvolume", version, about)]
pub struct Cli {
    /// Log settings shared by every subcommand.
    #[command(flatten)]
    pub log: LogArgs,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTPS admission webhook (/validate, /mutate).
    Serve(ServeArgs),
    /// Validate (and optionally mutate) BareMetalHost manifests offline.
    Check(CheckArgs),
    /// Generate a CA and a serving certificate for the webhook Service.
    Certs(CertsArgs),
    /// Run the reconciler: apply each host's bootVolume to its Ironic node.
    Reconcile(crate::reconcile::cli::ReconcileArgs),
    /// Apply the BareMetalHosts in files to their Ironic nodes once.
    IronicApply(crate::reconcile::cli::IronicApplyArgs),
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging flags.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "BOOTVOLUME_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax, e.g. `info,bootvolume=debug`).
    #[arg(long, global = true, default_value = "info", env = "BOOTVOLUME_LOG_LEVEL")]
    pub log_level: String,
}

/// Rule policy flags shared by `serve` and `check`.
#[derive(Clone, Debug, Args)]
pub struct PolicyArgs {
    /// Volume drivers hosts may use (comma separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cinder,external",
        env = "BOOTVOLUME_ALLOWED_VOLUME_DRIVERS"
    )]
    pub allowed_volume_drivers: Vec<String>,
    /// Allow inline CHAP credentials (iscsiTarget.authUser/authPasswd), with a warning.
    #[arg(long, env = "BOOTVOLUME_ALLOW_INLINE_CHAP")]
    pub allow_inline_chap: bool,
    /// Users whose updates that drop spec.bootVolume get it put back (comma separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = crate::rules::DEFAULT_PRESERVE_FOR,
        env = "BOOTVOLUME_PRESERVE_FOR"
    )]
    pub preserve_for: Vec<String>,
}

impl PolicyArgs {
    /// The rule policy these flags describe.
    pub fn policy(&self) -> crate::rules::Policy {
        crate::rules::Policy {
            allowed_volume_drivers: self
                .allowed_volume_drivers
                .iter()
                .map(|s| s.trim().to_owned())
                .collect(),
            allow_inline_chap: self.allow_inline_chap,
            preserve_for: self.preserve_for.iter().map(|s| s.trim().to_owned()).collect(),
        }
    }
}

/// `serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// HTTPS listen address for the webhook.
    #[arg(long, default_value = "0.0.0.0:9443", env = "BOOTVOLUME_LISTEN")]
    pub listen: SocketAddr,
    /// Plain-HTTP listen address for /metrics (and the probes).
    #[arg(long, default_value = "0.0.0.0:8080", env = "BOOTVOLUME_METRICS_LISTEN")]
    pub metrics_listen: SocketAddr,
    /// PEM certificate chain; reloaded when it changes on disk.
    #[arg(long, env = "BOOTVOLUME_TLS_CERT_FILE", requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key; reloaded with the certificate.
    #[arg(long, env = "BOOTVOLUME_TLS_PRIVATE_KEY_FILE", requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,
    /// Generate a self-signed CA and a serving certificate for localhost into --cert-dir.
    #[arg(long, env = "BOOTVOLUME_DEV", conflicts_with_all = ["tls_cert_file", "tls_private_key_file"])]
    pub dev: bool,
    /// Where --dev writes its certificates.
    #[arg(long, default_value = "certs", env = "BOOTVOLUME_CERT_DIR")]
    pub cert_dir: PathBuf,
    /// How often the certificate files are checked for changes, in seconds.
    #[arg(long, default_value_t = 5, env = "BOOTVOLUME_CERT_RELOAD_INTERVAL")]
    pub cert_reload_interval: u64,
    /// Open webhook connections allowed; further ones are closed at accept.
    #[arg(long, default_value_t = 1024, env = "BOOTVOLUME_MAX_CONNECTIONS")]
    pub max_connections: usize,
    /// Seconds allowed for a client's TLS handshake.
    #[arg(long, default_value_t = 10, env = "BOOTVOLUME_TLS_HANDSHAKE_TIMEOUT")]
    pub tls_handshake_timeout: u64,
    /// Seconds allowed for an HTTP/1 request's headers (also the HTTP/1 keep-alive idle time).
    #[arg(long, default_value_t = 10, env = "BOOTVOLUME_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: u64,
    /// Seconds a connection may stay open with no request in flight.
    #[arg(long, default_value_t = 60, env = "BOOTVOLUME_IDLE_TIMEOUT")]
    pub idle_timeout: u64,
    /// Seconds allowed to receive a request body once its headers arrived.
    #[arg(long, default_value_t = 10, env = "BOOTVOLUME_BODY_TIMEOUT")]
    pub body_timeout: u64,
    /// Seconds in-flight requests get to finish after SIGTERM (keep it under the Pod's
    /// terminationGracePeriodSeconds).
    #[arg(long, default_value_t = 25, env = "BOOTVOLUME_DRAIN_TIMEOUT")]
    pub drain_timeout: u64,
    /// Rule policy.
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// `check` output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum CheckOutput {
    /// One line per error.
    #[default]
    Text,
    /// One JSON object per host.
    Json,
}

/// `check` flags.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Manifest files (YAML or JSON, multi-document); `-` reads stdin.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Print the mutated BareMetalHosts as YAML on stdout (errors go to stderr).
    #[arg(long)]
    pub mutate: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = CheckOutput::Text, conflicts_with = "mutate")]
    pub output: CheckOutput,
    /// Rule policy.
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// `certs` flags.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// The webhook Service name.
    #[arg(long, default_value = "bootvolume-webhook")]
    pub service: String,
    /// The webhook Service namespace.
    #[arg(long, default_value = "bootvolume-system")]
    pub namespace: String,
    /// Output directory for ca.crt, tls.crt and tls.key.
    #[arg(long, default_value = "certs")]
    pub out_dir: PathBuf,
}

impl ServeArgs {
    /// The server configuration these flags describe.
    pub fn config(&self) -> crate::server::ServeConfig {
        use crate::server::{CertSource, Limits, ServeConfig};
        // A zero timeout would refuse every client: one second is the floor.
        let secs = |s: u64| std::time::Duration::from_secs(s.max(1));
        let certs = match (&self.tls_cert_file, &self.tls_private_key_file) {
            (Some(cert), Some(key)) => CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => CertSource::Dev(self.cert_dir.clone()),
        };
        ServeConfig {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            certs,
            reload_interval: std::time::Duration::from_secs(self.cert_reload_interval.max(1)),
            policy: self.policy.policy(),
            limits: Limits {
                max_connections: self.max_connections.max(1),
                handshake_timeout: secs(self.tls_handshake_timeout),
                header_read_timeout: secs(self.header_read_timeout),
                idle_timeout: secs(self.idle_timeout),
                drain_timeout: std::time::Duration::from_secs(self.drain_timeout),
                body_timeout: secs(self.body_timeout),
            },
        }
    }
}

/// Resolves when the process is asked to stop (SIGTERM from the kubelet, or Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested");
}

/// `serve`: refuses to start without certificates unless `--dev` asks for generated ones.
pub async fn run_serve(args: ServeArgs) -> Result<(), crate::server::Error> {
    if args.tls_cert_file.is_none() && !args.dev {
        tracing::info!("no --tls-cert-file given: generating development certificates (as with --dev)");
    }
    let server = crate::server::WebhookServer::bind(args.config()).await?;
    if let Some(ca) = &server.dev_ca {
        eprintln!("development CA certificate: {}", ca.display());
    }
    eprintln!(
        "webhook listening on https://{} (metrics on http://{})",
        server.local_addr(),
        server.metrics_addr()
    );
    server.run(shutdown_signal()).await;
    Ok(())
}

/// `certs`: prints where the files went and what to do with them.
pub fn run_certs(args: &CertsArgs) -> Result<(), crate::tls::Error> {
    let names = crate::tls::service_dns_names(&args.service, &args.namespace);
    let g = crate::tls::generate(&args.out_dir, &names)?;
    println!("CA certificate:      {}", g.ca.display());
    println!(
        "serving certificate: {} (DNS: {})",
        g.cert.display(),
        names.join(", ")
    );
    println!("serving key:         {}", g.key.display());
    Ok(())
}
