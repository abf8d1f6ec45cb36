//! Stack unwinding that is safe inside a signal handler.
//!
//! Outside the handler, [`UnwindTables::load`] copies every loaded object's `.eh_frame` into a
//! framehop unwinder and preallocates its caches, and [`StackBounds::load`] records which
//! memory is readable. Inside the handler, [`unwind_signal_context`] walks the interrupted
//! stack with those: DWARF CFI, frame pointers only for code outside every loaded object (JIT
//! code), every stack read checked against the readable range holding the stack pointer, and
//! the addresses written into a caller-provided array. A frame in a loaded object that no CFI
//! describes (musl's C library, hand-written assembly) ends the walk: such code rarely keeps
//! frame pointers, and following `rbp`/`x29` through it gave made-up frames. The stack is then
//! marked truncated, unless that frame is a known thread root ([`roots`]).
//!
//! [`unwind_current_thread`] walks the calling thread's own stack the same way, for the heap
//! sampler, which runs inside the global allocator where the same rules apply.
//!
//! Invariants (docs/invariants.md 1 and 4): no allocation, no lock, no libgcc unwinder, no read
//! outside known-readable memory; a stack that does not reach its root is reported truncated.

mod described;
pub(crate) mod published;
pub(crate) mod ring;
mod roots;
mod stacks;

pub(crate) use crate::arch::{current_regs, InterruptedRegs};
pub(crate) use stacks::{current_alt_stack, NoWalk, StackBounds, StackRange, WALK_STACK_NEED};

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};

use framehop::{
    AllocationPolicy, CacheNative, ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder,
    UnwinderNative,
};

use crate::objects;
use described::DescribedCode;

/// Unwinder caches kept per table set: one per thread unwinding at the same moment. A handler
/// that finds all taken records its sample as truncated rather than wait.
const CACHE_SLOTS: usize = 32;

/// framehop's allocation-free policy with scratch space sized for the registers this
/// architecture's CFI describes. framehop's own `MustNotAllocateDuringUnwind` keeps rules for
/// 192 registers per unwind row (about 6 KiB), and the rows it evaluates are built and copied
/// on the stack of the thread being sampled: with it a sample needed about 11 KiB of that
/// thread's stack. A row needs one rule per register the CFI saves: 17 at most on x86_64
/// (the general registers and the return address), about 30 on aarch64 (x19-x30, d8-d15, sp).
/// A row that needs more makes gimli return an error, which ends the walk as truncated.
pub(crate) struct SignalSafe;

/// Fixed-size gimli storage for [`SignalSafe`].
pub(crate) struct SignalSafeStorage;

/// Register rules per unwind row.
const RULES_PER_ROW: usize = 40;

impl<RO: gimli::ReaderOffset> gimli::UnwindContextStorage<RO> for SignalSafeStorage {
    type Rules = [(gimli::Register, gimli::RegisterRule<RO>); RULES_PER_ROW];
    // `DW_CFA_remember_state` nesting: compilers use one level.
    type Stack = [gimli::UnwindTableRow<RO, Self>; 2];
}

impl<R: gimli::Reader> gimli::EvaluationStorage<R> for SignalSafeStorage {
    // CFA expressions (PLT entries, signal frames) push a handful of values.
    type Stack = [gimli::Value; 16];
    type ExpressionStack = [(R, R); 2];
    type Result = [gimli::Piece<R>; 1];
}

impl AllocationPolicy for SignalSafe {
    type GimliUnwindContextStorage<R: gimli::ReaderOffset> = SignalSafeStorage;
    type GimliEvaluationStorage<R: gimli::Reader> = SignalSafeStorage;
}

struct CacheSlot {
    busy: AtomicBool,
    cache: UnsafeCell<CacheNative<SignalSafe>>,
}

