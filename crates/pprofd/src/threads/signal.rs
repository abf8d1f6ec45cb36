//! The dump signal: each thread unwinds its own stack into a slot the requester prepared.
//! Thread dumps ([`super::ThreadDump`]) and the off-CPU sampler ([`crate::offcpu`]) both ask
//! for stacks through [`collect`], one request at a time.
//!
//! Invariants, which every change here must keep (docs/invariants.md 1 and 2):
//! - The handler reads registers from the ucontext, unwinds with tables loaded beforehand and
//!   writes addresses into the slot for its thread id, allocated beforehand. It allocates
//!   nothing, takes no lock, calls no libgcc unwinder or symbolizer, and saves/restores errno.
//!   Besides the stack it reads only the thread's label-set id (a thread-local word), code bytes on the page of the interrupted PC (to tell a
//!   blocked system call from running code), and it ends with one `FUTEX_WAKE` system call
//!   that wakes the requester.
//! - The handler is installed once (on the first dump) and never removed: a dump signal that
//!   arrives late (after the deadline, or when a thread unblocks it) finds no dump published,
//!   or one of another generation, and returns. A signal of that number that does not carry
//!   our cookie goes to the handler installed before ours, if any.
//! - `SA_RESTART` is set, so the calls the kernel can restart (`read`/`write` on pipes and
//!   sockets, `futex` waits without timeout, `wait4`, ...) resume unseen. Calls Linux never
//!   restarts after a handler (`epoll_wait`, `poll`/`select`, `nanosleep`, waits with a
//!   timeout) return `EINTR`, as they do for any signal; std's `thread::sleep`, its
//!   `Condvar`/`Mutex`/channels, tokio and mio retry on `EINTR`.
//! - At most [`WINDOW`] threads are signalled and not yet answered at a time, which keeps
//!   the wake-ups gentle on the machine and stays below the unwinder's per-table cache count.
//! - Never a signal the thread cannot take in our handler (docs/invariants.md 13): before the
//!   dump sends anything and again right before each send, [`collect`] reads the thread's
//!   `/proc` files and skips it (answer [`Answer::Skipped`], with the reason) when it blocks the signal (`SigBlk`), waits in
//!   `rt_sigtimedwait` (`sigwaitinfo`/`sigtimedwait`: the kernel unblocks the waited set
//!   meanwhile, so `SigBlk` says deliverable), reads a signalfd, or already has the signal
//!   pending (`SigPnd`): a thread that did not answer an earlier request gets no new signal
//!   while that one is still queued. So at most one pprofd signal is queued per thread, and
//!   the user's queued-signal count (`RLIMIT_SIGPENDING`) cannot grow without bound.
//!   What remains is a race: a thread that enters a signal wait between the check and the
//!   send (a few microseconds) can take that one signal in its own loop. It is bounded: one
//!   signal per thread per request at most, and only when the wait begins inside that window;
//!   the next request sees the thread waiting and skips it.
//!
//! The signal is `SIGRTMIN + 7`: glibc reserves the first real-time signals for itself (its
//! `SIGRTMIN` already skips them), and runtimes that use real-time signals (JVM, .NET, Go's
//! preemption uses SIGURG) take the first one or two; the offset keeps clear of those.
//! It is sent with `rt_tgsigqueueinfo`, `si_code = SI_QUEUE` and a value holding a cookie and
//! the dump's generation.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::procinfo::{self, Obstacle};
use crate::sighandler::{self, ChainedHandler};
use crate::unwind::published::{self, Published};
use crate::unwind::ring::MAX_DEPTH;
use crate::arch;
use crate::unwind::{self, InterruptedRegs, StackBounds, UnwindTables};

