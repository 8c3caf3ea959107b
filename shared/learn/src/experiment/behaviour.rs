//! Where experience comes from: the on-policy learner (whose snapshots at different training
//! stages become the behaviour policies), simulated devices that run a policy with their own
//! noise, bias and household, and the collection of their sessions.

use super::{Lab, Progress, Result};
use crate::algo::ppo::{Ppo, PpoConfig};
use crate::algo::{LossRecord, SessionDataset, TrainLog};
use irec_world::policy::{evaluate, TrackerPolicy};
use irec_protocol::experience::ExperienceSession;
use irec_model::{rollout, Acting, Checkpoint, PolicyModel};
use irec_world::sim::SessionSpec;
use irec_world::policy::DeviceProfile;
use irec_world::rng;
use irec_world::sim::Transcript;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OnPolicyConfig {
    pub ppo: PpoConfig,
    /// PPO iterations (after the warm start).
    pub iterations: usize,
    /// Fractions (0–1] of the warm start whose snapshots become behaviour policies.
    pub warm_start_snapshots: Vec<f64>,
    /// Fractions (0–1] of the PPO run whose snapshots become behaviour policies.
    pub snapshot_stages: Vec<f64>,
    /// Iterations between training-log lines.
    pub log_every: usize,
    /// Give the behaviour policies (this learner's snapshots) the request memory too. Off: they
    /// have the paper's state tracker, a GRU alone, as the paper's behaviour policies do; the
    /// learners the server trains have the memory (docs/results.md, "Architecture").
    pub behaviour_request_memory: bool,
}

impl OnPolicyConfig {
    pub fn quick() -> OnPolicyConfig {
        OnPolicyConfig {
            ppo: PpoConfig::default(),
            iterations: 30,
            warm_start_snapshots: vec![0.1, 0.3, 1.0],
            snapshot_stages: vec![1.0],
            log_every: 5,
            behaviour_request_memory: false,
        }
    }

    pub fn paper() -> OnPolicyConfig {
        let ppo = PpoConfig { warm_start_steps: 3_000, warm_start_sessions: 5_000, ..PpoConfig::default() };
        OnPolicyConfig { ppo, iterations: 300, snapshot_stages: vec![0.5, 1.0], log_every: 10, ..OnPolicyConfig::quick() }
    }
}

impl Default for OnPolicyConfig {
    fn default() -> Self {
        OnPolicyConfig::quick()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BehaviourConfig {
    /// Simulated devices (M behaviour policies).
    pub devices: usize,
    /// Sessions they collect in all (paper: 40,000).
    pub sessions: usize,
    /// Range of the devices' logit-noise σ (logits).
    pub noise_sigma: (f32, f32),
    /// Sessions a device runs between updates of its bias.
    pub session_batch: usize,
    /// The world devices collect in and the on-policy learner trains in.
    pub world: CollectionWorld,
    /// In `compare`'s and `ablate`'s iterative rounds, devices running the deployed (learned)
    /// policy draw each slot from the softmax of its noisy, biased logits instead of taking the
    /// argmax, so they explore where the policy is unsure and not where it is sure. Off by
    /// default (docs/results.md: within noise for IQL, worse for CQL(H) + SAC); `fleet-sim run`'s
    /// agents always take the argmax.
    pub sample_deployed: bool,
}

/// Where experience is collected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectionWorld {
    /// Train-split targets, retrieval on ground-truth attributes (the items AttrNet learned from).
    #[default]
    Train,
    /// The world every policy is evaluated in: test-split targets, retrieval on AttrNet's
    /// predicted attributes, where "asked for X, shown an item that lacks X" happens.
    Evaluation,
}

impl BehaviourConfig {
    pub fn quick() -> BehaviourConfig {
        BehaviourConfig { devices: 8, sessions: 2_000, noise_sigma: (0.3, 1.5), session_batch: 25, world: CollectionWorld::Train, sample_deployed: false }
    }

    pub fn paper() -> BehaviourConfig {
        BehaviourConfig { devices: 40, sessions: 40_000, ..BehaviourConfig::quick() }
    }
}

impl Default for BehaviourConfig {
    fn default() -> Self {
        BehaviourConfig::quick()
    }
}

/// The on-policy learner's result.
#[derive(Clone, Debug)]
pub struct OnPolicyOutcome {
    pub final_checkpoint: Checkpoint,
    /// (stage, checkpoint) at each snapshot: warm-start steps then PPO iterations, as labelled in
    /// the checkpoint.
    pub snapshots: Vec<(u64, Checkpoint)>,
    pub log: Vec<TrainLog>,
}

/// Which recommender an on-policy learner trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learner {
    /// The source of the behaviour policies (memory as `behaviour_request_memory` says).
    Behaviour,
    /// The on-policy row of the comparison: the same recommender the offline learners train.
    Comparison,
}

