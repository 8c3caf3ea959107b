//! Fused CPU kernels for the recurrent cells and the per-attribute softmax heads.
//!
//! candle's CPU tanh/sigmoid are scalar (~25 ns per element), and a GRU step composed of ~15
//! small tensor ops pays dispatch and allocation for each. Here one custom op computes a whole GRU
//! (or LSTM) cell, forward and backward, with a vectorisable exp; another computes log-softmax or
//! log-sum-exp over every action head of an 80-wide logit row in one pass. On other devices the
//! same functions fall back to composed candle ops, so CUDA builds need no kernels of their own.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Tensor, D};
use std::sync::Arc;

use crate::simd::per_isa;

const LOG2_E: f32 = std::f32::consts::LOG2_E;

/// e^x with ~1e-7 relative error, written branch-free so that loops over it vectorise.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let t = x.clamp(-87.0, 88.0) * LOG2_E;
    // Round to nearest with the 1.5·2^23 trick (no libm call, vectorises on SSE2).
    let y = t + 12_582_912.0;
    let n = y - 12_582_912.0;
    let f = (t - n) * std::f32::consts::LN_2; // |f| ≤ ln2/2
    let p = 1.0 + f * (1.0 + f * (0.5 + f * (1.0 / 6.0 + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0))))));
    // 2^n from y's bits: they are 0x4B40_0000 + n, and n + 127 ∈ [1, 254] is all the shift keeps.
    // (`n as i32` gives the same bits, but its saturating conversion does not vectorise.)
    let bits = y.to_bits().wrapping_add(127) << 23;
    p * f32::from_bits(bits)
}

#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    2.0 * sigmoid(2.0 * x) - 1.0
}

/// A contiguous f32 operand of a custom op, as a slice (no copy).
pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("fused kernels need contiguous inputs"),
    }
}

/// A tensor's values on the host, row-major.
pub fn host(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// A tensor's values on the host without a copy where they already are one: borrowed from
/// `storage` (the guard of `t.storage_and_layout()`) when it is contiguous f32 on the CPU, copied
/// otherwise. A backward pass reads megabytes of saved activations; copying them was 2% of a step.
pub(crate) fn host_view<'a>(t: &Tensor, storage: &'a candle_core::Storage, layout: &Layout) -> Result<std::borrow::Cow<'a, [f32]>> {
    if let (candle_core::Storage::Cpu(CpuStorage::F32(data)), Some((a, b))) = (storage, layout.contiguous_offsets()) {
        return Ok(std::borrow::Cow::Borrowed(&data[a..b]));
    }
    Ok(std::borrow::Cow::Owned(host(t)?))
}

// ---------------------------------------------------------------------------------------------
// GRU cell: h' = (1 − z)·n + z·h, r = σ(gi_r + gh_r), z = σ(gi_z + gh_z), n = tanh(gi_n + r·gh_n)
// (PyTorch's gate order r, z, n). gi = x·W_ihᵀ + b_ih, gh = h·W_hhᵀ + b_hh.

per_isa! {
    /// One turn of the cell for a batch: h = (1 − z)·n + z·h_prev from the turn's input and hidden
    /// projections (PyTorch's gate order r, z, n).
    pub(crate) fn cell_forward, baseline cell_forward_baseline(gi: &[f32], gh: &[f32], h_prev: &[f32], hidden: usize, out: &mut [f32]) {
        let three = 3 * hidden;
        for (r, o) in out.chunks_exact_mut(hidden).enumerate() {
            let (gi_r, gh_r, hp) = (&gi[r * three..(r + 1) * three], &gh[r * three..(r + 1) * three], &h_prev[r * hidden..(r + 1) * hidden]);
            for j in 0..hidden {
                let rg = sigmoid(gi_r[j] + gh_r[j]);
                let z = sigmoid(gi_r[hidden + j] + gh_r[hidden + j]);
                let n = tanh(gi_r[2 * hidden + j] + rg * gh_r[2 * hidden + j]);
                o[j] = (1.0 - z) * n + z * hp[j];
            }
        }
    }
}

/// What one turn's backward pass reads: the forward pass's inputs and projections, the gradient
/// carried back to this turn's output (`dh`) and the one arriving at its input state (`g_prev`).
pub(crate) struct CellBackward<'a> {
    pub gi: &'a [f32],
    pub gh: &'a [f32],
    pub h_prev: &'a [f32],
    pub dh: &'a [f32],
    pub g_prev: &'a [f32],
    pub hidden: usize,
}

