use clap::Parser;
use irec_server::cli::{execute, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    irec_learn::host::keep_candle_elementwise_inline();
    irec_learn::host::keep_freed_memory();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    match execute(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("irec-server: {e}");
            ExitCode::FAILURE
        }
    }
}
