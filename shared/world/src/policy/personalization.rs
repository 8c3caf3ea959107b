//! A device's private personalization, which never leaves the device: the household it serves
//! (a non-IID target population), a small logit bias learned from its own sessions ("minor
//! adaptation"), and the Gaussian logit noise it acts with. Together they make every device a
//! different, unknown behaviour policy, which is what the server must learn from without knowing.

use crate::catalog::{AttrTable, Attribute, ItemId, Schema};
use crate::rng::{self, Rng};
use crate::sim::Lexicon;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

/// Who a device's users are: targets lean towards a few favourite attribute values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetPopulation {
    /// Attribute values this household favours (e.g. Boots, Women).
    pub favourites: Vec<(Attribute, u8)>,
    /// How many times likelier a target is per favourite value it carries.
    pub boost: f64,
}

impl TargetPopulation {
    /// Uniform over the pool.
    pub fn uniform() -> TargetPopulation {
        TargetPopulation { favourites: Vec::new(), boost: 1.0 }
    }

    /// A household: a favourite Category and a favourite Gender, each drawn in proportion to its
    /// frequency in `pool`, boosted `boost`-fold.
    pub fn draw(pool: &[ItemId], truth: &AttrTable, schema: &Schema, boost: f64, rng: &mut Rng) -> TargetPopulation {
        let mut favourites = Vec::new();
        for a in [Attribute::Category, Attribute::Gender] {
            let mut counts = vec![0f64; schema.num_values(a)];
            for id in pool {
                for v in truth[*id as usize].values(a) {
                    counts[v as usize] += 1.0;
                }
            }
            if let Some(v) = rng::weighted_index(&counts, rng) {
                favourites.push((a, v as u8));
            }
        }
        TargetPopulation { favourites, boost }
    }

    /// A sampler over `pool` for this population.
    pub fn sampler(&self, pool: &[ItemId], truth: &AttrTable) -> TargetSampler {
        let mut cumulative = Vec::with_capacity(pool.len());
        let mut acc = 0.0;
        for id in pool {
            let cell = &truth[*id as usize];
            let hits = self.favourites.iter().filter(|(a, v)| cell.has(*a, *v)).count() as i32;
            acc += self.boost.powi(hits);
            cumulative.push(acc);
        }
        TargetSampler { pool: pool.to_vec(), cumulative }
    }
}

/// Draws targets from a population.
#[derive(Clone, Debug)]
pub struct TargetSampler {
    pool: Vec<ItemId>,
    cumulative: Vec<f64>,
}

impl TargetSampler {
    pub fn sample(&self, rng: &mut Rng) -> Option<ItemId> {
        let total = *self.cumulative.last()?;
        let x = rng.random::<f64>() * total;
        let i = self.cumulative.partition_point(|c| *c <= x).min(self.pool.len() - 1);
        Some(self.pool[i])
    }
}

/// A logit bias towards the values this device's users ask for most.
///
/// After each session the slots of the values users asked for (read from their words) gain a
/// count; counts decay per session so the bias follows the household. The bias of a slot is
/// `strength` × its share of its head's counts: at most `strength` logits, a nudge rather than an
/// override.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogitBias {
    pub heads: Vec<usize>,
    counts: Vec<f32>,
    /// Largest bias of a slot, in logits.
    pub strength: f32,
    /// Multiplier applied to all counts after each session (forgetting).
    pub decay: f32,
}

impl LogitBias {
    pub fn new(heads: &[usize], strength: f32, decay: f32) -> LogitBias {
        LogitBias { heads: heads.to_vec(), counts: vec![0.0; heads.iter().sum()], strength, decay }
    }

    /// Learns from one finished session's utterances.
    pub fn learn<'a>(&mut self, utterances: impl IntoIterator<Item = &'a str>, lexicon: &Lexicon) {
        self.counts.iter_mut().for_each(|c| *c *= self.decay);
        let mut offsets = Vec::with_capacity(self.heads.len());
        let mut acc = 0;
        for h in &self.heads {
            offsets.push(acc);
            acc += h;
        }
        let mut asked = std::collections::BTreeSet::new();
        for u in utterances {
            if let Some((a, v)) = lexicon.read(u) {
                asked.insert((a.index(), v as usize + 1));
            }
        }
        for (d, slot) in asked {
            if let (Some(off), Some(n)) = (offsets.get(d), self.heads.get(d)) {
                if slot < *n {
                    self.counts[off + slot] += 1.0;
                }
            }
        }
    }

    /// The bias, one entry per slot of every head.
    pub fn values(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.counts.len()];
        let mut off = 0;
        for &n in &self.heads {
            let total: f32 = self.counts[off..off + n].iter().sum();
            if total > 0.0 {
                for (o, c) in out[off..off + n].iter_mut().zip(&self.counts[off..off + n]) {
                    *o = self.strength * c / total;
                }
            }
            off += n;
        }
        out
    }
}

/// Everything private about one simulated device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceProfile {
    pub seed: u64,
    /// Standard deviation of the Gaussian noise on its policy's logits.
    pub noise_sigma: f32,
    pub population: TargetPopulation,
    pub bias: LogitBias,
}

impl DeviceProfile {
    /// Draws device `i` of a fleet: σ uniform in `sigma`, a household population, an empty bias.
    pub fn draw(fleet_seed: u64, i: u64, sigma: (f32, f32), pool: &[ItemId], truth: &AttrTable, schema: &Schema) -> DeviceProfile {
        let seed = rng::derive(rng::derive(fleet_seed, rng::stream::DEVICES), i);
        let mut r = rng::rng(seed);
        let noise_sigma = if sigma.1 > sigma.0 { r.random_range(sigma.0..sigma.1) } else { sigma.0 };
        let population = TargetPopulation::draw(pool, truth, schema, 4.0, &mut r);
        DeviceProfile { seed, noise_sigma, population, bias: LogitBias::new(&schema.head_sizes(), 0.5, 0.98) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{generate, GeneratorConfig};

    #[test]
    fn populations_lean_towards_their_favourites() {
        let cat = generate(&GeneratorConfig { items: 3_000, seed: 3 });
        let truth = cat.truth();
        let pool = &cat.split.train;
        let pop = TargetPopulation { favourites: vec![(Attribute::Category, 1)], boost: 4.0 };
        let s = pop.sampler(pool, &truth);
        let mut r = rng::rng(1);
        let boots = (0..4_000).filter(|_| truth[s.sample(&mut r).unwrap_or(0) as usize].has(Attribute::Category, 1)).count();
        let base = pool.iter().filter(|i| truth[**i as usize].has(Attribute::Category, 1)).count() as f64 / pool.len() as f64;
        assert!(boots as f64 / 4_000.0 > base * 1.8, "{boots} vs base share {base}");
    }

    #[test]
    fn bias_follows_what_users_ask_for() {
        let schema = Schema::reference();
        let lex = Lexicon::new(&schema);
        let mut b = LogitBias::new(&schema.head_sizes(), 0.5, 0.9);
        for _ in 0..5 {
            b.learn(["I want boots", "Please provide some shoes for women"], &lex);
        }
        let v = b.values();
        assert!((v[2] - 0.5).abs() < 1e-6, "Boots is slot 2 of the first head");
        assert!(v.iter().all(|x| *x <= 0.5 + 1e-6));
        assert!(v[0] == 0.0);
    }
}
