//! Allocation patterns shared by the heap workloads (`heap_workload`, `heap_mimalloc`).
//!
//! Every function here that allocates is `#[inline(never)]` so the tests can find it by
//! name in a profile.

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

/// An allocator that counts the bytes asked of it, placed under pprofd's wrapper so the
/// workload knows exactly how much it allocated.
pub struct Counting<A>(pub A);

pub static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to `A` unchanged; only counts.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is `A`'s.
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is `A`'s.
        unsafe { self.0.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is `A`'s.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

/// A small xorshift generator: the workload must not allocate to pick sizes.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A size spread over several powers of two from 1 to `max`.
    pub fn mixed_size(&mut self, max: u64) -> usize {
        let bits = 64 - max.leading_zeros() as u64;
        let top = 1 + self.next() % bits;
        (1 + self.next() % (1u64 << top).min(max)) as usize
    }
}

/// Keeps `total` bytes alive in blocks of 256 KiB to 4 MiB, allocated here.
#[inline(never)]
pub fn kept_site(total: usize, rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut kept = Vec::new();
    let mut bytes = 0;
    while bytes < total {
        let size = (256 << 10) + (rng.next() % (15 << 18)) as usize;
        let size = size.min(total - bytes).max(1);
        kept.push(black_box(Vec::<u8>::with_capacity(size)));
        bytes += size;
    }
    kept
}

/// Allocates and frees `count` blocks of mixed sizes up to 8 KiB, a few at a time.
#[inline(never)]
pub fn churn_site(count: u64, rng: &mut Rng) {
    let mut window: Vec<Vec<u8>> = Vec::with_capacity(16);
    for i in 0..count {
        let v = black_box(Vec::<u8>::with_capacity(rng.mixed_size(8192)));
        if window.len() < 16 {
            window.push(v);
        } else {
            window[(i % 16) as usize] = v;
        }
    }
}

/// The accuracy scenario: keeps 100 MB alive at `kept_site` while four threads make four
/// million short-lived allocations at `churn_site`, prints `allocated <bytes> kept <bytes>`
/// (bytes asked of the allocator meanwhile, and bytes kept), and holds on until stdin closes.
pub fn accuracy(lines: impl Iterator<Item = std::io::Result<String>>) {
    let start = ALLOCATED_BYTES.load(Ordering::Relaxed);
    let kept = kept_site(100_000_000, &mut Rng(7));
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || churn_site(1_000_000, &mut Rng(11 + t)));
        }
    });
    let allocated = ALLOCATED_BYTES.load(Ordering::Relaxed) - start;
    let kept_bytes: usize = kept.iter().map(Vec::capacity).sum();
    println!("allocated {allocated} kept {kept_bytes}");
    for _ in lines {}
    black_box(kept);
}
