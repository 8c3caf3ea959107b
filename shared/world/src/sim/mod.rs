//! The simulated world the recommender acts in.
//!
//! - [`language`]: templates, surface forms, tokenizer, rule-based reader.
//! - [`user`]: the simulated user (wishes, habits, feedback).
//! - [`reward`]: the paper's reward and failure penalty.
//! - [`World`]: catalog + visual features + lexicon, built once and shared.
//! - [`Environment`]: a world seen through one pool and one attribute source; runs [`Episode`]s.

pub mod language;
pub mod reward;
pub mod user;

pub use language::{Lexicon, TEMPLATES};
pub use reward::RewardConfig;
pub use user::{Desires, Feedback, SimulatedUser};

use crate::catalog::{
    self, Action, AttrTable, Attribute, Catalog, FeatureConfig, GeneratorConfig, ItemId, VisualFeatures,
};
use crate::retrieval::{RetrievalIndex, ShownSet};
use crate::world_file::WorldFingerprint;
use crate::rng::{self, Rng};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// Where the world's catalog and features come from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorldConfig {
    /// Synthetic catalog settings (used when `catalog_path` is unset).
    pub catalog: GeneratorConfig,
    /// Synthetic feature settings (used when `features_path` is unset).
    pub features: FeatureConfig,
    /// A real `meta-data.csv` to load instead of generating.
    pub catalog_path: Option<PathBuf>,
    /// A per-CID feature file to load instead of synthesising (see `catalog::features`).
    pub features_path: Option<PathBuf>,
}

/// Catalog, features and words: everything fixed about the simulated world.
#[derive(Clone, Debug)]
pub struct World {
    pub catalog: Catalog,
    pub features: VisualFeatures,
    pub lexicon: Lexicon,
    /// Ground-truth attributes, by item id.
    pub truth: Arc<AttrTable>,
    /// What names this world to other processes (a server refuses an agent of another):
    /// set when it was built from a [`WorldConfig`] or read from a world file; `None` for one
    /// assembled from parts.
    pub fingerprint: Option<WorldFingerprint>,
}

impl World {
    pub fn build(cfg: &WorldConfig) -> Result<World, catalog::csv::CatalogError> {
        let catalog = match &cfg.catalog_path {
            Some(p) => catalog::csv::load(p, cfg.catalog.seed)?,
            None => catalog::generate(&cfg.catalog),
        };
        if catalog.split.train.is_empty() || catalog.split.test.is_empty() {
            return Err(catalog::csv::CatalogError::TooSmall { items: catalog.len() });
        }
        let features = match &cfg.features_path {
            Some(p) => VisualFeatures::load(p, &catalog)?,
            None => VisualFeatures::synthesize(&catalog, &cfg.features),
        };
        let fingerprint = WorldFingerprint::of(cfg).map_err(|source| catalog::csv::CatalogError::Io { path: "the [world] files".into(), source })?;
        let mut world = World::from_parts(catalog, features);
        world.fingerprint = Some(fingerprint);
        Ok(world)
    }

    pub fn from_parts(catalog: Catalog, features: VisualFeatures) -> World {
        let truth = catalog.truth();
        World::with_truth_table(catalog, features, truth)
    }

    /// A world whose ground-truth table is given (a world file's, read in place) rather than
    /// copied out of the catalog.
    pub fn with_truth_table(catalog: Catalog, features: VisualFeatures, truth: AttrTable) -> World {
        let lexicon = Lexicon::new(&catalog.schema);
        World { catalog, features, lexicon, truth: Arc::new(truth), fingerprint: None }
    }
}

/// Which split the recommender retrieves from and users' targets come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    Train,
    Test,
}

/// A world seen through one pool, with the attribute tables that the recommender (retrieval) and
/// the reward use. The user always judges on ground truth.
#[derive(Clone, Debug)]
pub struct Environment {
    pub world: Arc<World>,
    pub pool: Pool,
    pub index: RetrievalIndex,
    pub reward_attrs: Arc<AttrTable>,
    pub reward: RewardConfig,
}

impl Environment {
    pub fn new(
        world: Arc<World>,
        pool: Pool,
        retrieval_attrs: &AttrTable,
        reward_attrs: Arc<AttrTable>,
        reward: RewardConfig,
    ) -> Environment {
        let ids = match pool {
            Pool::Train => &world.catalog.split.train,
            Pool::Test => &world.catalog.split.test,
        };
        let index = RetrievalIndex::new(&world.catalog.schema, ids, retrieval_attrs);
        Environment { world, pool, index, reward_attrs, reward }
    }

    /// Ground truth everywhere: retrieval, reward and user.
    pub fn with_truth(world: Arc<World>, pool: Pool) -> Environment {
        let truth = world.truth.clone();
        Environment::new(world, pool, &truth, truth.clone(), RewardConfig::default())
    }

    /// A uniformly drawn target from the pool.
    pub fn sample_target(&self, rng: &mut Rng) -> ItemId {
        let pool = self.index.pool();
        pool[rng.random_range(0..pool.len())]
    }

    /// Starts the session `spec` names: its user (sub-stream [`SessionSpec::USER`]) and the
    /// episode's tie-breaking ([`SessionSpec::EPISODE`]).
    pub fn start(&self, spec: &SessionSpec) -> Episode<'_> {
        let user = SimulatedUser::new(spec.target, &self.world.truth[spec.target as usize], rng::derive(spec.seed, SessionSpec::USER));
        Episode {
            env: self,
            user,
            shown: self.index.empty_shown(),
            turns: Vec::new(),
            mentioned: [false; catalog::NUM_ATTRS],
            rng: rng::rng(rng::derive(spec.seed, SessionSpec::EPISODE)),
            success: false,
            exhausted: false,
        }
    }
}

