//! The timer signal's handler and the per-thread CPU-time timers that raise it.
//!
//! Invariants, which every change here must keep (docs/invariants.md 1-3, 11, 12):
//! - The handler reads registers from the ucontext, unwinds with tables prepared beforehand
//!   ([`crate::unwind`]) and writes addresses into a ring allocated beforehand. It allocates
//!   nothing, takes no lock, calls no libgcc unwinder and no symbolizer, and saves/restores
//!   errno.
//! - The timers signal with a real-time signal of pprofd's own ([`timer_signal`]), not
//!   SIGPROF: hosts and libraries install, ignore and reset SIGPROF (older profilers, test
//!   harnesses, `signal(SIGPROF, SIG_DFL)` in a child's set-up), and a timer signal that
//!   meets `SIG_DFL` ends the process. SIGPROF stays the host's, untouched.
//! - The handler is installed once and never removed or reset to `SIG_DFL`: a signal that
//!   arrives after a profile stops finds nothing published and returns. A signal of that
//!   number that is not from our timers goes to the handler that was installed before ours.
//! - A host may still change that signal's disposition after pprofd installed its handler.
//!   Before any timer is armed, and every 10 ms while a profile runs, the disposition is
//!   checked and pprofd's handler put back in front of whatever is there (which it then
//!   chains); the profile says so in a comment. What remains: a host that resets pprofd's
//!   real-time signal to `SIG_DFL` while a profile runs can meet one of pprofd's signals in
//!   the 10 ms before the check.
//! - Stack room: the walk runs only with `unwind::WALK_STACK_NEED` bytes of stack left below
//!   the handler, on the thread's stack or the sigaltstack it is on; otherwise the sample is
//!   recorded as "[lost: no stack room]" with its leaf address alone.
//! - Labels: the handler copies the thread's label-set id and task id (two thread-local
//!   words, `crate::labels::current`), never the labels themselves.
//! - Each thread has its own `CLOCK_THREAD_CPUTIME_ID` timer delivering to that thread
//!   (`SIGEV_THREAD_ID`), so samples are proportional to each thread's CPU time.

use crate::sighandler::{self, ChainedHandler, Disposition};
use crate::unwind::published::{self, Published};
use crate::unwind::ring::{StackRing, MAX_DEPTH};
use crate::unwind::{self, InterruptedRegs, StackBounds, UnwindTables};

/// What the handler samples into while a CPU profile runs.
pub(super) struct SamplingState {
    pub ring: StackRing,
    pub tables: UnwindTables,
}

/// The running profile's ring and unwind tables; empty when no profile runs.
pub(super) static SAMPLING: Published<SamplingState> = Published::new();
/// Readable memory ranges, refreshed by the collector as threads come and go.
pub(super) static STACK_BOUNDS: Published<StackBounds> = Published::new();

/// The signal pprofd's CPU timers send: `SIGRTMIN + 6`, next to the dump signal
/// (`SIGRTMIN + 7`) and clear of the real-time signals C libraries and runtimes take.
pub fn timer_signal() -> libc::c_int {
    libc::SIGRTMIN() + 6
}

/// Marks `sigev_value` of our timers, to tell our signals from anyone else's.
const TIMER_COOKIE: usize = 0x7070_726f_6664; // "pprofd"
const SI_TIMER: i32 = -2;

static HANDLER: ChainedHandler = ChainedHandler::new();

/// Installs the timer signal's handler, or puts it back in front when the host changed that
/// signal since (and returns that change).
pub(super) fn ensure_handler() -> std::io::Result<Option<Disposition>> {
    HANDLER.ensure(timer_signal(), on_timer_signal)
}

extern "C" fn on_timer_signal(
    signo: libc::c_int,
    info: *mut libc::siginfo_t,
    ucontext: *mut libc::c_void,
) {
    // SAFETY: errno is thread-local; reading and restoring it is what keeps the interrupted
    // code's view of errno intact.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    match unsafe { our_timer_periods(info) } {
        // SAFETY: `ucontext` is the kernel's context for this handler invocation.
        Some(periods) => unsafe { record_sample(ucontext, periods) },
        None => HANDLER.chain(signo, info, ucontext),
    }
    // SAFETY: see above.
    unsafe { *libc::__errno_location() = errno };
}

/// `siginfo_t` for a POSIX timer's signal on 64-bit Linux (`_sifields._timer`), padded to
/// the kernel's 128 bytes.
#[repr(C)]
struct TimerSigInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    timer_id: i32,
    /// Expirations beyond the one this signal reports.
    overrun: i32,
    value: usize,
    _rest: [u64; 12],
}

/// Queues to the calling thread the signal one of our timers sends (`ours`), or one that
/// is not ours, and lets the handler run before returning: for measuring what a sample
/// costs. Not used while profiling.
pub(super) fn raise_timer_signal(ours: bool) -> std::io::Result<()> {
    let info = TimerSigInfo {
        signo: timer_signal(),
        errno: 0,
        code: SI_TIMER,
        _pad: 0,
        timer_id: 0,
        overrun: 0,
        value: if ours { TIMER_COOKIE } else { !TIMER_COOKIE },
        _rest: [0; 12],
    };
    sighandler::queue_to_thread(crate::procfs::gettid(), timer_signal(), &info)
}

