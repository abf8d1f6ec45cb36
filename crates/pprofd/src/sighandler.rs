//! pprofd's signal plumbing: handlers installed once, for good, in front of whoever held the
//! signal, and signals queued to its own threads.
//!
//! Both handlers (one real-time signal for CPU samples, another for thread dumps) are installed
//! the first time they are needed and never removed or reset to `SIG_DFL`: a signal still in
//! flight after a profile must find a handler, not kill the process. Signals that are not
//! pprofd's (told apart by each handler from `siginfo`) go to the handler that was there
//! before, so a host that uses the same signal keeps working.
//!
//! [`queue_to_thread`] sends a thread of this process a signal with the `siginfo` pprofd
//! chooses: dump requests, and the timer signals the CPU benchmark queues itself.

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;

/// An `SA_SIGINFO` handler.
pub(crate) type SigInfoHandler =
    extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// What held a signal before pprofd's handler was put (back) in front of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// `SIG_DFL`: pprofd's signals would end the process; others pprofd now drops.
    Default,
    /// `SIG_IGN`: pprofd's signals would be lost; others pprofd drops, as before.
    Ignore,
    /// Another handler, which pprofd now chains.
    Handler,
}

impl Disposition {
    fn of(action: &libc::sigaction) -> Disposition {
        match action.sa_sigaction {
            libc::SIG_DFL => Disposition::Default,
            libc::SIG_IGN => Disposition::Ignore,
            _ => Disposition::Handler,
        }
    }

    /// How a profile comment names it.
    pub fn describe(self) -> &'static str {
        match self {
            Disposition::Default => "reset to SIG_DFL",
            Disposition::Ignore => "set to SIG_IGN",
            Disposition::Handler => "replaced by another handler",
        }
    }
}

/// One signal's handler slot: pprofd's handler in front, chaining what was there.
pub(crate) struct ChainedHandler {
    /// The disposition pprofd chains to: a `sigaction` leaked on purpose, swapped (and the
    /// old one leaked too) when pprofd re-installs itself in front of a host's change.
    /// Handlers read it with one atomic load; a handler running during the swap chains to
    /// the old or the new one, both valid forever. Null until the first installation.
    previous: AtomicPtr<libc::sigaction>,
    install: Mutex<()>,
}

impl ChainedHandler {
    pub const fn new() -> ChainedHandler {
        ChainedHandler {
            previous: AtomicPtr::new(std::ptr::null_mut()),
            install: Mutex::new(()),
        }
    }

    /// Installs `handler` for `signo` (`SA_SIGINFO | SA_RESTART`, nothing masked) the first
    /// time it is called; later calls do nothing. `handler` must be async-signal-safe.
    pub fn install(&self, signo: libc::c_int, handler: SigInfoHandler) -> std::io::Result<()> {
        let _serialize = self.install.lock().unwrap_or_else(|e| e.into_inner());
        if !self.previous.load(Ordering::Acquire).is_null() {
            return Ok(());
        }
        self.put_in_front(signo, handler).map(drop)
    }

    /// Makes sure `handler` is the disposition of `signo`, installing it if needed. When the
    /// host changed the disposition after pprofd installed its handler (re-installed its
    /// own, or set `SIG_IGN` or `SIG_DFL`), pprofd's goes back in front, chaining what is
    /// there now, and the host's change is returned. One `sigaction` query when nothing
    /// changed.
    pub fn ensure(
        &self,
        signo: libc::c_int,
        handler: SigInfoHandler,
    ) -> std::io::Result<Option<Disposition>> {
        let _serialize = self.install.lock().unwrap_or_else(|e| e.into_inner());
        if self.previous.load(Ordering::Acquire).is_null() {
            return self.put_in_front(signo, handler).map(|_| None);
        }
        let current = query(signo)?;
        if current.sa_sigaction == handler as *const () as usize {
            return Ok(None);
        }
        self.put_in_front(signo, handler).map(Some)
    }