/// Threads signalled and not yet answered at once (below `unwind::CACHE_SLOTS`).
const WINDOW: usize = 16;
/// A thread that has not answered after this long stops holding a window place.
const SLOW: Duration = Duration::from_millis(20);
/// Longest sleep between looks at the window while waiting for answers.
const POLL: Duration = Duration::from_millis(1);
/// High half of the signal value: "pprd".
const COOKIE: u64 = 0x7070_7264;
const SI_QUEUE: i32 = -1;

const WAITING: u8 = 0;
const WRITING: u8 = 1;
const DONE: u8 = 2;

/// The real-time signal dumps use (module doc).
pub(crate) fn dump_signal() -> i32 {
    libc::SIGRTMIN() + 7
}

/// A stack written by its own thread's handler.
struct Slot {
    state: AtomicU8,
    stack: UnsafeCell<Captured>,
}

/// One thread's answer.
#[derive(Clone)]
pub(crate) struct Captured {
    pub depth: usize,
    pub truncated: bool,
    /// The signal interrupted a blocking system call (rather than the thread's own code).
    pub in_syscall: bool,
    /// The labels active on the thread when it was interrupted.
    pub labels: crate::labels::LabelSetId,
    pub frames: [u64; MAX_DEPTH],
}

/// What the handlers of one dump write into.
struct DumpState {
    generation: u32,
    /// Sorted thread ids; `slots[i]` belongs to `tids[i]`.
    tids: Box<[i32]>,
    slots: Box<[Slot]>,
    tables: Arc<UnwindTables>,
    bounds: Arc<StackBounds>,
    answered: AtomicU32,
}

// SAFETY: a slot's stack is written only by the handler that moved it WAITING->WRITING, and
// read by the requester only after `Published::replace` proved no handler is inside.
unsafe impl Sync for DumpState {}

static DUMP: Published<DumpState> = Published::new();
static HANDLER: ChainedHandler = ChainedHandler::new();
static GENERATION: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_dump_signal(
    signo: libc::c_int,
    info: *mut libc::siginfo_t,
    ucontext: *mut libc::c_void,
) {
    // SAFETY: errno is thread-local; restoring it keeps the interrupted code's view intact.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    match unsafe { our_generation(&*info) } {
        // SAFETY: `ucontext` is the kernel's context for this handler invocation.
        Some(generation) => unsafe { answer(generation, ucontext) },
        None => HANDLER.chain(signo, info, ucontext),
    }
    // SAFETY: see above.
    unsafe { *libc::__errno_location() = errno };
}

/// The dump generation a signal carries, when it is one of ours.
///
/// # Safety
/// `info` must be the siginfo of a running handler.
unsafe fn our_generation(info: &libc::siginfo_t) -> Option<u32> {
    if info.si_code != SI_QUEUE {
        return None;
    }
    // SAFETY: SI_QUEUE signals carry the sender's pid, uid and value.
    let (pid, value) = unsafe { (info.si_pid(), info.si_value().sival_ptr as u64) };
    // SAFETY: getpid has no preconditions and is async-signal-safe.
    (pid == unsafe { libc::getpid() } && value >> 32 == COOKIE).then_some(value as u32)
}

/// # Safety
/// `ucontext` must be the context of a running handler.
unsafe fn answer(generation: u32, ucontext: *mut libc::c_void) {
    let guard = published::enter();
    let Some(dump) = DUMP.get(&guard) else {
        return;
    };
    if dump.generation != generation {
        return;
    }
    let Ok(i) = dump.tids.binary_search(&crate::procfs::gettid()) else {
        return;
    };
    let slot = &dump.slots[i];
    if slot
        .state
        .compare_exchange(WAITING, WRITING, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    // SAFETY: winning WAITING->WRITING gives this handler sole access to the slot's stack.
    let stack = unsafe { &mut *slot.stack.get() };
    // SAFETY: forwarded from the caller.
    let regs = unsafe { InterruptedRegs::from_ucontext(ucontext) };
    let unwound =
        unwind::unwind_signal_context(regs, &dump.tables, &dump.bounds, &mut stack.frames);
    stack.depth = unwound.depth;
    stack.truncated = unwound.truncated;
    // SAFETY: forwarded from the caller.
    stack.in_syscall = interrupted_in_syscall(regs.pc, unsafe { arch::syscall_result(ucontext) });
    // One load of a const thread-local without a destructor (see `crate::labels`).
    stack.labels = crate::labels::current_labels();
    slot.state.store(DONE, Ordering::Release);
    dump.answered.fetch_add(1, Ordering::Release);
    // SAFETY: FUTEX_WAKE on a live atomic owned by the published dump; no memory is written.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            dump.answered.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        )
    };
}