/// One session to run: the user's target and the seed every other draw in it derives from.
/// Every session loop (evaluation, a device's, the batched rollouts, the replays that check a
/// fleet) names its sessions with this type, so the sub-stream numbers live here only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionSpec {
    pub target: ItemId,
    pub seed: u64,
}

impl SessionSpec {
    /// Sub-stream of the target draw (when the target is drawn from the seed).
    pub const TARGET: u64 = 0;
    /// Sub-stream of the simulated user.
    pub const USER: u64 = 1;
    /// Sub-stream of the episode's tie-breaking among equally good items.
    pub const EPISODE: u64 = 2;
    /// Sub-stream of the acting policy's randomness (noise, sampling).
    pub const ACTING: u64 = 3;

    /// Evaluation session `i` of `seed`: a target drawn uniformly from the environment's pool.
    pub fn numbered(env: &Environment, seed: u64, i: u64) -> SessionSpec {
        let s = rng::derive(seed, i);
        SessionSpec { target: env.sample_target(&mut rng::rng(rng::derive(s, Self::TARGET))), seed: s }
    }

    /// Session `index` of the device with `device_seed`: a target from its household (`draw`,
    /// e.g. a `TargetSampler`), uniform from the pool when the household has none.
    pub fn of_device(env: &Environment, device_seed: u64, index: u64, draw: impl FnOnce(&mut Rng) -> Option<ItemId>) -> SessionSpec {
        let s = rng::derive(rng::derive(device_seed, rng::stream::SESSIONS), index);
        let mut r = rng::rng(rng::derive(s, Self::TARGET));
        let target = draw(&mut r).unwrap_or_else(|| env.sample_target(&mut r));
        SessionSpec { target, seed: s }
    }

    /// The acting policy's random stream for this session.
    pub fn acting_rng(&self) -> Rng {
        rng::rng(rng::derive(self.seed, Self::ACTING))
    }
}

/// What the recommender perceives of a turn: the item it showed and what the user said.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub shown: ItemId,
    pub utterance: String,
}

/// One turn of a session, with what only the simulator knows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub action: Action,
    pub observation: Observation,
    pub feedback: Feedback,
    pub reward: f32,
    /// The shown item violates a wish the user had already voiced (counts towards NV).
    pub violates_earlier_request: bool,
}

/// A whole session, as the simulator saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    pub target: ItemId,
    pub desires: Desires,
    pub turns: Vec<Turn>,
    pub success: bool,
}

impl Transcript {
    /// Turn number (1-based) of success.
    pub fn success_turn(&self) -> Option<usize> {
        self.success.then_some(self.turns.len())
    }

    /// A readable rendering, stable byte for byte for a given seed.
    pub fn render(&self) -> String {
        let mut out = format!("target {} wants {:?}\n", self.target, self.desires.0);
        for (i, t) in self.turns.iter().enumerate() {
            out.push_str(&format!(
                "{:>2} act {:?} show {} r {:+.4}{} | {}\n",
                i + 1,
                t.action.0,
                t.observation.shown,
                t.reward,
                if t.violates_earlier_request { " NV" } else { "" },
                t.observation.utterance
            ));
        }
        out.push_str(if self.success { "success\n" } else { "failure\n" });
        out
    }
}

/// A session in progress.
#[derive(Debug)]
pub struct Episode<'e> {
    env: &'e Environment,
    pub user: SimulatedUser,
    shown: ShownSet,
    turns: Vec<Turn>,
    mentioned: [bool; catalog::NUM_ATTRS],
    rng: Rng,
    success: bool,
    exhausted: bool,
}

impl Episode<'_> {
    pub fn is_done(&self) -> bool {
        self.success || self.exhausted || self.turns.len() >= self.env.reward.max_turns
    }

    pub fn turns(&self) -> &[Turn] {
        &self.turns
    }

    /// Shows the item `action` retrieves and records the user's reaction. Returns the new turn, or
    /// `None` if the session was already over (or the pool exhausted, which ends it as failed).
    pub fn step(&mut self, action: Action) -> Option<&Turn> {
        if self.is_done() {
            return None;
        }
        let Some((pos, shown)) = self.env.index.select(&action, &self.shown, &mut self.rng) else {
            // Only a pool smaller than the turn cap runs dry: the session has failed.
            self.exhausted = true;
            if let Some(last) = self.turns.last_mut() {
                last.reward += self.env.reward.failure_penalty;
            }
            return None;
        };
        self.shown.insert(pos);
        let world = &self.env.world;
        let truth = &world.truth[shown as usize];
        let violates = Attribute::ALL.iter().any(|a| self.mentioned[a.index()] && !self.user.desires.satisfied(*a, truth));
        let (feedback, utterance) = self.user.respond(truth, &world.lexicon);
        let target = self.user.target;
        let mut reward = self.env.reward.turn_reward(
            world.features.distance(shown, target),
            self.env.reward_attrs[shown as usize].l0_distance(&self.env.reward_attrs[target as usize]),
        );
        match feedback {
            Feedback::Good => self.success = true,
            Feedback::Missing { attribute, .. } => self.mentioned[attribute.index()] = true,
        }
        if !self.success && self.turns.len() + 1 >= self.env.reward.max_turns {
            reward += self.env.reward.failure_penalty;
        }
        self.turns.push(Turn {
            action,
            observation: Observation { shown, utterance },
            feedback,
            reward,
            violates_earlier_request: violates,
        });
        self.turns.last()
    }

    pub fn into_transcript(self) -> Transcript {
        Transcript { target: self.user.target, desires: self.user.desires, turns: self.turns, success: self.success }
    }
}
