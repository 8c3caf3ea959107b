//! `fleet-sim catalog`: the catalog's marginals.

use super::{print_json, world};
use crate::cli::CatalogArgs;
use anyhow::Context;
use irec_world::catalog::Attribute;
use serde_json::json;

pub fn run(a: CatalogArgs) -> anyhow::Result<()> {

    let world = world(&a.world)?;
    let cat = &world.catalog;
    let m = cat.marginals();
    if let Some(path) = &a.write {
        std::fs::write(path, irec_world::catalog::csv::write(cat)).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{} items: {} train, {} test", cat.len(), cat.split.train.len(), cat.split.test.len());
    if a.stats {
        println!("{}", m.render(&cat.schema));
    }
    {
        let mut attrs = serde_json::Map::new();
        for at in Attribute::ALL {
            let values: serde_json::Map<String, serde_json::Value> = cat.schema.values[at.index()]
                .iter()
                .zip(&m.values[at.index()])
                .map(|(n, c)| (n.clone(), json!(c)))
                .collect();
            attrs.insert(
                at.column().to_string(),
                json!({"values": values, "empty": m.empty[at.index()], "multi_valued": m.multi[at.index()]}),
            );
        }
        print_json(a.json, &json!({"items": cat.len(), "train": cat.split.train.len(), "test": cat.split.test.len(), "attributes": attrs}));
    }
    Ok(())
}
