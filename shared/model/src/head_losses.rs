//! The per-row loss terms a learner puts on a multi-head output (N, Σ heads), one op each on the
//! CPU.
//!
//! A soft actor-critic's losses are a dozen elementwise ops over its heads' outputs: the logged
//! slots' value, its TD error, CQL's log-sum-exp gap, the policy's softmax against the critic.
//! Composed in candle, every op allocates and sweeps the whole matrix forward, and again, with a
//! zero-filled gradient and an accumulation, backward; at the gru benchmark's 896 × 76 values
//! that was a fifth of a training step. Here each group of terms is one pass forward and one
//! backward. Off the CPU the same terms are composed from candle ops, and tests hold the two to
//! the same values and gradients.

use crate::kernels::{host_view, shifted_exp_row, slice};
use crate::simd::per_isa;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Tensor, D};
use std::sync::Arc;

/// How a critic's TD error reads the logged action off the one-hot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TdForm {
    /// (Q(s, a) − y)², Q(s, a) = Σ_d Q_d(s, a_d): one error for the joint action.
    Joint,
    /// Σ_d (Q_d(s, a_d) − y)²: each head's own error against the same target.
    PerHead,
}

/// Which divergence between the policy and the critic's softmax the actor minimises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyForm {
    /// Σ_a π(a)·(T·log π(a) − Q(a)) per head: SAC's reverse KL to softmax(Q/T).
    ReverseKl,
    /// −Σ_a softmax(Q/T)(a)·log π(a) per head: cross-entropy to the critic's softmax.
    ForwardKl,
}

/// A critic's per-row terms, each (N): gradients reach the critic's output only.
#[derive(Debug)]
pub struct CriticRows {
    /// The squared TD error of the form asked for.
    pub td: Tensor,
    /// CQL(H)'s gap Σ_d logsumexp Q_d(s, ·) − Q(s, a).
    pub cql: Tensor,
    /// Q(s, a) of the logged action.
    pub q_sa: Tensor,
}

/// A policy's per-row terms, each (N): gradients reach the policy's logits only.
#[derive(Debug)]
pub struct PolicyRows {
    /// The actor's loss of the form asked for, summed over heads.
    pub loss: Tensor,
    /// Σ_d Σ_a π(a)·log π(a): minus the policy's entropy.
    pub neg_entropy: Tensor,
}

/// The TD and CQL terms of a critic output `q` (N, Σ heads) for the logged slots `onehot`
/// (N, Σ heads) and the targets `y` (N). No gradient reaches `onehot` or `y`.
pub fn critic_terms(q: &Tensor, onehot: &Tensor, y: &Tensor, heads: &[usize], form: TdForm) -> Result<CriticRows> {
    if !matches!(q.device(), Device::Cpu) {
        return critic_terms_composed(q, onehot, &y.detach(), heads, form);
    }
    let op = CriticTermsOp { heads: heads.to_vec(), per_head: form == TdForm::PerHead };
    let out = q.contiguous()?.apply_op3_arc(&onehot.contiguous()?, &y.contiguous()?, Arc::new(Box::new(op)))?;
    Ok(CriticRows { td: out.get(0)?, cql: out.get(1)?, q_sa: out.get(2)? })
}

/// The actor's terms for `logits` (N, Σ heads) against a fixed critic output `q` (N, Σ heads) at
/// temperature `temperature`. No gradient reaches `q`.
pub fn policy_terms(logits: &Tensor, q: &Tensor, temperature: f64, heads: &[usize], form: PolicyForm) -> Result<PolicyRows> {
    if !matches!(logits.device(), Device::Cpu) {
        return policy_terms_composed(logits, &q.detach(), temperature, heads, form);
    }
    let op = PolicyTermsOp { heads: heads.to_vec(), temperature: temperature as f32, reverse: form == PolicyForm::ReverseKl };
    let out = logits.contiguous()?.apply_op2_arc(&q.contiguous()?, Arc::new(Box::new(op)))?;
    Ok(PolicyRows { loss: out.get(0)?, neg_entropy: out.get(1)? })
}

