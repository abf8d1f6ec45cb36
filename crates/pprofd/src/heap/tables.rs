//! The heap profiler's bounded, lock-free tables: interned stacks, per-site counters and the
//! set of live sampled blocks.
//!
//! All three live in one [`HeapTables`] value that the allocator allocates zeroed through its
//! inner allocator on the first sampled allocation and never frees (all-zero is the empty
//! state of every table). Stack frames go to chunks allocated through the inner allocator as
//! they fill, so memory grows with the stacks actually seen, up to a fixed bound. Nothing
//! here locks or waits, and nothing allocates except those chunks, through the inner
//! allocator:
//! - stacks are claimed by one compare-and-swap on their 64-bit hash, their frames copied
//!   into a bump-allocated frame arena and published with one release store; two stacks
//!   with the same hash are treated as one (a 2^-64 chance per pair);
//! - sites (stack, size class) are claimed by one compare-and-swap on a packed key, and
//!   their counters are atomic adds;
//! - live blocks sit in 8-slot cache lines chosen by two hashes of the address; a lookup
//!   reads one line (two when the first ever overflowed), so frees of unsampled memory cost
//!   a few loads, and a slot is freed by a compare-and-swap back to zero (no tombstones).
//!
//! A full table is counted, never waited on: a stack that does not fit is recorded against
//! the overflow site, a block that does not fit in the live set is counted freed at once.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};

use crate::labels::LabelSetId;

/// Distinct stacks kept.
pub(super) const STACKS: usize = 8192;
/// Frames per arena chunk (256 KiB), allocated when the previous chunk is full.
const CHUNK_FRAMES: usize = 32 * 1024;
/// Arena chunks at most: frames kept across all stacks are bounded by `ARENA_FRAMES`.
const CHUNKS: usize = 16;
pub(super) const ARENA_FRAMES: usize = CHUNK_FRAMES * CHUNKS;
/// Distinct (stack, size class) sites kept.
pub(super) const SITES: usize = 8192;
/// Live sampled blocks kept: 4096 lines of 8.
const LIVE_LINES: usize = 4096;
const LINE_SLOTS: usize = 8;
pub(super) const LIVE_SLOTS: usize = LIVE_LINES * LINE_SLOTS;
/// Probes in the stack and site tables before a table counts as full.
const MAX_PROBES: usize = 64;

/// The site whose stack is not known because a table was full (index past the table).
pub(super) const OVERFLOW_SITE: usize = SITES;

/// An interned stack. `hash == 0` is an empty entry; `location == 0` is one being written.
#[repr(C)]
struct StackEntry {
    hash: AtomicU64,
    /// `start << 24 | depth << 1 | truncated`, published once the frames are in the arena.
    location: AtomicU64,
}

/// Counters of one allocation site: a stack and a size class.
///
/// `*_samples` and `*_sampled_bytes` count what was sampled (Go's text form prints those);
/// `*_objects_fp` (16.16 fixed point) and `*_bytes` are estimates of all allocations, each
/// sample weighted by the inverse of its chance of being sampled.
#[repr(C)]
#[derive(Default)]
pub(super) struct SiteCounters {
    pub alloc_samples: AtomicU64,
    pub alloc_sampled_bytes: AtomicU64,
    pub alloc_objects_fp: AtomicU64,
    pub alloc_bytes: AtomicU64,
    pub free_samples: AtomicU64,
    pub free_sampled_bytes: AtomicU64,
    pub free_objects_fp: AtomicU64,
    pub free_bytes: AtomicU64,
}

/// `1.0` in the fixed-point object estimates.
pub(super) const FIXED_ONE: f64 = 65536.0;

#[repr(C)]
struct Site {
    /// `(stack index + 1) << 32 | label set id << 16 | size class`; zero when empty. Label set
    /// ids fit 16 bits (`labels::MAX_LABEL_SETS`), size classes 8.
    key: AtomicU64,
    counters: SiteCounters,
}

/// One cache line of live-block addresses; zero is an empty slot.
#[repr(C, align(64))]
struct LiveLine {
    addrs: [AtomicUsize; LINE_SLOTS],
}

