//! Stack unwinding that is safe inside a signal handler.
//!
//! Outside the handler, [`UnwindTables::load`] copies every loaded object's `.eh_frame` into a
//! framehop unwinder and preallocates its caches, and [`StackBounds::load`] records which
//! memory is readable. Inside the handler, [`unwind_signal_context`] walks the interrupted
//! stack with those: DWARF CFI where an object has it, frame pointers where it does not,
//! every stack read checked against the readable range holding the stack pointer, and the
//! addresses written into a caller-provided array.
//!
//! [`unwind_current_thread`] walks the calling thread's own stack the same way, for the heap
//! sampler, which runs inside the global allocator where the same rules apply.
//!
//! Invariants (DESIGN.md 1 and 4): no allocation, no lock, no libgcc unwinder, no read
//! outside known-readable memory; a stack that does not reach its root is reported truncated.

pub(crate) mod published;
pub(crate) mod ring;

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};

use framehop::{
    CacheNative, ExplicitModuleSectionInfo, FrameAddress, Module, MustNotAllocateDuringUnwind,
    UnwindRegsNative, Unwinder, UnwinderNative,
};

use crate::objects;

/// Unwinder caches kept per table set: one per thread unwinding at the same moment. A handler
/// that finds all taken records its sample as truncated rather than wait.
const CACHE_SLOTS: usize = 32;

struct CacheSlot {
    busy: AtomicBool,
    cache: UnsafeCell<CacheNative<MustNotAllocateDuringUnwind>>,
}

/// Unwind information for every loaded object, ready for use in a signal handler.
pub(crate) struct UnwindTables {
    unwinder: UnwinderNative<Vec<u8>, MustNotAllocateDuringUnwind>,
    caches: Box<[CacheSlot]>,
    generation: (u64, u64),
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
        for object in objects::loaded_objects(true) {
            let Some(sections) = object.unwind_sections else {
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
        let caches = (0..CACHE_SLOTS)
            .map(|_| CacheSlot {
                busy: AtomicBool::new(false),
                cache: UnsafeCell::new(CacheNative::new_in()),
            })
            .collect();
        UnwindTables {
            unwinder,
            caches,
            generation,
        }
    }

    /// Whether objects were loaded or unloaded since these tables were read.
    pub fn is_stale(&self) -> bool {
        objects::load_generation() != self.generation
    }
}

/// The readable, writable mappings of the process (where stacks live), sorted and merged.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct StackBounds {
    ranges: Vec<(u64, u64)>,
}

impl StackBounds {
    /// Reads `/proc/self/maps`. Allocates; never call from a handler.
    pub fn load() -> Self {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        Self::parse(&maps)
    }

    /// One known-readable range, such as the calling thread's own stack.
    #[cfg(feature = "threadcreate")]
    pub fn single(start: u64, end: u64) -> Self {
        StackBounds {
            ranges: vec![(start, end)],
        }
    }

    fn parse(maps: &str) -> Self {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for line in maps.lines() {
            let mut fields = line.split_ascii_whitespace();
            let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
                continue;
            };
            if !perms.starts_with("rw") {
                continue;
            }
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
            else {
                continue;
            };
            match ranges.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => ranges.push((start, end)),
            }
        }
        StackBounds { ranges }
    }

    /// The readable range holding `sp`. Async-signal-safe: a binary search, no allocation.
    fn around(&self, sp: u64) -> Option<(u64, u64)> {
        let i = self.ranges.partition_point(|&(start, _)| start <= sp);
        let &(start, end) = self.ranges.get(i.checked_sub(1)?)?;
        (sp < end).then_some((start, end))
    }
}

/// How a stack walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Unwound {
    /// Frames written.
    pub depth: usize,
    /// The walk stopped before the thread's root frame (bad read, no cache, depth limit).
    pub truncated: bool,
}

/// Registers of an interrupted thread, from a signal handler's `ucontext`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct InterruptedRegs {
    pub pc: u64,
    pub sp: u64,
    pub fp: u64,
    /// The link register, which holds the leaf's return address on aarch64.
    #[cfg(target_arch = "aarch64")]
    pub lr: u64,
}

