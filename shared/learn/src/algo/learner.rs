//! Which offline learner trains: the choice a researcher makes with `--algo` or `algo` in the
//! `[trainer]` / `[offline]` tables, and the one type the round trainer and the experiments hold
//! whatever was chosen.

use super::bcq::{Bcq, BcqConfig};
use super::cql::{cql_sac, CqlConfig};
use super::iql::{Iql, IqlConfig};
use super::sac::{DiscreteSac, SacConfig};
use super::{Batch, LossRecord, OfflineAlgorithm, PerceptionWeights, Recommender};
use irec_model::heads::MultiHead;
use irec_model::Checkpoint;
use candle_core::Result;
use serde::{Deserialize, Serialize};

/// An offline learner.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algo {
    /// CQL(H) + discrete SAC (the paper's offline learner).
    #[default]
    CqlSac,
    /// Discrete batch-constrained Q-learning.
    Bcq,
    /// Implicit Q-learning.
    Iql,
}

impl Algo {
    pub const ALL: [Algo; 3] = [Algo::CqlSac, Algo::Bcq, Algo::Iql];

    /// The name on the command line and in TOML.
    pub fn name(self) -> &'static str {
        match self {
            Algo::CqlSac => "cql_sac",
            Algo::Bcq => "bcq",
            Algo::Iql => "iql",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Algo::CqlSac => "CQL(H) + SAC",
            Algo::Bcq => "discrete BCQ",
            Algo::Iql => "IQL",
        }
    }

    /// Parses a command-line name; the error lists the known ones.
    pub fn parse(name: &str) -> std::result::Result<Algo, String> {
        Algo::ALL.into_iter().find(|a| a.name() == name).ok_or_else(|| {
            let known: Vec<&str> = Algo::ALL.iter().map(|a| a.name()).collect();
            format!("unknown algorithm `{name}` (known: {})", known.join(", "))
        })
    }
}

/// The settings of every learner (each reads its own).
#[derive(Clone, Copy, Debug)]
pub struct LearnerSettings<'a> {
    pub sac: &'a SacConfig,
    pub cql: &'a CqlConfig,
    pub bcq: &'a BcqConfig,
    pub iql: &'a IqlConfig,
}

/// The chosen learner.
#[derive(Debug)]
pub enum Learner {
    CqlSac(Box<DiscreteSac>),
    Bcq(Box<Bcq>),
    Iql(Box<Iql>),
}

/// One step's losses of whichever learner, as the log's named numbers.
#[derive(Clone, Debug, Default)]
pub struct LearnerLosses(pub Vec<(&'static str, f32)>);

impl LossRecord for LearnerLosses {
    fn fields(&self) -> Vec<(&'static str, f32)> {
        self.0.clone()
    }
}

impl Learner {
    pub fn new(algo: Algo, perception: &PerceptionWeights, seed: u64, s: LearnerSettings, init: Option<&Checkpoint>) -> Result<Learner> {
        Ok(match algo {
            Algo::CqlSac => Learner::CqlSac(Box::new(cql_sac(perception, seed, s.sac, s.cql, init)?)),
            Algo::Bcq => Learner::Bcq(Box::new(Bcq::new(perception, seed, s.bcq, init)?)),
            Algo::Iql => Learner::Iql(Box::new(Iql::new(perception, seed, s.iql, init)?)),
        })
    }

    pub fn algo(&self) -> Algo {
        match self {
            Learner::CqlSac(_) => Algo::CqlSac,
            Learner::Bcq(_) => Algo::Bcq,
            Learner::Iql(_) => Algo::Iql,
        }
    }

    /// Everything needed to continue training later (see each learner's `training_state`).
    pub fn training_state(&self, label: &str) -> Result<Checkpoint> {
        match self {
            Learner::CqlSac(l) => l.training_state(label),
            Learner::Bcq(l) => l.training_state(label),
            Learner::Iql(l) => l.training_state(label),
        }
    }

    /// A new iterative round begins on D ∪ D′: what a learner rebuilt from its training state
    /// would reset (IQL's trust region moves to the current policy unless it is anchored).
    pub fn start_round(&mut self) -> Result<()> {
        match self {
            Learner::Iql(l) => l.start_round(),
            Learner::CqlSac(_) | Learner::Bcq(_) => Ok(()),
        }
    }

    /// The critic's per-head Q (its greedy policy is a diagnostic beside the deployed actor).
    pub fn critic_heads(&self) -> &MultiHead {
        match self {
            Learner::CqlSac(l) => l.critic(),
            Learner::Bcq(l) => &l.critic().q,
            Learner::Iql(l) => &l.critic().q,
        }
    }

    /// The whole-batch size its optimiser settings ask for.
    pub fn batch_sessions(&self) -> usize {
        match self {
            Learner::CqlSac(l) => l.cfg.optim.batch_sessions,
            Learner::Bcq(l) => l.cfg.optim.batch_sessions,
            Learner::Iql(l) => l.cfg.optim.batch_sessions,
        }
    }
}

impl OfflineAlgorithm for Learner {
    type Losses = LearnerLosses;

    fn update(&mut self, batch: &Batch) -> Result<LearnerLosses> {
        Ok(LearnerLosses(match self {
            Learner::CqlSac(l) => l.update(batch)?.fields(),
            Learner::Bcq(l) => l.update(batch)?.fields(),
            Learner::Iql(l) => l.update(batch)?.fields(),
        }))
    }

    fn recommender(&self) -> &Recommender {
        match self {
            Learner::CqlSac(l) => l.recommender(),
            Learner::Bcq(l) => l.recommender(),
            Learner::Iql(l) => l.recommender(),
        }
    }

    fn steps(&self) -> u64 {
        match self {
            Learner::CqlSac(l) => l.steps(),
            Learner::Bcq(l) => l.steps(),
            Learner::Iql(l) => l.steps(),
        }
    }
}
