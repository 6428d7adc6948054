//! Helpers shared by the elementwise CPU kernels: contiguous views of storages and parallel maps
//! in chunks of a fixed size.

use candle_core::{CpuStorage, Layout, Result, WithDType};
use rayon::prelude::*;
use std::mem::MaybeUninit;

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
/// other workers wait. On the 2-core Intel Xeon, `memset` was 12% of a ResNet-20 training step,
/// about half of it in these buffers. Same values as `vec![T::zero(); n]`.
pub(crate) fn zeros<T: WithDType>(n: usize) -> Vec<T> {
    if n < ZEROS_PAR_MIN {
        return vec![T::zero(); n];
    }
    // SAFETY: the closure writes every entry of its part.
    unsafe {
        filled(n, CHUNK, |_, part| {
            for e in part {
                e.write(T::zero());
            }
        })
    }
}

/// A vector of `n` entries written by `fill` in parallel, without zeroing them first: `fill(s, i,
/// part)` gets the `i`-th run of `chunk` entries (the last one shorter) as uninitialised memory,
/// and `s`, a scratch state made by `init` once per rayon task (as in `for_each_init`).
///
/// The kernels' outputs are overwritten entirely; zeroing them first cost a `memset` of every
/// output (8% of the CPU time of a ResNet-20 training step on the 2-core Intel Xeon, after the
/// zeroing had been made parallel).
///
/// # Safety
/// `fill` must write every entry of each part it is given (or panic).
pub(crate) unsafe fn filled_with<T: Send, S>(
    n: usize,
    chunk: usize,
    init: impl Fn() -> S + Sync + Send,
    fill: impl Fn(&mut S, usize, &mut [MaybeUninit<T>]) + Sync + Send,
) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each_init(init, |s, (i, part)| fill(s, i, part));
    // SAFETY: each of the first `n` entries lies in one part, which `fill` wrote (the caller's
    // promise); had it panicked, the panic would have left this function before this line.
    unsafe { v.set_len(n) };
    v
}

/// [`filled_with`] without a scratch state.
///
/// # Safety
/// `fill` must write every entry of each part it is given (or panic).
pub(crate) unsafe fn filled<T: Send>(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync + Send,
) -> Vec<T> {
    // SAFETY: passed on to the caller.
    unsafe { filled_with(n, chunk, || (), |_, i, part| fill(i, part)) }
}

/// `f(x)` elementwise, in parallel.
pub(crate) fn map1<T: WithDType>(x: &[T], f: impl Fn(T) -> T + Sync + Send) -> Vec<T> {
    // SAFETY: `each1` writes every entry of its output (it asserts the lengths equal).
    unsafe {
        filled(x.len(), CHUNK, |i, o| {
            wide::each1(o, &x[i * CHUNK..i * CHUNK + o.len()], &f)
        })
    }
}

/// `f(a, b)` elementwise, in parallel (`a` and `b` of one length).
pub(crate) fn map2<T: WithDType>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync + Send) -> Vec<T> {
    assert_eq!(a.len(), b.len(), "map2: lengths differ");
    // SAFETY: `each2` writes every entry of its output (it asserts the lengths equal).
    unsafe {
        filled(a.len(), CHUNK, |i, o| {
            let r = i * CHUNK..i * CHUNK + o.len();
            wide::each2(o, &a[r.clone()], &b[r], &f)
        })
    }
}

/// `f(a, b, c)` elementwise, in parallel (`a`, `b` and `c` of one length).
pub(crate) fn map3<T: WithDType>(a: &[T], b: &[T], c: &[T], f: impl Fn(T, T, T) -> T + Sync + Send) -> Vec<T> {
    assert!(a.len() == b.len() && a.len() == c.len(), "map3: lengths differ");
    // SAFETY: `each3` writes every entry of its output (it asserts the lengths equal).
    unsafe {
        filled(a.len(), CHUNK, |i, o| {
            let r = i * CHUNK..i * CHUNK + o.len();
            wide::each3(o, &a[r.clone()], &b[r.clone()], &c[r], &f)
        })
    }
}

/// `dst[i] ← f(dst[i], a[i])` in place, in parallel (`a` as long as `dst`): the optimisers'
/// updates.
pub(crate) fn update2<T: WithDType>(dst: &mut [T], a: &[T], f: impl Fn(T, T) -> T + Sync + Send) {
    assert_eq!(dst.len(), a.len(), "update2: lengths differ");
    dst.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK))
        .for_each(|(d, a)| wide::each_mut2(d, a, &f));
}

