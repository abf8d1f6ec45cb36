//! The per-thread sampling decision and what a sampled allocation or free records.
//!
//! Each thread keeps a countdown of bytes until its next sample in a const-initialised
//! thread-local without a destructor (usable at any point of a thread's life, even during
//! its teardown). The allocator subtracts each allocation's size; only an allocation that
//! reaches zero calls [`countdown_expired`], which draws the next exponentially distributed
//! interval (a Poisson process over bytes, as Go and jemalloc sample) and says whether this
//! allocation is sampled. While sampling is off the countdown is refilled with
//! [`OFF_RECHECK_BYTES`], so an allocation costs one subtraction and one branch and the
//! thread notices within that many bytes when sampling is turned on.
//!
//! A sampled allocation ([`record_allocation`]) sets the thread's re-entrancy flag, unwinds
//! its own stack with unwind tables published beforehand, and records the stack and size in
//! the bounded [`HeapTables`], which were allocated through the inner allocator, at the site
//! of its stack, size class and the thread's label-set id (a thread-local word,
//! [`crate::labels`]). It
//! allocates nothing through the global allocator and takes no lock, so it never recurses
//! and never deadlocks; with the flag set, nothing this thread allocates is sampled.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU16, AtomicU64, AtomicUsize, Ordering::*};

use super::tables::{size_class, HeapTables, LiveBlock, FIXED_ONE};
use crate::unwind::published::{self, Published};
use crate::unwind::ring::MAX_DEPTH;
use crate::unwind::{self, NoWalk, StackBounds, StackRange, UnwindTables};

/// Bytes a thread allocates between checks of the rate while sampling is off.
pub(super) const OFF_RECHECK_BYTES: usize = 1 << 20;

/// Mean bytes between samples; 0 while sampling is off. Set only after [`UNWIND_TABLES`] is
/// published, so a sampled allocation always finds tables.
pub(super) static RATE: AtomicUsize = AtomicUsize::new(0);
/// Whether a pprofd allocator has served an allocation (it is the global allocator).
pub(super) static INSTALLED: AtomicBool = AtomicBool::new(false);
/// Unwind tables for sampled allocations, published before sampling is turned on.
pub(super) static UNWIND_TABLES: Published<UnwindTables> = Published::new();
/// The process's writable mappings, published with the tables and refreshed with each heap
/// report: where a thread that pprofd did not see created finds its stack.
pub(super) static STACK_MAPS: Published<StackBounds> = Published::new();
/// Stack room a sampled allocation needs below the sampler's entry: the walk, its frame
/// array and the table updates (measured by `a_sampled_allocation_fits_in_its_stack_room`).
pub(super) const SAMPLE_STACK_NEED: u64 = unwind::WALK_STACK_NEED + 2048;
/// The heap tables, allocated on the first sampled allocation and never freed.
static TABLES: AtomicPtr<HeapTables> = AtomicPtr::new(std::ptr::null_mut());

/// Sampled blocks live, on a cache line of its own: every free reads it.
#[repr(align(64))]
struct LiveBlocks(AtomicUsize);
static LIVE_BLOCKS: LiveBlocks = LiveBlocks(AtomicUsize::new(0));

/// Live sampled blocks counted by a hash of their address: a free whose counter is zero
/// cannot be of a sampled block and skips the live set. 8 KiB, so it stays in cache; the
/// counters cannot overflow because the live set holds fewer than 65536 blocks.
const FILTER_BITS: u32 = 12;
static LIVE_FILTER: [AtomicU16; 1 << FILTER_BITS] = [const { AtomicU16::new(0) }; 1 << FILTER_BITS];

#[inline(always)]
fn filter_slot(ptr: usize) -> &'static AtomicU16 {
    // Fibonacci hashing: the multiply spreads the address bits into the top bits.
    let hash = (ptr as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - FILTER_BITS);
    &LIVE_FILTER[hash as usize]
}

/// Seeds the per-thread random number generators apart.
static SEED: AtomicU64 = AtomicU64::new(0x2545_f491_4f6c_dd1d);

struct ThreadSampler {
    /// Bytes this thread may allocate before its next sample (or rate check).
    countdown: Cell<usize>,
    /// The rate the countdown was drawn for; 0 when it is only a rate check.
    armed_rate: Cell<usize>,
    /// xorshift64* state; 0 until first used.
    rng: Cell<u64>,
    /// Set while the thread is inside the sampler or the profiler: no sampling then.
    busy: Cell<bool>,
    /// This thread's stack (`floor..end`), set when pprofd saw the thread created; `0..0`
    /// when unknown.
    stack_floor: Cell<u64>,
    stack_end: Cell<u64>,
}

