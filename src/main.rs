use bootvolume::{
    check,
    cli::{self, Cli, Command},
    reconcile, telemetry,
};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    // One crypto provider for the whole process (ring); an error means it is already set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    telemetry::init(&cli.log);
    let runtime = || tokio::runtime::Builder::new_multi_thread().enable_all().build();
    match cli.command {
        Command::Serve(args) => runtime()?.block_on(cli::run_serve(args))?,
        Command::Check(args) => {
            let code = check::run(
                &args,
                &mut std::io::stdout().lock(),
                &mut std::io::stderr().lock(),
            )?;
            std::process::exit(code);
        }
        Command::Certs(args) => cli::run_certs(&args)?,
        Command::Reconcile(args) => reconcile::cli::run_reconcile(args)?,
        Command::IronicApply(args) => std::process::exit(reconcile::cli::run_ironic_apply(args)?.into()),
    }
    Ok(())
}