/// `dst[i] ← f(dst[i], a[i], b[i])` in place, in parallel (`a`, `b` as long as `dst`).
pub(crate) fn update3<T: WithDType>(dst: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T, T) -> T + Sync + Send) {
    assert!(dst.len() == a.len() && dst.len() == b.len(), "update3: lengths differ");
    dst.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(d, (a, b))| wide::each_mut3(d, a, b, &f));
}

/// The loops of [`map1`], [`map2`], [`map3`], [`update2`] and [`update3`], compiled twice on x86-64: for
/// the baseline (SSE2) and with AVX2 enabled, picked at run time. With AVX2 the compiler's
/// vectorised loops are twice as wide, which matters for the loops with arithmetic in them
/// (softplus and its derivatives with `crate::vmath`, the optimisers' updates). No fused multiply-add is enabled, so both versions round every operation
/// alike and give the same bits.
mod wide {
    use std::mem::MaybeUninit;

    #[inline(always)]
    fn body1<T: Copy>(o: &mut [MaybeUninit<T>], x: &[T], f: &impl Fn(T) -> T) {
        o.iter_mut().zip(x).for_each(|(o, &x)| {
            o.write(f(x));
        });
    }

    #[inline(always)]
    fn body2<T: Copy>(o: &mut [MaybeUninit<T>], a: &[T], b: &[T], f: &impl Fn(T, T) -> T) {
        o.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (&a, &b))| {
            o.write(f(a, b));
        });
    }

    #[inline(always)]
    fn body3<T: Copy>(o: &mut [MaybeUninit<T>], a: &[T], b: &[T], c: &[T], f: &impl Fn(T, T, T) -> T) {
        o.iter_mut()
            .zip(a.iter().zip(b.iter().zip(c)))
            .for_each(|(o, (&a, (&b, &c)))| {
                o.write(f(a, b, c));
            });
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn body3_avx2<T: Copy>(o: &mut [MaybeUninit<T>], a: &[T], b: &[T], c: &[T], f: &impl Fn(T, T, T) -> T) {
        body3(o, a, b, c, f)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn body1_avx2<T: Copy>(o: &mut [MaybeUninit<T>], x: &[T], f: &impl Fn(T) -> T) {
        body1(o, x, f)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn body2_avx2<T: Copy>(o: &mut [MaybeUninit<T>], a: &[T], b: &[T], f: &impl Fn(T, T) -> T) {
        body2(o, a, b, f)
    }

    #[inline(always)]
    fn body_mut2<T: Copy>(d: &mut [T], a: &[T], f: &impl Fn(T, T) -> T) {
        d.iter_mut().zip(a).for_each(|(d, &a)| *d = f(*d, a));
    }

    #[inline(always)]
    fn body_mut3<T: Copy>(d: &mut [T], a: &[T], b: &[T], f: &impl Fn(T, T, T) -> T) {
        d.iter_mut()
            .zip(a.iter().zip(b))
            .for_each(|(d, (&a, &b))| *d = f(*d, a, b));
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn body_mut2_avx2<T: Copy>(d: &mut [T], a: &[T], f: &impl Fn(T, T) -> T) {
        body_mut2(d, a, f)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn body_mut3_avx2<T: Copy>(d: &mut [T], a: &[T], b: &[T], f: &impl Fn(T, T, T) -> T) {
        body_mut3(d, a, b, f)
    }

    /// `d[i] ← f(d[i], a[i])` (`a` as long as `d`).
    pub(super) fn each_mut2<T: Copy>(d: &mut [T], a: &[T], f: &impl Fn(T, T) -> T) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { body_mut2_avx2(d, a, f) };
        }
        body_mut2(d, a, f)
    }

    /// `d[i] ← f(d[i], a[i], b[i])` (`a`, `b` as long as `d`).
    pub(super) fn each_mut3<T: Copy>(d: &mut [T], a: &[T], b: &[T], f: &impl Fn(T, T, T) -> T) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { body_mut3_avx2(d, a, b, f) };
        }
        body_mut3(d, a, b, f)
    }

    /// `o = f(x)`, writing every entry of `o` (`x` of the same length).
    pub(super) fn each1<T: Copy>(o: &mut [MaybeUninit<T>], x: &[T], f: &impl Fn(T) -> T) {
        assert_eq!(o.len(), x.len(), "each1: lengths differ");
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { body1_avx2(o, x, f) };
        }
        body1(o, x, f)
    }

    /// `o = f(a, b, c)`, writing every entry of `o` (`a`, `b`, `c` of the same length).
    pub(super) fn each3<T: Copy>(o: &mut [MaybeUninit<T>], a: &[T], b: &[T], c: &[T], f: &impl Fn(T, T, T) -> T) {
        assert!(
            o.len() == a.len() && o.len() == b.len() && o.len() == c.len(),
            "each3: lengths differ"
        );
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { body3_avx2(o, a, b, c, f) };
        }
        body3(o, a, b, c, f)
    }

    /// `o = f(a, b)`, writing every entry of `o` (`a`, `b` of the same length).
    pub(super) fn each2<T: Copy>(o: &mut [MaybeUninit<T>], a: &[T], b: &[T], f: &impl Fn(T, T) -> T) {
        assert!(o.len() == a.len() && o.len() == b.len(), "each2: lengths differ");
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
            let mut avx2 = vec![std::mem::MaybeUninit::<f32>::uninit(); x.len()];
            let mut base = avx2.clone();
            // SAFETY: the CPU supports AVX2 (checked above).
            unsafe { super::body1_avx2(&mut avx2, &x, &f) };
            super::body1(&mut base, &x, &f);
            // SAFETY: both loops wrote every entry (outputs as long as `x`).
            let (avx2, base) = unsafe {
                (
                    avx2.iter().map(|v| v.assume_init()).collect::<Vec<f32>>(),
                    base.iter().map(|v| v.assume_init()).collect::<Vec<f32>>(),
                )
            };
            let same = avx2.iter().zip(&base).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "the AVX2 and baseline builds of the elementwise loop differ");
        }

        /// The in-place loops likewise (what the module notes promise), on SGD's Nesterov rule and on AdamW's parameter rule (a square root
        /// and a division) over a sweep of f32 values. Calls both builds directly; on a CPU
        /// without AVX2 there is nothing to compare.
        #[test]
        fn in_place_builds_give_the_same_bits() {
            if !std::is_x86_feature_detected!("avx2") {
                return;
            }
            let n = 1003; // not a multiple of any vector width
            let a: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.11).cos().abs() * 1e-3 + 1e-9).collect();
            let start: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.73).cos()).collect();
            let (lr, wd, m) = (0.05f32, 5e-4f32, 0.9f32);
            let nesterov = move |t: f32, b: f32, g: f32| t - lr * (g + wd * t + m * b);
            let adam = move |t: f32, m: f32, v: f32| (t * 0.999 + 0.0) + ((m / (v.sqrt() * 1.3 + 1e-8)) * -0.01 + 0.0);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            // Generic in the rule (not `dyn Fn`), so that each build inlines and vectorises it.
            fn both<F: Fn(f32, f32, f32) -> f32>(start: &[f32], a: &[f32], b: &[f32], f: F) -> (Vec<f32>, Vec<f32>) {
                let (mut base, mut wide) = (start.to_vec(), start.to_vec());
                super::body_mut3(&mut base, a, b, &f);
                // SAFETY: the caller checked that the CPU supports AVX2.
                unsafe { super::body_mut3_avx2(&mut wide, a, b, &f) };
                (base, wide)
            }
            for (base, wide) in [both(&start, &a, &b, nesterov), both(&start, &a, &b, adam)] {
                assert_eq!(bits(&base), bits(&wide));
                assert_ne!(bits(&base), bits(&start), "the rule changed nothing");
            }
            let (mut base, mut wide) = (start.clone(), start.clone());
            let plain = move |t: f32, b: f32| t - lr * b;
            super::body_mut2(&mut base, &a, &plain);
            // SAFETY: as above.
            unsafe { super::body_mut2_avx2(&mut wide, &a, &plain) };
            assert_eq!(bits(&base), bits(&wide));
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

    /// [`map3`] equals the plain loop at lengths around its chunk size (every entry written, in
    /// order, with the arguments in their places).
    #[test]
    fn map3_equals_the_plain_loop() {
        for n in [0, 1, CHUNK - 1, CHUNK, 3 * CHUNK + 5] {
            let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let b: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
            let c: Vec<f32> = (0..n).map(|i| 0.5 + (i % 5) as f32).collect();
            let got = map3(&a, &b, &c, |x, y, z| x * 2.0 - y / z);
            let want: Vec<f32> = (0..n).map(|i| a[i] * 2.0 - b[i] / c[i]).collect();
            assert_eq!(got, want, "n = {n}");
        }
    }
}