thread_local! {
    static THREAD: ThreadSampler = const {
        ThreadSampler {
            countdown: Cell::new(0),
            armed_rate: Cell::new(0),
            rng: Cell::new(0),
            busy: Cell::new(false),
            stack_floor: Cell::new(0),
            stack_end: Cell::new(0),
        }
    };
}

/// Counts `size` bytes against the thread's countdown; `true` when it ran out and the
/// allocation must go to [`countdown_expired`]. The only work on the unsampled path.
#[inline(always)]
pub(super) fn countdown(size: usize) -> bool {
    THREAD.with(|t| {
        let left = t.countdown.get();
        if size < left {
            t.countdown.set(left - size);
            false
        } else {
            true
        }
    })
}

/// Whether `ptr` may be a live sampled block: frees look for their block only then. While
/// nothing sampled is live this is one load and a branch.
#[inline(always)]
pub(super) fn may_be_live(ptr: *mut u8) -> bool {
    LIVE_BLOCKS.0.load(Relaxed) != 0 && filter_slot(ptr as usize).load(Relaxed) != 0
}

/// Refills the countdown and returns the rate when this allocation of `size` bytes is to
/// be sampled.
#[cold]
pub(super) fn countdown_expired(size: usize) -> Option<usize> {
    if !INSTALLED.load(Relaxed) {
        INSTALLED.store(true, Relaxed);
    }
    THREAD.with(|t| {
        let rate = RATE.load(Acquire);
        if rate == 0 {
            t.armed_rate.set(0);
            t.countdown.set(OFF_RECHECK_BYTES);
            return None;
        }
        if t.busy.get() {
            t.countdown.set(next_interval(t, rate));
            return None;
        }
        if t.armed_rate.get() != rate {
            // Sampling was just turned on (or the rate changed): the countdown that ran out
            // was only a rate check. Start the first interval here and count this
            // allocation against it, so it is sampled with the right chance.
            t.armed_rate.set(rate);
            let first = next_interval(t, rate);
            if size < first {
                t.countdown.set(first - size);
                return None;
            }
        }
        t.countdown.set(next_interval(t, rate));
        Some(rate)
    })
}

/// An exponentially distributed interval with mean `rate`, at least one byte.
fn next_interval(t: &ThreadSampler, rate: usize) -> usize {
    let mut x = t.rng.get();
    if x == 0 {
        x = SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed) ^ (t as *const _ as u64);
        x |= 1;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    t.rng.set(x);
    let bits = x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
    // Uniform in (0, 1]: never 0, so the logarithm is finite.
    let uniform = (bits as f64 + 1.0) / (1u64 << 53) as f64;
    let interval = -uniform.ln() * rate as f64;
    interval.clamp(1.0, (usize::MAX / 2) as f64) as usize
}

/// The inverse of the chance that a block of `size` bytes is sampled at `rate`: the number
/// of allocations one sample stands for (Go's `scaleHeapSample`).
pub(super) fn weight(size: usize, rate: u32) -> f64 {
    let chance = -(-(size as f64) / rate.max(1) as f64).exp_m1();
    1.0 / chance.max(f64::MIN_POSITIVE)
}

/// The heap tables, if any allocation was sampled yet.
pub(super) fn tables() -> Option<&'static HeapTables> {
    // SAFETY: a non-null pointer is a zero-initialised `HeapTables` that is never freed.
    unsafe { TABLES.load(Acquire).as_ref() }
}

/// The heap tables, allocating them zeroed through `inner` on first use.
fn tables_or_allocate<A: GlobalAlloc>(inner: &A) -> Option<&'static HeapTables> {
    if let Some(tables) = tables() {
        return Some(tables);
    }
    let layout = Layout::new::<HeapTables>();
    // SAFETY: the layout has a non-zero size.
    let fresh = unsafe { inner.alloc_zeroed(layout) } as *mut HeapTables;
    if fresh.is_null() {
        return None;
    }
    match TABLES.compare_exchange(std::ptr::null_mut(), fresh, AcqRel, Acquire) {
        // SAFETY: all-zero bytes are a valid empty `HeapTables` (atomics and cells of
        // integers); it is published once and never freed.
        Ok(_) => Some(unsafe { &*fresh }),
        Err(existing) => {
            // SAFETY: `fresh` came from `inner.alloc_zeroed(layout)` and was never shared.
            unsafe { inner.dealloc(fresh as *mut u8, layout) };
            // SAFETY: as for `tables`.
            Some(unsafe { &*existing })
        }
    }
}