/// What a backup target reads of a policy: per row (N), E_π[Q] = Σ_d Σ_a π(a)·Q_d(a) and
/// Σ_d Σ_a π(a)·log π(a), for `logits` and a critic output `q` (both (N, Σ heads)). No gradient:
/// a target is a constant of the loss.
pub fn policy_value(logits: &Tensor, q: &Tensor, heads: &[usize]) -> Result<ValueRows> {
    let (logits, q) = (logits.detach(), q.detach());
    // The reverse-KL terms at temperature zero are Σ π·(0 − Q): minus the expectation, exactly.
    let PolicyRows { loss, neg_entropy } = policy_terms(&logits, &q, 0.0, heads, PolicyForm::ReverseKl)?;
    Ok(ValueRows { expected_q: loss.neg()?, neg_entropy })
}

/// [`policy_value`]'s rows, each (N).
#[derive(Debug)]
pub struct ValueRows {
    /// E_π[Q], summed over heads.
    pub expected_q: Tensor,
    /// Σ π log π, summed over heads: minus the policy's entropy.
    pub neg_entropy: Tensor,
}

fn critic_terms_composed(q: &Tensor, onehot: &Tensor, y: &Tensor, heads: &[usize], form: TdForm) -> Result<CriticRows> {
    let q_sa = (q * onehot)?.sum(D::Minus1)?;
    let td = match form {
        TdForm::Joint => (&q_sa - y)?.sqr()?,
        TdForm::PerHead => (q.broadcast_sub(&y.unsqueeze(1)?)?.sqr()? * onehot)?.sum(D::Minus1)?,
    };
    let cql = (crate::kernels::seg_logsumexp(q, heads)?.sum(D::Minus1)? - &q_sa)?;
    Ok(CriticRows { td, cql, q_sa })
}

fn policy_terms_composed(logits: &Tensor, q: &Tensor, temperature: f64, heads: &[usize], form: PolicyForm) -> Result<PolicyRows> {
    let logp = crate::kernels::seg_log_softmax(logits, heads)?;
    let p = logp.exp()?;
    let loss = match form {
        PolicyForm::ReverseKl => (&p * ((&logp * temperature)? - q)?)?.sum(D::Minus1)?,
        PolicyForm::ForwardKl => {
            let target = crate::kernels::seg_log_softmax(&(q / temperature)?, heads)?.exp()?;
            (target * &logp)?.sum(D::Minus1)?.neg()?
        }
    };
    Ok(PolicyRows { loss, neg_entropy: (&p * &logp)?.sum(D::Minus1)? })
}

// ---------------------------------------------------------------------------------------------
// The critic's terms. Output (3, N): td, cql, q_sa.

/// Scratch for one row: the row's shifted exponentials and, per element, its head's max (then
/// its head's 1 / Σ exp).
struct Row {
    shift: Vec<f32>,
    e: Vec<f32>,
}

impl Row {
    fn new(width: usize) -> Row {
        Row { shift: vec![0f32; width], e: vec![0f32; width] }
    }

