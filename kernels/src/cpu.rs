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

/// `f(x)` elementwise, in parallel.
pub(crate) fn map1<T: WithDType>(x: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| o.iter_mut().zip(x).for_each(|(o, &x)| *o = f(x)));
    out
}

/// `f(a, b)` elementwise, in parallel (`a` and `b` of one length).
pub(crate) fn map2<T: WithDType>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    let mut out = vec![T::zero(); a.len()];
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| o.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (&a, &b))| *o = f(a, b)));
    out
}
