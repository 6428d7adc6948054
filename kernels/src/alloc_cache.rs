//! A global allocator that keeps freed large blocks for reuse: [`CachingAllocator`].
//!
//! A training step, and even more a Hessian-vector product by double backpropagation, allocates
//! and frees the same large tensors (a few MiB each) on every repetition. glibc hands such
//! blocks back to the kernel, so the next repetition faults every page in again and the kernel
//! zeroes it: `perf record` of `bench_step --model resnet20 --hvp` on the 2-core AMD EPYC of
//! BENCHMARKS.md showed 29% of all samples in the kernel's `clear_page_erms`, and one such run
//! (`--steps 6 --warmup 2`) had 1.7 M page faults, with
//! [`runtime::tune_allocator`](crate::runtime::tune_allocator)'s glibc settings applied.
//!
//! [`CachingAllocator`] serves every request of at least [`MIN_CACHED`] bytes from per-size-class
//! free lists of blocks freed earlier, and otherwise from the system allocator. Size classes
//! split each power of two into eight steps, so a block is at most 12.5% larger than the request.
//! Blocks freed while the cache holds its limit ([`CachingAllocator::set_limit`], zero at start,
//! so that a fresh allocator behaves as the system's) go back to the system. Small requests go
//! straight to the system allocator.
//!
//! The binaries install it with
//!
//! ```no_run
//! use secateur_kernels::alloc_cache::CachingAllocator;
//!
//! #[global_allocator]
//! static ALLOC: CachingAllocator = CachingAllocator::new();
//!
//! fn main() {
//!     ALLOC.set_limit(secateur_kernels::alloc_cache::default_limit());
//!     // …
//! }
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Requests of at least this many bytes (256 KiB) go through the cache.
pub const MIN_CACHED: usize = 1 << 18;

/// Alignment of every cached block (a page), so that one block serves any request of its class
/// with an alignment up to a page.
const BLOCK_ALIGN: usize = 4096;

/// `log2(MIN_CACHED)`.
const MIN_LOG2: u32 = MIN_CACHED.trailing_zeros();

/// Size classes per power of two.
const STEPS: usize = 8;

/// Number of size classes: [`MIN_CACHED`] up to 2⁴⁸ bytes; larger requests bypass the cache.
const CLASSES: usize = (48 - MIN_LOG2 as usize) * STEPS;

/// The size class of a request of `size ≥ MIN_CACHED` bytes: its index and the block size,
/// `size` rounded up to a multiple of 2^(⌊log₂ size⌋ − 3). `None` above the largest class.
fn class_of(size: usize) -> Option<(usize, usize)> {
    debug_assert!(size >= MIN_CACHED);
    let b = usize::BITS - 1 - size.leading_zeros();
    let granule = 1usize << (b - 3);
    let block = size.checked_add(granule - 1)? & !(granule - 1);
    // Rounding up may reach the next power of two, whose first class it then is.
    let b = usize::BITS - 1 - block.leading_zeros();
    let index = (b - MIN_LOG2) as usize * STEPS + ((block >> (b - 3)) - STEPS);
    (index < CLASSES).then_some((index, block))
}

/// A singly linked free list whose links live in the first word of each free block.
struct FreeList {
    head: *mut u8,
}

// SAFETY: the list only holds blocks that no one else references; it is always behind a Mutex.
unsafe impl Send for FreeList {}

/// A global allocator that caches freed blocks of [`MIN_CACHED`] bytes or more by size class, up
/// to a limit in bytes (see the module documentation).
pub struct CachingAllocator {
    lists: [Mutex<FreeList>; CLASSES],
    cached: AtomicUsize,
    limit: AtomicUsize,
}

impl Default for CachingAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl CachingAllocator {
    /// An empty cache with a limit of zero bytes: until [`Self::set_limit`] raises it, every
    /// block goes back to the system when freed.
    pub const fn new() -> Self {
        Self {
            lists: [const { Mutex::new(FreeList { head: ptr::null_mut() }) }; CLASSES],
            cached: AtomicUsize::new(0),
            limit: AtomicUsize::new(0),
        }
    }