    /// exp(x − head max) into `e`; returns Σ_d log Σ exp of the row's heads, and leaves each
    /// element's 1 / (its head's Σ exp) in `shift`, so that `e[k]·shift[k]` is the softmax.
    #[inline(always)]
    fn lse_and_inverse_sums(&mut self, row: &[f32], heads: &[usize]) -> f32 {
        shifted_exp_row(row, heads, &mut self.shift, &mut self.e);
        let (mut total, mut off) = (0f32, 0);
        for &n in heads {
            let s: f32 = self.e[off..off + n].iter().sum();
            total += self.shift[off] + s.ln();
            let inv = 1.0 / s;
            self.shift[off..off + n].iter_mut().for_each(|v| *v = inv);
            off += n;
        }
        total
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[inline(always)]
fn squared_td(q: &[f32], oh: &[f32], y: f32, q_sa: f32, per_head: bool) -> f32 {
    if per_head {
        q.iter().zip(oh).map(|(q, o)| o * (q - y) * (q - y)).sum()
    } else {
        (q_sa - y) * (q_sa - y)
    }
}

per_isa! {
    fn critic_rows, baseline critic_rows_baseline(q: &[f32], oh: &[f32], y: &[f32], heads: &[usize], per_head: bool, out: &mut [f32]) {
        let width: usize = heads.iter().sum();
        let n = y.len();
        let mut row = Row::new(width);
        for (r, (qr, ohr)) in q.chunks_exact(width).zip(oh.chunks_exact(width)).enumerate() {
            let q_sa = dot(qr, ohr);
            out[r] = squared_td(qr, ohr, y[r], q_sa, per_head);
            out[n + r] = row.lse_and_inverse_sums(qr, heads) - q_sa;
            out[2 * n + r] = q_sa;
        }
    }
}

per_isa! {
    /// dq from the gradients `g` (3, N) arriving at td, cql and q_sa.
    fn critic_rows_grad, baseline critic_rows_grad_baseline(q: &[f32], oh: &[f32], y: &[f32], g: &[f32], heads: &[usize], per_head: bool, dq: &mut [f32]) {
        let width: usize = heads.iter().sum();
        let n = y.len();
        let mut row = Row::new(width);
        for (r, ((qr, ohr), dr)) in q.chunks_exact(width).zip(oh.chunks_exact(width)).zip(dq.chunks_exact_mut(width)).enumerate() {
            row.lse_and_inverse_sums(qr, heads);
            let (g_td, g_cql, g_qsa, yr) = (g[r], g[n + r], g[2 * n + r], y[r]);
            // d td / dq_k: 2(q_sa − y)·onehot_k jointly, 2(q_k − y)·onehot_k per head.
            let joint = 2.0 * (dot(qr, ohr) - yr);
            for k in 0..width {
                let d_td = if per_head { 2.0 * (qr[k] - yr) * ohr[k] } else { joint * ohr[k] };
                let softmax = row.e[k] * row.shift[k];
                dr[k] = g_td * d_td + g_cql * (softmax - ohr[k]) + g_qsa * ohr[k];
            }
        }
    }
}

struct CriticTermsOp {
    heads: Vec<usize>,
    per_head: bool,
}

impl CustomOp3 for CriticTermsOp {
    fn name(&self) -> &'static str {
        "irec-critic-terms"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (q, oh, y) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let width: usize = self.heads.iter().sum();
        if q.len() != y.len() * width || oh.len() != q.len() {
            candle_core::bail!("critic terms: q {:?}, onehot {:?} and y {:?} disagree with heads of width {width}", l1.dims(), l2.dims(), l3.dims());
        }
        let mut out = vec![0f32; 3 * y.len()];
        critic_rows(q, oh, y, &self.heads, self.per_head, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((3, y.len()))))
    }

    fn bwd(&self, q: &Tensor, oh: &Tensor, y: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (qs, os, ys, gs) = (q.storage_and_layout(), oh.storage_and_layout(), y.storage_and_layout(), grad.storage_and_layout());
        let (qv, ov, yv, gv) = (host_view(q, &qs.0, qs.1)?, host_view(oh, &os.0, os.1)?, host_view(y, &ys.0, ys.1)?, host_view(grad, &gs.0, gs.1)?);
        let mut dq = vec![0f32; qv.len()];
        critic_rows_grad(&qv, &ov, &yv, &gv, &self.heads, self.per_head, &mut dq);
        Ok((Some(Tensor::from_vec(dq, q.shape(), q.device())?), None, None))
    }
}

// ---------------------------------------------------------------------------------------------
// The actor's terms. Output (2, N): loss, Σ π log π.

/// One row of the policy: log π and π per element, and per element its head's loss and Σ π log π.
struct PolicyRow {
    row: Row,
    logp: Vec<f32>,
    p: Vec<f32>,
    target: Row,
    scaled_q: Vec<f32>,
    head_loss: Vec<f32>,
    head_neg_entropy: Vec<f32>,
}

impl PolicyRow {
    fn new(width: usize) -> PolicyRow {
        let z = || vec![0f32; width];
        PolicyRow { row: Row::new(width), logp: z(), p: z(), target: Row::new(width), scaled_q: z(), head_loss: z(), head_neg_entropy: z() }
    }

