//! The learning core behind the round seam: `LearnedTrainer` on a toy world. A round trained
//! again after a restart repeats exactly; the next round continues the learner and evaluates the
//! deployed policy beside the candidate; a raised cancel flag stops training.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use irec_learn::round::{CancelFlag, DeployedPolicy, LearnedTrainer, RoundTrainer, TrainError, TrainJob, TrainerConfig};
use irec_learn::algo::fqe::FqeConfig;
use irec_learn::algo::pretrain::PretrainConfig;
use irec_world::catalog::GeneratorConfig;
use irec_protocol::experience::ExperienceSession;
use irec_world::policy::{evaluate, TrackerPolicy};
use irec_world::sim::{Environment, Pool, World, WorldConfig};
use std::sync::Arc;

fn world() -> WorldConfig {
    WorldConfig { catalog: GeneratorConfig { items: 600, seed: 9 }, ..WorldConfig::default() }
}

fn config(state: &std::path::Path) -> TrainerConfig {
    TrainerConfig {
        state_dir: Some(state.to_path_buf()),
        pretrain: PretrainConfig { sentences: 3_000, heldout_template_sentences: 300, text_epochs: 3, attr_epochs: 6, ..PretrainConfig::default() },
        first_round_steps: 12,
        round_steps: 6,
        log_every: 4,
        fqe: FqeConfig { steps: 8, ..FqeConfig::default() },
        eval_sessions: 12,
        ..TrainerConfig::default()
    }
}

/// Sessions a fleet running the rule-based tracker would upload.
fn sessions(n: usize, seed: u64, round: u32) -> Vec<ExperienceSession> {
    let w = Arc::new(World::build(&world()).unwrap());
    let env = Environment::with_truth(w.clone(), Pool::Train);
    let (lexicon, index) = (Arc::new(w.lexicon.clone()), Arc::new(env.index.clone()));
    evaluate(&env, || TrackerPolicy::new(lexicon.clone(), index.clone()), n, seed, 1).iter().map(|t| ExperienceSession::from_transcript(t, round)).collect()
}

fn job(round: u32, sessions: Vec<ExperienceSession>, new_sessions: usize, deployed: Option<DeployedPolicy>) -> TrainJob {
    TrainJob { round, sessions, new_sessions, deployed, seed: 40 + round as u64, device: "cpu".into(), cancel: CancelFlag::default() }
}

#[test]
fn rounds_repeat_after_a_restart_continue_the_learner_and_can_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let d0 = sessions(40, 1, 0);
    let first = LearnedTrainer::new(config(dir.path()), world(), dir.path());
    let out0 = first.train(job(0, d0.clone(), d0.len(), None)).unwrap();
    assert!(!out0.candidate.is_empty());
    assert_eq!(out0.deployed_estimate, None);
    // Nothing deployed: the gate publishes whatever the estimate says, so none is fitted.
    assert_eq!(out0.candidate_estimate, None);
    assert!(out0.metrics.candidate.is_some_and(|c| c.fqe.is_none()));
    let m = &out0.metrics;
    assert_eq!(m.steps, 12);
    assert_eq!(m.continued_from_round, None);
    let sr30 = m.candidate.unwrap().metrics.sr30;
    assert!((0.0..=1.0).contains(&sr30), "{m:?}");
    assert!(dir.path().join("perception.ckpt").is_file() && dir.path().join("learner-r000000.ckpt").is_file());
    // The round's curves, as d3rlpy writes its own: params.json and one headerless CSV per loss.
    let curves = first.curves_dir(0);
    assert!(curves.join("params.json").is_file());
    let critic = std::fs::read_to_string(curves.join("critic.csv")).unwrap_or_else(|e| panic!("{}: {e}", curves.display()));
    assert!(critic.lines().all(|l| l.split(',').count() == 3), "{critic}");

    // A restarted server trains the same round again: the same candidate, byte for byte (asked,
    // this time, to estimate it even with nothing deployed).
    let mut asked = config(dir.path());
    asked.fqe.when_nothing_deployed = true;
    let restarted = LearnedTrainer::new(asked, world(), dir.path());
    let again = restarted.train(job(0, d0.clone(), d0.len(), None)).unwrap();
    assert_eq!(again.candidate, out0.candidate, "retraining round 0 after a restart must repeat it");
    assert!(again.candidate_estimate.is_some_and(f64::is_finite));

    // Round 1 continues round 0's learner on D ∪ D′ and evaluates the deployed policy too.
    let mut d1 = d0.clone();
    d1.extend(sessions(20, 2, 1));
    let deployed = DeployedPolicy { version: 1, blob: out0.candidate.clone() };
    let out1 = restarted.train(job(1, d1.clone(), 20, Some(deployed.clone()))).unwrap();
    assert_eq!(out1.metrics.continued_from_round, Some(0));
    assert_eq!(out1.metrics.steps, 6);
    assert_eq!(out1.metrics.sessions_in_d, 60);
    assert!(out1.deployed_estimate.is_some_and(f64::is_finite));
    assert!(out1.candidate_estimate.is_some_and(f64::is_finite));
    assert!(out1.metrics.deployed.is_some_and(|d| d.metrics.sr30.is_finite()));
    assert_ne!(out1.candidate, out0.candidate);

    // A raised cancel flag stops the round.
    let cancelled = job(2, d1, 0, Some(deployed));
    cancelled.cancel.cancel();
    assert_eq!(restarted.train(cancelled).err(), Some(TrainError::Cancelled));

    // Garbage as the deployed blob is not evaluated (the gate then publishes); training goes on.
    let bad = DeployedPolicy { version: 9, blob: b"not a checkpoint".to_vec() };
    let out = restarted.train(job(3, d0.clone(), 0, Some(bad))).unwrap();
    assert_eq!(out.deployed_estimate, None);
}
