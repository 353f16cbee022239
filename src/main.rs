use bootvolume::cli::{Cli, Command};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(_) | Command::Check(_) | Command::Certs(_) => anyhow::bail!("not built yet"),
        Command::Reconcile(_) | Command::IronicApply(_) => anyhow::bail!("not built yet"),
    }
}
