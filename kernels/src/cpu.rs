//! Helpers shared by the elementwise CPU kernels: contiguous views of storages and parallel maps
//! in chunks of a fixed size.

use candle_core::{CpuStorage, Layout, Result, WithDType};
use rayon::prelude::*;

/// Entries per parallel chunk.
pub(crate) const CHUNK: usize = 1 << 14;

/// The entries of a contiguous storage view; an error naming `op` and `what` otherwise.
pub(crate) fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("{op}: {what} must be contiguous"),
    }
}

/// Below this many entries [`zeros`] fills on the calling thread (four chunks' worth).
const ZEROS_PAR_MIN: usize = 4 * CHUNK;

/// `n` zeros, written by the rayon pool in parallel chunks for large `n`.
///
/// The output buffers of the kernels are allocated zeroed and then overwritten in parallel; a
/// plain `vec![0; n]` zeroes them (and takes their page faults) on the calling thread while the
/// other workers wait. On the 2-core machines, `memset` was 12% of a ResNet-20 training step,
/// about half of it in these buffers. Same values as `vec![T::zero(); n]`.
pub(crate) fn zeros<T: WithDType>(n: usize) -> Vec<T> {
    if n < ZEROS_PAR_MIN {
        return vec![T::zero(); n];
    }
    let mut v: Vec<T> = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n].par_chunks_mut(CHUNK).for_each(|c| {
        for e in c {
            e.write(T::zero());
        }
    });
    // SAFETY: the loop above initialised each of the first `n` entries of the capacity.
    unsafe { v.set_len(n) };
    v
}

/// `f(x)` elementwise, in parallel.
pub(crate) fn map1<T: WithDType>(x: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    let mut out = zeros::<T>(x.len());
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| wide::each1(o, x, &f));
    out
}

/// `f(a, b)` elementwise, in parallel (`a` and `b` of one length).
pub(crate) fn map2<T: WithDType>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    let mut out = zeros::<T>(a.len());
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| wide::each2(o, a, b, &f));
    out
}

/// The loops of [`map1`] and [`map2`], compiled twice on x86-64: for the baseline (SSE2) and
/// with AVX2 enabled, picked at run time. With AVX2 the compiler's vectorised loops are twice as
/// wide, which matters for the loops with arithmetic in them (softplus and its derivatives with
/// `crate::vmath`). No fused multiply-add is enabled, so both versions round every operation
/// alike and give the same bits.
mod wide {
    #[inline(always)]
    fn body1<T: Copy>(o: &mut [T], x: &[T], f: &impl Fn(T) -> T) {
        o.iter_mut().zip(x).for_each(|(o, &x)| *o = f(x));
    }

    #[inline(always)]
    fn body2<T: Copy>(o: &mut [T], a: &[T], b: &[T], f: &impl Fn(T, T) -> T) {
        o.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (&a, &b))| *o = f(a, b));
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn body1_avx2<T: Copy>(o: &mut [T], x: &[T], f: &impl Fn(T) -> T) {
        body1(o, x, f)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn body2_avx2<T: Copy>(o: &mut [T], a: &[T], b: &[T], f: &impl Fn(T, T) -> T) {
        body2(o, a, b, f)
    }

    pub(super) fn each1<T: Copy>(o: &mut [T], x: &[T], f: &impl Fn(T) -> T) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { body1_avx2(o, x, f) };
        }
        body1(o, x, f)
    }

    pub(super) fn each2<T: Copy>(o: &mut [T], a: &[T], b: &[T], f: &impl Fn(T, T) -> T) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { body2_avx2(o, a, b, f) };
        }
        body2(o, a, b, f)
    }

    #[cfg(all(test, target_arch = "x86_64"))]
    mod tests {
        /// The AVX2 build of the loop and the baseline build give the same bits (what the module
        /// notes promise), on the arithmetic-heavy loop of the vectorised `exp` over a sweep.
        /// Calls both builds directly; on a CPU without AVX2 there is nothing to compare.
        #[test]
        fn both_builds_give_the_same_bits() {
            if !std::is_x86_feature_detected!("avx2") {
                eprintln!("skipped: this CPU has no AVX2 build to compare");
                return;
            }
            let x: Vec<f32> = (0..10_000).map(|i| -80.0 + 0.0161 * i as f32).collect();
            let f = |v: f32| crate::vmath::exp(v) / (1.0 + crate::vmath::exp(-v.abs()));
            let (mut avx2, mut base) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            // SAFETY: the CPU supports AVX2 (checked above).
            unsafe { super::body1_avx2(&mut avx2, &x, &f) };
            super::body1(&mut base, &x, &f);
            let same = avx2.iter().zip(&base).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "the AVX2 and baseline builds of the elementwise loop differ");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`zeros`] on both sides of its parallel threshold, and at lengths that leave a partial
    /// chunk: the right length and every entry zero (including an f64 and a reused allocation).
    #[test]
    fn zeros_are_zero_at_every_length() {
        for n in [
            0,
            1,
            CHUNK - 1,
            ZEROS_PAR_MIN - 1,
            ZEROS_PAR_MIN,
            ZEROS_PAR_MIN + 7,
            9 * CHUNK + 3,
        ] {
            // leave non-zero garbage in the allocator's free lists first
            drop(vec![f32::NAN; n]);
            let z = zeros::<f32>(n);
            assert_eq!(z.len(), n);
            assert!(z.iter().all(|&v| v.to_bits() == 0), "n = {n}");
            let z = zeros::<f64>(n);
            assert_eq!(z.len(), n);
            assert!(z.iter().all(|&v| v.to_bits() == 0), "n = {n}");
        }
    }
}