/// What the sampler remembers about a live sampled block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LiveBlock {
    pub site: usize,
    /// The sampling rate the block was sampled at, to weight its free as its allocation.
    pub rate: u32,
}

/// Events the tables could not record in full, reported in profile comments.
#[derive(Default)]
pub(super) struct Losses {
    /// Samples recorded against the overflow site because the stack or site table was full.
    pub table_full: AtomicU64,
    /// Sampled blocks counted freed at once because the live set was full.
    pub live_set_full: AtomicU64,
    /// Samples recorded without their stack: too little stack left to walk it.
    pub no_stack_room: AtomicU64,
    /// Samples recorded without their stack: it was on memory no known mapping holds.
    pub unknown_stack: AtomicU64,
}

/// Every table of the heap profiler. All-zero bytes are a valid, empty value.
#[repr(C)]
pub(super) struct HeapTables {
    stacks: [StackEntry; STACKS],
    chunks: [AtomicPtr<u64>; CHUNKS],
    arena_used: AtomicUsize,
    sites: [Site; SITES],
    overflow_site: SiteCounters,
    live_lines: [LiveLine; LIVE_LINES],
    live_meta: [AtomicU64; LIVE_SLOTS],
    /// A line whose blocks spilled into their second line; sticky.
    live_spilled: [AtomicBool; LIVE_LINES],
    pub losses: Losses,
}

/// A stack as stored, for the report.
pub(super) struct StoredStack<'a> {
    pub frames: &'a [u64],
    pub truncated: bool,
}

impl HeapTables {
    /// Interns `frames` and returns the stack's index, or `None` when the table is full.
    /// A new stack's frames go to the arena, whose chunks come from `inner`.
    pub fn intern_stack<A: GlobalAlloc>(
        &self,
        frames: &[u64],
        truncated: bool,
        inner: &A,
    ) -> Option<usize> {
        let hash = hash_stack(frames, truncated);
        let start = hash as usize % STACKS;
        for probe in 0..MAX_PROBES {
            let index = (start + probe) % STACKS;
            let entry = &self.stacks[index];
            match entry.hash.compare_exchange(0, hash, AcqRel, Acquire) {
                Ok(_) => {
                    self.publish_frames(entry, frames, truncated, inner);
                    return Some(index);
                }
                Err(existing) if existing == hash => return Some(index),
                Err(_) => continue,
            }
        }
        None
    }

    fn publish_frames<A: GlobalAlloc>(
        &self,
        entry: &StackEntry,
        frames: &[u64],
        truncated: bool,
        inner: &A,
    ) {
        let depth = frames.len();
        if depth == 0 {
            // Nothing to store (a full arena would otherwise hand out a chunk past its end).
            entry.location.store(1, Release);
            return;
        }
        let Some(start) = self.reserve_frames(depth) else {
            // Arena full: publish an empty, truncated stack so the report shows the site as
            // "[truncated]" rather than dropping its bytes.
            entry.location.store(1, Release);
            return;
        };
        let Some(chunk) = self.chunk(start / CHUNK_FRAMES, inner) else {
            entry.location.store(1, Release);
            return;
        };
        // SAFETY: `start..start + depth` lies within one chunk of `CHUNK_FRAMES` frames
        // (`reserve_frames`), was reserved by this thread alone, and nobody reads it before
        // the release store below publishes it.
        unsafe {
            std::ptr::copy_nonoverlapping(frames.as_ptr(), chunk.add(start % CHUNK_FRAMES), depth)
        };
        let location = (start as u64) << 24 | (depth as u64) << 1 | truncated as u64;
        // A location of 0 means "not yet written"; an empty untruncated stack at 0 becomes
        // an empty truncated one, which is what an empty stack is.
        entry.location.store(location.max(1), Release);
    }

