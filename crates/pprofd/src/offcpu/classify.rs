//! What a blocked thread waits for, from the system call it sits in and its stack's symbols.
//!
//! Futex waits are told apart by the first frame (innermost first) that names a
//! synchronization primitive: std's and parking_lot's `Condvar`, `RwLock` and `Mutex`
//! implementations, and std's, crossbeam's and flume's channels. The first frame *outside*
//! those implementations is the waiter; when it is a runtime's or pool's idle loop (tokio's
//! worker park and blocking pool, rayon's sleep), the wait is idle, not contention.

use crate::profile::SourceFrame;

/// The kinds of waits, as the `wait` label names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum WaitKind {
    Mutex,
    RwLock,
    Condvar,
    Channel,
    OtherFutex,
    Io,
    Sleep,
    OtherSyscall,
    Idle,
}

impl WaitKind {
    pub fn label(self) -> &'static str {
        match self {
            WaitKind::Mutex => "mutex",
            WaitKind::RwLock => "rwlock",
            WaitKind::Condvar => "condvar",
            WaitKind::Channel => "channel",
            WaitKind::OtherFutex => "other futex",
            WaitKind::Io => "I/O",
            WaitKind::Sleep => "sleep",
            WaitKind::OtherSyscall => "other syscall",
            WaitKind::Idle => "idle",
        }
    }

    /// Waiting to acquire a lock: what the mutex profile shows.
    pub fn is_lock(self) -> bool {
        matches!(self, WaitKind::Mutex | WaitKind::RwLock)
    }

    /// Synchronization between threads: what the block profile shows without `idle=1`.
    pub fn is_synchronization(self) -> bool {
        matches!(
            self,
            WaitKind::Mutex
                | WaitKind::RwLock
                | WaitKind::Condvar
                | WaitKind::Channel
                | WaitKind::OtherFutex
        )
    }
}

/// The system calls a futex-based wait sits in.
fn is_futex_call(nr: libc::c_long) -> bool {
    nr == libc::SYS_futex || nr == libc::SYS_futex_waitv
}

/// Whether a `futex` operation (its second argument) waits, as opposed to waking others.
pub(super) fn futex_op_waits(op: u64) -> bool {
    const FUTEX_CMD_MASK: u64 = !(128 | 256); // FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME
    matches!(
        op & FUTEX_CMD_MASK,
        0 /* WAIT */ | 6 /* LOCK_PI */ | 9 /* WAIT_BITSET */ | 11 /* WAIT_REQUEUE_PI */ | 13 /* LOCK_PI2 */
    )
}

/// Name fragments of synchronization implementations, with the kind each means. Checked in
/// order on lowercase names; channels before mutexes (channels use mutexes inside).
const PRIMITIVES: &[(&str, WaitKind)] = &[
    ("condvar", WaitKind::Condvar),
    ("rwlock", WaitKind::RwLock),
    ("mpsc", WaitKind::Channel),
    ("mpmc", WaitKind::Channel),
    ("crossbeam_channel", WaitKind::Channel),
    ("flume", WaitKind::Channel),
    ("mutex", WaitKind::Mutex),
    ("reentrantlock", WaitKind::Mutex),
];

/// Prefixes of functions that implement waiting rather than ask for it.
const IMPLEMENTATION: &[&str] = &[
    "std::",
    "core::",
    "alloc::",
    "parking_lot",
    "lock_api::",
    "crossbeam_",
    "flume::",
    "syscall",
    "__",
    "tokio::loom::",
    "<std::",
    "<core::",
    "<parking_lot",
    "<lock_api::",
];

/// Idle loops of runtimes and pools: a wait whose first caller is one of these is idle.
const IDLE_CALLERS: &[&str] = &[
    "tokio::runtime::scheduler::",
    "tokio::runtime::park::",
    "tokio::runtime::blocking::pool::",
    "tokio::runtime::driver::",
    "tokio::runtime::io::",
    "tokio::runtime::time::",
    "rayon_core::sleep::",
    "rayon_core::registry::",
    "threadpool::",
];

/// The kind of a wait in system call `nr` with the stack's source frames, innermost first.
pub(super) fn classify(nr: libc::c_long, frames: &[&SourceFrame]) -> WaitKind {
    let caller = frames.iter().find(|f| {
        !IMPLEMENTATION
            .iter()
            .any(|prefix| f.function.starts_with(prefix))
    });
    if caller.is_some_and(|f| IDLE_CALLERS.iter().any(|p| f.function.contains(p))) {
        return WaitKind::Idle;
    }
    if is_futex_call(nr) {
        for f in frames {
            let name = f.function.to_ascii_lowercase();
            if let Some((_, kind)) = PRIMITIVES.iter().find(|(p, _)| name.contains(p)) {
                return *kind;
            }
        }
        return WaitKind::OtherFutex;
    }
    io_or_other(nr)
}