/// Unwind information for every loaded object, ready for use in a signal handler.
pub(crate) struct UnwindTables {
    unwinder: UnwinderNative<Vec<u8>, SignalSafe>,
    caches: Box<[CacheSlot]>,
    generation: (u64, u64),
    /// The address ranges of every loaded object, sorted: a caller address outside all of
    /// them is not a return address, so the walk has gone wrong (frame pointers used where there are none,
    /// as in hand-written assembly without CFI) and stops there, marked truncated.
    object_ranges: Box<[std::ops::Range<u64>]>,
    /// The highest address any loaded object occupies: on aarch64, bits above it in a return
    /// address are a pointer-authentication signature.
    highest_code_address: u64,
    /// The run-time address ranges the loaded objects' CFI describes, sorted and disjoint: a
    /// frame elsewhere in an object cannot be unwound soundly.
    described: Box<[std::ops::Range<u64>]>,
    /// The functions of [`roots::UNDESCRIBED_ROOTS`], sorted: a stack that reaches one is whole.
    roots: Box<[std::ops::Range<u64>]>,
}

// SAFETY: the unwinder is only read; each cache is used by the one thread that set its `busy`
// flag (see `unwind_signal_context`).
unsafe impl Sync for UnwindTables {}
// SAFETY: as above; nothing in the tables is tied to the thread that built them.
unsafe impl Send for UnwindTables {}

impl UnwindTables {
    /// Reads the loaded objects' unwind sections. Allocates; never call from a handler.
    pub fn load() -> Self {
        let generation = objects::load_generation();
        let mut unwinder = UnwinderNative::new();
        let mut object_ranges = Vec::new();
        let mut described = Vec::new();
        let mut roots = Vec::new();
        let mut described_code = DescribedCode::start();
        for mut object in objects::loaded_objects(true) {
            object_ranges.push(object.avma_range.clone());
            let code = described_code.of(&object);
            let bias = object.bias;
            let at_run_time = |r: &std::ops::Range<u64>| r.start + bias..r.end + bias;
            described.extend(code.described.iter().map(at_run_time));
            roots.extend(code.roots.iter().map(at_run_time));
            let Some(sections) = object.unwind_sections.take() else {
                continue;
            };
            let info = ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: object.text_svma,
                eh_frame_svma: Some(sections.eh_frame_svma),
                eh_frame: Some(sections.eh_frame),
                eh_frame_hdr_svma: Some(sections.eh_frame_hdr_svma),
                eh_frame_hdr: Some(sections.eh_frame_hdr),
                ..Default::default()
            };
            unwinder.add_module(Module::new(
                object.path,
                object.avma_range,
                object.bias,
                info,
            ));
        }
        described_code.keep();
        let caches = (0..CACHE_SLOTS)
            .map(|_| CacheSlot {
                busy: AtomicBool::new(false),
                cache: UnsafeCell::new(CacheNative::new_in()),
            })
            .collect();
        object_ranges.sort_unstable_by_key(|range| range.start);
        let highest_code_address = object_ranges.iter().map(|r| r.end).max().unwrap_or(0);
        roots.sort_unstable_by_key(|range| range.start);
        UnwindTables {
            unwinder,
            caches,
            generation,
            object_ranges: object_ranges.into_boxed_slice(),
            highest_code_address,
            described: merged(described).into_boxed_slice(),
            roots: roots.into_boxed_slice(),
        }
    }

    /// Whether objects were loaded or unloaded since these tables were read.
    pub fn is_stale(&self) -> bool {
        objects::load_generation() != self.generation
    }

    /// Whether `address` lies in a loaded object. A binary search: no allocation, no lock.
    fn in_loaded_object(&self, address: u64) -> bool {
        in_sorted(&self.object_ranges, address)
    }

    /// Whether the CFI describes the code at `address`. A binary search: no allocation, no lock.
    fn is_described(&self, address: u64) -> bool {
        in_sorted(&self.described, address)
    }

    /// Whether `address` lies in a thread root the CFI does not describe.
    fn is_undescribed_root(&self, address: u64) -> bool {
        in_sorted(&self.roots, address)
    }
}

/// Whether one of `ranges` (sorted by start; the one starting last at or before `address` is
/// the only candidate, so they must not overlap) holds `address`.
fn in_sorted(ranges: &[std::ops::Range<u64>], address: u64) -> bool {
    let after = ranges.partition_point(|range| range.start <= address);
    after > 0 && ranges[after - 1].contains(&address)
}

