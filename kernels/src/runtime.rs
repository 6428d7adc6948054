//! Process-level settings for secateur's binaries: [`tune_allocator`], [`rerun_with_start_env`] and
//! [`in_pool`].
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

/// candle 0.11 runs its own elementwise ops on a pool of `CANDLE_NUM_THREADS − 1` workers that
/// spin for a while after each op, next to rayon's pool, which gemm and secateur's kernels use. On
/// few cores the spinning workers take the cores from rayon's: a `perf record` of the MLP step on
/// the 2-core machine of BENCHMARKS.md showed candle's one worker spinning for a third of all
/// samples. With `CANDLE_NUM_THREADS=1` candle runs its (now small) elementwise ops on the calling
/// thread; measured there (median ms per step, default → 1): MLP 2.6–2.8 → 2.2–2.5, LeNet-5
/// 10.6–13.1 → 9.2–9.9, mean-field MLP 14.5–15.9 → 11.9–12.6, ResNet-20 unchanged within noise
/// (397–440 → 398–452).
///
/// This process's start-up environment is set by starting the program again with it, never by
/// changing the environment of a running process (which races with every other thread):
/// `CANDLE_NUM_THREADS=1` unless the user has set it, and `CANDLE_GRAD_DO_NOT_DETACH=1`
/// ([`crate::double_backprop`]) when `double_backprop` is asked for and not yet on. On Unix the
/// program is run again by `exec` in the same process (same pid), so that a signal sent to the
/// process — a `kill` of a training run — reaches the program that does the work and no orphan
/// keeps the run's lock; there this function returns only `Ok(None)` (environment complete) or the
/// error of a failed `exec`. Elsewhere the program runs as a child and `Ok(Some(code))` is its
/// exit code, which the caller passes on. Call first in `main`.
pub fn rerun_with_start_env(double_backprop: bool) -> std::io::Result<Option<i32>> {
    let mut vars: Vec<(&str, &str)> = Vec::new();
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        vars.push(("CANDLE_NUM_THREADS", "1"));
    }
    if double_backprop && !crate::double_backprop::requested() {
        vars.push((crate::double_backprop::ENV_VAR, "1"));
    }
    if vars.is_empty() {
        return Ok(None);
    }
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(std::env::args_os().skip(1)).envs(vars);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // returns only on failure
        Err(cmd.exec())
    }
    #[cfg(not(unix))]
    {
        let status = cmd.status()?;
        Ok(Some(status.code().unwrap_or(1)))
    }
}

/// Runs `f` on a worker thread of a rayon pool of the usual size (`RAYON_NUM_THREADS`, or one
/// thread per core) and returns its result.
///
/// Called from a thread outside any rayon pool, every parallel kernel (gemm, the convolutions,
/// batch norm) is injected into the global pool "cold": the caller wakes a worker, then sleeps on
/// a latch until the work is done, two context switches per op. A training step runs dozens of
/// such ops, so on small models the switches are a large part of the step. Inside the pool the
/// caller is itself a worker and each op is a plain fork–join. Threads that `f` spawns itself are
/// not workers of this pool: the `--jobs` workers of a study run their work in pools of their
/// own ([`in_pool_of`]). The workers get 8 MiB
/// stacks, the main thread's size on Linux, since candle's backward walks the graph recursively.
/// Measured with `bench_step` on the
/// 2-core Xeon of BENCHMARKS.md, alternating binaries (median ms per step): MLP 1.77–1.87 →
/// 1.56–1.57 (three pairs of 300 steps), LeNet-5 5.83–5.87 → 5.55–5.68, mean-field MLP
/// 7.25–7.33 → 6.46–6.92 (two pairs of 60). Falls back to running `f` on the calling thread if
/// the pool cannot be built.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    in_pool_of(0, f)
}

/// [`in_pool`] with a pool of `threads` workers (0: the usual size). For threads that run next
/// to others of their kind — the workers of `study --jobs N` get `cores / N` each — and for
/// threads spawned from a pool, which pass [`rayon::current_num_threads`] so that the cores are
/// not oversubscribed.
pub fn in_pool_of<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    match rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .stack_size(8 << 20)
        .build()
    {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}