per_isa! {
    /// One turn's gradients: of the input and hidden pre-activations, and of the previous state.
    pub(crate) fn cell_backward, baseline cell_backward_baseline(c: CellBackward<'_>, d_gi: &mut [f32], d_gh: &mut [f32], dh_prev: &mut [f32]) {
        let (hidden, three) = (c.hidden, 3 * c.hidden);
        for r in 0..dh_prev.len() / hidden {
            let o3 = r * three;
            let (gi, gh, dgi, dgh) = (&c.gi[o3..o3 + three], &c.gh[o3..o3 + three], &mut d_gi[o3..o3 + three], &mut d_gh[o3..o3 + three]);
            let k0 = r * hidden;
            let (hp, dh, gp, dhp) = (&c.h_prev[k0..k0 + hidden], &c.dh[k0..k0 + hidden], &c.g_prev[k0..k0 + hidden], &mut dh_prev[k0..k0 + hidden]);
            for j in 0..hidden {
                let rg = sigmoid(gi[j] + gh[j]);
                let z = sigmoid(gi[hidden + j] + gh[hidden + j]);
                let n = tanh(gi[2 * hidden + j] + rg * gh[2 * hidden + j]);
                let gk = dh[j];
                let da_n = gk * (1.0 - z) * (1.0 - n * n);
                let da_z = gk * (hp[j] - n) * z * (1.0 - z);
                let da_r = da_n * gh[2 * hidden + j] * rg * (1.0 - rg);
                dgi[j] = da_r;
                dgi[hidden + j] = da_z;
                dgi[2 * hidden + j] = da_n;
                dgh[j] = da_r;
                dgh[hidden + j] = da_z;
                dgh[2 * hidden + j] = da_n * rg;
                // The carried part of h, plus the gradient arriving at the previous state itself.
                dhp[j] = gk * z + gp[j];
            }
        }
    }
}

struct GruCell;

impl CustomOp3 for GruCell {
    fn name(&self) -> &'static str {
        "irec-gru-cell"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (gi, gh, h) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let hidden = l3.dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; h.len()];
        cell_forward(gi, gh, h, hidden, &mut out);
        Ok((CpuStorage::F32(out), l3.shape().clone()))
    }

    fn bwd(&self, gi: &Tensor, gh: &Tensor, h: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let hidden = h.dim(D::Minus1)?;
        let (gi_v, gh_v, h_v, g_v) = (host(gi)?, host(gh)?, host(h)?, host(grad)?);
        let mut dgi = vec![0f32; gi_v.len()];
        let mut dgh = vec![0f32; gi_v.len()];
        let mut dh = vec![0f32; h_v.len()];
        // One step alone: no gradient arrives at its input state from elsewhere.
        let none = vec![0f32; h_v.len()];
        cell_backward(CellBackward { gi: &gi_v, gh: &gh_v, h_prev: &h_v, dh: &g_v, g_prev: &none, hidden }, &mut dgi, &mut dgh, &mut dh);
        let dev = h.device();
        Ok((
            Some(Tensor::from_vec(dgi, gi.shape(), dev)?),
            Some(Tensor::from_vec(dgh, gh.shape(), dev)?),
            Some(Tensor::from_vec(dh, h.shape(), dev)?),
        ))
    }
}

/// One GRU step for a batch: `gi`, `gh` are (B, 3H) pre-activations, `h` is (B, H).
pub fn gru_cell(gi: &Tensor, gh: &Tensor, h: &Tensor) -> Result<Tensor> {
    if matches!(h.device(), Device::Cpu) {
        let (gi, gh, h) = (gi.contiguous()?, gh.contiguous()?, h.contiguous()?);
        return gi.apply_op3_arc(&gh, &h, Arc::new(Box::new(GruCell)));
    }
    gru_cell_composed(gi, gh, h)
}

fn gru_cell_composed(gi: &Tensor, gh: &Tensor, h: &Tensor) -> Result<Tensor> {
    let hidden = h.dim(D::Minus1)?;
    let r = candle_nn::ops::sigmoid(&(gi.narrow(D::Minus1, 0, hidden)? + gh.narrow(D::Minus1, 0, hidden)?)?)?;
    let z = candle_nn::ops::sigmoid(&(gi.narrow(D::Minus1, hidden, hidden)? + gh.narrow(D::Minus1, hidden, hidden)?)?)?;
    let n = (gi.narrow(D::Minus1, 2 * hidden, hidden)? + (r * gh.narrow(D::Minus1, 2 * hidden, hidden)?)?)?.tanh()?;
    let one_minus_z = z.affine(-1.0, 1.0)?;
    (one_minus_z * n)? + (z * h)?
}