    /// Fills the row's vectors; returns (loss, Σ π log π) summed over heads. The per-element
    /// work is whole-row passes (they vectorise); only the sums go head by head.
    #[inline(always)]
    fn fill(&mut self, z: &[f32], q: &[f32], heads: &[usize], temperature: f32, reverse: bool) -> (f32, f32) {
        shifted_exp_row(z, heads, &mut self.row.shift, &mut self.row.e);
        if !reverse {
            self.scaled_q.iter_mut().zip(q).for_each(|(s, q)| *s = q / temperature);
            self.target.lse_and_inverse_sums(&self.scaled_q, heads);
        }
        // Each element's head log-sum-exp (in `logp`) and 1 / Σ exp (in `p`), then log π and π.
        let mut off = 0;
        for &n in heads {
            let s: f32 = self.row.e[off..off + n].iter().sum();
            let (lse, inv) = (self.row.shift[off] + s.ln(), 1.0 / s);
            self.logp[off..off + n].iter_mut().for_each(|v| *v = lse);
            self.p[off..off + n].iter_mut().for_each(|v| *v = inv);
            off += n;
        }
        for (((lp, p), zk), e) in self.logp.iter_mut().zip(self.p.iter_mut()).zip(z).zip(&self.row.e) {
            *lp = zk - *lp;
            *p *= e;
        }
        // Each element's share of its head's loss and of Σ π log π, summed head by head below.
        if reverse {
            for (((l, p), lp), q) in self.head_loss.iter_mut().zip(&self.p).zip(&self.logp).zip(q) {
                *l = p * (temperature * lp - q);
            }
        } else {
            for (((l, lp), e), inv) in self.head_loss.iter_mut().zip(&self.logp).zip(&self.target.e).zip(&self.target.shift) {
                *l = -(e * inv) * lp;
            }
        }
        for ((h, p), lp) in self.head_neg_entropy.iter_mut().zip(&self.p).zip(&self.logp) {
            *h = p * lp;
        }
        let (mut loss, mut neg_entropy, mut off) = (0f32, 0f32, 0);
        for &n in heads {
            let l: f32 = self.head_loss[off..off + n].iter().sum();
            let h: f32 = self.head_neg_entropy[off..off + n].iter().sum();
            self.head_loss[off..off + n].iter_mut().for_each(|v| *v = l);
            self.head_neg_entropy[off..off + n].iter_mut().for_each(|v| *v = h);
            loss += l;
            neg_entropy += h;
            off += n;
        }
        (loss, neg_entropy)
    }
}

per_isa! {
    fn policy_rows, baseline policy_rows_baseline(z: &[f32], q: &[f32], heads: &[usize], temperature: f32, reverse: bool, out: &mut [f32]) {
        let width: usize = heads.iter().sum();
        let n = z.len() / width.max(1);
        let mut row = PolicyRow::new(width);
        for (r, (zr, qr)) in z.chunks_exact(width).zip(q.chunks_exact(width)).enumerate() {
            let (loss, neg_entropy) = row.fill(zr, qr, heads, temperature, reverse);
            out[r] = loss;
            out[n + r] = neg_entropy;
        }
    }
}

per_isa! {
    /// dz from the gradients `g` (2, N) arriving at the loss and at Σ π log π: per head,
    /// d Σ π f / dz_b = π_b (f_b − Σ π f) for f = T log π − q (the T log π term's own share
    /// vanishes) and f = log π; d(−Σ t log π)/dz_b = π_b − t_b.
    fn policy_rows_grad, baseline policy_rows_grad_baseline(z: &[f32], q: &[f32], g: &[f32], heads: &[usize], temperature: f32, reverse: bool, dz: &mut [f32]) {
        let width: usize = heads.iter().sum();
        let n = z.len() / width.max(1);
        let mut row = PolicyRow::new(width);
        for (r, ((zr, qr), dr)) in z.chunks_exact(width).zip(q.chunks_exact(width)).zip(dz.chunks_exact_mut(width)).enumerate() {
            row.fill(zr, qr, heads, temperature, reverse);
            let (g_loss, g_ent) = (g[r], g[n + r]);
            for k in 0..width {
                let (p, lp) = (row.p[k], row.logp[k]);
                let d_loss = if reverse { p * (temperature * lp - qr[k] - row.head_loss[k]) } else { p - row.target.e[k] * row.target.shift[k] };
                dr[k] = g_loss * d_loss + g_ent * p * (lp - row.head_neg_entropy[k]);
            }
        }
    }
}

struct PolicyTermsOp {
    heads: Vec<usize>,
    temperature: f32,
    reverse: bool,
}