/// Sleeps until `answered` differs from `seen` (a handler answered) or `timeout` passes.
fn wait_for_answer(answered: &AtomicU32, seen: u32, timeout: Duration) {
    let timeout = crate::procfs::timespec(timeout);
    // SAFETY: FUTEX_WAIT reads the live atomic and returns at once when it differs from
    // `seen`; `timeout` is valid for the call. Interruptions and spurious wake-ups are fine:
    // the caller re-checks.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            answered.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            seen,
            &timeout as *const libc::timespec,
        )
    };
}

/// Whether the thread was blocked in a system call when the signal came: the kernel rewinds
/// the PC of an interrupted call that it will restart (`SA_RESTART`) onto the system call
/// instruction, and leaves it just after one that returns `EINTR`. A thread that was running,
/// or had just finished a call (such as a futex wake), is neither. Async-signal-safe; reads
/// only code bytes on the page the thread executes from.
fn interrupted_in_syscall(pc: u64, result: i64) -> bool {
    const SYSCALL: &[u8] = arch::SYSCALL_INSTRUCTION;
    let len = SYSCALL.len() as u64;
    let page = pc & !4095;
    let matches_at = |start: u64| {
        start >= page
            && start + len <= page + 4096
            // SAFETY: the range lies on the page holding the interrupted PC, which is mapped
            // and readable while the thread executes from it.
            && unsafe { std::slice::from_raw_parts(start as *const u8, len as usize) } == SYSCALL
    };
    matches_at(pc)
        || (result == -(libc::EINTR as i64) && pc.checked_sub(len).is_some_and(matches_at))
}

/// The layout of `siginfo_t` for `SI_QUEUE` on 64-bit Linux (`_sifields._rt`), padded to the
/// kernel's 128 bytes.
#[repr(C)]
struct QueuedSigInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    pid: i32,
    uid: u32,
    value: u64,
    _rest: [u64; 12],
}

/// Sends the dump signal to `tid` with `value`.
fn send(tid: i32, value: u64) -> Sent {
    let signo = dump_signal();
    // SAFETY: getpid and getuid have no preconditions.
    let (pid, uid) = unsafe { (libc::getpid(), libc::getuid()) };
    let info = QueuedSigInfo {
        signo,
        errno: 0,
        code: SI_QUEUE,
        _pad: 0,
        pid,
        uid,
        value,
        _rest: [0; 12],
    };
    match sighandler::queue_to_thread(tid, signo, &info) {
        Ok(()) => Sent::Queued,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Sent::Gone,
        // EAGAIN: the user's queued-signal limit (RLIMIT_SIGPENDING) is reached.
        Err(_) => Sent::Refused,
    }
}

enum Sent {
    Queued,
    Gone,
    Refused,
}

/// How one thread took part in a dump.
pub(crate) enum Answer {
    Stack(Box<Captured>),
    /// No answer before the deadline (or the signal could not be queued, or not sent in time).
    Silent,
    /// Not signalled: the signal would not reach the handler (module doc).
    Skipped(Obstacle),
    /// The thread exited before it could be signalled.
    Gone,
}

/// What the handlers unwind with; load once and reuse while it stays current.
#[derive(Clone)]
pub(crate) struct Unwinding {
    pub tables: Arc<UnwindTables>,
    pub bounds: Arc<StackBounds>,
}