// ---------------------------------------------------------------------------------------------
// LSTM cell (gate order i, f, g, o): c' = f·c + i·g, h' = o·tanh(c'). Output is [h' | c'].

struct LstmCell;

impl CustomOp2 for LstmCell {
    fn name(&self) -> &'static str {
        "irec-lstm-cell"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (gates, c) = (slice(s1, l1)?, slice(s2, l2)?);
        let dims = l2.dims();
        let (batch, hidden) = (dims[0], dims[1]);
        let mut out = vec![0f32; batch * 2 * hidden];
        for b in 0..batch {
            let g = &gates[b * 4 * hidden..(b + 1) * 4 * hidden];
            for j in 0..hidden {
                let i = sigmoid(g[j]);
                let f = sigmoid(g[hidden + j]);
                let gg = tanh(g[2 * hidden + j]);
                let o = sigmoid(g[3 * hidden + j]);
                let cn = f * c[b * hidden + j] + i * gg;
                out[b * 2 * hidden + j] = o * tanh(cn);
                out[b * 2 * hidden + hidden + j] = cn;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((batch, 2 * hidden))))
    }

    fn bwd(&self, gates: &Tensor, c: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (batch, hidden) = c.dims2()?;
        let (gv, cv, dv) = (host(gates)?, host(c)?, host(grad)?);
        let mut dgates = vec![0f32; gv.len()];
        let mut dc = vec![0f32; cv.len()];
        for b in 0..batch {
            let o4 = b * 4 * hidden;
            for j in 0..hidden {
                let i = sigmoid(gv[o4 + j]);
                let f = sigmoid(gv[o4 + hidden + j]);
                let g = tanh(gv[o4 + 2 * hidden + j]);
                let o = sigmoid(gv[o4 + 3 * hidden + j]);
                let cp = cv[b * hidden + j];
                let cn = f * cp + i * g;
                let tc = tanh(cn);
                let gh = dv[b * 2 * hidden + j];
                let gc = dv[b * 2 * hidden + hidden + j] + gh * o * (1.0 - tc * tc);
                dgates[o4 + j] = gc * g * i * (1.0 - i);
                dgates[o4 + hidden + j] = gc * cp * f * (1.0 - f);
                dgates[o4 + 2 * hidden + j] = gc * i * (1.0 - g * g);
                dgates[o4 + 3 * hidden + j] = gh * tc * o * (1.0 - o);
                dc[b * hidden + j] = gc * f;
            }
        }
        let dev = c.device();
        Ok((Some(Tensor::from_vec(dgates, gates.shape(), dev)?), Some(Tensor::from_vec(dc, c.shape(), dev)?)))
    }
}

/// One LSTM step: `gates` (B, 4H) pre-activations, `c` (B, H). Returns (h', c').
pub fn lstm_cell(gates: &Tensor, c: &Tensor) -> Result<(Tensor, Tensor)> {
    let hidden = c.dim(D::Minus1)?;
    let hc = if matches!(c.device(), Device::Cpu) {
        gates.contiguous()?.apply_op2_arc(&c.contiguous()?, Arc::new(Box::new(LstmCell)))?
    } else {
        lstm_cell_composed(gates, c)?
    };
    Ok((hc.narrow(D::Minus1, 0, hidden)?, hc.narrow(D::Minus1, hidden, hidden)?))
}

fn lstm_cell_composed(gates: &Tensor, c: &Tensor) -> Result<Tensor> {
    let hidden = c.dim(D::Minus1)?;
    {
        let i = candle_nn::ops::sigmoid(&gates.narrow(D::Minus1, 0, hidden)?)?;
        let f = candle_nn::ops::sigmoid(&gates.narrow(D::Minus1, hidden, hidden)?)?;
        let g = gates.narrow(D::Minus1, 2 * hidden, hidden)?.tanh()?;
        let o = candle_nn::ops::sigmoid(&gates.narrow(D::Minus1, 3 * hidden, hidden)?)?;
        let cn = ((f * c)? + (i * g)?)?;
        let h = (o * cn.tanh()?)?;
        Tensor::cat(&[&h, &cn], D::Minus1)
    }
}