impl InterruptedRegs {
    /// Reads the registers from the third argument of an `SA_SIGINFO` handler.
    ///
    /// # Safety
    /// `ucontext` must be the context pointer the kernel passed to the running handler.
    pub unsafe fn from_ucontext(ucontext: *const libc::c_void) -> Self {
        // SAFETY: the caller passes the kernel's ucontext, valid during the handler.
        let uc = unsafe { &*(ucontext as *const libc::ucontext_t) };
        #[cfg(target_arch = "x86_64")]
        {
            let g = &uc.uc_mcontext.gregs;
            InterruptedRegs {
                pc: g[libc::REG_RIP as usize] as u64,
                sp: g[libc::REG_RSP as usize] as u64,
                fp: g[libc::REG_RBP as usize] as u64,
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            let m = &uc.uc_mcontext;
            InterruptedRegs {
                pc: m.pc,
                sp: m.sp,
                fp: m.regs[29],
                lr: m.regs[30],
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn unwind_regs(&self) -> UnwindRegsNative {
        UnwindRegsNative::new(self.pc, self.sp, self.fp)
    }

    #[cfg(target_arch = "aarch64")]
    fn unwind_regs(&self) -> UnwindRegsNative {
        UnwindRegsNative::new(self.lr, self.sp, self.fp)
    }
}

/// Walks the stack of an interrupted thread into `out` (leaf first; callers as return
/// address minus one). Async-signal-safe: no allocation, no lock, bounded reads.
pub(crate) fn unwind_signal_context(
    regs: InterruptedRegs,
    tables: &UnwindTables,
    bounds: &StackBounds,
    out: &mut [u64],
) -> Unwound {
    let Some((lo, hi)) = bounds.around(regs.sp) else {
        if let Some(first) = out.first_mut() {
            *first = regs.pc;
        }
        return Unwound {
            depth: out.len().min(1),
            truncated: true,
        };
    };
    walk(regs, tables, lo..hi, out)
}

/// Walks the calling thread's own stack into `out`, starting inside this function (leaf
/// first; callers as return address minus one). `stack_top` is one past the highest address
/// of the thread's stack; reads are confined to the live part, from the current stack pointer
/// up to it. No allocation, no lock: safe inside a global allocator.
#[inline(never)]
pub(crate) fn unwind_current_thread(
    tables: &UnwindTables,
    stack_top: u64,
    out: &mut [u64],
) -> Unwound {
    let regs = current_regs();
    if regs.sp >= stack_top {
        // Running on a stack other than the thread's own (an alternate signal stack, a
        // coroutine): nothing bounds the reads, so keep the leaf only.
        if let Some(first) = out.first_mut() {
            *first = regs.pc;
        }
        return Unwound {
            depth: out.len().min(1),
            truncated: true,
        };
    }
    walk(regs, tables, regs.sp..stack_top, out)
}

/// The program counter, stack pointer and frame pointer at the point of the call, read by
/// one asm block so they describe the same instruction (what the unwind tables expect).
#[inline(always)]
pub(crate) fn current_regs() -> InterruptedRegs {
    #[cfg(target_arch = "x86_64")]
    {
        let (pc, sp, fp): (u64, u64, u64);
        // SAFETY: reads three registers into outputs; touches no memory and no flags.
        unsafe {
            std::arch::asm!(
                "lea {pc}, [rip]",
                "mov {sp}, rsp",
                "mov {fp}, rbp",
                pc = out(reg) pc,
                sp = out(reg) sp,
                fp = out(reg) fp,
                options(nomem, nostack, preserves_flags)
            );
        }
        InterruptedRegs { pc, sp, fp }
    }
    #[cfg(target_arch = "aarch64")]
    {
        let (pc, sp, fp, lr): (u64, u64, u64, u64);
        // SAFETY: reads four registers into outputs; touches no memory and no flags.
        unsafe {
            std::arch::asm!(
                "adr {pc}, .",
                "mov {sp}, sp",
                "mov {fp}, x29",
                "mov {lr}, x30",
                pc = out(reg) pc,
                sp = out(reg) sp,
                fp = out(reg) fp,
                lr = out(reg) lr,
                options(nomem, nostack, preserves_flags)
            );
        }
        InterruptedRegs { pc, sp, fp, lr }
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
        };
    };
    // SAFETY: winning the `busy` flag gives this call exclusive use of the cache until it
    // stores `false` below.
    let cache = unsafe { &mut *slot.cache.get() };
    let mut read_stack = |addr: u64| -> Result<u64, ()> {
        if addr % 8 != 0 || addr < lo || addr.checked_add(8).is_none_or(|end| end > hi) {
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
            .iter_frames(regs.pc, regs.unwind_regs(), cache, &mut read_stack);
    let mut depth = 0;
    let truncated = loop {
        match frames.next() {
            Ok(Some(frame)) => {
                if depth == out.len() {
                    break true;
                }
                out[depth] = match frame {
                    FrameAddress::InstructionPointer(pc) => pc,
                    FrameAddress::ReturnAddress(ra) => ra.get() - 1,
                };
                depth += 1;
            }
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    slot.busy.store(false, Ordering::Release);
    Unwound {
        depth: depth.max(1),
        truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_adjacent_writable_mappings_and_finds_the_stack() {
        let maps = "1000-2000 rw-p 00000000 00:00 0\n2000-3000 rw-p 00000000 00:00 0\n\
                    3000-4000 r-xp 00000000 00:00 0 /bin/x\n5000-6000 rw-p 00000000 00:00 0 [stack]\n";
        let bounds = StackBounds::parse(maps);
        assert_eq!(bounds.ranges, vec![(0x1000, 0x3000), (0x5000, 0x6000)]);
        assert_eq!(bounds.around(0x2800), Some((0x1000, 0x3000)));
        assert_eq!(bounds.around(0x3800), None);
        assert_eq!(bounds.around(0x5fff), Some((0x5000, 0x6000)));
        assert_eq!(bounds.around(0x6000), None);
    }

    #[inline(never)]
    fn walk_from_here(tables: &UnwindTables, out: &mut [u64]) -> Unwound {
        let top = stack_top();
        let unwound = unwind_current_thread(tables, top, out);
        std::hint::black_box(unwound)
    }

    fn stack_top() -> u64 {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let here = &maps as *const _ as u64;
        let bounds = StackBounds::parse(&maps);
        bounds.around(here).expect("the stack is mapped").1
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
}
