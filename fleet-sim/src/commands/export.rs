//! `fleet-sim export`: irec-server's export, with fleet-sim's progress bars.

use super::print_json;
use crate::cli::ExportArgs;
use crate::progress::Bars;
use irec_server::ServerConfig;

pub fn run(a: ExportArgs) -> anyhow::Result<()> {
    let mut config = match &a.config {
        Some(p) => ServerConfig::load(p)?,
        None => ServerConfig::default(),
    };
    config.data_dir = a.data_dir.clone();
    let objective = a.objective.as_deref().and_then(irec_server::export::objective_named);
    let report = irec_server::export::run(&config, &a.out, objective, &Bars::default())?;
    println!("{}", irec_server::export::summary(&report, &a.out));
    print_json(a.json, &serde_json::to_value(&report)?);
    Ok(())
}