/// Records a sampled allocation of `size` bytes at `ptr`: its stack, its site's counters
/// and its entry in the live set. No global allocation, no lock, no system call but one
/// `sigaltstack` query when the stack is not the thread's own.
///
/// Stack use: this function is small; it finds the mapping holding the stack pointer and
/// checks [`SAMPLE_STACK_NEED`] bytes of room below it before [`record_with_stack`] (whose
/// frame holds the frame array) runs. Without room, or on a stack no published mapping holds,
/// the allocation is recorded without its stack and counted (`Losses`).
#[inline(never)]
pub(super) fn record_allocation<A: GlobalAlloc>(inner: &A, ptr: *mut u8, size: usize, rate: usize) {
    THREAD.with(|t| {
        if t.busy.replace(true) {
            return;
        }
        if let Some(tables) = tables_or_allocate(inner) {
            let here = unwind::current_regs().sp;
            let stack = own_stack(t, here);
            let room = stack.is_some_and(|s| here.saturating_sub(s.floor) >= SAMPLE_STACK_NEED);
            let rate = rate.min(u32::MAX as usize) as u32;
            if room {
                record_with_stack(tables, stack, inner, ptr, size, rate);
            } else {
                let lost = match stack {
                    None => &tables.losses.unknown_stack,
                    Some(_) => &tables.losses.no_stack_room,
                };
                lost.fetch_add(1, Relaxed);
                let no_stack = tables.intern_stack(&[], true, inner);
                record_at(tables, no_stack, ptr, size, rate);
            }
        }
        t.busy.set(false);
    })
}

/// The stack a sampled allocation runs on: the thread's own when its stack pointer is in it,
/// else the sigaltstack it runs on, else the published mapping holding the stack pointer (a
/// stack the program switched to, or a thread created where pprofd could not see it).
fn own_stack(t: &ThreadSampler, sp: u64) -> Option<StackRange> {
    let own = StackRange {
        floor: t.stack_floor.get(),
        end: t.stack_end.get(),
    };
    if own.holds(sp) {
        return Some(own);
    }
    if let Some(alt) = unwind::current_alt_stack().filter(|alt| alt.holds(sp)) {
        return Some(alt);
    }
    let guard = published::enter();
    STACK_MAPS.get(&guard)?.holding(sp)
}

#[inline(never)]
fn record_with_stack<A: GlobalAlloc>(
    tables: &HeapTables,
    stack: Option<StackRange>,
    inner: &A,
    ptr: *mut u8,
    size: usize,
    rate: u32,
) {
    let mut frames = [0u64; MAX_DEPTH];
    let guard = published::enter();
    let (depth, truncated) = match UNWIND_TABLES.get(&guard) {
        Some(unwind_tables) => {
            let unwound = unwind::unwind_current_thread(unwind_tables, stack, &mut frames);
            if unwound.not_walked == Some(NoWalk::NoRoom) {
                tables.losses.no_stack_room.fetch_add(1, Relaxed);
            }
            (unwound.depth, unwound.truncated)
        }
        None => (0, true),
    };
    drop(guard);
    let stack = tables.intern_stack(&frames[..depth], truncated, inner);
    record_at(tables, stack, ptr, size, rate);
}

/// Counts the allocation at the site of its interned `stack` (`None`: the stack table was
/// full) and enters it in the live set.
fn record_at(tables: &HeapTables, stack: Option<usize>, ptr: *mut u8, size: usize, rate: u32) {
    // The allocating thread's labels: one load of a const thread-local (see `crate::labels`).
    let site = tables.site(stack, crate::labels::current_labels(), size_class(size));
    count(tables, site, size, rate, Event::Alloc);
    track_live(tables, ptr as usize, LiveBlock { site, rate }, size);
}

/// Tells the sampler where the calling thread's stack is (from thread creation, outside the
/// allocator), so its sampled allocations are walked without a lookup.
pub(crate) fn set_thread_stack(range: StackRange) {
    THREAD.with(|t| {
        t.stack_floor.set(range.floor);
        t.stack_end.set(range.end);
    });
}

/// Adds `ptr` to the live set, or counts it freed at once when the set is full (so in-use
/// figures never keep a block the profiler cannot see freed).
fn track_live(tables: &HeapTables, ptr: usize, block: LiveBlock, size: usize) {
    // Counted in the filter before it can be found, so no free of it skips the lookup.
    filter_slot(ptr).fetch_add(1, Relaxed);
    if tables.insert_live(ptr, block) {
        LIVE_BLOCKS.0.fetch_add(1, Release);
    } else {
        filter_slot(ptr).fetch_sub(1, Relaxed);
        tables.losses.live_set_full.fetch_add(1, Relaxed);
        count(tables, block.site, size, block.rate, Event::Free);
    }
}

/// Removes `ptr` from the live set if it was sampled. Call only when [`may_be_live`].
#[cold]
#[inline(never)]
pub(super) fn take_live(ptr: *mut u8) -> Option<LiveBlock> {
    let block = tables()?.remove_live(ptr as usize)?;
    filter_slot(ptr as usize).fetch_sub(1, Relaxed);
    LIVE_BLOCKS.0.fetch_sub(1, Release);
    Some(block)
}