// ---------------------------------------------------------------------------------------------
// Per-head log-softmax and log-sum-exp over concatenated heads.

#[derive(Clone)]
struct SegLogSoftmax {
    heads: Vec<usize>,
}

/// Each element's exp(x − max of its head), for one row: one pass over the row's width, so it
/// vectorises (a head of 4–21 values alone does not).
#[inline(always)]
pub(crate) fn shifted_exp_row(row: &[f32], heads: &[usize], shift: &mut [f32], e: &mut [f32]) {
    let mut off = 0;
    for &n in heads {
        let m = row[off..off + n].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        shift[off..off + n].iter_mut().for_each(|s| *s = m);
        off += n;
    }
    for ((e, v), m) in e.iter_mut().zip(row).zip(shift.iter()) {
        *e = exp(v - m);
    }
}

per_isa! {
    fn seg_log_softmax_rows, baseline seg_log_softmax_rows_baseline(x: &[f32], heads: &[usize], out: &mut [f32]) {
        let width: usize = heads.iter().sum();
        let (mut shift, mut e) = (vec![0f32; width], vec![0f32; width]);
        for (row, orow) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
            shifted_exp_row(row, heads, &mut shift, &mut e);
            let mut off = 0;
            for &n in heads {
                let s: f32 = e[off..off + n].iter().sum();
                let lse = shift[off] + s.ln();
                for (o, v) in orow[off..off + n].iter_mut().zip(&row[off..off + n]) {
                    *o = v - lse;
                }
                off += n;
            }
        }
    }
}

per_isa! {
    /// dx = g − softmax · Σ_head g, from the log-softmax `y`.
    fn seg_log_softmax_grad, baseline seg_log_softmax_grad_baseline(y: &[f32], g: &[f32], heads: &[usize], dx: &mut [f32]) {
        let width: usize = heads.iter().sum();
        for ((yr, gr), dr) in y.chunks_exact(width).zip(g.chunks_exact(width)).zip(dx.chunks_exact_mut(width)) {
            let mut off = 0;
            for &n in heads {
                let gs: f32 = gr[off..off + n].iter().sum();
                for k in off..off + n {
                    dr[k] = gr[k] - exp(yr[k]) * gs;
                }
                off += n;
            }
        }
    }
}

per_isa! {
    fn seg_logsumexp_rows, baseline seg_logsumexp_rows_baseline(x: &[f32], heads: &[usize], out: &mut [f32]) {
        let width: usize = heads.iter().sum();
        let (mut shift, mut e) = (vec![0f32; width], vec![0f32; width]);
        for (row, orow) in x.chunks_exact(width).zip(out.chunks_exact_mut(heads.len())) {
            shifted_exp_row(row, heads, &mut shift, &mut e);
            let mut off = 0;
            for (o, &n) in orow.iter_mut().zip(heads) {
                *o = shift[off] + e[off..off + n].iter().sum::<f32>().ln();
                off += n;
            }
        }
    }
}

per_isa! {
    /// d lse / dx = the head's softmax, times the gradient arriving at its lse.
    fn seg_logsumexp_grad, baseline seg_logsumexp_grad_baseline(x: &[f32], lse: &[f32], g: &[f32], heads: &[usize], dx: &mut [f32]) {
        let width: usize = heads.iter().sum();
        let nh = heads.len();
        for (r, (xr, dr)) in x.chunks_exact(width).zip(dx.chunks_exact_mut(width)).enumerate() {
            let mut off = 0;
            for (h, &n) in heads.iter().enumerate() {
                let (gh, lh) = (g[r * nh + h], lse[r * nh + h]);
                for k in off..off + n {
                    dr[k] = gh * exp(xr[k] - lh);
                }
                off += n;
            }
        }
    }
}

impl CustomOp1 for SegLogSoftmax {
    fn name(&self) -> &'static str {
        "irec-seg-log-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let mut out = vec![0f32; x.len()];
        seg_log_softmax_rows(x, &self.heads, &mut out);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (ys, gs) = (res.storage_and_layout(), grad.storage_and_layout());
        let (y, g) = (host_view(res, &ys.0, ys.1)?, host_view(grad, &gs.0, gs.1)?);
        let mut dx = vec![0f32; y.len()];
        seg_log_softmax_grad(&y, &g, &self.heads, &mut dx);
        Ok(Some(Tensor::from_vec(dx, res.shape(), res.device())?))
    }
}

