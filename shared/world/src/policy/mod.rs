//! Recommendation policies and the loop that runs them against simulated users.
//!
//! A [`Policy`] perceives only what a device would: the items it showed and the user's words. The
//! session-start hint carries the user's wishes for the oracle baseline alone; every other policy
//! ignores it.

pub mod baselines;
pub mod personalization;

pub use baselines::{OraclePolicy, RandomPolicy, TrackerPolicy};
pub use personalization::{DeviceProfile, LogitBias, TargetPopulation, TargetSampler};

use crate::catalog::Action;
use crate::metrics::Metrics;
use crate::rng::Rng;
use crate::sim::{Desires, Environment, Observation, SessionSpec, Transcript};

/// What a policy is told when a session starts (only the oracle may read `desires`).
#[derive(Clone, Copy, Debug)]
pub struct SessionHint {
    pub desires: Desires,
}

/// A recommender that chooses a multi-discrete action each turn.
pub trait Policy {
    /// A new session begins.
    fn begin(&mut self, hint: &SessionHint);
    /// The item shown last turn and what the user said about it.
    fn observe(&mut self, observation: &Observation);
    /// The next action.
    fn act(&mut self, rng: &mut Rng) -> Action;
}

/// Runs evaluation session `i` of `seed` (target drawn from the pool) to its end.
pub fn run_session(env: &Environment, policy: &mut dyn Policy, seed: u64, i: u64) -> Transcript {
    run_spec(env, &SessionSpec::numbered(env, seed, i), policy)
}

/// The session loop: runs the session `spec` names with `policy` to its end. Evaluation, the
/// devices and the replays that check a fleet all run their sessions through here.
pub fn run_spec(env: &Environment, spec: &SessionSpec, policy: &mut dyn Policy) -> Transcript {
    let mut episode = env.start(spec);
    let mut rng = spec.acting_rng();
    policy.begin(&SessionHint { desires: episode.user.desires });
    while !episode.is_done() {
        let action = policy.act(&mut rng);
        match episode.step(action) {
            Some(turn) => {
                let obs = turn.observation.clone();
                policy.observe(&obs);
            }
            None => break,
        }
    }
    episode.into_transcript()
}

/// Runs sessions `0..sessions` of `seed`, spread over `threads` threads; the transcripts do not
/// depend on the thread count.
pub fn evaluate<P, F>(env: &Environment, make_policy: F, sessions: usize, seed: u64, threads: usize) -> Vec<Transcript>
where
    P: Policy,
    F: Fn() -> P + Sync,
{
    let threads = threads.clamp(1, sessions.max(1));
    let chunk = sessions.div_ceil(threads);
    let mut out: Vec<Transcript> = Vec::with_capacity(sessions);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let make = &make_policy;
                scope.spawn(move || {
                    let mut policy = make();
                    (t * chunk..((t + 1) * chunk).min(sessions))
                        .map(|i| run_session(env, &mut policy, seed, i as u64))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            // A panicking worker is a bug; surface it rather than returning partial results.
            match h.join() {
                Ok(ts) => out.extend(ts),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
    });
    out
}

/// Evaluates and summarises in one go.
pub fn evaluate_metrics<P, F>(env: &Environment, make_policy: F, sessions: usize, seed: u64, threads: usize) -> Metrics
where
    P: Policy,
    F: Fn() -> P + Sync,
{
    let ts = evaluate(env, make_policy, sessions, seed, threads);
    Metrics::of_transcripts(&ts, env.reward.max_turns as u32)
}