/// Puts back a block that [`take_live`] removed but that was not freed (a failed realloc).
#[cold]
pub(super) fn restore_live(ptr: *mut u8, block: LiveBlock, size: usize) {
    if let Some(tables) = tables() {
        track_live(tables, ptr as usize, block, size);
    }
}

/// Counts the free of a sampled block of `size` bytes.
#[cold]
pub(super) fn record_free(block: LiveBlock, size: usize) {
    if let Some(tables) = tables() {
        count(tables, block.site, size, block.rate, Event::Free);
    }
}

#[derive(Clone, Copy)]
enum Event {
    Alloc,
    Free,
}

fn count(tables: &HeapTables, site: usize, size: usize, rate: u32, event: Event) {
    let c = tables.counters(site);
    let weight = weight(size, rate);
    let (samples, sampled_bytes, objects, bytes) = match event {
        Event::Alloc => (
            &c.alloc_samples,
            &c.alloc_sampled_bytes,
            &c.alloc_objects_fp,
            &c.alloc_bytes,
        ),
        Event::Free => (
            &c.free_samples,
            &c.free_sampled_bytes,
            &c.free_objects_fp,
            &c.free_bytes,
        ),
    };
    samples.fetch_add(1, Relaxed);
    sampled_bytes.fetch_add(size as u64, Relaxed);
    objects.fetch_add((weight * FIXED_ONE).round() as u64, Relaxed);
    bytes.fetch_add((weight * size as f64).round() as u64, Relaxed);
}

/// Sampled blocks currently live.
pub(super) fn live_blocks() -> usize {
    LIVE_BLOCKS.0.load(Acquire)
}

/// Turns sampling off for good on the calling thread, one of pprofd's own: its allocations
/// (symbolizing, encoding: tens of MiB per request) would otherwise crowd the service's own
/// sites out of `allocs`.
pub(crate) fn exclude_current_thread() {
    THREAD.with(|t| t.busy.set(true));
}

/// Runs `f` with sampling off on the calling thread (the profiler's own work).
pub(super) fn without_sampling<R>(f: impl FnOnce() -> R) -> R {
    let was_busy = THREAD.with(|t| t.busy.replace(true));
    let result = f();
    THREAD.with(|t| t.busy.set(was_busy));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_exponential_with_the_rate_as_mean() {
        let t = ThreadSampler {
            countdown: Cell::new(0),
            armed_rate: Cell::new(0),
            rng: Cell::new(0),
            busy: Cell::new(false),
            stack_floor: Cell::new(0),
            stack_end: Cell::new(0),
        };
        let n = 200_000;
        let draws: Vec<f64> = (0..n).map(|_| next_interval(&t, 4096) as f64).collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        assert!((mean / 4096.0 - 1.0).abs() < 0.02, "mean {mean}");
        // An exponential distribution leaves exp(-1) of its mass above the mean.
        let above = draws.iter().filter(|&&d| d > 4096.0).count() as f64 / n as f64;
        assert!((above - (-1f64).exp()).abs() < 0.01, "{above}");
    }

    #[test]
    fn weights_undo_the_sampling_chance() {
        assert!((weight(1, 1 << 19) - (1 << 19) as f64).abs() < 1.0);
        assert!((weight(100 << 20, 1 << 19) - 1.0).abs() < 1e-9);
        let half = weight(1 << 19, 1 << 19);
        assert!((half - 1.0 / (1.0 - (-1f64).exp())).abs() < 1e-9);
    }
}

#[cfg(test)]
mod stack_room_tests {
    use super::*;
    use crate::unwind::stack_use;
    use std::alloc::System;

    #[test]
    fn a_sampled_allocation_fits_in_its_stack_room() {
        UNWIND_TABLES.replace(Some(Box::new(UnwindTables::load())));
        let block = Box::into_raw(Box::new([0u8; 64]));
        let address = block as usize;
        let used = stack_use::measure(
            || STACK_MAPS.replace(Some(Box::new(StackBounds::load()))),
            |_| record_allocation(&System, address as *mut u8, 64, 1),
        );
        let tables = tables().expect("the sample allocated the tables");
        let walked = tables
            .sites()
            .filter_map(|(_, stack, _)| tables.stack(stack?))
            .any(|s| s.frames.len() > 2);
        assert!(walked, "the allocation was recorded with its stack");
        println!("a sampled allocation used {used} bytes of stack");
        assert!(
            used as u64 <= SAMPLE_STACK_NEED,
            "{used} bytes > {SAMPLE_STACK_NEED}"
        );
        take_live(block as *mut u8);
        // SAFETY: `block` came from Box::into_raw above and is freed once.
        drop(unsafe { Box::from_raw(block) });
    }
}
