//! The independent halves of a training step, side by side.
//!
//! At the recommender's sizes each product runs on one thread (`irec_model::dense`), so a second
//! core helps only if two pieces of work run at once. A step has such pieces: the online and the
//! target tracker's unrolls, the critic's backup target and its forward pass, the critic's and the
//! actor's backward passes (the actor sees detached states, so the two graphs share no
//! parameters). Each piece computes exactly what it computes alone, so the step's numbers are the
//! same at any thread count. It pays only with candle's elementwise pool kept inline
//! ([`crate::host::keep_candle_elementwise_inline`], which fleet-sim and irec-server call first):
//! otherwise both halves queue on that pool and the step is slower than on one thread.

use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Tensor, Var};
use std::sync::atomic::{AtomicBool, Ordering};

/// `(a(), b())`, on two threads when candle has more than one on the CPU; in order otherwise.
pub fn side_by_side<A: Send, B: Send>(device: &Device, a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B) {
    pair(two_threads(device), a, b)
}

fn two_threads(device: &Device) -> bool {
    matches!(device, Device::Cpu) && candle_core::utils::get_num_threads() > 1
}

fn pair<A: Send, B: Send>(parallel: bool, a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B) {
    if parallel {
        rayon::join(a, b)
    } else {
        let x = a();
        (x, b())
    }
}

/// Runs `f` — a training loop — on a worker of rayon's pool while the pool's other workers spin
/// for work instead of sleeping between the step's joins.
///
/// A sleeping worker takes its time to start the second half of a join: on this project's 2-vCPU
/// virtual machine, 0.1–3 ms after the join began (measured inside `bench-train --mode gru`),
/// against a step of ~13 ms with about a dozen joins and split products. Spinning, it starts in a
/// few µs. PyTorch's OpenMP workers do the same between parallel regions (they spin-wait before
/// they sleep), which is why its step keeps two cores busy. The spinning workers run each job
/// they find through `rayon::yield_now`, so nothing queued behind them waits; they stop when `f`
/// returns. With one thread, or off the CPU, `f` runs as it is.
pub fn awake<R: Send>(device: &Device, f: impl FnOnce() -> R + Send) -> R {
    awake_if(two_threads(device), f)
}

fn awake_if<R: Send>(spin: bool, f: impl FnOnce() -> R + Send) -> R {
    if !spin {
        return f();
    }
    let on = AtomicBool::new(true);
    let on = &on;
    rayon::scope(move |scope| {
        for _ in 1..rayon::current_num_threads() {
            scope.spawn(move |_| {
                while on.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        let out = f();
        on.store(false, Ordering::Release);
        out
    })
}

/// The gradients of `a + b` for `vars`, with the two backward passes side by side. A variable both
/// losses reach gets the sum of its two gradients.
pub fn backward_apart<'v>(a: &Tensor, b: &Tensor, vars: impl IntoIterator<Item = &'v Var>) -> Result<GradStore> {
    apart(two_threads(a.device()), a, b, vars)
}

fn apart<'v>(parallel: bool, a: &Tensor, b: &Tensor, vars: impl IntoIterator<Item = &'v Var>) -> Result<GradStore> {
    let (ga, gb) = pair(parallel, || a.backward(), || b.backward());
    let (mut ga, mut gb) = (ga?, gb?);
    for v in vars {
        if let Some(g) = gb.remove(v.as_tensor()) {
            let sum = match ga.remove(v.as_tensor()) {
                Some(x) => (x + g)?,
                None => g,
            };
            ga.insert(v.as_tensor(), sum);
        }
    }
    Ok(ga)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awake_runs_the_loop_and_its_joins_then_lets_the_workers_go() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let sum = |n: u64| (0..n).map(|i| i * i).sum::<u64>();
        let out = pool.install(|| {
            awake_if(true, || {
                // Joins and nested loops inside the loop, as a training step has them.
                let steps: Vec<(u64, u64)> = (0..50).map(|k| pair(true, || sum(k), || sum(k + 1))).collect();
                let inner = awake_if(true, || pair(true, || sum(7), || sum(8)));
                (steps, inner)
            })
        });
        assert_eq!(out.0, (0..50).map(|k| (sum(k), sum(k + 1))).collect::<Vec<_>>());
        assert_eq!(out.1, (sum(7), sum(8)));
        // The spinning workers have stopped: the pool still takes ordinary work.
        assert_eq!(pool.install(|| pair(true, || 1, || 2)), (1, 2));
    }

    #[test]
    fn apart_gives_the_gradients_of_the_sum() {
        let dev = Device::Cpu;
        let (x, y) = (Var::new(&[1f32, -2.0, 3.0], &dev).unwrap(), Var::new(&[0.5f32, 4.0], &dev).unwrap());
        // a reaches x only, b reaches both: x's gradient is the sum of two parts.
        let a = x.as_tensor().sqr().unwrap().sum_all().unwrap();
        let b = ((x.as_tensor() * 3.0).unwrap().sum_all().unwrap() + y.as_tensor().sqr().unwrap().sum_all().unwrap()).unwrap();
        let joint = (&a + &b).unwrap().backward().unwrap();
        for parallel in [false, true] {
            let grads = apart(parallel, &a, &b, [&x, &y]).unwrap();
            for v in [&x, &y] {
                let want = joint.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(grads.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), want);
            }
            assert_eq!(grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), vec![5.0, -1.0, 9.0]);
        }
    }
}
