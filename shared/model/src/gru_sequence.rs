//! A whole GRU unroll as one custom op, forward and backward (BPTT), for the CPU.
//!
//! Composed of per-step tensor ops, an unroll over T turns costs ~6 graph nodes per turn, each
//! with its allocation and dispatch, and slicing a hoisted input projection per turn makes the
//! backward pass quadratic in T (candle materialises a slice's gradient at full size). Here the
//! input projection of all turns stays one matmul outside (its gradient comes back whole), and the
//! recurrence — h·W_hhᵀ with `gemm`, then the fused cell — runs in one loop each way.

use super::dense::{matmul, matmul_split, View};
use super::kernels::{cell_backward, cell_forward, host_view, slice, CellBackward};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// gh = h·W_hhᵀ + b_hh for one step.
fn hidden_projection(h: &[f32], w: &[f32], bias: &[f32], batch: usize, hidden: usize, out: &mut [f32]) -> Result<()> {
    let three = 3 * hidden;
    for row in out.chunks_exact_mut(three).take(batch) {
        row.copy_from_slice(bias);
    }
    matmul(out, View::row_major(h, batch, hidden), View::row_major(w, three, hidden).t(), true)
}

/// One unroll. It keeps the forward pass's hidden projections (h·W_hhᵀ + b_hh of every turn) for
/// its backward pass, which used to recompute them: a third of the unroll's products.
#[derive(Default)]
pub(crate) struct GruSequence {
    projections: std::sync::Mutex<Vec<f32>>,
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("gru-sequence: a poisoned lock".into())
}

impl CustomOp3 for GruSequence {
    fn name(&self) -> &'static str {
        "irec-gru-sequence"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (gi, w, bias) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let (t, b, three) = l1.shape().dims3()?;
        let hidden = three / 3;
        let mut states = vec![0f32; (t + 1) * b * hidden];
        let mut projections = vec![0f32; t * b * three];
        for step in 0..t {
            let (done, rest) = states.split_at_mut((step + 1) * b * hidden);
            let h_prev = &done[step * b * hidden..];
            let gh = &mut projections[step * b * three..(step + 1) * b * three];
            hidden_projection(h_prev, w, bias, b, hidden, gh)?;
            let gi_t = &gi[step * b * three..(step + 1) * b * three];
            cell_forward(gi_t, gh, h_prev, hidden, &mut rest[..b * hidden]);
        }
        *self.projections.lock().map_err(|_| poisoned())? = projections;
        Ok((CpuStorage::F32(states), Shape::from((t + 1, b, hidden))))
    }

    fn bwd(&self, gi: &Tensor, w: &Tensor, bias: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (t, b, three) = gi.dims3()?;
        let hidden = three / 3;
        let guards = [gi.storage_and_layout(), w.storage_and_layout(), res.storage_and_layout(), grad.storage_and_layout()];
        let gi_v = host_view(gi, &guards[0].0, guards[0].1)?;
        let w_v = host_view(w, &guards[1].0, guards[1].1)?;
        let states = host_view(res, &guards[2].0, guards[2].1)?;
        let g = host_view(grad, &guards[3].0, guards[3].1)?;
        let bh = b * hidden;
        let mut d_gi = vec![0f32; gi_v.len()];
        // Every turn's gradient of its hidden projection, kept so that W_hh's gradient is one
        // product over all turns after the recurrence (K = T·B) instead of T thin ones (K = B).
        let mut d_gh = vec![0f32; t * b * three];
        let mut dh = g[t * bh..(t + 1) * bh].to_vec();
        let kept = self.projections.lock().map_err(|_| poisoned())?;
        if kept.len() != t * b * three {
            candle_core::bail!("gru-sequence: backward without its forward pass's projections");
        }
        let mut dh_prev = vec![0f32; bh];
        for step in (0..t).rev() {
            let turn = step * b * three..(step + 1) * b * three;
            let cell = CellBackward {
                gi: &gi_v[turn.clone()],
                gh: &kept[turn.clone()],
                h_prev: &states[step * bh..(step + 1) * bh],
                dh: &dh,
                g_prev: &g[step * bh..(step + 1) * bh],
                hidden,
            };
            cell_backward(cell, &mut d_gi[turn.clone()], &mut d_gh[turn.clone()], &mut dh_prev);
            // dh_prev += d_gh · W_hh
            matmul(&mut dh_prev, View::row_major(&d_gh[turn], b, three), View::row_major(&w_v, three, hidden), true)?;
            std::mem::swap(&mut dh, &mut dh_prev);
        }
        // dW_hh = Σ_t d_ghₜᵀ · h_{t−1}; the states of turns 0..T−1 are the first T·B rows.
        let mut d_w = vec![0f32; w_v.len()];
        matmul_split(&mut d_w, View::row_major(&d_gh, t * b, three).t(), View::row_major(&states[..t * bh], t * b, hidden), false)?;
        let mut d_b = vec![0f32; three];
        for row in d_gh.chunks_exact(three) {
            d_b.iter_mut().zip(row).for_each(|(a, x)| *a += x);
        }
        let dev = gi.device();
        Ok((
            Some(Tensor::from_vec(d_gi, gi.shape(), dev)?),
            Some(Tensor::from_vec(d_w, w.shape(), dev)?),
            Some(Tensor::from_vec(d_b, bias.shape(), dev)?),
        ))
    }
}

/// All states of a GRU over `gi` (T, B, 3H) = x·W_ihᵀ + b_ih: (T + 1, B, H), row 0 the zero state.
pub fn gru_sequence(gi: &Tensor, w_hh: &Tensor, b_hh: &Tensor) -> Result<Tensor> {
    gi.contiguous()?.apply_op3_arc(&w_hh.contiguous()?, &b_hh.contiguous()?, std::sync::Arc::new(Box::new(GruSequence::default())))
}