impl CustomOp2 for PolicyTermsOp {
    fn name(&self) -> &'static str {
        "irec-policy-terms"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (z, q) = (slice(s1, l1)?, slice(s2, l2)?);
        let width: usize = self.heads.iter().sum();
        if z.len() != q.len() || width == 0 || z.len() % width != 0 {
            candle_core::bail!("policy terms: logits {:?} and q {:?} disagree with heads of width {width}", l1.dims(), l2.dims());
        }
        let n = z.len() / width;
        let mut out = vec![0f32; 2 * n];
        policy_rows(z, q, &self.heads, self.temperature, self.reverse, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((2, n))))
    }

    fn bwd(&self, z: &Tensor, q: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (zs, qs, gs) = (z.storage_and_layout(), q.storage_and_layout(), grad.storage_and_layout());
        let (zv, qv, gv) = (host_view(z, &zs.0, zs.1)?, host_view(q, &qs.0, qs.1)?, host_view(grad, &gs.0, gs.1)?);
        let mut dz = vec![0f32; zv.len()];
        policy_rows_grad(&zv, &qv, &gv, &self.heads, self.temperature, self.reverse, &mut dz);
        Ok((Some(Tensor::from_vec(dz, z.shape(), z.device())?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    const HEADS: [usize; 6] = [4, 21, 7, 19, 5, 20];

    fn values(n: usize, seed: u32, spread: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 10_001) as f32 / 10_000.0 * 2.0 * spread - spread).collect()
    }

    fn onehot(rows: usize, seed: u32) -> Vec<f32> {
        let width: usize = HEADS.iter().sum();
        let mut v = vec![0f32; rows * width];
        for r in 0..rows {
            let mut off = 0;
            for (d, &n) in HEADS.iter().enumerate() {
                v[r * width + off + (r * 7 + d * 3 + seed as usize) % n] = 1.0;
                off += n;
            }
        }
        v
    }

    fn tensor(v: Vec<f32>, shape: impl Into<Shape>) -> Tensor {
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Σ over rows of w_i · term_i, so that every term's gradient is checked at once.
    fn weigh(terms: &[&Tensor], rows: usize, seed: u32) -> Tensor {
        let mut total = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu).unwrap();
        for (i, t) in terms.iter().enumerate() {
            let w = tensor(values(rows, seed + i as u32, 1.0), rows);
            total = (total + (*t * w).unwrap().sum_all().unwrap()).unwrap();
        }
        total
    }

    /// The fused and composed terms agree in value, and in the gradient that a random weighting
    /// of all of them sends into `input`, which must be larger than `min_gradient` in total.
    fn assert_same_values_and_gradients(fused: &[&Tensor], composed: &[&Tensor], input: &Var, min_gradient: f32, what: &str) {
        for (a, b) in fused.iter().zip(composed) {
            assert!(max_diff(a, b) < 1e-4, "{what}: values differ by {}", max_diff(a, b));
        }
        let rows = fused[0].dim(0).unwrap();
        let gf = weigh(fused, rows, 10).backward().unwrap();
        let gc = weigh(composed, rows, 10).backward().unwrap();
        let (gf, gc) = (gf.get(input.as_tensor()).unwrap(), gc.get(input.as_tensor()).unwrap());
        assert!(max_diff(gf, gc) < 1e-4, "{what}: gradients differ by {}", max_diff(gf, gc));
        assert!(gc.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > min_gradient, "the check must see gradients");
    }

    #[test]
    fn the_fused_critic_terms_are_the_composed_ones_values_and_gradients() {
        let rows = 11;
        let width: usize = HEADS.iter().sum();
        let oh = tensor(onehot(rows, 1), (rows, width));
        let y = tensor(values(rows, 2, 3.0), rows);
        for form in [TdForm::Joint, TdForm::PerHead] {
            let q = Var::from_tensor(&tensor(values(rows * width, 3, 4.0), (rows, width))).unwrap();
            let fused = critic_terms(q.as_tensor(), &oh, &y, &HEADS, form).unwrap();
            let composed = critic_terms_composed(q.as_tensor(), &oh, &y, &HEADS, form).unwrap();
            let fused = [&fused.td, &fused.cql, &fused.q_sa];
            assert_same_values_and_gradients(&fused, &[&composed.td, &composed.cql, &composed.q_sa], &q, 1.0, &format!("{form:?}"));
        }
    }

    #[test]
    fn the_fused_policy_terms_are_the_composed_ones_values_and_gradients() {
        let rows = 11;
        let width: usize = HEADS.iter().sum();
        let q = tensor(values(rows * width, 4, 2.0), (rows, width));
        for form in [PolicyForm::ReverseKl, PolicyForm::ForwardKl] {
            for temperature in [0.05, 0.7] {
                let z = Var::from_tensor(&tensor(values(rows * width, 5, 5.0), (rows, width))).unwrap();
                let fused = policy_terms(z.as_tensor(), &q, temperature, &HEADS, form).unwrap();
                let composed = policy_terms_composed(z.as_tensor(), &q, temperature, &HEADS, form).unwrap();
                let what = format!("{form:?} T={temperature}");
                assert_same_values_and_gradients(&[&fused.loss, &fused.neg_entropy], &[&composed.loss, &composed.neg_entropy], &z, 0.1, &what);
            }
        }
    }

    #[test]
    fn the_policy_value_is_the_expected_q_and_the_negative_entropy() {
        let rows = 7;
        let width: usize = HEADS.iter().sum();
        let (z, q) = (tensor(values(rows * width, 11, 5.0), (rows, width)), tensor(values(rows * width, 12, 2.0), (rows, width)));
        let v = policy_value(&z, &q, &HEADS).unwrap();
        let logp = crate::kernels::seg_log_softmax(&z, &HEADS).unwrap();
        let p = logp.exp().unwrap();
        let expected = (&p * &q).unwrap().sum(D::Minus1).unwrap();
        let neg_entropy = (&p * &logp).unwrap().sum(D::Minus1).unwrap();
        assert!(max_diff(&v.expected_q, &expected) < 1e-5, "E[Q] differs by {}", max_diff(&v.expected_q, &expected));
        assert!(max_diff(&v.neg_entropy, &neg_entropy) < 1e-5, "Σ π log π differs by {}", max_diff(&v.neg_entropy, &neg_entropy));
    }

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    /// The wide versions return the baseline's bits, so a run's figures do not depend on the
    /// CPU's vector unit.
    #[test]
    fn the_loss_kernels_return_the_same_bits_at_every_vector_width() {
        let rows = 9;
        let width: usize = HEADS.iter().sum();
        let (q, oh, y) = (values(rows * width, 6, 4.0), onehot(rows, 2), values(rows, 7, 3.0));
        let g = values(3 * rows, 8, 1.0);
        for per_head in [false, true] {
            let (mut wide, mut base) = (vec![0f32; 3 * rows], vec![0f32; 3 * rows]);
            critic_rows(&q, &oh, &y, &HEADS, per_head, &mut wide);
            critic_rows_baseline(&q, &oh, &y, &HEADS, per_head, &mut base);
            assert!(same_bits(&wide, &base), "critic terms");
            let (mut wide, mut base) = (vec![0f32; q.len()], vec![0f32; q.len()]);
            critic_rows_grad(&q, &oh, &y, &g, &HEADS, per_head, &mut wide);
            critic_rows_grad_baseline(&q, &oh, &y, &g, &HEADS, per_head, &mut base);
            assert!(same_bits(&wide, &base), "critic gradient");
        }
        let z = values(rows * width, 9, 5.0);
        for reverse in [false, true] {
            let (mut wide, mut base) = (vec![0f32; 2 * rows], vec![0f32; 2 * rows]);
            policy_rows(&z, &q, &HEADS, 0.3, reverse, &mut wide);
            policy_rows_baseline(&z, &q, &HEADS, 0.3, reverse, &mut base);
            assert!(same_bits(&wide, &base), "policy terms");
            let (mut wide, mut base) = (vec![0f32; z.len()], vec![0f32; z.len()]);
            policy_rows_grad(&z, &q, &g[..2 * rows], &HEADS, 0.3, reverse, &mut wide);
            policy_rows_grad_baseline(&z, &q, &g[..2 * rows], &HEADS, 0.3, reverse, &mut base);
            assert!(same_bits(&wide, &base), "policy gradient");
        }
    }
}