fn io_or_other(nr: libc::c_long) -> WaitKind {
    let io: &[libc::c_long] = &[
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_pread64,
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
        libc::SYS_ppoll,
        libc::SYS_pselect6,
        libc::SYS_accept,
        libc::SYS_accept4,
        libc::SYS_connect,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
        libc::SYS_sendto,
        libc::SYS_sendmsg,
        libc::SYS_io_uring_enter,
        libc::SYS_io_getevents,
    ];
    if io.contains(&nr) || crate::arch::LEGACY_IO_SYSCALLS.contains(&nr) {
        WaitKind::Io
    } else if nr == libc::SYS_nanosleep || nr == libc::SYS_clock_nanosleep {
        WaitKind::Sleep
    } else {
        WaitKind::OtherSyscall
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(names: &[&str]) -> Vec<SourceFrame> {
        names
            .iter()
            .map(|n| SourceFrame {
                function: n.to_string(),
                ..Default::default()
            })
            .collect()
    }

    fn kind(nr: libc::c_long, names: &[&str]) -> WaitKind {
        let owned = frames(names);
        let refs: Vec<&SourceFrame> = owned.iter().collect();
        classify(nr, &refs)
    }

    #[test]
    fn futex_waits_are_told_apart_by_their_primitive() {
        let f = libc::SYS_futex;
        let std_mutex = [
            "syscall",
            "std::sys::pal::unix::futex::futex_wait",
            "std::sys::sync::mutex::futex::Mutex::lock_contended",
            "app::handler",
        ];
        assert_eq!(kind(f, &std_mutex), WaitKind::Mutex);
        let parking_lot = [
            "syscall",
            "parking_lot_core::thread_parker::imp::ThreadParker::futex_wait",
            "parking_lot_core::parking_lot::park",
            "parking_lot::raw_mutex::RawMutex::lock_slow",
            "app::handler",
        ];
        assert_eq!(kind(f, &parking_lot), WaitKind::Mutex);
        let recv = [
            "syscall",
            "std::sys::pal::unix::futex::futex_wait",
            "std::sys::sync::thread_parking::futex::Parker::park",
            "std::sync::mpmc::context::Context::wait_until",
            "std::sync::mpmc::list::Channel<T>::recv",
            "app::consumer",
        ];
        assert_eq!(kind(f, &recv), WaitKind::Channel);
        let read_lock = [
            "syscall",
            "std::sys::sync::rwlock::futex::RwLock::read_contended",
            "app::reader",
        ];
        assert_eq!(kind(f, &read_lock), WaitKind::RwLock);
        let cond = [
            "syscall",
            "std::sys::sync::condvar::futex::Condvar::wait_optional_timeout",
            "app::waiter",
        ];
        assert_eq!(kind(f, &cond), WaitKind::Condvar);
        assert_eq!(
            kind(f, &["syscall", "std::thread::park", "app::x"]),
            WaitKind::OtherFutex
        );
    }

    #[test]
    fn runtime_parking_is_idle_but_a_blocking_task_on_a_lock_is_not() {
        let f = libc::SYS_futex;
        let pool_idle = [
            "syscall",
            "std::sys::sync::condvar::futex::Condvar::wait_optional_timeout",
            "std::sync::poison::condvar::Condvar::wait_timeout",
            "tokio::runtime::blocking::pool::Inner::run",
        ];
        assert_eq!(kind(f, &pool_idle), WaitKind::Idle);
        let blocking_task = [
            "syscall",
            "std::sys::sync::mutex::futex::Mutex::lock_contended",
            "app::blocking_work",
            "tokio::runtime::blocking::pool::Inner::run",
        ];
        assert_eq!(kind(f, &blocking_task), WaitKind::Mutex);
        assert_eq!(
            kind(
                libc::SYS_epoll_pwait,
                &["epoll_wait", "mio::poll::Poll::poll", "app::main"]
            ),
            WaitKind::Io
        );
        assert_eq!(
            kind(libc::SYS_clock_nanosleep, &["std::thread::sleep"]),
            WaitKind::Sleep
        );
    }

    #[test]
    fn futex_wakes_are_not_waits() {
        assert!(futex_op_waits(128)); // FUTEX_WAIT_PRIVATE
        assert!(futex_op_waits(137)); // FUTEX_WAIT_BITSET_PRIVATE
        assert!(!futex_op_waits(129)); // FUTEX_WAKE_PRIVATE
    }
}
