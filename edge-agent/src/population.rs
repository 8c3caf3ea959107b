//! The device's users: a non-IID population. Each device favours a few categories and genders
//! (a household that mostly wants women's boots), drawn from its seed; a user's target item is
//! drawn from the train pool with those preferences. The population never leaves the device.

use irec_shared::catalog::{Attribute, ItemId};
use irec_shared::rng::{self, Rng};
use irec_shared::sim::Environment;
use rand::Rng as _;
use rand_distr::{Distribution, Gamma};
use serde::{Deserialize, Serialize};

/// How skewed a device's users are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PopulationConfig {
    /// Dirichlet concentration of the device's preference over categories (dimensionless; small
    /// values such as 0.3 make a device favour one or two categories, large ones approach uniform).
    pub category_concentration: f64,
    /// Dirichlet concentration of the preference over genders (dimensionless).
    pub gender_concentration: f64,
    /// Fraction of targets drawn uniformly from the pool regardless of preference (0..1), so every
    /// device still sees some of everything.
    pub uniform_share: f64,
}

impl Default for PopulationConfig {
    fn default() -> Self {
        PopulationConfig { category_concentration: 0.3, gender_concentration: 0.3, uniform_share: 0.1 }
    }
}

/// A device's target distribution over the environment's pool.
#[derive(Clone, Debug)]
pub struct Population {
    pool: Vec<ItemId>,
    /// Cumulative normalised weights over `pool`.
    cumulative: Vec<f64>,
    /// The preferences drawn (kept for tests and local diagnostics only).
    pub category_weights: Vec<f64>,
    pub gender_weights: Vec<f64>,
}

fn dirichlet(n: usize, alpha: f64, rng: &mut Rng) -> Vec<f64> {
    let gamma = Gamma::new(alpha.max(1e-3), 1.0).ok();
    let mut w: Vec<f64> = (0..n).map(|_| gamma.map_or(1.0, |g| g.sample(rng)) + 1e-12).collect();
    let total: f64 = w.iter().sum();
    w.iter_mut().for_each(|x| *x /= total);
    w
}

/// Mean preference over a cell's values; an empty cell gets the average preference.
fn cell_weight(weights: &[f64], values: impl Iterator<Item = u8>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + weights.get(v as usize).copied().unwrap_or(0.0), n + 1));
    if n == 0 {
        1.0 / weights.len().max(1) as f64
    } else {
        sum / n as f64
    }
}

impl Population {
    /// Draws the device's population from its seed.
    pub fn draw(env: &Environment, config: &PopulationConfig, device_seed: u64) -> Population {
        let mut r = rng::rng(rng::derive(device_seed, rng::stream::DEVICES));
        let schema = &env.world.catalog.schema;
        let category_weights = dirichlet(schema.num_values(Attribute::Category), config.category_concentration, &mut r);
        let gender_weights = dirichlet(schema.num_values(Attribute::Gender), config.gender_concentration, &mut r);
        let pool = env.index.pool().to_vec();
        let raw: Vec<f64> = pool
            .iter()
            .map(|id| {
                let attrs = &env.world.truth[*id as usize];
                cell_weight(&category_weights, attrs.values(Attribute::Category))
                    * cell_weight(&gender_weights, attrs.values(Attribute::Gender))
            })
            .collect();
        let total: f64 = raw.iter().sum();
        let n = pool.len().max(1) as f64;
        let u = config.uniform_share.clamp(0.0, 1.0);
        let mut acc = 0.0;
        let cumulative = raw
            .iter()
            .map(|w| {
                acc += if total > 0.0 { (1.0 - u) * w / total + u / n } else { 1.0 / n };
                acc
            })
            .collect();
        Population { pool, cumulative, category_weights, gender_weights }
    }

    /// Draws a target.
    pub fn sample(&self, rng: &mut Rng) -> ItemId {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let x = rng.random::<f64>() * total;
        let i = self.cumulative.partition_point(|c| *c <= x).min(self.pool.len().saturating_sub(1));
        self.pool.get(i).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use irec_shared::catalog::GeneratorConfig;
    use irec_shared::sim::{Pool, World, WorldConfig};
    use std::sync::Arc;

    #[test]
    fn devices_differ_and_favour_their_categories() {
        let cfg = WorldConfig { catalog: GeneratorConfig { items: 2000, seed: 1 }, ..WorldConfig::default() };
        let world = Arc::new(World::build(&cfg).unwrap());
        let env = Environment::with_truth(world.clone(), Pool::Train);
        let pc = PopulationConfig { uniform_share: 0.0, ..PopulationConfig::default() };
        let base = |c: u8| {
            let pool = env.index.pool();
            pool.iter().filter(|id| world.truth[**id as usize].has(Attribute::Category, c)).count() as f64 / pool.len() as f64
        };
        let share_of_top = |seed: u64| {
            let p = Population::draw(&env, &pc, seed);
            let top = (0..p.category_weights.len())
                .max_by(|a, b| p.category_weights[*a].total_cmp(&p.category_weights[*b]))
                .unwrap() as u8;
            let mut r = rng::rng(9);
            let hits = (0..2000).filter(|_| world.truth[p.sample(&mut r) as usize].has(Attribute::Category, top)).count();
            (top, hits as f64 / 2000.0, p.category_weights.clone())
        };
        let (top_a, share_a, wa) = share_of_top(1);
        let (_, _, wb) = share_of_top(2);
        assert_ne!(wa, wb, "devices draw different preferences");
        assert!(share_a > base(top_a) + 0.05, "the favourite category is over-represented: {share_a} vs {}", base(top_a));
        let p = Population::draw(&env, &pc, 1);
        assert!(env.index.pool().contains(&p.sample(&mut rng::rng(3))));
    }
}