/// `ranges` sorted, with overlapping and touching ones joined.
fn merged(mut ranges: Vec<std::ops::Range<u64>>) -> Vec<std::ops::Range<u64>> {
    ranges.sort_unstable_by_key(|range| range.start);
    let mut out: Vec<std::ops::Range<u64>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match out.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => out.push(range),
        }
    }
    out
}

/// How a stack walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Unwound {
    /// Frames written.
    pub depth: usize,
    /// The walk stopped before the thread's root frame (bad read, no cache, depth limit).
    pub truncated: bool,
    /// Why the walk did not start at all (only the leaf was written).
    pub not_walked: Option<NoWalk>,
}

/// Walks the stack of an interrupted thread into `out` (leaf first; callers as return
/// address minus one). Call from the signal handler, on the interrupted stack (handlers are
/// installed without `SA_ONSTACK`). Async-signal-safe: no allocation, no lock, reads bounded
/// by the mapping (or sigaltstack) holding the interrupted stack pointer, and only with
/// [`stacks::WALK_STACK_NEED`] bytes of room below the caller.
#[inline(never)]
pub(crate) fn unwind_signal_context(
    regs: InterruptedRegs,
    tables: &UnwindTables,
    bounds: &StackBounds,
    out: &mut [u64],
) -> Unwound {
    match bounds.walk_range(regs.sp, current_regs().sp) {
        Ok(range) => walk(regs, tables, regs.sp..range.end, out),
        Err(why) => leaf_only(regs.pc, out, why),
    }
}

/// Walks the calling thread's own stack into `out`, starting inside this function (leaf
/// first; callers as return address minus one). `stack` is the range holding the calling
/// thread's stack pointer (the caller finds it without locks: see the heap sampler); reads go
/// from the stack pointer to its end. No allocation, no lock: safe inside a global allocator.
#[inline(never)]
pub(crate) fn unwind_current_thread(
    tables: &UnwindTables,
    stack: Option<StackRange>,
    out: &mut [u64],
) -> Unwound {
    unwind_from(current_regs(), tables, stack, out)
}

/// Walks from `regs`, registers the calling thread read of itself (see [`current_regs`]),
/// with reads bounded by `stack` (which must hold the stack pointer) and the room below the
/// caller checked. No allocation, no lock.
pub(crate) fn unwind_from(
    regs: InterruptedRegs,
    tables: &UnwindTables,
    stack: Option<StackRange>,
    out: &mut [u64],
) -> Unwound {
    let Some(range) = stack.filter(|r| r.holds(regs.sp)) else {
        return leaf_only(regs.pc, out, NoWalk::UnknownStack);
    };
    match stacks::check_room(range, current_regs().sp) {
        Ok(range) => walk(regs, tables, regs.sp..range.end, out),
        Err(why) => leaf_only(regs.pc, out, why),
    }
}

/// The leaf alone, for a walk that could not start.
fn leaf_only(pc: u64, out: &mut [u64], why: NoWalk) -> Unwound {
    if let Some(first) = out.first_mut() {
        *first = pc;
    }
    Unwound {
        depth: out.len().min(1),
        truncated: true,
        not_walked: Some(why),
    }
}