    /// Installs `handler`, keeping what it replaces as the disposition to chain.
    fn put_in_front(
        &self,
        signo: libc::c_int,
        handler: SigInfoHandler,
    ) -> std::io::Result<Disposition> {
        // SAFETY: a zeroed sigaction is a valid starting point; every field we rely on is set.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        // SAFETY: `sa_mask` is a valid sigset_t to initialise.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: as above, a zeroed sigaction receives the previous disposition.
        let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for the call; the caller vouches for the handler.
        if unsafe { libc::sigaction(signo, &action, &mut previous) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let replaced = Disposition::of(&previous);
        // Leaked: a handler may be reading the one it replaces (field doc).
        self.previous
            .store(Box::into_raw(Box::new(previous)), Ordering::Release);
        Ok(replaced)
    }

    /// Hands a signal that is not pprofd's to the previous handler. Async-signal-safe: one
    /// atomic read, then a call. A previous default or ignore disposition drops the signal
    /// (the default of real-time signals ends the process).
    pub fn chain(
        &self,
        signo: libc::c_int,
        info: *mut libc::siginfo_t,
        ucontext: *mut libc::c_void,
    ) {
        // SAFETY: a non-null pointer is a leaked sigaction, never freed (field doc).
        let Some(previous) = (unsafe { self.previous.load(Ordering::Acquire).as_ref() }) else {
            return;
        };
        let handler = previous.sa_sigaction;
        if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
            return;
        }
        if previous.sa_flags & libc::SA_SIGINFO != 0 {
            // SAFETY: the previous owner installed this as an SA_SIGINFO handler.
            let f: SigInfoHandler = unsafe { std::mem::transmute(handler) };
            f(signo, info, ucontext);
        } else {
            // SAFETY: the previous owner installed this as a plain handler.
            let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
            f(signo);
        }
    }
}

/// The current disposition of `signo`.
fn query(signo: libc::c_int) -> std::io::Result<libc::sigaction> {
    // SAFETY: a zeroed sigaction receives the disposition.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only queries; `current` is valid for writing.
    if unsafe { libc::sigaction(signo, std::ptr::null(), &mut current) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(current)
}

/// Queues `signo` with `info` to thread `tid` of this process (`rt_tgsigqueueinfo`). `T`
/// is a `siginfo_t` layout of the kernel's 128 bytes; a process may send its own threads
/// signals with a negative `si_code`, such as `SI_QUEUE` or `SI_TIMER`. A signal sent to the
/// calling thread is handled before this returns.
pub(crate) fn queue_to_thread<T>(tid: i32, signo: libc::c_int, info: &T) -> std::io::Result<()> {
    const { assert!(std::mem::size_of::<T>() == 128, "siginfo_t is 128 bytes") };
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    // SAFETY: `info` points to 128 readable bytes laid out as a siginfo_t (checked above and
    // promised by the caller); the kernel copies them and keeps no pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            pid,
            tid,
            signo,
            info as *const T,
        )
    };
    syscall_result(rc)
}