    /// Keep at most `bytes` of freed blocks. Lowering the limit does not release blocks already
    /// cached; [`Self::release`] does.
    pub fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes, Ordering::Relaxed);
    }

    /// The limit set by [`Self::set_limit`].
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Bytes held in free blocks now.
    pub fn cached_bytes(&self) -> usize {
        self.cached.load(Ordering::Relaxed)
    }

    /// Returns every cached block to the system allocator.
    pub fn release(&self) {
        for index in 0..CLASSES {
            let block = Self::block_size(index);
            while let Some(p) = self.take(index, block) {
                // SAFETY: `p` was allocated by `System` with exactly this layout (see `alloc`).
                unsafe { System.dealloc(p, Self::block_layout(block)) };
            }
        }
    }

    /// The block size of class `index` (the inverse of [`class_of`]).
    fn block_size(index: usize) -> usize {
        let b = MIN_LOG2 as usize + index / STEPS;
        (STEPS + index % STEPS) << (b - 3)
    }

    fn block_layout(block: usize) -> Layout {
        // A block size is a multiple of 2^(18−3) bytes, far below isize::MAX for every class.
        Layout::from_size_align(block, BLOCK_ALIGN).unwrap_or(Layout::new::<u8>())
    }

    fn lock(&self, index: usize) -> std::sync::MutexGuard<'_, FreeList> {
        // Nothing panics while a list is locked; a poisoned lock still holds a consistent list.
        self.lists[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pop(&self, index: usize) -> *mut u8 {
        let mut list = self.lock(index);
        let p = list.head;
        if !p.is_null() {
            // SAFETY: a free block's first word holds the next link (written by `push`).
            list.head = unsafe { (p as *mut *mut u8).read() };
        }
        p
    }

    /// A cached block of class `index` (of `block` bytes), counted out of the cache.
    fn take(&self, index: usize, block: usize) -> Option<*mut u8> {
        let p = self.pop(index);
        if p.is_null() {
            return None;
        }
        self.cached.fetch_sub(block, Ordering::Relaxed);
        Some(p)
    }

    fn push(&self, index: usize, p: *mut u8) {
        let mut list = self.lock(index);
        // SAFETY: `p` is a free block of at least MIN_CACHED bytes, aligned to a page.
        unsafe { (p as *mut *mut u8).write(list.head) };
        list.head = p;
    }

    /// The cached class for `layout`, if the cache serves it.
    fn cached_class(layout: Layout) -> Option<(usize, usize)> {
        if layout.size() < MIN_CACHED || layout.align() > BLOCK_ALIGN {
            return None;
        }
        class_of(layout.size())
    }
}

// SAFETY: every block handed out is either the system allocator's answer for the caller's own
// layout, or a block of `block_layout(block)` with `block ≥ layout.size()` and page alignment
// (≥ layout.align()), which `dealloc` recognises by the same size class and caches or returns
// with that same layout.
unsafe impl GlobalAlloc for CachingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Self::cached_class(layout) {
            None => System.alloc(layout),
            Some((index, block)) => match self.take(index, block) {
                Some(p) => p,
                None => System.alloc(Self::block_layout(block)),
            },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match Self::cached_class(layout) {
            None => System.alloc_zeroed(layout),
            Some((index, block)) => match self.take(index, block) {
                Some(p) => {
                    ptr::write_bytes(p, 0, layout.size());
                    p
                }
                None => System.alloc_zeroed(Self::block_layout(block)),
            },
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        match Self::cached_class(layout) {
            None => System.dealloc(p, layout),
            Some((index, block)) => {
                let limit = self.limit.load(Ordering::Relaxed);
                let kept = self
                    .cached
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                        (c + block <= limit).then_some(c + block)
                    })
                    .is_ok();
                if kept {
                    self.push(index, p);
                } else {
                    System.dealloc(p, Self::block_layout(block));
                }
            }
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = Self::cached_class(layout);
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        let new = Self::cached_class(new_layout);
        match (old, new) {
            (None, None) => System.realloc(p, layout, new_size),
            // The same class: the block already has room for the new size.
            (Some((a, _)), Some((b, _))) if a == b => p,
            _ => {
                let q = self.alloc(new_layout);
                if !q.is_null() {
                    ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                    self.dealloc(p, layout);
                }
                q
            }
        }
    }
}

/// The cache limit the binaries use: `SECATEUR_ALLOC_CACHE_MIB` MiB if set (0 turns the cache
/// off), else a quarter of the physical memory (4 GiB where it cannot be read).
pub fn default_limit() -> usize {
    if let Some(mib) = std::env::var("SECATEUR_ALLOC_CACHE_MIB")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return mib.saturating_mul(1 << 20);
    }
    physical_memory().map_or(4 << 30, |b| b / 4)
}

