use clap::Parser;
use irec_server::cli::Cli;
use irec_server::rounds::NoTrainer;
use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("irec-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let print = cli.print_config;
    let config = cli.into_config()?;
    if print {
        println!("{}", toml::to_string_pretty(&config)?);
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new()?;
    // The learning core's trainer replaces NoTrainer here once it exists.
    runtime.block_on(irec_server::run(config, Arc::new(NoTrainer), async {
        let _ = tokio::signal::ctrl_c().await;
    }))?;
    Ok(())
}