/// Walks from `regs` with every stack read confined to `stack`. No allocation, no lock.
fn walk(
    regs: InterruptedRegs,
    tables: &UnwindTables,
    stack: std::ops::Range<u64>,
    out: &mut [u64],
) -> Unwound {
    if out.is_empty() {
        return Unwound {
            depth: 0,
            truncated: true,
            not_walked: None,
        };
    }
    out[0] = regs.pc;
    let (lo, hi) = (stack.start, stack.end);
    let Some(slot) = tables.caches.iter().find(|s| {
        s.busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }) else {
        return Unwound {
            depth: 1,
            truncated: true,
            not_walked: None,
        };
    };
    // SAFETY: winning the `busy` flag gives this call exclusive use of the cache until it
    // stores `false` below.
    let cache = unsafe { &mut *slot.cache.get() };
    let mut read_stack = |addr: u64| -> Result<u64, ()> {
        if !addr.is_multiple_of(8) || addr < lo || addr.checked_add(8).is_none_or(|end| end > hi) {
            return Err(());
        }
        // SAFETY: `addr..addr+8` lies inside the caller-given range, which is readable stack
        // of the thread being walked (its live part, or a mapping that holds it and cannot be
        // unmapped while the thread runs).
        Ok(unsafe { std::ptr::read_volatile(addr as *const u64) })
    };
    let mut frames =
        tables
            .unwinder
            .iter_frames(
                regs.pc,
                regs.unwind_regs(tables.highest_code_address),
                cache,
                &mut read_stack,
            );
    let mut depth = 0;
    let truncated = loop {
        match frames.next() {
            Ok(Some(frame)) => {
                if depth == out.len() {
                    break true;
                }
                let address = match frame {
                    FrameAddress::InstructionPointer(pc) => pc,
                    FrameAddress::ReturnAddress(ra) => ra.get() - 1,
                };
                if depth > 0 && !tables.in_loaded_object(address) {
                    break true;
                }
                out[depth] = address;
                depth += 1;
                // Code in an object that its CFI leaves out: following frame pointers through
                // it is unsound (musl builds its C library without them), so the walk ends at
                // this frame, which is real (the leaf, or a return address the CFI found).
                if tables.in_loaded_object(address) && !tables.is_described(address) {
                    break !tables.is_undescribed_root(address);
                }
            }
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    slot.busy.store(false, Ordering::Release);
    Unwound {
        depth: depth.max(1),
        truncated,
        not_walked: None,
    }
}

#[cfg(test)]
pub(crate) mod stack_use;

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn walk_from_here(tables: &UnwindTables, out: &mut [u64]) -> Unwound {
        let here = current_regs().sp;
        let stack = StackBounds::load().holding(here);
        let unwound = unwind_current_thread(tables, stack, out);
        std::hint::black_box(unwound)
    }

    #[test]
    fn walks_the_current_thread_through_its_callers() {
        let tables = UnwindTables::load();
        let mut out = [0u64; 64];
        let unwound = walk_from_here(&tables, &mut out);
        assert!(unwound.depth > 3, "{unwound:?}");
        let symbols =
            crate::symbolize::ProcessSymbols::resolve(out[..unwound.depth].iter().copied());
        let names: Vec<String> = out[..unwound.depth]
            .iter()
            .flat_map(|&a| crate::profile::Resolver::frames(&symbols, a).to_vec())
            .map(|f| f.function)
            .collect();
        let position = |name: &str| names.iter().position(|n| n.ends_with(name));
        let walker = position("walk_from_here").unwrap_or_else(|| panic!("{names:?}"));
        let test = position("walks_the_current_thread_through_its_callers")
            .unwrap_or_else(|| panic!("{names:?}"));
        assert!(walker < test, "callers come after callees: {names:?}");
    }

    #[test]
    fn a_walk_uses_less_stack_than_it_reserves() {
        let tables = UnwindTables::load();
        let mut depth = 0;
        let used = stack_use::measure(StackBounds::load, |bounds| {
            let mut out = [0u64; ring::MAX_DEPTH];
            let regs = current_regs();
            depth =
                std::hint::black_box(unwind_signal_context(regs, &tables, &bounds, &mut out)).depth;
        });
        assert!(depth > 2, "the walk ran (depth {depth})");
        let frames = std::mem::size_of::<[u64; ring::MAX_DEPTH]>();
        println!(
            "a stack walk used {} bytes of stack (plus {frames} for its frame array)",
            used - frames
        );
        assert!(
            (used - frames) as u64 <= stacks::WALK_STACK_NEED - 512,
            "a walk used {} bytes; WALK_STACK_NEED is {}",
            used - frames,
            stacks::WALK_STACK_NEED
        );
    }
}