/// For a signal from one of our timers, the timer periods it stands for: one, plus the
/// expirations the kernel folded into it. CPU-time timers are checked once per scheduler
/// tick (often 250 Hz), so at higher rates one signal covers several periods.
///
/// # Safety
/// `info` must be the siginfo of a running handler.
unsafe fn our_timer_periods(info: *const libc::siginfo_t) -> Option<u64> {
    // SAFETY: the caller passes the kernel's 128-byte siginfo; see `TimerSigInfo`.
    let timer = unsafe { &*(info as *const TimerSigInfo) };
    (timer.code == SI_TIMER && timer.value == TIMER_COOKIE).then(|| 1 + timer.overrun.max(0) as u64)
}

/// # Safety
/// `ucontext` must be the context of a running handler.
unsafe fn record_sample(ucontext: *mut libc::c_void, periods: u64) {
    let guard = published::enter();
    let Some(state) = SAMPLING.get(&guard) else {
        return;
    };
    let Some(bounds) = STACK_BOUNDS.get(&guard) else {
        state.ring.count_lost();
        return;
    };
    let Some(mut slot) = state.ring.claim() else {
        return;
    };
    // SAFETY: forwarded from the caller.
    let regs = unsafe { InterruptedRegs::from_ucontext(ucontext) };
    let record = slot.record();
    let unwound =
        unwind::unwind_signal_context(regs, &state.tables, bounds, &mut record.frames[..MAX_DEPTH]);
    record.depth = unwound.depth;
    record.truncated = unwound.truncated;
    record.no_room = unwound.not_walked == Some(unwind::NoWalk::NoRoom);
    record.tid = crate::procfs::gettid();
    record.weight = periods;
    // Two loads of const thread-locals without destructors (see `crate::labels`).
    (record.labels, record.task) = crate::labels::current();
    slot.commit();
}

/// A CPU-time timer that signals one thread.
pub(super) struct ThreadTimer(libc::timer_t);

// SAFETY: a timer id is a plain kernel handle usable from any thread.
unsafe impl Send for ThreadTimer {}

impl ThreadTimer {
    /// Starts a timer on `tid`'s CPU clock firing every `period_ns` of that thread's CPU time.
    /// Fails when the thread is gone.
    pub fn start(tid: i32, period_ns: u64) -> std::io::Result<Self> {
        // The kernel's encoding of a per-thread CPU clock (MAKE_THREAD_CPUCLOCK in
        // linux/posix-timers.h): !tid << 3 | CPUCLOCK_SCHED | CPUCLOCK_PERTHREAD_MASK.
        let clock: libc::clockid_t = (!tid << 3) | 6;
        // SAFETY: zeroed sigevent is valid; the fields the kernel reads are set below.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = timer_signal();
        event.sigev_notify_thread_id = tid;
        event.sigev_value = libc::sigval {
            sival_ptr: TIMER_COOKIE as *mut libc::c_void,
        };
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: valid pointers for the duration of the call.
        if unsafe { libc::timer_create(clock, &mut event, &mut timer) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let timer = ThreadTimer(timer);
        timer.set_period(period_ns)?;
        Ok(timer)
    }

    /// Makes the timer fire every `period_ns` of its thread's CPU time, from now.
    pub fn set_period(&self, period_ns: u64) -> std::io::Result<()> {
        let period = libc::timespec {
            tv_sec: (period_ns / 1_000_000_000) as _, // the field's type: libc deprecates the name `time_t` on musl
            tv_nsec: (period_ns % 1_000_000_000) as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: period,
            it_value: period,
        };
        // SAFETY: `self.0` is a live timer owned by `self`.
        if unsafe { libc::timer_settime(self.0, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        // SAFETY: the timer is live and owned by self; deleting it stops further signals.
        unsafe { libc::timer_delete(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unwind::stack_use;

    #[test]
    fn a_sample_fits_in_the_stack_room_the_handler_checks_for() {
        let mut profile = None;
        let used = stack_use::measure(
            || profile = Some(super::super::CpuProfile::start(1).expect("no other CPU profile")),
            |()| raise_timer_signal(true).expect("queue the timer signal to this thread"),
        );
        let mut profile = profile.expect("started");
        let gathered = profile.halt();
        let deepest = gathered
            .counts
            .keys()
            .map(|key| key.stack.len())
            .max();
        assert!(
            deepest.is_some_and(|d| d > 2),
            "the sample was walked: {deepest:?}"
        );
        println!("a CPU sample used {used} bytes of the interrupted thread's stack, the kernel's signal frame included");
        // The kernel's frame (up to about 3.5 KiB with AVX-512 state), the handler's own
        // frames, then at most WALK_STACK_NEED for the walk, which is checked for.
        assert!(
            used as u64 <= unwind::WALK_STACK_NEED + 4096,
            "{used} bytes"
        );
    }
}
