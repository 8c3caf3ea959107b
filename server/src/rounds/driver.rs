//! The round driver: one task that trains closed rounds in order, on a dedicated thread each, and
//! publishes or refuses the candidates.

use super::gate::{decide, Decision, GateRule};
use super::record::{RoundRecord, RoundStatus};
use irec_learn::round::{CancelFlag, DeployedPolicy, RoundTrainer, TrainError, TrainJob, TrainOutcome};
use crate::serve::Shared;
use crate::store::StoreError;
use irec_world::rng;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

/// Settings the driver needs.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    pub gate_tolerance: f64,
    /// Standard errors beyond the tolerance before the gate refuses (`gate_confidence_z`).
    pub gate_confidence_z: f64,
    pub seed: u64,
    pub device: String,
}

/// Trains rounds until `stop` is raised.
pub async fn run(
    shared: Arc<Shared>,
    trainer: Arc<dyn RoundTrainer>,
    config: DriverConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    loop {
        let store = shared.store.clone();
        let next = irec_store::blocking(move || store.unfinished_rounds()).await?.into_iter().next();
        match next {
            Some(rec) => {
                if !train_round(&shared, &trainer, &config, rec, &mut stop).await? {
                    return Ok(());
                }
            }
            None => {
                tokio::select! {
                    _ = shared.round_wake.notified() => {}
                    _ = stop.changed() => return Ok(()),
                }
            }
        }
    }
}

/// Trains one round; `Ok(false)` when the server is stopping (the round stays unfinished).
async fn train_round(
    shared: &Arc<Shared>,
    trainer: &Arc<dyn RoundTrainer>,
    config: &DriverConfig,
    rec: RoundRecord,
    stop: &mut watch::Receiver<bool>,
) -> Result<bool, StoreError> {
    let round = rec.round;
    let store = shared.store.clone();
    let (sessions, new_sessions, mut rec, deployed) = irec_store::blocking(move || -> Result<_, StoreError> {
        let (sessions, new) = store.sessions_through(round)?;
        let rec = store.start_training(round, sessions.len() as u64)?;
        let deployed = store.deployed()?.map(|p| DeployedPolicy { version: p.version, blob: p.blob });
        Ok((sessions, new, rec, deployed))
    })
    .await?;
    shared.store.flush().await?;
    shared.publish_status().await;
    info!(round, sessions = sessions.len(), new_sessions, attempt = rec.attempts, "training round");

    let cancel = CancelFlag::default();
    let job = TrainJob {
        round,
        sessions,
        new_sessions,
        deployed,
        seed: rng::derive(rng::derive(config.seed, rng::stream::TRAINING), round as u64),
        device: config.device.clone(),
        cancel: cancel.clone(),
    };
    let started = Instant::now();
    let result = tokio::select! {
        r = run_on_thread(trainer.clone(), job) => r,
        _ = stop.changed() => {
            // The thread is left to notice the flag; its result has nowhere to go, and the
            // round is still `training`, so the next start trains it again.
            cancel.cancel();
            return Ok(false);
        }
    };
    rec.train_ms = Some(started.elapsed().as_millis() as u64);
    rec.decided_ms = Some(super::deadline::now_ms());
    let result = result.and_then(|out| shippable(&out, shared.limits.policy_bytes as usize).map(|()| out));
    match result {
        Ok(out) => finish(shared, config, rec, out).await?,
        Err(e) => {
            warn!(round, "{e}");
            rec.status = RoundStatus::Failed;
            rec.error = Some(e.to_string());
            shared.store.put_round(&rec)?;
            shared.store.flush().await?;
        }
    }
    shared.publish_status().await;
    shared.write_status_file();
    Ok(true)
}

/// Runs the trainer on its own OS thread: training may take minutes, and a thread (unlike the
/// blocking pool) does not hold up runtime shutdown when the server stops mid-training.
async fn run_on_thread(trainer: Arc<dyn RoundTrainer>, job: TrainJob) -> Result<TrainOutcome, TrainError> {
    let (tx, rx) = oneshot::channel();
    let round = job.round;
    let spawned = std::thread::Builder::new().name(format!("irec-train-r{round}")).spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| trainer.train(job)));
        let _ = tx.send(r);
    });
    if let Err(e) = spawned {
        return Err(TrainError::Failed(format!("cannot start the training thread: {e}")));
    }
    match rx.await {
        Ok(Ok(r)) => r,
        Ok(Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(TrainError::Failed(format!("trainer panicked: {what}")))
        }
        Err(_) => Err(TrainError::Failed("training thread vanished".to_string())),
    }
}

/// A candidate agents can receive: not empty, and its `PolicyBlob` frame within the policy cap.
fn shippable(out: &TrainOutcome, policy_cap: usize) -> Result<(), TrainError> {
    // Version, round, hash and length prefix take well under 1 KiB of the frame body.
    const HEADER: usize = 1024;
    if out.candidate.is_empty() {
        return Err(TrainError::Failed("the trainer returned an empty candidate".to_string()));
    }
    if out.candidate.len() + HEADER > policy_cap {
        return Err(TrainError::Failed(format!(
            "candidate of {} bytes does not fit the policy frame cap of {policy_cap} bytes",
            out.candidate.len()
        )));
    }
    Ok(())
}

async fn finish(shared: &Arc<Shared>, config: &DriverConfig, mut rec: RoundRecord, out: TrainOutcome) -> Result<(), StoreError> {
    let round = rec.round;
    let deployed_estimate = if rec.deployed_version.is_some() { out.deployed_estimate } else { None };
    let rule = GateRule { tolerance: config.gate_tolerance, z: config.gate_confidence_z };
    let verdict = decide(out.candidate_estimate, deployed_estimate, out.estimate_se, rule);
    info!(round, decision = ?verdict.decision, reason = %verdict.reason, "gate");
    rec.candidate_estimate = out.candidate_estimate;
    rec.deployed_estimate = deployed_estimate;
    rec.estimate_se = deployed_estimate.map(|_| out.estimate_se);
    rec.metrics = Some(out.metrics);
    rec.error = None;
    let decision = verdict.decision;
    rec.gate = Some(verdict);
    match decision {
        Decision::Published => {
            rec.status = RoundStatus::Published;
            let store = shared.store.clone();
            let published = irec_store::blocking(move || store.publish(&out.candidate, round + 1, Some(round), Some(&rec))).await?;
            // Durable before anyone hears of it: an agent must never be told of a version that a
            // crash could take back.
            shared.store.flush().await?;
            info!(round, version = published.version, "published");
            shared.announce(published.announcement());
        }
        Decision::Refused => {
            rec.status = RoundStatus::Refused;
            let store = shared.store.clone();
            let deployed = irec_store::blocking(move || store.refuse(&rec, round + 1)).await?;
            shared.store.flush().await?;
            if let Some(d) = deployed {
                // Same version and bytes, next round: agents keep collecting with it.
                shared.announce(d.announcement());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(bytes: usize) -> TrainOutcome {
        TrainOutcome { candidate: vec![7; bytes], metrics: Default::default(), candidate_estimate: Some(1.0), deployed_estimate: None, estimate_se: 0.0 }
    }

    #[test]
    fn candidates_agents_could_not_receive_fail_the_round() {
        assert!(shippable(&outcome(10), 1 << 20).is_ok());
        assert!(matches!(shippable(&outcome(0), 1 << 20), Err(TrainError::Failed(_))));
        let Err(TrainError::Failed(why)) = shippable(&outcome(1 << 20), 1 << 20) else { panic!("too big must fail") };
        assert!(why.contains("policy frame cap"));
    }
}
