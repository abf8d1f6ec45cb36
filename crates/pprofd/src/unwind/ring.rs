//! Where stacks captured in signal handlers wait for the collector thread.
//!
//! A fixed array of slots allocated before sampling starts. A handler claims a free slot with
//! one compare-and-swap (probing a few slots from a rotating start), fills it and marks it
//! full; the collector drains full slots and frees them. When no slot is free the handler
//! counts a lost sample and returns: it never blocks and never allocates.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::*};

/// Deepest stack kept; deeper stacks are cut and marked truncated.
pub(crate) const MAX_DEPTH: usize = 128;

const FREE: u8 = 0;
const WRITING: u8 = 1;
const FULL: u8 = 2;
const PROBES: usize = 8;

/// A captured stack as the handler wrote it.
pub(crate) struct StackRecord {
    /// Kernel thread id of the sampled thread.
    pub tid: i32,
    /// Per-sample value chosen by the writer (e.g. nanoseconds represented).
    pub weight: u64,
    /// The labels active on the thread ([`crate::labels`]; 0: none).
    pub labels: crate::labels::LabelSetId,
    /// The tokio task being polled inside an instrumented future (0: none).
    pub task: u64,
    /// Whether the unwinder stopped before the thread's entry.
    pub truncated: bool,
    /// The walk did not start: too little stack was left below the handler to run it.
    pub no_room: bool,
    pub depth: usize,
    /// Leaf first: the interrupted PC, then return addresses minus one.
    pub frames: [u64; MAX_DEPTH],
}

struct Slot {
    state: AtomicU8,
    record: UnsafeCell<StackRecord>,
}

/// A bounded, lock-free set of stack records.
pub(crate) struct StackRing {
    slots: Box<[Slot]>,
    next: AtomicUsize,
    lost: AtomicU64,
}

// SAFETY: a slot's record is accessed only by the thread that moved its state FREE->WRITING
// (the writer) or observed FULL and owns it until it stores FREE (the collector).
unsafe impl Sync for StackRing {}

/// A claimed slot; [`SlotWriter::commit`] hands it to the collector.
pub(crate) struct SlotWriter<'a> {
    slot: &'a Slot,
}

impl SlotWriter<'_> {
    /// The record to fill.
    pub fn record(&mut self) -> &mut StackRecord {
        // SAFETY: this writer won the FREE->WRITING transition, so it has exclusive access.
        unsafe { &mut *self.slot.record.get() }
    }

    /// Publishes the record.
    pub fn commit(self) {
        self.slot.state.store(FULL, Release);
    }
}

impl StackRing {
    /// A ring of `capacity` slots (about 1 KiB each), allocated now.
    ///
    /// The slots are zeroed by the allocator (calloc: fresh pages from the kernel for a ring
    /// this size) rather than written one by one, so a slot costs resident memory only once a
    /// sample has used it: a short profile of a few threads touches a fraction of the 8 MiB.
    pub fn new(capacity: usize) -> Self {
        let len = capacity.max(PROBES);
        let layout = std::alloc::Layout::array::<Slot>(len).expect("the ring fits in memory");
        // SAFETY: the layout has a non-zero size (len >= PROBES slots of ~1 KiB).
        let memory = unsafe { std::alloc::alloc_zeroed(layout) } as *mut Slot;
        if memory.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: `memory` holds `len` zeroed slots allocated with the global allocator and
        // the layout of `[Slot; len]`, as `Box<[Slot]>` frees it; all zeros is a valid Slot:
        // state FREE (0) and a StackRecord of zero integers, `false` booleans, no labels (id 0), zero frames.
        let slots: Box<[Slot]> =
            unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(memory, len)) };
        StackRing {
            slots,
            next: AtomicUsize::new(0),
            lost: AtomicU64::new(0),
        }
    }

    /// Claims a free slot, or counts a lost sample and returns `None`. Async-signal-safe.
    pub fn claim(&self) -> Option<SlotWriter<'_>> {
        let start = self.next.fetch_add(1, Relaxed);
        for i in 0..PROBES {
            let slot = &self.slots[(start + i) % self.slots.len()];
            if slot
                .state
                .compare_exchange(FREE, WRITING, Acquire, Relaxed)
                .is_ok()
            {
                return Some(SlotWriter { slot });
            }
        }
        self.lost.fetch_add(1, Relaxed);
        None
    }

    /// Counts a sample that could not be taken for another reason. Async-signal-safe.
    pub fn count_lost(&self) {
        self.lost.fetch_add(1, Relaxed);
    }

    /// Passes every full record to `f` and frees its slot. Call from one thread at a time.
    pub fn drain(&self, mut f: impl FnMut(&StackRecord)) {
        for slot in self.slots.iter() {
            if slot.state.load(Acquire) == FULL {
                // SAFETY: FULL means the writer is done; only the draining thread frees it.
                f(unsafe { &*slot.record.get() });
                slot.state.store(FREE, Release);
            }
        }
    }

    /// Samples dropped because the ring was full or the handler could not run.
    pub fn lost(&self) -> u64 {
        self.lost.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_ring_counts_lost_samples_and_drains() {
        let ring = StackRing::new(8);
        let mut claimed = Vec::new();
        for _ in 0..8 {
            claimed.push(ring.claim().expect("free slot"));
        }
        assert!(ring.claim().is_none());
        assert_eq!(ring.lost(), 1);
        for (i, mut w) in claimed.into_iter().enumerate() {
            w.record().tid = i as i32;
            w.commit();
        }
        let mut tids = Vec::new();
        ring.drain(|r| tids.push(r.tid));
        tids.sort();
        assert_eq!(tids, (0..8).collect::<Vec<_>>());
        assert!(ring.claim().is_some(), "drained slots are reusable");
    }
}
