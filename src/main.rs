use bootvolume::cli::{Cli, Command};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(_) | Command::Check(_) | Command::Certs(_) => anyhow::bail!("not built yet"),
        Command::Reconcile(a) => Ok(bootvolume::reconcile::cli::run_reconcile(a)?),
        Command::IronicApply(a) => {
            std::process::exit(bootvolume::reconcile::cli::run_ironic_apply(a)?.into())
        }
    }
}