#[derive(Clone)]
struct SegLogSumExp {
    heads: Vec<usize>,
}

impl CustomOp1 for SegLogSumExp {
    fn name(&self) -> &'static str {
        "irec-seg-logsumexp"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let width: usize = self.heads.iter().sum();
        let rows = x.len() / width;
        let mut out = vec![0f32; rows * self.heads.len()];
        seg_logsumexp_rows(x, &self.heads, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((rows, self.heads.len()))))
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (xs, ls, gs) = (x.storage_and_layout(), res.storage_and_layout(), grad.storage_and_layout());
        let (xv, lse, g) = (host_view(x, &xs.0, xs.1)?, host_view(res, &ls.0, ls.1)?, host_view(grad, &gs.0, gs.1)?);
        let mut dx = vec![0f32; xv.len()];
        seg_logsumexp_grad(&xv, &lse, &g, &self.heads, &mut dx);
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Log-softmax of each head of a (N, Σ heads) logit matrix.
pub fn seg_log_softmax(x: &Tensor, heads: &[usize]) -> Result<Tensor> {
    if matches!(x.device(), Device::Cpu) {
        return x.contiguous()?.apply_op1_arc(Arc::new(Box::new(SegLogSoftmax { heads: heads.to_vec() })));
    }
    seg_log_softmax_composed(x, heads)
}

fn seg_log_softmax_composed(x: &Tensor, heads: &[usize]) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(heads.len());
    let mut off = 0;
    for &n in heads {
        parts.push(candle_nn::ops::log_softmax(&x.narrow(D::Minus1, off, n)?, D::Minus1)?);
        off += n;
    }
    Tensor::cat(&parts, D::Minus1)
}

/// Log-sum-exp of each head of a (N, Σ heads) matrix: (N, number of heads).
pub fn seg_logsumexp(x: &Tensor, heads: &[usize]) -> Result<Tensor> {
    if matches!(x.device(), Device::Cpu) {
        return x.contiguous()?.apply_op1_arc(Arc::new(Box::new(SegLogSumExp { heads: heads.to_vec() })));
    }
    seg_logsumexp_composed(x, heads)
}