    /// Reserves `depth` consecutive arena frames within one chunk.
    fn reserve_frames(&self, depth: usize) -> Option<usize> {
        let mut used = self.arena_used.load(Relaxed);
        loop {
            let mut start = used;
            if start % CHUNK_FRAMES + depth > CHUNK_FRAMES {
                start = (start / CHUNK_FRAMES + 1) * CHUNK_FRAMES;
            }
            if start + depth > ARENA_FRAMES {
                return None;
            }
            match self
                .arena_used
                .compare_exchange_weak(used, start + depth, Relaxed, Relaxed)
            {
                Ok(_) => return Some(start),
                Err(now) => used = now,
            }
        }
    }

    /// Arena chunk `index`, allocated through `inner` by the first thread that needs it.
    fn chunk<A: GlobalAlloc>(&self, index: usize, inner: &A) -> Option<*mut u64> {
        let slot = self.chunks.get(index)?;
        let chunk = slot.load(Acquire);
        if !chunk.is_null() {
            return Some(chunk);
        }
        let layout = CHUNK_LAYOUT;
        // SAFETY: the layout has a non-zero size.
        let fresh = unsafe { inner.alloc(layout) } as *mut u64;
        if fresh.is_null() {
            return None;
        }
        match slot.compare_exchange(std::ptr::null_mut(), fresh, AcqRel, Acquire) {
            Ok(_) => Some(fresh),
            Err(existing) => {
                // SAFETY: `fresh` came from `inner.alloc(layout)` and was never shared.
                unsafe { inner.dealloc(fresh as *mut u8, layout) };
                Some(existing)
            }
        }
    }

    /// The stack at `index`, once its frames are published.
    pub fn stack(&self, index: usize) -> Option<StoredStack<'_>> {
        let location = self.stacks.get(index)?.location.load(Acquire);
        if location == 0 {
            return None;
        }
        let start = (location >> 24) as usize;
        let depth = (location >> 1 & 0x7f_ffff) as usize;
        if depth == 0 {
            return Some(StoredStack {
                frames: &[],
                truncated: true,
            });
        }
        let chunk = self.chunks[start / CHUNK_FRAMES].load(Acquire);
        // SAFETY: a published location with frames points into a chunk that was allocated
        // before the frames were written and the release store published them; chunks and
        // published frames are never freed or rewritten.
        let frames = unsafe { std::slice::from_raw_parts(chunk.add(start % CHUNK_FRAMES), depth) };
        Some(StoredStack {
            frames,
            truncated: location & 1 == 1,
        })
    }

    /// The site of (`stack`, `labels`, `size class`), claimed if new; the overflow site when
    /// full.
    pub fn site(&self, stack: Option<usize>, labels: LabelSetId, size_class: u64) -> usize {
        let Some(stack) = stack else {
            self.losses.table_full.fetch_add(1, Relaxed);
            return OVERFLOW_SITE;
        };
        let key = (stack as u64 + 1) << 32 | (labels.0 as u64) << 16 | size_class;
        let start = (mix(key) as usize) % SITES;
        for probe in 0..MAX_PROBES {
            let index = (start + probe) % SITES;
            match self.sites[index]
                .key
                .compare_exchange(0, key, AcqRel, Acquire)
            {
                Ok(_) => return index,
                Err(existing) if existing == key => return index,
                Err(_) => continue,
            }
        }
        self.losses.table_full.fetch_add(1, Relaxed);
        OVERFLOW_SITE
    }

    /// The counters of `site` (an index from [`HeapTables::site`]).
    pub fn counters(&self, site: usize) -> &SiteCounters {
        match self.sites.get(site) {
            Some(s) => &s.counters,
            None => &self.overflow_site,
        }
    }

    /// Every claimed site as `(site index, stack index, labels)`, plus the overflow site as
    /// `(OVERFLOW_SITE, None, no labels)`.
    pub fn sites(&self) -> impl Iterator<Item = (usize, Option<usize>, LabelSetId)> + '_ {
        self.sites
            .iter()
            .enumerate()
            .filter_map(|(index, site)| {
                let key = site.key.load(Acquire);
                let labels = LabelSetId((key >> 16 & 0xffff) as u32);
                (key != 0).then(|| (index, Some((key >> 32) as usize - 1), labels))
            })
            .chain(std::iter::once((OVERFLOW_SITE, None, LabelSetId::NONE)))
    }

    /// Records `addr` as a live sampled block; `false` when the live set is full.
    pub fn insert_live(&self, addr: usize, block: LiveBlock) -> bool {
        let meta = (block.site as u64) << 32 | block.rate as u64;
        let (first, second) = live_lines(addr);
        for (line, spill) in [(first, false), (second, true)] {
            for (slot, cell) in self.live_lines[line].addrs.iter().enumerate() {
                if cell.compare_exchange(0, addr, AcqRel, Relaxed).is_ok() {
                    // The block is not yet returned to the program, so no free of it can
                    // look for this metadata before the allocation returns.
                    self.live_meta[line * LINE_SLOTS + slot].store(meta, Relaxed);
                    if spill {
                        self.live_spilled[first].store(true, Release);
                    }
                    return true;
                }
            }
        }
        false
    }

    /// Removes `addr` from the live set, returning what was recorded for it.
    pub fn remove_live(&self, addr: usize) -> Option<LiveBlock> {
        let (first, second) = live_lines(addr);
        let lines = if self.live_spilled[first].load(Acquire) {
            2
        } else {
            1
        };
        for line in [first, second].into_iter().take(lines) {
            for (slot, cell) in self.live_lines[line].addrs.iter().enumerate() {
                if cell.load(Relaxed) != addr {
                    continue;
                }
                // Read the metadata before freeing the slot: once it is zero, another insert
                // may claim it and overwrite the metadata.
                let meta = self.live_meta[line * LINE_SLOTS + slot].load(Relaxed);
                if cell.compare_exchange(addr, 0, AcqRel, Relaxed).is_ok() {
                    return Some(LiveBlock {
                        site: (meta >> 32) as usize,
                        rate: meta as u32,
                    });
                }
            }
        }
        None
    }

    /// Bytes of arena chunks allocated so far.
    pub fn chunk_bytes(&self) -> usize {
        let chunks = self.chunks.iter().filter(|c| !c.load(Relaxed).is_null());
        chunks.count() * CHUNK_LAYOUT.size()
    }

    /// Frames used in the arena and distinct stacks and sites held, for the report.
    pub fn usage(&self) -> (usize, usize, usize) {
        let stacks = self
            .stacks
            .iter()
            .filter(|s| s.hash.load(Relaxed) != 0)
            .count();
        let sites = self
            .sites
            .iter()
            .filter(|s| s.key.load(Relaxed) != 0)
            .count();
        (
            self.arena_used.load(Relaxed).min(ARENA_FRAMES),
            stacks,
            sites,
        )
    }
}

