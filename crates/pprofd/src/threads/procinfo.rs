//! What `/proc` says about a thread: scheduler state, the system call it sits in, since
//! when it has been off the CPU, and whether a signal sent to it now would reach pprofd's
//! handler ([`signal_obstacle`]: not if the thread blocks it, waits for signals in
//! `rt_sigtimedwait` or on a signalfd, or has it pending already).
//!
//! How long a thread has waited: Linux records no "blocked since" time, but the scheduler
//! keeps `se.exec_start` in `/proc/self/task/TID/sched` (kernels built with
//! `CONFIG_SCHED_DEBUG`, the default of the major distributions): the scheduler clock, in
//! milliseconds since boot, when the thread last stopped running. For a sleeping thread that
//! is when its wait began; the scheduler clock runs with `CLOCK_MONOTONIC`, so the wait so far
//! is `CLOCK_MONOTONIC - exec_start`. A dump wakes every thread briefly (its handler runs), which
//! resets `exec_start`; [`WaitClock`] therefore remembers, per thread, the system call line of
//! `/proc/self/task/TID/syscall` (number, arguments, stack pointer and PC) and when that wait was
//! first seen, and keeps the earlier start while a later dump finds the same call. Without the
//! `sched` file no duration is shown.

use std::collections::HashMap;

/// A thread as `/proc/self/task/TID` describes it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ProcThread {
    pub tid: i32,
    pub name: String,
    /// The state letter of `stat` (`R`, `S`, `D`, `T`, `Z`, ...).
    pub state: char,
    /// The system call the thread is blocked in, by name, when `syscall` shows one.
    pub syscall: Option<String>,
    /// The kernel function the thread sleeps in (`wchan`), empty when running or unknown.
    pub wchan: String,
    /// Seconds the thread has been in this wait, when knowable (module doc).
    pub waiting_seconds: Option<u64>,
    /// The raw `syscall` line, which identifies one particular wait.
    syscall_line: String,
}

impl ProcThread {
    /// Reads the thread's files. `None` when the thread has exited.
    pub fn read(tid: i32) -> Option<ProcThread> {
        let dir = format!("/proc/self/task/{tid}");
        let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
        let state = parse_stat_state(&stat)?;
        let syscall_line = std::fs::read_to_string(format!("{dir}/syscall"))
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default();
        let syscall = if state == 'R' {
            None
        } else {
            parse_syscall_number(&syscall_line).map(syscall_name)
        };
        let wchan = std::fs::read_to_string(format!("{dir}/wchan"))
            .ok()
            .filter(|w| w != "0")
            .unwrap_or_default();
        let waiting_seconds = if state == 'R' {
            None
        } else {
            std::fs::read_to_string(format!("{dir}/sched"))
                .ok()
                .and_then(|s| parse_exec_start_ms(&s))
                .map(|ms| monotonic_ms().saturating_sub(ms) / 1000)
        };
        Some(ProcThread {
            tid,
            name: crate::procfs::thread_name(tid),
            state,
            syscall,
            wchan,
            waiting_seconds,
            syscall_line,
        })
    }

    /// What the thread is doing, as the header of its dump block shows it: `running`,
    /// `futex wait`, `epoll_wait`, `read, disk wait`, `sleeping`, ...
    pub fn activity(&self) -> String {
        let state = match self.state {
            'R' => return "running".into(),
            'S' | 'I' => "sleeping",
            'D' => "disk wait",
            'T' => "stopped",
            't' => "tracing stop",
            'Z' | 'X' => "exiting",
            _ => "unknown state",
        };
        match (&self.syscall, self.state) {
            (Some(call), 'S') if call == "futex" => "futex wait".into(),
            (Some(call), 'S') => call.clone(),
            (Some(call), _) => format!("{call}, {state}"),
            (None, _) => state.into(),
        }
    }
}

/// Why pprofd must not send a signal to a thread now (docs/invariants.md 13): the signal would not
/// reach pprofd's handler but stay queued, or be taken by the host's own signal loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Obstacle {
    /// The thread blocks the signal (`SigBlk`).
    Blocks(i32),
    /// The thread waits in `sigwaitinfo`/`sigtimedwait` (`rt_sigtimedwait`): the kernel
    /// unblocks the waited-for set meanwhile, so `SigBlk` would say deliverable.
    SigWait,
    /// The thread reads a signalfd.
    SignalFd,
    /// The signal is already pending for the thread (`SigPnd`): an earlier one is unanswered.
    Pending(i32),
}

