//! Which memory a stack walk may read, and how much stack a walk may use.
//!
//! Every read of the unwinder is bounded by the one mapping that holds the stack pointer it
//! starts from: reads go from the stack pointer up to the end of that mapping and never
//! further. A stack that a program switched to (a coroutine's, a green thread's) often has
//! an unmapped gap or another mapping's guard page just above it, and the CFI of the switch
//! frame still describes the old stack; bounding by the mapping turns that into a truncated
//! stack instead of a fault. Mappings are never merged with their neighbours: a neighbour
//! unmapped after the snapshot was taken cannot be reached from inside the stack's own
//! mapping, which cannot go away while its thread runs on it.
//!
//! Stack room: a signal handler without `SA_ONSTACK` runs on the stack of the code it
//! interrupted, below its frame. Before walking, [`StackBounds::walk_range`] checks the room
//! between the handler's own stack pointer and the lowest address that stack can have (the
//! start of the thread's mapping, the floor the main thread's `[stack]` may grow down to, or
//! the start of the sigaltstack the thread is running on), and refuses when it is below
//! [`WALK_STACK_NEED`]; the caller then records the sample as lost for want of room.

/// Stack a walk needs below the point where it is checked: the unwinder's frames (measured by
/// `unwind::tests::a_walk_uses_less_stack_than_it_reserves`) with room to spare.
pub(crate) const WALK_STACK_NEED: u64 = 4 * 1024;

/// One readable, writable mapping that may hold a stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    /// The lowest address the stack in it may reach: `start`, or for the main thread's
    /// `[stack]`, which the kernel grows on demand, its end minus the stack size limit.
    floor: u64,
}

/// The readable memory a walk may use, and the lowest address its stack may grow to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StackRange {
    /// Lowest address the stack can use (for the room check; reads never go below the
    /// stack pointer).
    pub floor: u64,
    /// One past the highest readable address.
    pub end: u64,
}

impl StackRange {
    /// Whether `sp` lies in the range.
    pub fn holds(&self, sp: u64) -> bool {
        (self.floor..self.end).contains(&sp)
    }
}

/// The readable, writable mappings of the process (where stacks live), sorted, unmerged.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct StackBounds {
    mappings: Vec<Mapping>,
}

/// Why a walk cannot start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NoWalk {
    /// The stack pointer is in no known mapping: nothing bounds the reads.
    UnknownStack,
    /// Less than [`WALK_STACK_NEED`] bytes of stack are left below the caller.
    NoRoom,
}

impl StackBounds {
    /// Reads `/proc/self/maps`. Allocates; never call from a handler or the allocator.
    pub fn load() -> Self {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        Self::parse(&maps, main_stack_limit())
    }

    fn parse(maps: &str, main_stack_limit: u64) -> Self {
        let mut mappings = Vec::new();
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
            let grows_down = line.ends_with("[stack]");
            let floor = if grows_down {
                end.saturating_sub(main_stack_limit).min(start)
            } else {
                start
            };
            mappings.push(Mapping { start, end, floor });
        }
        mappings.sort_unstable_by_key(|m| m.start);
        StackBounds { mappings }
    }

    /// The mapping holding `sp`. Async-signal-safe: a binary search, no allocation.
    pub fn holding(&self, sp: u64) -> Option<StackRange> {
        let i = self.mappings.partition_point(|m| m.start <= sp);
        let m = self.mappings.get(i.checked_sub(1)?)?;
        (sp < m.end).then_some(StackRange {
            floor: m.floor,
            end: m.end,
        })
    }

    /// The range a walk from `sp` may read, when the calling code runs on the same stack at
    /// `here` and has room to walk. Checks first whether the caller runs on a sigaltstack
    /// (one `sigaltstack` system call), whose bounds then replace the mapping's.
    /// Async-signal-safe.
    pub fn walk_range(&self, sp: u64, here: u64) -> Result<StackRange, NoWalk> {
        let range = match current_alt_stack() {
            Some(alt) if alt.holds(sp) => alt,
            _ => self.holding(sp).ok_or(NoWalk::UnknownStack)?,
        };
        check_room(range, here)
    }
}

/// `range` if `here` (the caller's stack pointer, on the same stack) has room to walk.
pub(crate) fn check_room(range: StackRange, here: u64) -> Result<StackRange, NoWalk> {
    if here.saturating_sub(range.floor) < WALK_STACK_NEED {
        Err(NoWalk::NoRoom)
    } else {
        Ok(range)
    }
}

/// The sigaltstack the calling thread is running on, if it is on one. Async-signal-safe:
/// `sigaltstack` is a plain system call.
pub(crate) fn current_alt_stack() -> Option<StackRange> {
    // SAFETY: a zeroed stack_t is a valid output buffer.
    let mut current: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: a null new stack only queries; `current` is valid for writing.
    if unsafe { libc::sigaltstack(std::ptr::null(), &mut current) } != 0 {
        return None;
    }
    (current.ss_flags & libc::SS_ONSTACK != 0).then(|| {
        let start = current.ss_sp as u64;
        StackRange {
            floor: start,
            end: start + current.ss_size as u64,
        }
    })
}

/// How far the main thread's stack may grow (`RLIMIT_STACK`, capped: an unlimited stack is
/// taken as 8 MiB, the usual default).
fn main_stack_limit() -> u64 {
    // SAFETY: a zeroed rlimit is a valid output buffer.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `limit` is valid for writing.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut limit) } == 0;
    const DEFAULT: u64 = 8 << 20;
    if !ok || limit.rlim_cur == libc::RLIM_INFINITY {
        DEFAULT
    } else {
        limit.rlim_cur as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_each_writable_mapping_apart_and_finds_the_one_holding_sp() {
        let maps = "1000-2000 rw-p 00000000 00:00 0\n2000-3000 rw-p 00000000 00:00 0\n\
                    3000-4000 r-xp 00000000 00:00 0 /bin/x\n\
                    50000-60000 rw-p 00000000 00:00 0 [stack]\n";
        let bounds = StackBounds::parse(maps, 0x20000);
        let range = |floor, end| Some(StackRange { floor, end });
        assert_eq!(bounds.holding(0x2800), range(0x2000, 0x3000));
        assert_eq!(bounds.holding(0x1800), range(0x1000, 0x2000));
        assert_eq!(bounds.holding(0x3800), None, "not writable");
        assert_eq!(
            bounds.holding(0x5ffff),
            range(0x40000, 0x60000),
            "[stack] grows"
        );
        assert_eq!(bounds.holding(0x60000), None);
    }

    #[test]
    fn refuses_to_walk_without_room_or_without_a_mapping() {
        let bounds = StackBounds::parse("10000-20000 rw-p 00000000 00:00 0\n", 0);
        let sp = 0x1f000;
        assert!(bounds.walk_range(sp, sp - 0x100).is_ok());
        assert_eq!(
            bounds.walk_range(0x11000, 0x10000 + WALK_STACK_NEED - 1),
            Err(NoWalk::NoRoom)
        );
        assert_eq!(
            bounds.walk_range(0x30000, 0x2f000),
            Err(NoWalk::UnknownStack)
        );
    }
}