/// Runs `f` on the calling thread while the other workers of its rayon pool stay awake, each
/// polling the pool for work (`rayon::yield_now`, a `pause` after each poll that finds none)
/// until `f` returns,
/// instead of going to sleep between `f`'s parallel kernels.
///
/// A rayon worker that finds no work spins for a few dozen `sched_yield`s and then sleeps on a
/// futex; the next fork–join wakes it with a system call whose wake-up (an inter-processor
/// interrupt, under KVM a VM exit) the forking thread pays. A training step forks dozens of
/// times with a few microseconds to a millisecond of one-thread work in between (graph
/// bookkeeping, candle's elementwise ops, allocation), so the other worker is asleep at nearly
/// every fork: a `perf record` of the MLP step on the 2-core Intel Xeon of BENCHMARKS.md spent 17%
/// of its samples in the scheduler (`try_to_wake_up`, `futex` sleeps, `sched_yield`). PyTorch's
/// OpenMP threads spin-wait between parallel regions for the same reason. Measured there with
/// `bench_step`, alternating (median ms per step, sleeping → warm): MLP 1.29–1.32 → 0.90–0.96,
/// LeNet-5 4.45–4.48 → 3.95–4.04, mean-field MLP 5.82–5.94 → 4.84–4.85, mean-field LeNet-5
/// 12.7–13.2 → 12.1–12.2, ResNet-20 257–258 → 251–256; the same final losses.
///
/// The cost: the pool's cores stay busy for as long as `f` runs, so wrap computation (a training
/// epoch, an evaluation), not waits on files, channels or other threads' pools. Outside a rayon
/// pool, or in a pool of one thread, `f` just runs. Results do not depend on it: which worker
/// runs a piece of work never changes what the kernels compute (they are deterministic across
/// thread counts). The pollers are broadcast jobs, one in each other worker's own queue (no other
/// thread takes it); the calling worker's copy returns at once, so whatever `f` waits on (a
/// fork–join, another pool's `install`, a broadcast), the calling worker never polls inside `f`.
/// A panic in `f` ends the polling and is passed on.
pub fn warm<R>(f: impl FnOnce() -> R) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    let me = rayon::current_thread_index();
    if me.is_none() || rayon::current_num_threads() < 2 {
        return f();
    }
    let done = AtomicBool::new(false);
    struct Finish<'a>(&'a AtomicBool);
    impl Drop for Finish<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    rayon::in_place_scope(|s| {
        let finish = Finish(&done);
        s.spawn_broadcast(|_, ctx| {
            if Some(ctx.index()) == me {
                return;
            }
            while !done.load(Ordering::Acquire) {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::hint::spin_loop();
                }
            }
        });
        let r = f();
        drop(finish);
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// A sum computed by nested fork–joins, as the kernels do.
    fn tree_sum(v: &[u64]) -> u64 {
        if v.len() <= 4 {
            return v.iter().sum();
        }
        let (a, b) = v.split_at(v.len() / 2);
        let (x, y) = rayon::join(|| tree_sum(a), || tree_sum(b));
        x + y
    }

    #[test]
    fn warm_runs_f_on_the_calling_worker_and_returns_its_result() {
        let v: Vec<u64> = (0..10_000).collect();
        let expect: u64 = v.iter().sum();
        for threads in [1, 2, 3] {
            in_pool_of(threads, || {
                let me = rayon::current_thread_index();
                for _ in 0..50 {
                    let (on, sum) = warm(|| (rayon::current_thread_index(), tree_sum(&v)));
                    assert_eq!(on, me, "{threads} threads");
                    assert_eq!(sum, expect, "{threads} threads");
                    let par: u64 = warm(|| v.par_iter().map(|x| x * x).sum());
                    assert_eq!(par, v.iter().map(|x| x * x).sum::<u64>());
                }
            });
        }
    }

    #[test]
    fn warm_nests_and_runs_outside_a_pool() {
        let v: Vec<u64> = (0..1000).collect();
        let expect: u64 = v.iter().sum();
        // outside any pool: f runs as is
        assert_eq!(warm(|| tree_sum(&v)), expect);
        let got = in_pool_of(2, || warm(|| warm(|| tree_sum(&v)) + warm(|| tree_sum(&v))));
        assert_eq!(got, 2 * expect);
    }

    #[test]
    fn warm_survives_f_waiting_on_another_pool() {
        // `f` blocks in another pool's `install`, a wait that pushes nothing on the calling
        // worker's deque: the calling worker must not pick up a poller meanwhile
        let v: Vec<u64> = (0..10_000).collect();
        let expect: u64 = v.iter().sum();
        for _ in 0..20 {
            let got = in_pool_of(2, || warm(|| in_pool_of(2, || tree_sum(&v)) + tree_sum(&v)));
            assert_eq!(got, 2 * expect);
        }
    }

    #[test]
    fn warm_ends_its_pollers_when_f_panics() {
        let v: Vec<u64> = (0..1000).collect();
        let outcome = in_pool_of(2, || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                warm(|| {
                    let s = tree_sum(&v);
                    if s > 0 {
                        panic!("f failed after its kernels");
                    }
                    s
                })
            }))
        });
        assert!(outcome.is_err());
        // the pool is usable again: nothing was left polling
        assert_eq!(in_pool_of(2, || warm(|| tree_sum(&v))), v.iter().sum::<u64>());
    }
}
