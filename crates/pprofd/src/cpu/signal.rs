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
//!   Before any timer is armed, and while timers run each time the process has used one
//!   timer period of CPU time (at most every 10 ms; [`ProcessCpuAlarm`]), the disposition
//!   is checked and pprofd's handler put back in front of whatever is there (which it then
//!   chains); the profile says so in a comment. What remains: a host that resets pprofd's
//!   real-time signal to `SIG_DFL` while sampling runs can meet one of pprofd's signals
//!   before the check (on average at most one, or 10 ms of them at high rates on many cores).
//! - Stack room: the walk runs only with `unwind::WALK_STACK_NEED` bytes of stack left below
//!   the handler, on the thread's stack or the sigaltstack it is on; otherwise the sample is
//!   recorded as "[lost: no stack room]" with its leaf address alone.
//! - Labels: the handler copies the thread's label-set id and task id (two thread-local
//!   words, `crate::labels::current`), never the labels themselves.
//! - Each thread has its own `CLOCK_THREAD_CPUTIME_ID` timer delivering to that thread
//!   (`SIGEV_THREAD_ID`), so samples are proportional to each thread's CPU time.

use crate::procfs::timespec;
use crate::sighandler::{self, ChainedHandler, Disposition};
use crate::unwind::published::{self, Published};
use crate::unwind::ring::{StackRing, MAX_DEPTH};
use crate::unwind::{self, InterruptedRegs, StackBounds, UnwindTables};

use std::time::Duration;

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

impl TimerSigInfo {
    /// A siginfo of the timer signal with `code` and `value`, for queueing it ourselves.
    fn of_timer_signal(code: i32, value: usize) -> Self {
        TimerSigInfo {
            signo: timer_signal(),
            errno: 0,
            code,
            _pad: 0,
            timer_id: 0,
            overrun: 0,
            value,
            _rest: [0; 12],
        }
    }
}

/// Queues to the calling thread the signal one of our timers sends (`ours`), or one that
/// is not ours, and lets the handler run before returning: for measuring what a sample
/// costs. Not used while profiling.
pub(super) fn raise_timer_signal(ours: bool) -> std::io::Result<()> {
    let info = TimerSigInfo::of_timer_signal(
        SI_TIMER,
        if ours { TIMER_COOKIE } else { !TIMER_COOKIE },
    );
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
        let timer = ThreadTimer(create_timer(clock, tid, TIMER_COOKIE)?);
        timer.set_period(period_ns)?;
        Ok(timer)
    }

    /// Makes the timer fire every `period_ns` of its thread's CPU time, from now.
    pub fn set_period(&self, period_ns: u64) -> std::io::Result<()> {
        let period = timespec(Duration::from_nanos(period_ns));
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

/// Creates a timer on `clock` that sends the timer signal to thread `tid` with `cookie` as
/// its value; it is disarmed until set.
fn create_timer(clock: libc::clockid_t, tid: i32, cookie: usize) -> std::io::Result<libc::timer_t> {
    // SAFETY: zeroed sigevent is valid; the fields the kernel reads are set below.
    let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
    event.sigev_notify = libc::SIGEV_THREAD_ID;
    event.sigev_signo = timer_signal();
    event.sigev_notify_thread_id = tid;
    event.sigev_value = libc::sigval {
        sival_ptr: cookie as *mut libc::c_void,
    };
    let mut timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: valid pointers for the duration of the call.
    if unsafe { libc::timer_create(clock, &mut event, &mut timer) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(timer)
}

/// Marks `sigev_value` of the collector's alarm ([`ProcessCpuAlarm`]).
const ALARM_COOKIE: usize = 0x7070_726f_6661; // "pprofa"
/// Marks the value of the signal [`wake`] queues.
const WAKE_COOKIE: usize = 0x7070_726f_6677; // "pprofw"

/// A one-shot alarm on the process's CPU clock for the thread that creates it (the
/// collector), which waits for it in [`ProcessCpuAlarm::wait`]. Only CPU time makes the
/// timers fire, so the collector checks the timer signal's disposition after an amount of
/// the process's CPU time rather than every few milliseconds: an idle process costs it no
/// wakeups (docs/invariants.md 11).
///
/// The alarm signals with the timer signal, directed at its thread, which blocks that
/// signal from before the alarm exists until it ends and takes it with `sigtimedwait`: the
/// alarm never runs a handler, so whatever disposition the host set (`SIG_DFL` included) it
/// cannot end the process. `sigtimedwait` also takes that signal when it is sent to the
/// whole process; such a signal is not ours, so `wait` queues it to the process again and
/// says so, and the caller stops using the alarm.
pub(super) struct ProcessCpuAlarm {
    timer: libc::timer_t,
    /// The timer signal alone.
    signal: libc::sigset_t,
}

/// How [`ProcessCpuAlarm::wait`] ended.
#[derive(PartialEq, Eq)]
pub(super) enum Waited {
    /// The alarm rang, [`wake`] was called, or the time passed.
    Done,
    /// It took a signal of the timer signal's number sent to the process by someone else,
    /// and queued it back.
    TookForeignSignal,
}

// SAFETY: a timer id is a plain kernel handle; the alarm is used by the thread that made it.
unsafe impl Send for ProcessCpuAlarm {}

impl ProcessCpuAlarm {
    /// Blocks the timer signal in the calling thread and creates the alarm. On an error the
    /// thread's signal mask is as it was.
    pub fn for_this_thread() -> std::io::Result<Self> {
        // SAFETY: a zeroed sigset_t is valid storage; sigemptyset initialises it.
        let mut signal: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `signal` is valid for both calls; the number is a valid signal.
        unsafe {
            libc::sigemptyset(&mut signal);
            libc::sigaddset(&mut signal, timer_signal());
        }
        // SAFETY: valid sets; changes only the calling thread's mask.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signal, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        match create_timer(
            libc::CLOCK_PROCESS_CPUTIME_ID,
            crate::procfs::gettid(),
            ALARM_COOKIE,
        ) {
            Ok(timer) => Ok(ProcessCpuAlarm { timer, signal }),
            Err(error) => {
                // SAFETY: as above; undoes the block.
                unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &signal, std::ptr::null_mut()) };
                Err(error)
            }
        }
    }

    /// Waits until the process has used `cpu_ns` more of CPU time, [`wake`] is called for
    /// this thread, or `timeout` passes.
    pub fn wait(&self, cpu_ns: u64, timeout: Duration) -> Waited {
        let spec = libc::itimerspec {
            it_interval: timespec(Duration::ZERO),
            it_value: timespec(Duration::from_nanos(cpu_ns.max(1))),
        };
        // SAFETY: `self.timer` is a live timer owned by `self`.
        if unsafe { libc::timer_settime(self.timer, 0, &spec, std::ptr::null_mut()) } != 0 {
            // Cannot happen for a live timer and a valid spec; wait on the time alone.
            std::thread::sleep(timeout);
            return Waited::Done;
        }
        let timeout = timespec(timeout);
        // SAFETY: zeroed siginfo_t is valid storage for the kernel to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers for the duration of the call.
        if unsafe { libc::sigtimedwait(&self.signal, &mut info, &timeout) } < 0 {
            // EAGAIN: the time passed; EINTR: a handler of another signal ran on this thread.
            return Waited::Done;
        }
        // SAFETY: siginfo_t is 128 bytes, laid out as `TimerSigInfo` for the fields read
        // (for SI_QUEUE, too, the value sits after two 32-bit fields).
        let fields = unsafe { &*(&info as *const libc::siginfo_t as *const TimerSigInfo) };
        let ours = (fields.code == SI_TIMER && fields.value == ALARM_COOKIE)
            || (fields.code == libc::SI_QUEUE && fields.value == WAKE_COOKIE);
        if ours {
            return Waited::Done;
        }
        // Best effort: if the process's queue is full the signal is lost, as it would be to
        // a full queue anyway.
        let _ = sighandler::queue_to_process(timer_signal(), &info);
        Waited::TookForeignSignal
    }
}

