//! Dense layers on the CPU without candle's per-product thread split.
//!
//! candle's CPU matmul hands every product to gemm's rayon parallelism whenever more than one
//! thread is configured, whatever its size. At the recommender's sizes (a few hundred rows × 160 ×
//! 128) the split costs more than it saves: `bench-train --mode flat` took 6.15 ms a step with two
//! threads against 4.08 ms with one (docs/benchmarks.md). [`linear`] runs the same gemm call on the
//! calling thread below [`PARALLEL_MACS`] multiply-adds and splits it above, forward and backward.
//! gemm splits the output, not the reduction, so the sums are the same either way.

use crate::kernels::{host_view, slice};
use crate::simd::per_isa;
use candle_core::{CpuStorage, CustomOp2, Device, Layout, Result, Shape, Tensor};
use candle_nn::{Linear, Module};

/// Products with at least this many multiply-adds use every configured thread.
pub const PARALLEL_MACS: usize = 1 << 24;

/// A row-major or transposed view of a matrix inside a slice.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    /// Strides between rows and between columns, in elements.
    rs: usize,
    cs: usize,
}

impl View<'_> {
    pub(crate) fn row_major(data: &[f32], rows: usize, cols: usize) -> View<'_> {
        View { data, rows, cols, rs: cols, cs: 1 }
    }

    pub(crate) fn t(self) -> Self {
        View { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, ..self }
    }

    fn fits(&self) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst (m×n, row-major) = [dst +] a (m×k) · b (k×n)`, on one thread.
pub(crate) fn matmul(dst: &mut [f32], a: View, b: View, accumulate: bool) -> Result<()> {
    matmul_with(dst, a, b, accumulate, gemm::Parallelism::None)
}

/// As [`matmul`], on every configured thread when the product has at least [`PARALLEL_MACS`]
/// multiply-adds.
pub(crate) fn matmul_split(dst: &mut [f32], a: View, b: View, accumulate: bool) -> Result<()> {
    let threads = candle_core::utils::get_num_threads();
    let parallel = threads > 1 && a.rows * a.cols * b.cols >= PARALLEL_MACS;
    matmul_with(dst, a, b, accumulate, if parallel { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None })
}

fn matmul_with(dst: &mut [f32], a: View, b: View, accumulate: bool, parallelism: gemm::Parallelism) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || dst.len() < m * n || !a.fits() || !b.fits() {
        candle_core::bail!("dense: matmul shapes do not fit their buffers");
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].iter_mut().for_each(|x| *x = 0.0);
        }
        return Ok(());
    }
    // SAFETY: every index gemm touches is (i·rs + j·cs) for i < rows, j < cols of each view,
    // which `fits` checked to be inside the borrowed slices; dst holds m·n row-major elements;
    // the mutable and shared borrows cannot alias.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

/// A strided 2-D view of a tensor's storage (no copy).
fn view<'a>(s: &'a CpuStorage, l: &Layout) -> Result<View<'a>> {
    let data = &s.as_slice::<f32>()?[l.start_offset()..];
    match (l.dims(), l.stride()) {
        ([rows, cols], [rs, cs]) => Ok(View { data, rows: *rows, cols: *cols, rs: *rs, cs: *cs }),
        _ => candle_core::bail!("dense: matmul takes 2-D operands, got {:?}", l.dims()),
    }
}

/// `a · b` for 2-D f32 operands of any strides.
struct Product;

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "irec-dense-matmul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (view(s1, l1)?, view(s2, l2)?);
        let (m, n) = (a.rows, b.cols);
        let mut out = vec![0f32; m * n];
        matmul_split(&mut out, a, b, false)?;
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // candle asks for both gradients whatever the operands are; an operand that is plain data
        // (a detached state, the tracker's turn features) needs none, and skipping it saves a
        // product as large as the forward one.
        let da = if a.track_op() { Some(grad.apply_op2_no_bwd(&b.t()?, &Product)?) } else { None };
        let db = if b.track_op() { Some(a.t()?.apply_op2_no_bwd(grad, &Product)?) } else { None };
        Ok((da, db))
    }
}

per_isa! {
    /// out = y + b, b added to every row.
    fn add_rows, baseline add_rows_baseline(y: &[f32], b: &[f32], out: &mut [f32]) {
        for (o, row) in out.chunks_exact_mut(b.len()).zip(y.chunks_exact(b.len())) {
            o.iter_mut().zip(row).zip(b).for_each(|((o, v), c)| *o = v + c);
        }
    }
}

per_isa! {
    /// sums += every row of g, in row order.
    fn sum_rows, baseline sum_rows_baseline(g: &[f32], sums: &mut [f32]) {
        for row in g.chunks_exact(sums.len()) {
            sums.iter_mut().zip(row).for_each(|(s, v)| *s += v);
        }
    }
}

/// `y + b` for y (m×n) and b (n), row by row. candle's gradient of a broadcast add sums the rows
/// through its generic reduction (a division per element to find its column), a tenth of the gru
/// training step; here the bias's gradient is one pass over the rows, in the same order.
struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "irec-dense-add-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, b) = (slice(s1, l1)?, slice(s2, l2)?);
        let n = b.len();
        if n == 0 || y.len() % n != 0 {
            candle_core::bail!("dense: a bias of {n} does not fit rows of {:?}", l1.dims());
        }
        let mut out = vec![0f32; y.len()];
        add_rows(y, b, &mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, _y: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = if b.track_op() {
            let (gs, gl) = grad.storage_and_layout();
            let g = host_view(grad, &gs, gl)?;
            let mut sums = vec![0f32; b.elem_count()];
            sum_rows(&g, &mut sums);
            Some(Tensor::from_vec(sums, b.shape(), b.device())?)
        } else {
            None
        };
        Ok((Some(grad.clone()), db))
    }
}

/// `x · Wᵀ + b`, as `candle_nn::Linear` computes it; on the CPU through [`Product`] and [`AddBias`].
pub fn linear(x: &Tensor, layer: &Linear) -> Result<Tensor> {
    if !matches!(x.device(), Device::Cpu) || x.rank() != 2 || x.dtype() != candle_core::DType::F32 {
        return layer.forward(x);
    }
    let y = x.apply_op2(&layer.weight().t()?, Product)?;
    match layer.bias() {
        Some(b) => y.apply_op2(&b.contiguous()?, AddBias),
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ParamStore;

    #[test]
    fn the_bias_kernels_return_the_same_bits_at_every_vector_width() {
        let (rows, n) = (7, 37);
        let y: Vec<f32> = (0..rows * n).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let b: Vec<f32> = (0..n).map(|i| (i as f32 * 1.3).cos()).collect();
        let (mut wide, mut base) = (vec![0f32; y.len()], vec![0f32; y.len()]);
        add_rows(&y, &b, &mut wide);
        add_rows_baseline(&y, &b, &mut base);
        assert!(wide.iter().zip(&base).all(|(a, b)| a.to_bits() == b.to_bits()));
        let (mut wide, mut base) = (vec![0f32; n], vec![0f32; n]);
        sum_rows(&y, &mut wide);
        sum_rows_baseline(&y, &mut base);
        assert!(wide.iter().zip(&base).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(base.iter().any(|x| *x != 0.0));
    }

    fn close(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn linear_matches_candles_layer_in_value_and_gradients() {
        let store = ParamStore::new(3, &Device::Cpu);
        let layer = candle_nn::linear(7, 5, store.builder().pp("l")).unwrap();
        // A strided input: the middle 7 of 10 columns.
        let wide = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 10), &Device::Cpu).unwrap()).unwrap();
        let x = wide.as_tensor().narrow(1, 2, 7).unwrap();
        let ours = linear(&x, &layer).unwrap();
        let theirs = layer.forward(&x.contiguous().unwrap()).unwrap();
        assert!(close(&ours, &theirs) < 1e-6);
        let g_ours = (ours.sqr().unwrap().sum_all().unwrap()).backward().unwrap();
        let g_theirs = (theirs.sqr().unwrap().sum_all().unwrap()).backward().unwrap();
        for (name, v) in store.named_vars("l.") {
            let (a, b) = (g_ours.get(v.as_tensor()).unwrap(), g_theirs.get(v.as_tensor()).unwrap());
            assert!(close(a, b) < 1e-5, "{name}");
        }
        // The input's gradient comes back through the strided view, to the right columns.
        let (a, b) = (g_ours.get(wide.as_tensor()).unwrap(), g_theirs.get(wide.as_tensor()).unwrap());
        assert!(close(a, b) < 1e-5);
    }

    #[test]
    fn the_bias_add_is_candles_broadcast_add_to_the_bit() {
        let y = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (300, 7), &Device::Cpu).unwrap()).unwrap();
        let b = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, 7, &Device::Cpu).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (300, 7), &Device::Cpu).unwrap();
        let ours = y.as_tensor().apply_op2(b.as_tensor(), AddBias).unwrap();
        let theirs = y.as_tensor().broadcast_add(b.as_tensor()).unwrap();
        let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(bits(&ours), bits(&theirs));
        let g_ours = (&ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g_theirs = (&theirs * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&y, &b] {
            assert_eq!(bits(g_ours.get(v.as_tensor()).unwrap()), bits(g_theirs.get(v.as_tensor()).unwrap()));
        }
    }

    #[test]
    fn large_products_give_the_same_sums_as_small_ones() {
        // Above PARALLEL_MACS the product may split across threads; the split is over the output,
        // so each entry's sum is the one the single-threaded call computes.
        let a = Tensor::randn(0f32, 1.0, (512, 256), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 1.0, (256, 160), &Device::Cpu).unwrap();
        const { assert!(512 * 256 * 160 >= PARALLEL_MACS) };
        let ours = a.apply_op2_no_bwd(&b, &Product).unwrap();
        let mut want = vec![0f32; 512 * 160];
        let (av, bv) = (a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        matmul(&mut want, View::row_major(&av, 512, 256), View::row_major(&bv, 256, 160), false).unwrap();
        assert_eq!(ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
    }
}
