//! The training-step benchmark: one CQL(H) + discrete SAC gradient step with the shapes of the
//! PyTorch reference workload (`torch_branching_cql.py`, see docs/benchmarks.md), through the same
//! loss code the recommender trains with ([`crate::algo::sac::SacNets`]).
//!
//! - `flat`: i.i.d. transitions from a synthetic 500k-transition buffer, state 160 → Linear 128 →
//!   ReLU → 6 heads [4, 21, 7, 19, 5, 20], batch 256, one critic, policy of the same shape.
//! - `gru`: a GRU 96 → 128 unrolled over 64 sessions × 14 turns (896 transitions per step); the
//!   state at each turn is [h_t ; 32 context features]; the critic loss backpropagates through the
//!   GRU; targets use a soft-updated target GRU and critic; the last turn of a session is terminal.

use crate::algo::concurrent::{awake, backward_apart, side_by_side};
use crate::algo::sac::{Rows, SacNets};
use crate::algo::{Adam, OptimConfig};
use irec_model::heads::{HeadsConfig, MultiHead};
use irec_model::params::ParamStore;
use irec_model::tracker::{StateTracker, TrackerConfig};
use irec_world::rng;
use candle_core::{Device, Result, Tensor, D};
use rand::Rng as _;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};
use std::time::Instant;

pub const HEADS: [usize; 6] = [4, 21, 7, 19, 5, 20];
const STATE: usize = 160;
const GRU_IN: usize = 96;
const GRU_HID: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchMode {
    Flat,
    Gru,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchConfig {
    pub mode: BenchMode,
    pub steps: usize,
    pub warmup: usize,
    pub transitions: usize,
    pub batch_size: usize,
    pub sessions: usize,
    pub seq_len: usize,
    pub alpha: f64,
    pub temperature: f64,
    pub tau: f64,
    pub seed: u64,
    /// Keep the pool's other workers spinning through the timed loop, as training does
    /// ([`crate::algo::concurrent::awake`]); `false` lets them sleep between joins.
    pub spinning_workers: bool,
}

impl BenchConfig {
    pub fn new(mode: BenchMode, steps: usize) -> BenchConfig {
        BenchConfig { mode, steps, warmup: 20, transitions: 500_000, batch_size: 256, sessions: 64, seq_len: 14, alpha: 1.0, temperature: 0.1, tau: 0.005, seed: 0, spinning_workers: true }
    }
}

/// Milliseconds per step spent in each phase.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Phases {
    pub sample_ms: f64,
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub optimizer_ms: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchResult {
    pub mode: BenchMode,
    pub steps: usize,
    pub threads: usize,
    pub spinning_workers: bool,
    pub total_s: f64,
    pub steps_per_s: f64,
    pub ms_per_step: f64,
    pub transitions_per_s: f64,
    pub sessions_per_s: Option<f64>,
    pub phases: Phases,
    /// Share of the machine's CPU used by other processes during the timed loop (discard runs
    /// above ~0.02).
    pub other_procs_cpu_frac: Option<f64>,
    pub own_cpu_util: Option<f64>,
    pub last: [f32; 4],
}

/// Machine-wide busy CPU seconds and this process's CPU seconds, from /proc (Linux only).
fn cpu_times() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<f64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let busy = (v.iter().take(8).sum::<f64>() - v.get(3)? - v.get(4)?) / 100.0;
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    let f: Vec<&str> = own.rsplit(')').next()?.split_whitespace().collect();
    let own = (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0;
    Some((busy, own))
}

fn randn(n: usize, r: &mut rng::Rng) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(r)).collect()
}

fn onehot(actions: &[[u8; 6]]) -> Vec<f32> {
    let w: usize = HEADS.iter().sum();
    let mut out = vec![0f32; actions.len() * w];
    for (i, a) in actions.iter().enumerate() {
        let mut off = 0;
        for (d, n) in HEADS.iter().enumerate() {
            out[i * w + off + a[d] as usize] = 1.0;
            off += n;
        }
    }
    out
}

fn random_actions(n: usize, r: &mut rng::Rng) -> Vec<[u8; 6]> {
    (0..n).map(|_| std::array::from_fn(|d| r.random_range(0..HEADS[d]) as u8)).collect()
}

/// Runs the benchmark on `device`.
pub fn run(cfg: &BenchConfig, device: &Device) -> Result<BenchResult> {
    if cfg.spinning_workers {
        awake(device, || run_steps(cfg, device))
    } else {
        run_steps(cfg, device)
    }
}

