use clap::Parser;
use irec_edge_agent::cli::Cli;
use irec_edge_agent::cli::PolicyKind;
use irec_edge_agent::{BaselineLoader, NeuralLoader, PolicyLoader};
use irec_shared::sim::{Environment, Pool, World};
use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let print = cli.print_config;
    let cli_policy = cli.policy;
    let config = cli.into_config()?;
    if print {
        println!("{}", toml::to_string_pretty(&config)?);
        return Ok(());
    }
    let world = Arc::new(World::build(&config.world)?);
    let env = Arc::new(Environment::with_truth(world.clone(), Pool::Train));
    let loader: Arc<dyn PolicyLoader> = match cli_policy {
        PolicyKind::Learned => Arc::new(NeuralLoader::new(world.clone(), config.initial_policy.clone())),
        PolicyKind::Tracker => Arc::new(
            BaselineLoader::Tracker { lexicon: Arc::new(world.lexicon.clone()), index: Arc::new(env.index.clone()) }.with_fallback(true),
        ),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let stats = runtime.block_on(irec_edge_agent::run_in(config, env, loader, async {
        let _ = tokio::signal::ctrl_c().await;
    }))?;
    let mut summary = serde_json::to_value(&stats)?;
    if let Some(obj) = summary.as_object_mut() {
        obj.remove("ack_latencies_ms");
        obj.insert("ack_p50_ms".into(), serde_json::json!(stats.ack_latency_percentile(50.0)));
        obj.insert("ack_p99_ms".into(), serde_json::json!(stats.ack_latency_percentile(99.0)));
    }
    println!("{summary}");
    Ok(())
}
