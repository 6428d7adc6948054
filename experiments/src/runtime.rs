//! Process-level settings for secateur's binaries.
//!
//! Training allocates and frees tensors of a few MiB on every step. glibc serves blocks above its
//! mmap threshold (128 KiB at start, adapted up to 32 MiB) with fresh `mmap`s and returns freed
//! heap tops to the system above its trim threshold, so every step pays page faults for memory it
//! just gave back. Measured on the 2-core machine of BENCHMARKS.md: the LeNet-5 training step at
//! batch 128 takes 42 ms with glibc's defaults and 18 ms with the settings below, at the same peak
//! resident memory (the peak is reached on the first step either way).

/// Keeps freed tensor memory in the process: mmap threshold at glibc's maximum (32 MiB on 64-bit)
/// and no trimming of the heap top. Call once at the start of `main`, before large allocations.
/// A no-op where the C library is not glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