/// Physical memory in bytes, where the platform says.
fn physical_memory() -> Option<usize> {
    #[cfg(unix)]
    {
        // SAFETY: sysconf only reads system parameters.
        let (pages, size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
        if pages > 0 && size > 0 {
            return (pages as usize).checked_mul(size as usize);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_up_by_at_most_an_eighth_and_invert() {
        let mut last = 0;
        for size in (MIN_CACHED..(64 << 20)).step_by(4093) {
            let (index, block) = class_of(size).expect("in range");
            assert!(block >= size, "{size} → {block}");
            assert!(block - size <= size / 8, "{size} → {block}");
            assert_eq!(CachingAllocator::block_size(index), block, "class {index}");
            assert!(index >= last, "classes grow with the size");
            last = index;
        }
        assert_eq!(class_of(MIN_CACHED), Some((0, MIN_CACHED)));
        assert_eq!(class_of(MIN_CACHED + 1).map(|c| c.0), Some(1));
        // The last step of a power of two rounds up into the next power's first class.
        let (i, b) = class_of((1 << 20) + (7 << 17) + 1).expect("in range");
        assert_eq!((i, b), (3 * STEPS, 1 << 21));
        assert_eq!(class_of(1 << 48), None);
    }

    #[test]
    fn freed_blocks_are_reused_within_the_limit_and_zeroed_on_request() {
        let cache = CachingAllocator::new();
        cache.set_limit(4 << 20);
        let layout = Layout::from_size_align(1_000_000, 4).expect("layout");
        unsafe {
            let p = cache.alloc(layout);
            assert!(!p.is_null());
            assert_eq!(p as usize % BLOCK_ALIGN, 0);
            ptr::write_bytes(p, 0xAB, layout.size());
            cache.dealloc(p, layout);
            assert_eq!(cache.cached_bytes(), class_of(1_000_000).expect("class").1);
            // A request of the same class gets the same block back, zeroed when asked.
            let q_layout = Layout::from_size_align(1_000_100, 64).expect("layout");
            let q = cache.alloc_zeroed(q_layout);
            assert_eq!(q, p);
            assert_eq!(cache.cached_bytes(), 0);
            assert!(std::slice::from_raw_parts(q, q_layout.size()).iter().all(|&b| b == 0));
            // Blocks beyond the limit go back to the system.
            let big = Layout::from_size_align(3 << 20, 8).expect("layout");
            let r = cache.alloc(big);
            let s = cache.alloc(big);
            cache.dealloc(r, big);
            cache.dealloc(s, big);
            assert_eq!(cache.cached_bytes(), 3 << 20);
            cache.dealloc(q, q_layout);
            assert!(cache.cached_bytes() <= cache.limit());
            cache.release();
            assert_eq!(cache.cached_bytes(), 0);
        }
    }

    #[test]
    fn a_zero_limit_caches_nothing_and_small_requests_bypass() {
        let cache = CachingAllocator::new();
        unsafe {
            for size in [16, MIN_CACHED - 1, MIN_CACHED, 5 << 20] {
                let layout = Layout::from_size_align(size, 8).expect("layout");
                let p = cache.alloc(layout);
                assert!(!p.is_null());
                cache.dealloc(p, layout);
                assert_eq!(cache.cached_bytes(), 0);
            }
        }
    }

    #[test]
    fn realloc_keeps_the_contents_across_the_threshold() {
        let cache = CachingAllocator::new();
        cache.set_limit(64 << 20);
        unsafe {
            let small = Layout::from_size_align(1000, 8).expect("layout");
            let p = cache.alloc(small);
            for i in 0..1000 {
                *p.add(i) = (i % 251) as u8;
            }
            // small → cached class → larger class of the same block size → a bigger class → small
            let mut layout = small;
            let mut q = p;
            for new_size in [MIN_CACHED + 10, MIN_CACHED + 20, 3 << 20, 500] {
                q = cache.realloc(q, layout, new_size);
                assert!(!q.is_null());
                layout = Layout::from_size_align(new_size, 8).expect("layout");
                for i in 0..500 {
                    assert_eq!(*q.add(i), (i % 251) as u8, "byte {i} after realloc to {new_size}");
                }
            }
            cache.dealloc(q, layout);
            cache.release();
        }
    }

    #[test]
    fn concurrent_use_keeps_the_count_consistent() {
        let cache = std::sync::Arc::new(CachingAllocator::new());
        cache.set_limit(256 << 20);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let cache = cache.clone();
                std::thread::spawn(move || unsafe {
                    for i in 0..200 {
                        let layout =
                            Layout::from_size_align(MIN_CACHED + ((t * 7 + i) % 5) * 100_000, 8).expect("layout");
                        let p = cache.alloc(layout);
                        assert!(!p.is_null());
                        p.write(t as u8);
                        cache.dealloc(p, layout);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("worker");
        }
        let mut held = 0;
        for index in 0..CLASSES {
            let mut p = cache.lock(index).head;
            while !p.is_null() {
                held += CachingAllocator::block_size(index);
                p = unsafe { (p as *mut *mut u8).read() };
            }
        }
        assert_eq!(held, cache.cached_bytes());
        cache.release();
        assert_eq!(cache.cached_bytes(), 0);
    }
}