/// Trains the on-policy learner against the simulator (in the collection world).
pub fn train_on_policy(lab: &Lab, cfg: &OnPolicyConfig, seed: u64, learner: Learner, progress: &dyn Progress) -> Result<OnPolicyOutcome> {
    let perception = match learner {
        Learner::Behaviour if !cfg.behaviour_request_memory => lab.perception.without_memory(),
        _ => lab.perception.clone(),
    };
    let mut ppo = Ppo::new(&perception, rng::derive(seed, 21), &cfg.ppo)?;
    let mut r = rng::rng(rng::derive(seed, rng::stream::TRAINING));
    let mut snapshots = Vec::new();
    let mut log = Vec::new();

    // Warm start: clone the rule-based tracker's sessions on the train split.
    let warm = cfg.ppo.warm_start_steps;
    if warm > 0 {
        let lexicon = Arc::new(lab.world.lexicon.clone());
        let index = Arc::new(lab.collect_env.index.clone());
        let demo_seed = rng::derive(seed, 22);
        let ts = evaluate(&lab.collect_env, || TrackerPolicy::new(lexicon.clone(), index.clone()), cfg.ppo.warm_start_sessions, demo_seed, 2);
        let demos: Vec<ExperienceSession> = ts.iter().map(|t| ExperienceSession::from_transcript(t, 0)).collect();
        let data = SessionDataset::new(&demos, &lab.featurizer, lab.heads())?;
        let mut marks: Vec<usize> = cfg.warm_start_snapshots.iter().map(|f| ((f * warm as f64).round() as usize).clamp(1, warm)).collect();
        marks.push(warm);
        marks.sort_unstable();
        marks.dedup();
        progress.start("on-policy warm start (cloning the tracker)", warm as u64);
        let mut done = 0;
        for m in marks {
            let loss = ppo.imitate(&data, m - done, &mut r)?;
            progress.advance((m - done) as u64);
            done = m;
            log.push(TrainLog { step: 0, losses: [("warm_start_steps".to_string(), m as f32), ("warm_start_nll".to_string(), loss)].into_iter().collect() });
            if cfg.warm_start_snapshots.iter().any(|f| ((f * warm as f64).round() as usize).clamp(1, warm) == m) {
                snapshots.push((m as u64, ppo.recommender().export(&format!("on-policy warm start, {m} cloning steps"), m as u64)));
            }
        }
        progress.finish();
    }

    let marks: Vec<u64> = cfg.snapshot_stages.iter().map(|f| ((f * cfg.iterations as f64).round() as u64).max(1)).collect();
    let mut acc: Vec<(&'static str, f32)> = Vec::new();
    progress.start("on-policy (PPO) training", cfg.iterations as u64);
    for it in 1..=cfg.iterations as u64 {
        let losses = ppo.iteration(&lab.collect_env, &lab.featurizer, &mut r)?;
        let fields = losses.fields();
        if acc.is_empty() {
            acc = fields.iter().map(|(k, _)| (*k, 0.0)).collect();
        }
        acc.iter_mut().zip(&fields).for_each(|(a, (_, v))| a.1 += v);
        if it % cfg.log_every.max(1) as u64 == 0 || it == cfg.iterations as u64 {
            let n = (it - 1) % cfg.log_every.max(1) as u64 + 1;
            log.push(TrainLog { step: it, losses: acc.iter().map(|(k, v)| (k.to_string(), v / n as f32)).collect() });
            acc.clear();
        }
        if marks.contains(&it) {
            snapshots.push((warm as u64 + it, ppo.recommender().export(&format!("on-policy, {warm} cloning steps + {it} PPO iterations"), it)));
        }
        progress.advance(1);
    }
    progress.finish();
    let final_checkpoint = ppo.recommender().export(&format!("on-policy, {warm} cloning steps + {} PPO iterations", cfg.iterations), cfg.iterations as u64);
    Ok(OnPolicyOutcome { final_checkpoint, snapshots, log })
}

/// A simulated device: its private profile and the policy it runs.
#[derive(Clone, Debug)]
pub struct BehaviourDevice {
    pub profile: DeviceProfile,
    pub policy: Arc<PolicyModel>,
    /// Draw slots from the policy's softmax instead of its argmax (see `sample_deployed`).
    pub sample: bool,
}

/// Installs the deployed policy on every device, sampling its softmax when `sample`.
pub fn deploy(devices: &mut [BehaviourDevice], policy: &Arc<PolicyModel>, sample: bool) {
    for dev in devices {
        dev.policy = policy.clone();
        dev.sample = sample;
    }
}

/// The behaviour side of an experiment on one D: the on-policy source's snapshots, the devices
/// that run them (as they were before collecting, which moves their biases), and D.
pub struct BehaviourData {
    pub source: OnPolicyOutcome,
    pub devices: Vec<BehaviourDevice>,
    pub sessions: Vec<ExperienceSession>,
}

/// Trains the behaviour source, installs its snapshots on `cfg.behaviour.devices` devices and
/// collects `cfg.behaviour.sessions` sessions with them (round 0).
pub fn behaviour_data(lab: &Lab, cfg: &super::ExperimentConfig, progress: &dyn Progress) -> Result<BehaviourData> {
    let source = train_on_policy(lab, &cfg.on_policy, cfg.seed, Learner::Behaviour, progress)?;
    let snapshots: Vec<Checkpoint> = source.snapshots.iter().map(|(_, ck)| ck.clone()).collect();
    let devices = behaviour_devices(lab, &snapshots, &cfg.behaviour, cfg.seed)?;
    let mut collecting = devices.clone();
    let sessions = collect(lab, &mut collecting, cfg.behaviour.sessions, cfg.behaviour.session_batch, 0, cfg.seed, progress)?.sessions;
    Ok(BehaviourData { source, devices, sessions })
}

/// `cfg.devices` devices; device i runs `policies[i % len]`.
pub fn behaviour_devices(lab: &Lab, policies: &[Checkpoint], cfg: &BehaviourConfig, seed: u64) -> Result<Vec<BehaviourDevice>> {
    let models: Vec<Arc<PolicyModel>> =
        policies.iter().map(|ck| Ok(Arc::new(PolicyModel::from_checkpoint(ck, &lab.device)?))).collect::<Result<_>>()?;
    if models.is_empty() {
        return Err(super::ExperimentError::Config("no behaviour policy".into()));
    }
    let pool = lab.collect_env.index.pool();
    Ok((0..cfg.devices)
        .map(|i| BehaviourDevice {
            profile: DeviceProfile::draw(seed, i as u64, cfg.noise_sigma, pool, &lab.world.truth, &lab.world.catalog.schema),
            policy: models[i % models.len()].clone(),
            sample: false,
        })
        .collect())
}

/// Sessions collected by a fleet, as uploaded and as the simulator saw them.
#[derive(Clone, Debug, Default)]
pub struct Collected {
    pub sessions: Vec<ExperienceSession>,
    pub transcripts: Vec<Transcript>,
}

/// Every device runs its share of `total` sessions (targets from its household, its noise and its
/// bias, the bias learning as it goes), on the train split. Devices run on two threads; the result
/// does not depend on it.
pub fn collect(lab: &Lab, devices: &mut [BehaviourDevice], total: usize, session_batch: usize, round: u32, seed: u64, progress: &dyn Progress) -> Result<Collected> {
    let m = devices.len().max(1);
    progress.start(&format!("collecting {total} sessions (round {round})"), total as u64);
    let results: Vec<Result<Vec<Transcript>>> = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        let per_thread = devices.len().div_ceil(2).max(1);
        for (chunk_i, chunk) in devices.chunks_mut(per_thread).enumerate() {
            handles.push(scope.spawn(move || -> Vec<Result<Vec<Transcript>>> {
                chunk
                    .iter_mut()
                    .enumerate()
                    .map(|(k, dev)| {
                        let i = chunk_i * per_thread + k;
                        let n = total / m + usize::from(i < total % m);
                        run_device(lab, dev, n, session_batch, round, seed, progress)
                    })
                    .collect()
            }));
        }
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    progress.finish();
    let mut out = Collected::default();
    for r in results {
        for t in r? {
            out.sessions.push(ExperienceSession::from_transcript(&t, round));
            out.transcripts.push(t);
        }
    }
    Ok(out)
}

fn run_device(lab: &Lab, dev: &mut BehaviourDevice, n: usize, session_batch: usize, round: u32, seed: u64, progress: &dyn Progress) -> Result<Vec<Transcript>> {
    let env = &lab.collect_env;
    let sampler = dev.profile.population.sampler(env.index.pool(), &lab.world.truth);
    let mut r = rng::rng(rng::derive(rng::derive(dev.profile.seed, seed), round as u64));
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let k = session_batch.max(1).min(n - out.len());
        let specs: Vec<SessionSpec> = (0..k)
            .map(|_| {
                let target = sampler.sample(&mut r).unwrap_or_else(|| env.sample_target(&mut r));
                SessionSpec { target, seed: rand::Rng::random(&mut r) }
            })
            .collect();
        let acting = Acting { noise_sigma: dev.profile.noise_sigma, bias: dev.profile.bias.values(), sample: dev.sample };
        let ts = rollout(env, &dev.policy.tracker, &dev.policy.policy, &lab.featurizer, dev.policy.heads(), &specs, &acting)?;
        for t in &ts {
            dev.profile.bias.learn(t.turns.iter().map(|x| x.observation.utterance.as_str()), &lab.world.lexicon);
        }
        progress.advance(ts.len() as u64);
        out.extend(ts);
    }
    Ok(out)
}