impl Drop for ProcessCpuAlarm {
    fn drop(&mut self) {
        // SAFETY: the timer is live and owned by self. The signal stays blocked in this
        // thread: an alarm or a wake may still be pending for it and must never meet the
        // host's disposition.
        unsafe { libc::timer_delete(self.timer) };
    }
}

/// Interrupts the [`ProcessCpuAlarm::wait`] of thread `tid`, which must be alive and
/// blocking the timer signal (the collector, made known only after its alarm exists and
/// woken only while its session holds it: `session::Shared::ask_collector`).
///
/// The signal carries a value of its own, so `wait` tells it from a host's `kill`, which
/// arrives as `SI_USER` from the same pid as a `tgkill` would on some kernels.
pub(super) fn wake(tid: i32) {
    let info = TimerSigInfo::of_timer_signal(libc::SI_QUEUE, WAKE_COOKIE);
    // Fails only if the queue is full; the collector then notices at its tick.
    let _ = sighandler::queue_to_thread(tid, timer_signal(), &info);
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

    #[test]
    fn the_alarm_rings_after_process_cpu_time_and_when_woken_not_before() {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let waiter = std::thread::spawn(move || {
            let alarm = ProcessCpuAlarm::for_this_thread().expect("an alarm");
            tid_tx.send(crate::procfs::gettid()).unwrap();
            // Ten seconds of CPU: only the wake below ends this wait early.
            let started = std::time::Instant::now();
            let woken = alarm.wait(10_000_000_000, Duration::from_secs(20));
            let after_wake = started.elapsed();
            go_rx.recv().unwrap();
            // 30 ms of the process's CPU, spent by the spinning thread below (and any test
            // running beside this one).
            let started = crate::procfs::process_cpu_time();
            let rang = alarm.wait(30_000_000, Duration::from_secs(20));
            let cpu = crate::procfs::process_cpu_time() - started;
            (woken == Waited::Done, after_wake, rang == Waited::Done, cpu)
        });
        let tid = tid_rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        wake(tid);
        go_tx.send(()).unwrap();
        let spin = std::time::Instant::now();
        while !waiter.is_finished() && spin.elapsed() < Duration::from_secs(15) {
            std::hint::black_box(spin.elapsed());
        }
        let (woken, after_wake, rang, after_cpu) = waiter.join().unwrap();
        assert!(woken && rang, "woken {woken} rang {rang}");
        assert!(
            after_wake >= Duration::from_millis(90) && after_wake < Duration::from_secs(5),
            "woken after {after_wake:?}"
        );
        assert!(
            after_cpu >= Duration::from_millis(30) && after_cpu < Duration::from_secs(5),
            "rang after {after_cpu:?} of the process's CPU time"
        );
    }
}