impl std::fmt::Display for Obstacle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Obstacle::Blocks(signal) => write!(f, "blocks {}", signal_name(*signal)),
            Obstacle::SigWait => f.write_str("waits in sigtimedwait"),
            Obstacle::SignalFd => f.write_str("reads a signalfd"),
            Obstacle::Pending(signal) => write!(
                f,
                "has an earlier {} still pending (no answer yet)",
                signal_name(*signal)
            ),
        }
    }
}

/// `SIGRTMIN+6`, `SIGRTMIN+7`, or the number.
pub(crate) fn signal_name(signal: i32) -> String {
    if signal >= libc::SIGRTMIN() {
        format!("SIGRTMIN+{}", signal - libc::SIGRTMIN())
    } else {
        format!("signal {signal}")
    }
}

/// Whether `signal` sent to thread `tid` now could miss pprofd's handler (see [`Obstacle`]).
/// Reads the thread's `syscall` line, then its `status`; a thread that exited has none.
pub(crate) fn signal_obstacle(tid: i32, signal: i32) -> Option<Obstacle> {
    let dir = format!("/proc/self/task/{tid}");
    let line = std::fs::read_to_string(format!("{dir}/syscall")).unwrap_or_default();
    match parse_syscall_number(&line) {
        Some(nr) if nr == libc::SYS_rt_sigtimedwait => return Some(Obstacle::SigWait),
        Some(nr) if nr == libc::SYS_read && reads_signalfd(&line) => {
            return Some(Obstacle::SignalFd)
        }
        _ => {}
    }
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    if signal_in_mask(&status, "SigBlk:", signal) {
        Some(Obstacle::Blocks(signal))
    } else if signal_in_mask(&status, "SigPnd:", signal) {
        Some(Obstacle::Pending(signal))
    } else {
        None
    }
}

/// Whether the first argument of a `read` `syscall` line is a signalfd.
fn reads_signalfd(line: &str) -> bool {
    line.split_ascii_whitespace()
        .nth(1)
        .and_then(|fd| u64::from_str_radix(fd.trim_start_matches("0x"), 16).ok())
        .and_then(|fd| std::fs::read_link(format!("/proc/self/fd/{fd}")).ok())
        .is_some_and(|target| target.as_os_str() == "anon_inode:[signalfd]")
}

/// Keeps wait start times across dumps (module doc): a dump wakes each thread, so the
/// scheduler's own clock only reaches back to the previous dump.
#[derive(Default)]
pub(crate) struct WaitClock {
    /// Per thread: the `syscall` line of its wait and the monotonic second that wait began.
    seen: HashMap<i32, (String, u64)>,
}

impl WaitClock {
    /// Replaces each thread's wait time by the longer one known from earlier dumps when it is
    /// still in the same call, and forgets threads that are gone or changed.
    pub fn extend(&mut self, threads: &mut [ProcThread]) {
        let now = monotonic_ms() / 1000;
        let mut seen = HashMap::with_capacity(threads.len());
        for t in threads.iter_mut() {
            let Some(waited) = t.waiting_seconds else {
                continue;
            };
            let mut since = now.saturating_sub(waited);
            if let Some((line, earlier)) = self.seen.get(&t.tid) {
                if *line == t.syscall_line && !line.is_empty() {
                    since = since.min(*earlier);
                }
            }
            t.waiting_seconds = Some(now - since);
            seen.insert(t.tid, (t.syscall_line.clone(), since));
        }
        self.seen = seen;
    }
}

/// The state letter that follows the parenthesised name (which may itself hold `)`).
fn parse_stat_state(stat: &str) -> Option<char> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_ascii_whitespace().next()?.chars().next()
}

/// The number at the start of a `syscall` line; `running` and `-1` (not in a call) give none.
pub(crate) fn parse_syscall_number(line: &str) -> Option<libc::c_long> {
    line.split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
        .filter(|&n: &libc::c_long| n >= 0)
}

fn parse_exec_start_ms(sched: &str) -> Option<u64> {
    let line = sched.lines().find(|l| l.starts_with("se.exec_start"))?;
    let value: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    Some(value as u64)
}

/// Whether `signal` is set in the `mask` line (`SigBlk:`, `SigPnd:`) of a `status` file.
fn signal_in_mask(status: &str, mask: &str, signal: i32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix(mask))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1u64 << (signal - 1)) != 0)
}

fn monotonic_ms() -> u64 {
    crate::procfs::clock_time(libc::CLOCK_MONOTONIC).as_millis() as u64
}

