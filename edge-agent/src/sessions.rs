//! Running the device's users: one session at a time on a dedicated thread, each recorded and
//! flushed to the local store before anything else happens to it.

use crate::config::DeviceConfig;
use irec_model::loader::LoadedPolicy;
use crate::store::{AgentStore, StoreError};
use irec_protocol::experience::ExperienceSession;
use irec_world::policy::{run_spec, DeviceProfile, LogitBias, TargetPopulation, TargetSampler};
use irec_protocol::PolicyId;
use irec_world::rng;
use irec_world::sim::{Environment, SessionSpec, Transcript};
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

/// One device's sessions: its profile and household, and the loop that runs session `index`
/// the same way for the agent and for every replay that checks what a fleet uploaded.
pub struct Device<'e> {
    env: &'e Environment,
    targets: TargetSampler,
    pub profile: DeviceProfile,
}

/// A session as the device ran it: what it uploads, and what only the device knows.
#[derive(Clone, Debug)]
pub struct DeviceSession {
    pub session: ExperienceSession,
    /// With the target and the user's wishes; it never leaves the device.
    pub transcript: Transcript,
    pub spec: SessionSpec,
}

impl<'e> Device<'e> {
    pub fn new(env: &'e Environment, profile: DeviceProfile) -> Device<'e> {
        let targets = profile.population.sampler(env.index.pool(), &env.world.truth);
        Device { env, targets, profile }
    }

    /// The device on its first start.
    pub fn first(env: &'e Environment, config: &DeviceConfig) -> Device<'e> {
        Device::new(env, first_profile(config, env))
    }

    /// Runs session `index` with `policy` personalised by the device's profile, tagged `round`,
    /// then adapts the device's private bias to what the user said.
    pub fn run(&mut self, policy: &dyn LoadedPolicy, index: u64, round: u32) -> DeviceSession {
        let spec = SessionSpec::of_device(self.env, self.profile.seed, index, |r| self.targets.sample(r));
        let transcript = run_spec(self.env, &spec, policy.instantiate(&self.profile).as_mut());
        let session = ExperienceSession::from_transcript(&transcript, round);
        self.profile.bias.learn(session.turns.iter().map(|t| t.utterance.as_str()), &self.env.world.lexicon);
        DeviceSession { session, transcript, spec }
    }
}

/// Sessions `0..n` of a device from its first start, running `policy` throughout (round tag 0),
/// exactly as its agent runs them; with the profile after the last one.
pub fn replay(env: &Environment, config: &DeviceConfig, policy: &dyn LoadedPolicy, n: u64) -> (Vec<DeviceSession>, DeviceProfile) {
    let mut device = Device::first(env, config);
    let sessions = (0..n).map(|i| device.run(policy, i, 0)).collect();
    (sessions, device.profile)
}

/// What the session thread needs.
pub struct Generator {
    pub env: Arc<Environment>,
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
        let env = self.env.clone();
        let mut device = Device::new(&env, self.profile.clone());
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
            let ran = device.run(active.loaded.as_ref(), index, active.id.map_or(0, |i| i.round));
            tracing::debug!(index, "recording session");
            self.store.record_session(index, &ran.session, &device.profile)?;
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