impl Unwinding {
    /// Reads the unwind tables and the readable memory ranges. Allocates.
    pub fn load() -> Self {
        Unwinding {
            tables: Arc::new(UnwindTables::load()),
            bounds: Arc::new(StackBounds::load()),
        }
    }
}

/// Signals every thread in `tids` (sorted) that can take the signal (module doc: never one
/// that blocks it, waits for it or has one pending) and collects their stacks, waiting at
/// most until `deadline`. The calling thread may be among them.
pub(crate) fn collect(
    tids: &[i32],
    deadline: Instant,
    unwinding: &Unwinding,
) -> std::io::Result<Vec<Answer>> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _serialize = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let signo = dump_signal();
    HANDLER.install(signo, on_dump_signal)?;
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
    let slots = tids
        .iter()
        .map(|_| Slot {
            state: AtomicU8::new(WAITING),
            stack: UnsafeCell::new(Captured {
                depth: 0,
                truncated: false,
                in_syscall: false,
                labels: crate::labels::LabelSetId::NONE,
                frames: [0; MAX_DEPTH],
            }),
        })
        .collect();
    DUMP.replace(Some(Box::new(DumpState {
        generation,
        tids: tids.into(),
        slots,
        tables: unwinding.tables.clone(),
        bounds: unwinding.bounds.clone(),
        answered: AtomicU32::new(0),
    })));
    let value = COOKIE << 32 | generation as u64;
    let mut gone = vec![false; tids.len()];
    // Looked at once before this dump sends anything, and again right before each send: every
    // signal sent wakes the process's signalfd readers for a moment, so a reader checked only
    // after the signals to the threads before it can look like a running thread.
    let mut skipped: Vec<Option<Obstacle>> = tids
        .iter()
        .map(|&tid| procinfo::signal_obstacle(tid, signo))
        .collect();
    // (index, when signalled) of threads holding a window place.
    let mut in_flight: Vec<(usize, Instant)> = Vec::with_capacity(WINDOW);
    let mut next = 0;
    let mut expected = 0;
    // SAFETY: ONE_AT_A_TIME makes this call the only publisher of DUMP.
    unsafe {
        DUMP.with_owner(|dump| {
            let dump = dump.expect("published above");
            loop {
                // Read before looking at the slots: an answer after this wakes the wait below.
                let seen = dump.answered.load(Ordering::Acquire);
                let now = Instant::now();
                in_flight.retain(|&(i, sent)| {
                    dump.slots[i].state.load(Ordering::Acquire) != DONE && now - sent < SLOW
                });
                while in_flight.len() < WINDOW && next < tids.len() {
                    let tid = tids[next];
                    if skipped[next].is_none() {
                        skipped[next] = procinfo::signal_obstacle(tid, signo);
                    }
                    if skipped[next].is_none() {
                        match send(tid, value) {
                            Sent::Queued => {
                                in_flight.push((next, Instant::now()));
                                expected += 1;
                            }
                            Sent::Gone => gone[next] = true,
                            Sent::Refused => {}
                        }
                    }
                    next += 1;
                }
                let answered = dump.answered.load(Ordering::Acquire) as usize;
                if (next == tids.len() && answered >= expected) || now >= deadline {
                    return;
                }
                wait_for_answer(&dump.answered, seen, (deadline - now).min(POLL));
            }
        })
    };
    let dump = DUMP.replace(None).expect("published above");
    Ok(dump
        .slots
        .into_vec()
        .into_iter()
        .enumerate()
        .map(|(i, slot)| {
            if let Some(obstacle) = skipped[i] {
                Answer::Skipped(obstacle)
            } else if gone[i] {
                Answer::Gone
            } else if slot.state.load(Ordering::Acquire) == DONE {
                Answer::Stack(Box::new(slot.stack.into_inner()))
            } else {
                Answer::Silent
            }
        })
        .collect())
}