/// `Ok` for a system call that returned 0, else the error it left in errno.
fn syscall_result(rc: libc::c_long) -> std::io::Result<()> {
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Queues `signo` with `info` to the process again: for a signal pprofd's collector took
/// from the process's queue that was not its own (`cpu::signal::ProcessCpuAlarm`). It
/// arrives with the sender's pid, uid and value; a `kill` (`SI_USER`) or `tgkill` arrives as
/// `SI_QUEUE`, since the kernel lets only the main thread queue those codes.
pub(crate) fn queue_to_process(signo: libc::c_int, info: &libc::siginfo_t) -> std::io::Result<()> {
    const SI_TKILL: libc::c_int = -6;
    let mut info = *info;
    if info.si_code >= 0 || info.si_code == SI_TKILL {
        info.si_code = libc::SI_QUEUE;
    }
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    // SAFETY: `info` is a whole siginfo_t; the kernel copies it and keeps no pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigqueueinfo,
            pid,
            signo,
            &info as *const libc::siginfo_t,
        )
    };
    syscall_result(rc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static HOST_CALLS: AtomicUsize = AtomicUsize::new(0);
    static OURS_FIRST: ChainedHandler = ChainedHandler::new();
    static OURS_ALONE: ChainedHandler = ChainedHandler::new();

    extern "C" fn host(_: libc::c_int) {
        HOST_CALLS.fetch_add(1, Ordering::SeqCst);
    }

    extern "C" fn forward_first(
        signo: libc::c_int,
        info: *mut libc::siginfo_t,
        uc: *mut libc::c_void,
    ) {
        OURS_FIRST.chain(signo, info, uc);
    }

    extern "C" fn forward_alone(
        signo: libc::c_int,
        info: *mut libc::siginfo_t,
        uc: *mut libc::c_void,
    ) {
        OURS_ALONE.chain(signo, info, uc);
    }

    #[test]
    fn a_signal_that_is_not_ours_reaches_the_host_handler_once() {
        // Real-time signals the rest of the crate does not use.
        let signo = libc::SIGRTMIN() + 11;
        // SAFETY: installs a plain, async-signal-safe handler for an otherwise unused signal.
        unsafe { libc::signal(signo, host as *const () as libc::sighandler_t) };
        OURS_FIRST.install(signo, forward_first).unwrap();
        OURS_FIRST.install(signo, forward_first).unwrap();
        // SAFETY: raising a signal that has a handler.
        unsafe { libc::raise(signo) };
        assert_eq!(HOST_CALLS.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_default_disposition_is_not_called() {
        let signo = libc::SIGRTMIN() + 12;
        // SAFETY: resetting an otherwise unused signal to its default before installing.
        unsafe { libc::signal(signo, libc::SIG_DFL) };
        OURS_ALONE.install(signo, forward_alone).unwrap();
        // The default action of a real-time signal ends the process: this test binary would
        // die here if chaining called it.
        // SAFETY: raising a signal that has our handler.
        assert_eq!(unsafe { libc::raise(signo) }, 0);
        assert_eq!(
            query(signo).unwrap().sa_sigaction,
            forward_alone as *const () as usize,
            "pprofd's handler stays installed"
        );
    }

    static OURS_AGAIN: ChainedHandler = ChainedHandler::new();
    static LATE_HOST_CALLS: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn late_host(_: libc::c_int) {
        LATE_HOST_CALLS.fetch_add(1, Ordering::SeqCst);
    }

    extern "C" fn forward_again(
        signo: libc::c_int,
        info: *mut libc::siginfo_t,
        uc: *mut libc::c_void,
    ) {
        OURS_AGAIN.chain(signo, info, uc);
    }

    #[test]
    fn a_host_change_after_installation_is_undone_and_chained() {
        let signo = libc::SIGRTMIN() + 13;
        assert_eq!(OURS_AGAIN.ensure(signo, forward_again).unwrap(), None);
        assert_eq!(
            OURS_AGAIN.ensure(signo, forward_again).unwrap(),
            None,
            "nothing changed"
        );
        // SAFETY: the host installs its own plain handler over pprofd's.
        unsafe { libc::signal(signo, late_host as *const () as libc::sighandler_t) };
        assert_eq!(
            OURS_AGAIN.ensure(signo, forward_again).unwrap(),
            Some(Disposition::Handler)
        );
        // SAFETY: raising a signal that has our handler in front of the host's.
        unsafe { libc::raise(signo) };
        assert_eq!(
            LATE_HOST_CALLS.load(Ordering::SeqCst),
            1,
            "the host's handler is chained"
        );
        // SAFETY: the host resets the signal to its default, which would end the process.
        unsafe { libc::signal(signo, libc::SIG_DFL) };
        assert_eq!(
            OURS_AGAIN.ensure(signo, forward_again).unwrap(),
            Some(Disposition::Default)
        );
        // SAFETY: raising a signal that has our handler again; chaining drops it.
        assert_eq!(unsafe { libc::raise(signo) }, 0);
        assert_eq!(LATE_HOST_CALLS.load(Ordering::SeqCst), 1);
    }
}