fn seg_logsumexp_composed(x: &Tensor, heads: &[usize]) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(heads.len());
    let mut off = 0;
    for &n in heads {
        let seg = x.narrow(D::Minus1, off, n)?;
        let m = seg.max_keepdim(D::Minus1)?.detach();
        parts.push((seg.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?.log()? + m)?);
        off += n;
    }
    Tensor::cat(&parts, D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn rand(shape: (usize, usize), seed: u64) -> Tensor {
        use rand_distr::{Distribution, StandardNormal};
        let mut r = irec_world::rng::rng(seed);
        let v: Vec<f32> = (0..shape.0 * shape.1).map(|_| { let e: f32 = StandardNormal.sample(&mut r); 2.0 * e }).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn noise(n: usize, seed: u32) -> Vec<f32> {
        // Spread over ±6 so that the gates saturate as well as sit in their linear range.
        (0..n).map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 12_001) as f32 / 1_000.0 - 6.0).collect()
    }

    /// The wide versions of the cell are the baseline's arithmetic, bit for bit, so a run's
    /// figures do not depend on the CPU's vector unit.
    #[test]
    fn the_cell_returns_the_same_bits_at_every_vector_width() {
        let (batch, hidden) = (5, 40);
        let (gi, gh, h) = (noise(batch * 3 * hidden, 1), noise(batch * 3 * hidden, 2), noise(batch * hidden, 3));
        let (mut wide, mut base) = (vec![0f32; batch * hidden], vec![0f32; batch * hidden]);
        cell_forward(&gi, &gh, &h, hidden, &mut wide);
        cell_forward_baseline(&gi, &gh, &h, hidden, &mut base);
        assert!(wide.iter().zip(&base).all(|(a, b)| a.to_bits() == b.to_bits()), "forward differs");

        let (dh, g_prev) = (noise(batch * hidden, 4), noise(batch * hidden, 5));
        let c = || CellBackward { gi: &gi, gh: &gh, h_prev: &h, dh: &dh, g_prev: &g_prev, hidden };
        let mut wide = (vec![0f32; gi.len()], vec![0f32; gi.len()], vec![0f32; h.len()]);
        let mut base = wide.clone();
        cell_backward(c(), &mut wide.0, &mut wide.1, &mut wide.2);
        cell_backward_baseline(c(), &mut base.0, &mut base.1, &mut base.2);
        for (w, b) in [(&wide.0, &base.0), (&wide.1, &base.1), (&wide.2, &base.2)] {
            assert!(w.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits()), "backward differs");
        }
        assert!(base.0.iter().any(|x| *x != 0.0), "the check must see non-zero gradients");
    }

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    /// The per-head kernels compiled for the CPU's vector unit return the baseline's bits.
    #[test]
    fn the_head_kernels_return_the_same_bits_at_every_vector_width() {
        let heads = [4, 21, 7, 19, 5, 20];
        let (rows, width) = (9, heads.iter().sum::<usize>());
        let x = host(&rand((rows, width), 5)).unwrap();
        let g = host(&rand((rows, width), 6)).unwrap();
        let (mut wide, mut base) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        seg_log_softmax_rows(&x, &heads, &mut wide);
        seg_log_softmax_rows_baseline(&x, &heads, &mut base);
        assert!(same_bits(&wide, &base), "log-softmax");
        let y = base.clone();
        seg_log_softmax_grad(&y, &g, &heads, &mut wide);
        seg_log_softmax_grad_baseline(&y, &g, &heads, &mut base);
        assert!(same_bits(&wide, &base), "log-softmax gradient");
        let (mut wide_l, mut base_l) = (vec![0f32; rows * heads.len()], vec![0f32; rows * heads.len()]);
        seg_logsumexp_rows(&x, &heads, &mut wide_l);
        seg_logsumexp_rows_baseline(&x, &heads, &mut base_l);
        assert!(same_bits(&wide_l, &base_l), "log-sum-exp");
        let gl = &g[..rows * heads.len()];
        seg_logsumexp_grad(&x, &base_l, gl, &heads, &mut wide);
        seg_logsumexp_grad_baseline(&x, &base_l, gl, &heads, &mut base);
        assert!(same_bits(&wide, &base), "log-sum-exp gradient");
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn fast_exp_is_accurate() {
        for i in -2000..2000 {
            let x = i as f32 * 0.04;
            let rel = (exp(x) - x.exp()).abs() / x.exp();
            assert!(rel < if x.abs() < 20.0 { 1e-6 } else { 1e-5 }, "exp({x}) rel err {rel}");
        }
        assert!((tanh(0.3) - 0.3f32.tanh()).abs() < 1e-6);
    }

    /// Fused and composed versions agree on values and on gradients of every input.
    fn check3(f: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>, g: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>, shapes: [(usize, usize); 3]) {
        let vars: Vec<Var> = shapes.iter().enumerate().map(|(i, s)| Var::from_tensor(&rand(*s, 10 + i as u64)).unwrap()).collect();
        let w = rand(f(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor()).unwrap().dims2().unwrap(), 99);
        let a = f(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor()).unwrap();
        let b = g(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor()).unwrap();
        assert!(max_diff(&a, &b) < 1e-5);
        let ga = (a * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for v in &vars {
            let (Some(x), Some(y)) = (ga.get(v.as_tensor()), gb.get(v.as_tensor())) else {
                assert!(ga.get(v.as_tensor()).is_none() && gb.get(v.as_tensor()).is_none());
                continue;
            };
            assert!(max_diff(x, y) < 1e-4, "gradient differs by {}", max_diff(x, y));
        }
    }

    #[test]
    fn fused_gru_cell_matches_composed() {
        check3(gru_cell, gru_cell_composed, [(5, 24), (5, 24), (5, 8)]);
    }

    #[test]
    fn fused_lstm_cell_matches_composed() {
        check3(
            |g, c, _| { let (h, c) = lstm_cell(g, c)?; Tensor::cat(&[&h, &c], 1) },
            |g, c, _| lstm_cell_composed(g, c),
            [(4, 32), (4, 8), (1, 1)],
        );
    }

    #[test]
    fn fused_head_softmaxes_match_composed() {
        let heads = [3, 5, 2];
        check3(|x, _, _| seg_log_softmax(x, &heads), |x, _, _| seg_log_softmax_composed(x, &heads), [(6, 10), (1, 1), (1, 1)]);
        check3(|x, _, _| seg_logsumexp(x, &heads), |x, _, _| seg_logsumexp_composed(x, &heads), [(6, 10), (1, 1), (1, 1)]);
    }
}