/// Names of the system calls threads commonly wait in; others show by number.
pub(crate) fn syscall_name(nr: libc::c_long) -> String {
    let known: &[(libc::c_long, &str)] = &[
        (libc::SYS_futex, "futex"),
        (libc::SYS_read, "read"),
        (libc::SYS_write, "write"),
        (libc::SYS_readv, "readv"),
        (libc::SYS_writev, "writev"),
        (libc::SYS_pread64, "pread64"),
        (libc::SYS_epoll_pwait, "epoll_pwait"),
        (libc::SYS_epoll_pwait2, "epoll_pwait2"),
        (libc::SYS_ppoll, "ppoll"),
        (libc::SYS_pselect6, "pselect6"),
        (libc::SYS_nanosleep, "nanosleep"),
        (libc::SYS_clock_nanosleep, "clock_nanosleep"),
        (libc::SYS_accept4, "accept4"),
        (libc::SYS_accept, "accept"),
        (libc::SYS_connect, "connect"),
        (libc::SYS_recvfrom, "recvfrom"),
        (libc::SYS_recvmsg, "recvmsg"),
        (libc::SYS_sendto, "sendto"),
        (libc::SYS_sendmsg, "sendmsg"),
        (libc::SYS_wait4, "wait4"),
        (libc::SYS_waitid, "waitid"),
        (libc::SYS_rt_sigtimedwait, "rt_sigtimedwait"),
        (libc::SYS_rt_sigsuspend, "rt_sigsuspend"),
        (libc::SYS_io_uring_enter, "io_uring_enter"),
        (libc::SYS_io_getevents, "io_getevents"),
        (libc::SYS_flock, "flock"),
        (libc::SYS_fcntl, "fcntl"),
        (libc::SYS_fsync, "fsync"),
        (libc::SYS_fdatasync, "fdatasync"),
        (libc::SYS_openat, "openat"),
        (libc::SYS_sched_yield, "sched_yield"),
        (libc::SYS_msgrcv, "msgrcv"),
        (libc::SYS_semtimedop, "semtimedop"),
    ];
    known
        .iter()
        .chain(crate::arch::LEGACY_SYSCALL_NAMES)
        .find(|(n, _)| *n == nr)
        .map_or_else(|| format!("syscall {nr}"), |(_, name)| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(
            parse_stat_state("42 (a) b) S 1 42 42 0 -1"),
            Some('S'),
            "the name may hold ')'"
        );
        assert_eq!(
            parse_syscall_number("202 0x7f 0x80 0x0 0x0 0x0 0x0 0x7ffd 0x7f12"),
            Some(202)
        );
        assert_eq!(parse_syscall_number("running"), None);
        assert_eq!(parse_syscall_number("-1 0x7ffd 0x7f12"), None);
        assert_eq!(
            parse_exec_start_ms("x (1, #threads: 1)\n---\nse.exec_start   :   1424407.361380\n"),
            Some(1424407)
        );
        let status = "SigPnd:\t0000000000000000\nSigBlk:\t0000000200000000\n";
        assert!(signal_in_mask(status, "SigBlk:", 34));
        assert!(!signal_in_mask(status, "SigPnd:", 34));
    }

    #[test]
    fn reads_this_thread_and_names_futex_waits() {
        let me = ProcThread::read(crate::procfs::gettid()).expect("alive");
        assert_eq!(me.state, 'R');
        assert_eq!(me.activity(), "running");
        let mut waiting = me.clone();
        waiting.state = 'S';
        waiting.syscall = Some(syscall_name(libc::SYS_futex));
        assert_eq!(waiting.activity(), "futex wait");
        waiting.state = 'D';
        waiting.syscall = Some(syscall_name(libc::SYS_read));
        assert_eq!(waiting.activity(), "read, disk wait");
        assert_eq!(syscall_name(100_000), "syscall 100000");
    }

    #[test]
    fn a_wait_seen_again_keeps_its_start() {
        let thread = |line: &str, waited| ProcThread {
            tid: 7,
            name: "t".into(),
            state: 'S',
            syscall: Some("futex".into()),
            wchan: String::new(),
            waiting_seconds: Some(waited),
            syscall_line: line.into(),
        };
        let mut clock = WaitClock::default();
        clock.extend(&mut [thread("202 0x1 0x7ffd 0x7f12", 30)]);
        // The previous dump woke the thread, so the scheduler now says 0 s.
        let mut again = [thread("202 0x1 0x7ffd 0x7f12", 0)];
        clock.extend(&mut again);
        assert!(again[0].waiting_seconds >= Some(30));
        let mut other = [thread("202 0x2 0x7ffd 0x7f12", 0)];
        clock.extend(&mut other);
        assert_eq!(
            other[0].waiting_seconds,
            Some(0),
            "a different wait starts anew"
        );
    }
}
