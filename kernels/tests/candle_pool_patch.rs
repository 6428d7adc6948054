//! The workspace's patched candle (`third_party/candle-core/PATCHES.md`): inside a rayon pool of
//! several threads, candle's parallel elementwise maps (`binary_map_vec_par`,
//! `unary_map_vec_par`, 64 Ki elements and more) split their work over that pool instead of
//! candle's own. Every output element is one IEEE operation on its inputs, so the results must
//! equal, bit for bit, a plain loop over the same values, whatever the layout (contiguous,
//! broadcast, transposed) and wherever the chunks fall.

use candle_core::{Device, Result, Tensor};
use secateur_kernels::runtime::in_pool_of;

fn values(n: usize, seed: u32) -> Vec<f32> {
    // a fixed, irregular sequence in (−2, 2), no generator needed
    (0..n)
        .map(|i| {
            let k = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
            (k as f32 / (1u32 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn bits(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?.iter().map(|v| v.to_bits()).collect())
}

#[test]
fn elementwise_maps_in_a_pool_equal_plain_loops() -> Result<()> {
    // 3 × 70_001 = 210_003 elements: above candle's parallel threshold, not a multiple of its
    // chunk or of any thread count
    let (rows, cols) = (3usize, 70_001usize);
    let (a, b, r) = (values(rows * cols, 1), values(rows * cols, 2), values(cols, 3));
    for threads in [2, 3] {
        in_pool_of(threads, || -> Result<()> {
            let dev = Device::Cpu;
            let ta = Tensor::from_vec(a.clone(), (rows, cols), &dev)?;
            let tb = Tensor::from_vec(b.clone(), (rows, cols), &dev)?;
            let tr = Tensor::from_vec(r.clone(), (1, cols), &dev)?;
            let plain = |f: &dyn Fn(usize, usize) -> f32| -> Vec<u32> {
                (0..rows * cols).map(|i| f(i / cols, i % cols).to_bits()).collect()
            };
            // contiguous
            assert_eq!(
                bits(&(&ta + &tb)?)?,
                plain(&|i, j| a[i * cols + j] + b[i * cols + j]),
                "add, {threads} threads"
            );
            // broadcast row
            assert_eq!(
                bits(&ta.broadcast_mul(&tr)?)?,
                plain(&|i, j| a[i * cols + j] * r[j]),
                "broadcast mul, {threads} threads"
            );
            // transposed (strided) left operand: (bᵀ)ᵀ is b read through a transposed layout
            let bt = Tensor::from_vec(b.clone(), (cols, rows), &dev)?.t()?;
            assert_eq!(
                bits(&(&bt - &ta)?)?,
                plain(&|i, j| b[j * rows + i] - a[i * cols + j]),
                "strided sub, {threads} threads"
            );
            // unary map (sqrt is correctly rounded)
            assert_eq!(
                bits(&ta.abs()?.sqrt()?)?,
                plain(&|i, j| a[i * cols + j].abs().sqrt()),
                "sqrt, {threads} threads"
            );
            Ok(())
        })?;
    }
    Ok(())
}