/// One arena chunk; a constant, so no allocator path computes (or unwraps) a layout.
const CHUNK_LAYOUT: Layout = Layout::new::<[u64; CHUNK_FRAMES]>();

/// The two candidate lines of a block address.
fn live_lines(addr: usize) -> (usize, usize) {
    let h = mix(addr as u64);
    ((h as usize) % LIVE_LINES, (h >> 32) as usize % LIVE_LINES)
}

/// The size class of an allocation: exact below 8 bytes, then four classes per power of two,
/// so one allocation site with many sizes takes a bounded number of sites.
pub(super) fn size_class(size: usize) -> u64 {
    let size = size as u64;
    if size < 8 {
        return size;
    }
    let log = 63 - size.leading_zeros() as u64;
    log << 2 | (size >> (log - 2) & 3)
}

/// A 64-bit finaliser (splitmix64) spreading keys over the tables.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A non-zero hash of a stack.
fn hash_stack(frames: &[u64], truncated: bool) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64 ^ truncated as u64;
    for &frame in frames {
        h = mix(h ^ frame);
    }
    h.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_tables() -> Box<HeapTables> {
        let layout = std::alloc::Layout::new::<HeapTables>();
        // SAFETY: all-zero bytes are a valid empty `HeapTables` (module doc); the box frees
        // it with the same layout.
        unsafe { Box::from_raw(std::alloc::alloc_zeroed(layout) as *mut HeapTables) }
    }

    #[test]
    fn stacks_and_sites_are_interned_once() {
        let tables = empty_tables();
        let a = tables
            .intern_stack(&[1, 2, 3], false, &std::alloc::System)
            .unwrap();
        let b = tables
            .intern_stack(&[1, 2, 4], false, &std::alloc::System)
            .unwrap();
        assert_ne!(a, b);
        assert_eq!(
            tables.intern_stack(&[1, 2, 3], false, &std::alloc::System),
            Some(a)
        );
        assert_ne!(
            tables.intern_stack(&[1, 2, 3], true, &std::alloc::System),
            Some(a)
        );
        let stored = tables.stack(a).unwrap();
        assert_eq!(
            (stored.frames, stored.truncated),
            (&[1u64, 2, 3][..], false)
        );

        let none = LabelSetId::NONE;
        let labelled = LabelSetId(7);
        let site = tables.site(Some(a), none, size_class(100));
        assert_eq!(
            tables.site(Some(a), none, size_class(101)),
            site,
            "same size class"
        );
        assert_ne!(tables.site(Some(a), none, size_class(1000)), site);
        assert_ne!(tables.site(Some(b), none, size_class(100)), site);
        let with_labels = tables.site(Some(a), labelled, size_class(100));
        assert_ne!(with_labels, site, "other labels, another site");
        assert_eq!(tables.site(None, none, 1), OVERFLOW_SITE);
        assert_eq!(tables.losses.table_full.load(Relaxed), 1);
        let sites: Vec<_> = tables.sites().collect();
        assert_eq!(sites.len(), 5, "four sites and the overflow site");
        assert!(sites.contains(&(site, Some(a), none)));
        assert!(sites.contains(&(with_labels, Some(a), labelled)));
    }

    #[test]
    fn size_classes_are_exact_when_small_and_quarter_powers_of_two_above() {
        assert_eq!(
            (1..8).map(size_class).collect::<Vec<_>>(),
            (1..8).collect::<Vec<_>>()
        );
        assert_eq!(size_class(1024), size_class(1279));
        assert_ne!(size_class(1279), size_class(1280));
        assert!(size_class(usize::MAX) < 1 << 16);
    }

    #[test]
    fn live_blocks_spill_to_a_second_line_and_come_back_out() {
        let tables = empty_tables();
        // Addresses sharing a first line: more than one line holds.
        let first = live_lines(0x1000).0;
        let crowd: Vec<usize> = (1..)
            .map(|i| 0x1000 + i * 16)
            .filter(|&a| live_lines(a).0 == first)
            .take(LINE_SLOTS + 3)
            .collect();
        for (i, &addr) in crowd.iter().enumerate() {
            let block = LiveBlock {
                site: i,
                rate: 4096,
            };
            assert!(tables.insert_live(addr, block), "insert {i}");
        }
        assert!(tables.live_spilled[first].load(Relaxed));
        assert_eq!(tables.remove_live(0x999), None, "never inserted");
        for (i, &addr) in crowd.iter().enumerate().rev() {
            assert_eq!(
                tables.remove_live(addr),
                Some(LiveBlock {
                    site: i,
                    rate: 4096
                })
            );
            assert_eq!(tables.remove_live(addr), None, "removed once");
        }
        assert!(tables
            .live_lines
            .iter()
            .all(|l| l.addrs.iter().all(|a| a.load(Relaxed) == 0)));
    }

    #[test]
    fn a_full_live_set_refuses_instead_of_waiting() {
        let tables = empty_tables();
        let target = live_lines(0x2000);
        let both: Vec<usize> = (1..)
            .map(|i| 0x2000 + i * 16)
            .filter(|&a| live_lines(a) == target)
            .take(2 * LINE_SLOTS + 1)
            .collect();
        let block = LiveBlock { site: 0, rate: 1 };
        let inserted = both
            .iter()
            .filter(|&&a| tables.insert_live(a, block))
            .count();
        let capacity = if target.0 == target.1 {
            LINE_SLOTS
        } else {
            2 * LINE_SLOTS
        };
        assert_eq!(inserted, capacity);
    }
}