fn run_steps(cfg: &BenchConfig, device: &Device) -> Result<BenchResult> {
    let mut r = rng::rng(cfg.seed);
    let store = ParamStore::new(cfg.seed, device);
    let vb = store.builder();
    let qcfg = HeadsConfig { input: STATE, hidden: vec![128], heads: HEADS.to_vec(), copy: None, zero_output: false };
    let q = MultiHead::new(&qcfg, vb.pp("q"))?;
    let tq = MultiHead::new(&qcfg, vb.pp("target").pp("q"))?;
    let policy = MultiHead::new(&qcfg, vb.pp("policy"))?;
    let tcfg = TrackerConfig { input: GRU_IN, hidden: GRU_HID, memory: None };
    let gru = StateTracker::new(&tcfg, vb.pp("gru"))?;
    let tgru = StateTracker::new(&tcfg, vb.pp("target").pp("gru"))?;
    store.soft_update("q.", "target.q.", 1.0)?;
    store.soft_update("gru.", "target.gru.", 1.0)?;
    let optim = OptimConfig { lr: 5e-4, max_grad_norm: 0.0, ..OptimConfig::default() };
    let mut critic_vars = store.vars("q.");
    if cfg.mode == BenchMode::Gru {
        critic_vars.extend(store.vars("gru."));
    }
    let mut q_opt = Adam::new(critic_vars, &optim)?;
    let mut pi_opt = Adam::new(store.vars("policy."), &optim)?;
    let nets = SacNets {
        q1: &q,
        q2: None,
        target_q1: &tq,
        target_q2: None,
        policy: &policy,
        heads: &HEADS,
        temperature: cfg.temperature,
        gamma: 0.99,
        reward_scale: 1.0,
        cql_alpha: Some(cfg.alpha),
        actor: crate::algo::sac::ActorLoss::ReverseKl,
        backup: crate::algo::sac::CriticBackup::Joint,
        entropy_in_backup: true,
        tracker_bc: 0.0,
        td_lambda: 0.0,
    };

    // Synthetic data, as the reference builds it.
    let (n_rows, row_w) = match cfg.mode {
        BenchMode::Flat => (cfg.transitions, STATE),
        BenchMode::Gru => ((cfg.transitions / cfg.seq_len).max(cfg.sessions) * cfg.seq_len, GRU_IN + STATE - GRU_HID),
    };
    let data = randn(n_rows * row_w, &mut r);
    let actions = random_actions(n_rows, &mut r);
    let rewards: Vec<f32> = (0..n_rows).map(|_| r.random::<f32>()).collect();
    let mut done = vec![0f32; n_rows];
    match cfg.mode {
        BenchMode::Flat => {
            let mut t = 0;
            while t < n_rows {
                t = (t + r.random_range(10..19)).min(n_rows);
                done[t - 1] = 1.0;
            }
        }
        BenchMode::Gru => (0..n_rows / cfg.seq_len).for_each(|s| done[(s + 1) * cfg.seq_len - 1] = 1.0),
    }
    let mut phases = Phases::default();
    let mut last = [0f32; 4];
    let total_steps = cfg.warmup + cfg.steps;
    let mut t0 = Instant::now();
    let mut cpu0 = cpu_times();
    for step in 0..total_steps {
        if step == cfg.warmup {
            phases = Phases::default();
            t0 = Instant::now();
            cpu0 = cpu_times();
        }
        let ts = Instant::now();
        // Where assembling the batch ends and the networks begin (the gru arm unrolls the GRUs
        // inside the match; that is forward work, not sampling).
        let mut assembled = None;
        let (s, s_next, s_next_t, rows_n, oh, rw, nd) = match cfg.mode {
            BenchMode::Flat => {
                let b = cfg.batch_size;
                let idx: Vec<usize> = (0..b).map(|_| r.random_range(0..n_rows)).collect();
                let mut x = Vec::with_capacity(b * STATE);
                let mut xn = Vec::with_capacity(b * STATE);
                for &i in &idx {
                    let j = (i + 1).min(n_rows - 1);
                    x.extend_from_slice(&data[i * STATE..(i + 1) * STATE]);
                    xn.extend_from_slice(&data[j * STATE..(j + 1) * STATE]);
                }
                let acts: Vec<[u8; 6]> = idx.iter().map(|i| actions[*i]).collect();
                let s = Tensor::from_vec(x, (b, STATE), device)?;
                let sn = Tensor::from_vec(xn, (b, STATE), device)?;
                let rw: Vec<f32> = idx.iter().map(|i| rewards[*i]).collect();
                let nd: Vec<f32> = idx.iter().map(|i| 1.0 - done[*i]).collect();
                (s, sn.clone(), sn, b, onehot(&acts), rw, nd)
            }
            BenchMode::Gru => {
                let (sb, l) = (cfg.sessions, cfg.seq_len);
                let n_sessions = n_rows / l;
                let picks: Vec<usize> = (0..sb).map(|_| r.random_range(0..n_sessions)).collect();
                // Time-major: row t·B + b.
                let mut ev = Vec::with_capacity(l * sb * GRU_IN);
                let mut ctx = Vec::with_capacity(l * sb * (STATE - GRU_HID));
                let (mut acts, mut rw, mut nd) = (Vec::new(), Vec::new(), Vec::new());
                for t in 0..l {
                    for &p in &picks {
                        let row = p * l + t;
                        ev.extend_from_slice(&data[row * row_w..row * row_w + GRU_IN]);
                        ctx.extend_from_slice(&data[row * row_w + GRU_IN..(row + 1) * row_w]);
                        acts.push(actions[row]);
                        rw.push(rewards[row]);
                        nd.push(1.0 - done[row]);
                    }
                }
                let ev = Tensor::from_vec(ev, (l, sb, GRU_IN), device)?;
                let ctx = Tensor::from_vec(ctx, (l * sb, STATE - GRU_HID), device)?;
                let zeros = Tensor::zeros((sb, STATE - GRU_HID), candle_core::DType::F32, device)?;
                let ctx_next = Tensor::cat(&[ctx.narrow(0, sb, (l - 1) * sb)?, zeros], 0)?;
                assembled = Some(Instant::now());
                let (h, ht) = side_by_side(device, || gru.unroll(&ev), || tgru.unroll(&ev)); // (L+1, B, H)
                let (h, ht) = (h?, ht?.detach());
                let s = Tensor::cat(&[h.narrow(0, 1, l)?.reshape((l * sb, GRU_HID))?, ctx.clone()], D::Minus1)?;
                let hn = |x: &Tensor| -> Result<Tensor> {
                    let next = Tensor::cat(&[x.narrow(0, 2, l - 1)?, x.narrow(0, 0, 1)?.zeros_like()?], 0)?;
                    Tensor::cat(&[next.reshape((l * sb, GRU_HID))?, ctx_next.clone()], D::Minus1)
                };
                let s_next_t = hn(&ht)?;
                let s_next = hn(&h.detach())?;
                (s, s_next, s_next_t, l * sb, onehot(&acts), rw, nd)
            }
        };
        let oh = Tensor::from_vec(oh, (rows_n, HEADS.iter().sum::<usize>()), device)?;
        let rw = Tensor::from_vec(rw, rows_n, device)?;
        let nd = Tensor::from_vec(nd, rows_n, device)?;
        let mask = Tensor::ones(rows_n, candle_core::DType::F32, device)?;
        let rows = Rows { onehot: &oh, rewards: &rw, not_done: &nd, mask: &mask, sessions: 0 };
        let tf = Instant::now();
        let (critic, pol, losses) = nets.losses(&s, &s_next, &s_next_t, &rows)?;
        let tb = Instant::now();
        let mut grads = backward_apart(&critic, &pol, q_opt.vars().chain(pi_opt.vars()))?;
        let to = Instant::now();
        q_opt.step(&mut grads)?;
        pi_opt.step(&mut grads)?;
        store.soft_update("q.", "target.q.", cfg.tau)?;
        if cfg.mode == BenchMode::Gru {
            store.soft_update("gru.", "target.gru.", cfg.tau)?;
        }
        let te = Instant::now();
        let ta = assembled.unwrap_or(tf);
        phases.sample_ms += (ta - ts).as_secs_f64() * 1e3;
        phases.forward_ms += (tb - ta).as_secs_f64() * 1e3;
        phases.backward_ms += (to - tb).as_secs_f64() * 1e3;
        phases.optimizer_ms += (te - to).as_secs_f64() * 1e3;
        last = [losses.critic, losses.policy, losses.td, losses.cql];
    }
    let total = t0.elapsed().as_secs_f64();
    let n = cfg.steps.max(1) as f64;
    phases.sample_ms /= n;
    phases.forward_ms /= n;
    phases.backward_ms /= n;
    phases.optimizer_ms /= n;
    let (other, own) = match (cpu0, cpu_times()) {
        (Some((b0, o0)), Some((b1, o1))) => {
            let cpus = std::thread::available_parallelism().map_or(1, |x| x.get()) as f64;
            (Some((((b1 - b0) - (o1 - o0)).max(0.0) / (total * cpus) * 1000.0).round() / 1000.0), Some(((o1 - o0) / total * 100.0).round() / 100.0))
        }
        _ => (None, None),
    };
    let rows_per_step = match cfg.mode {
        BenchMode::Flat => cfg.batch_size,
        BenchMode::Gru => cfg.sessions * cfg.seq_len,
    } as f64;
    Ok(BenchResult {
        mode: cfg.mode,
        steps: cfg.steps,
        threads: candle_core::utils::get_num_threads(),
        spinning_workers: cfg.spinning_workers,
        total_s: total,
        steps_per_s: n / total,
        ms_per_step: total * 1e3 / n,
        transitions_per_s: rows_per_step * n / total,
        sessions_per_s: (cfg.mode == BenchMode::Gru).then(|| cfg.sessions as f64 * n / total),
        phases,
        other_procs_cpu_frac: other,
        own_cpu_util: own,
        last,
    })
}
