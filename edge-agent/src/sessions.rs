//! Running the device's users: one session at a time on a dedicated thread, each recorded and
//! flushed to the local store before anything else happens to it.

use crate::config::DeviceConfig;
use irec_model::loader::LoadedPolicy;
use crate::store::{AgentStore, StoreError};
use irec_protocol::experience::ExperienceSession;
use irec_world::policy::{DeviceProfile, LogitBias, Policy, SessionHint, TargetPopulation, TargetSampler};
use irec_protocol::PolicyId;
use irec_world::rng;
use irec_world::sim::{Environment, Transcript};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;

/// The policy the device runs now, swapped as a whole when a new version is installed.
pub struct ActivePolicy {
    /// `None` for the loader's fallback (no checkpoint received yet).
    pub id: Option<PolicyId>,
    pub loaded: Arc<dyn LoadedPolicy>,
}

/// Holds the active policy; readers take an `Arc` at session start, so a swap never changes a
/// session half-way.
#[derive(Default)]
pub struct PolicySlot(RwLock<Option<Arc<ActivePolicy>>>);

impl PolicySlot {
    pub fn current(&self) -> Option<Arc<ActivePolicy>> {
        self.0.read().ok().and_then(|g| g.clone())
    }

    pub fn swap(&self, active: ActivePolicy) {
        if let Ok(mut g) = self.0.write() {
            *g = Some(Arc::new(active));
        }
    }

    /// The same policy, now collecting for a later round (see `PolicySync::renewed`).
    pub fn renew(&self, id: PolicyId) {
        if let Ok(mut g) = self.0.write() {
            if let Some(cur) = g.as_ref().filter(|c| c.id.is_some_and(|c| c.version == id.version)) {
                *g = Some(Arc::new(ActivePolicy { id: Some(id), loaded: cur.loaded.clone() }));
            }
        }
    }
}

/// The profile a device starts with: its household drawn from its seed, an empty bias. Equal to
/// `DeviceProfile::draw(fleet_seed, i, (σ, σ), …)` when `seed` is device i's seed of that fleet.
pub fn first_profile(device: &DeviceConfig, env: &Environment) -> DeviceProfile {
    let schema = &env.world.catalog.schema;
    let mut r = rng::rng(device.seed);
    let population = TargetPopulation::draw(env.index.pool(), &env.world.truth, schema, device.population_boost, &mut r);
    DeviceProfile {
        seed: device.seed,
        noise_sigma: device.noise_sigma,
        population,
        bias: LogitBias::new(&schema.head_sizes(), device.bias_strength, device.bias_decay),
    }
}

/// Runs session `index` of a device: a target from the device's household, the users and
/// tie-breaking from its seed. The transcript (with its target) stays on the device.
pub fn run_session(env: &Environment, targets: &TargetSampler, policy: &mut dyn Policy, device_seed: u64, index: u64) -> Transcript {
    let s = rng::derive(rng::derive(device_seed, rng::stream::SESSIONS), index);
    let mut r = rng::rng(rng::derive(s, 0));
    let target = targets.sample(&mut r).unwrap_or_else(|| env.sample_target(&mut r));
    let mut episode = env.start(target, s);
    let mut r = rng::rng(rng::derive(s, 3));
    policy.begin(&SessionHint { desires: episode.user.desires });
    while !episode.is_done() {
        let action = policy.act(&mut r);
        match episode.step(action) {
            Some(turn) => {
                let observation = turn.observation.clone();
                policy.observe(&observation);
            }
            None => break,
        }
    }
    episode.into_transcript()
}

/// What the session thread needs.
pub struct Generator {
    pub env: Arc<Environment>,
    /// The device's household, as a sampler over the pool.
    pub targets: TargetSampler,
    pub store: AgentStore,
    pub slot: Arc<PolicySlot>,
    pub profile: DeviceProfile,
    /// Lifetime session count to reach (`None`: until stopped).
    pub target_sessions: Option<u64>,
    /// Sessions to run with one policy before waiting for the next (`None`: no limit).
    pub sessions_per_policy: Option<u64>,
    pub interval: Duration,
    pub stop: Arc<AtomicBool>,
    /// Set when the thread ends (target reached, stopped, or failed).
    pub done: Arc<AtomicBool>,
    /// Woken after each recorded session (the uploader forms batches).
    pub new_session: Arc<Notify>,
    /// Sessions run by this process.
    pub ran: Arc<AtomicU64>,
}

/// How long the thread naps while there is no policy to run yet, or between stop checks.
const NAP: Duration = Duration::from_millis(20);

impl Generator {
    /// Runs sessions until the target is reached or `stop` is set.
    pub fn run(mut self) -> Result<(), StoreError> {
        let result = self.run_inner();
        self.done.store(true, Ordering::SeqCst);
        self.new_session.notify_one();
        result
    }

    fn run_inner(&mut self) -> Result<(), StoreError> {
        let mut index = self.store.next_session()?;
        // Sessions run with the policy of this id (None: the fallback).
        let mut with_policy: (Option<Option<PolicyId>>, u64) = (None, 0);
        while !self.stop.load(Ordering::SeqCst) {
            if self.target_sessions.is_some_and(|t| index >= t) {
                return Ok(());
            }
            let Some(active) = self.slot.current() else {
                std::thread::sleep(NAP);
                continue;
            };
            if with_policy.0 != Some(active.id) {
                with_policy = (Some(active.id), 0);
            }
            if self.sessions_per_policy.is_some_and(|n| with_policy.1 >= n) {
                std::thread::sleep(NAP);
                continue;
            }
            with_policy.1 += 1;
            let mut policy = active.loaded.instantiate(&self.profile);
            let transcript = run_session(&self.env, &self.targets, policy.as_mut(), self.profile.seed, index);
            let session = ExperienceSession::from_transcript(&transcript, active.id.map_or(0, |i| i.round));
            // Minor adaptation from what the device heard; the bias stays on the device.
            self.profile.bias.learn(session.turns.iter().map(|t| t.utterance.as_str()), &self.env.world.lexicon);
            tracing::debug!(index, "recording session");
            self.store.record_session(index, &session, &self.profile)?;
            tracing::debug!(index, "session recorded");
            index += 1;
            self.ran.fetch_add(1, Ordering::Relaxed);
            self.new_session.notify_one();
            let mut left = self.interval;
            while !left.is_zero() && !self.stop.load(Ordering::SeqCst) {
                let nap = left.min(NAP);
                std::thread::sleep(nap);
                left -= nap;
            }
        }
        Ok(())
    }
}
