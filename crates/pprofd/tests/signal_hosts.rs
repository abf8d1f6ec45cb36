//! pprofd in a host with its own signal loop (`examples/sigwait_host.rs`): every thread blocks
//! every signal except `plain-worker`, and `signal-loop` sits in `sigwaitinfo(full set)`.
//! Block profiles, thread dumps and CPU profiles must not queue a single signal to the
//! threads that block or wait for them, and must say which threads they skipped and why.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pprofd::profile::proto;
use support::Workload;

/// `tids signal-loop=T plain-worker=T ...` as a map from thread name to id.
fn parse_tids(line: &str) -> HashMap<String, i32> {
    line.strip_prefix("tids ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .split(' ')
        .map(|pair| {
            let (name, tid) = pair.split_once('=').expect("name=tid");
            (name.to_string(), tid.parse().expect("a thread id"))
        })
        .collect()
}

fn task_file(pid: u32, tid: i32, file: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/{file}")).unwrap_or_default()
}

/// Waits (at most 60 s: a busy machine may run the thread late) until `ready` holds for the
/// thread's `/proc` file.
fn wait_until(pid: u32, tid: i32, file: &str, ready: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = task_file(pid, tid, file);
        if ready(&text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "thread {tid} not ready: {file} says {text:?}"
        );
        std::thread::yield_now();
    }
}

/// pprofd's signals (its CPU timer's and its dump signal) pending in process `pid`: in the
/// process's shared set (`ShdPnd`) or a thread's own (`SigPnd`), each as `where: mask`. Only
/// this process: the queued-signal count (`SigQ`) is the user's, other tests' included.
fn pprofd_signals_pending(pid: u32) -> Vec<String> {
    let pprofd_signals =
        (1u64 << (pprofd::cpu::timer_signal() - 1)) | (1u64 << (libc::SIGRTMIN() + 7 - 1));
    let pending = |status: &str, set: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(set))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .map_or(0, |m| m & pprofd_signals)
    };
    let process = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mut found = Vec::new();
    let shared = pending(&process, "ShdPnd:");
    if shared != 0 {
        found.push(format!("process: {shared:#x}"));
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    for tid in tasks.filter_map(|task| task.ok()?.file_name().to_str()?.parse().ok()) {
        let own = pending(&task_file(pid, tid, "status"), "SigPnd:");
        if own != 0 {
            let name = task_file(pid, tid, "comm");
            found.push(format!("thread {tid} ({}): {own:#x}", name.trim_end()));
        }
    }
    found
}

fn comments(p: &proto::Profile) -> String {
    p.comment
        .iter()
        .map(|&c| p.string_table[c as usize].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_host_signal_loop_and_threads_that_block_signals_get_no_pprofd_signal() {
    let mut host = Workload::start_with_env("sigwait_host", &[], &[]);
    let tids = parse_tids(&host.line());
    let pid = host.pid();
    // Ready when the loop sits in rt_sigtimedwait and every waiter sleeps on its condvar.
    let sigtimedwait = libc::SYS_rt_sigtimedwait.to_string();
    wait_until(pid, tids["signal-loop"], "syscall", |s| {
        s.split(' ').next() == Some(sigtimedwait.as_str())
    });
    for name in ["waiter-1", "waiter-2", "waiter-3", "plain-worker"] {
        wait_until(pid, tids[name], "stat", |s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('S'))
        });
    }

    let block = host.profile("/debug/pprof/block?seconds=2");
    let full_dumps: Vec<String> = (0..3)
        .map(|_| host.text("/debug/pprof/goroutine?debug=2"))
        .collect();
    let grouped = host.text("/debug/pprof/goroutine?debug=1");
    let dump_profile = host.profile("/debug/pprof/goroutine");
    let cpu = host.profile("/debug/pprof/profile?seconds=1");

    host.send("count");
    assert_eq!(
        host.line(),
        "received rtmin7=0 rtmin6=0 other=0",
        "the host's sigwait loop received pprofd's signals"
    );
    // A pprofd signal sent to a thread that takes it may still be on its way on a busy
    // machine; one sent to a thread that blocks it stays pending for good.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pending = pprofd_signals_pending(pid);
    while !pending.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        pending = pprofd_signals_pending(pid);
    }
    assert_eq!(
        pending,
        Vec::<String>::new(),
        "pprofd's signals left pending in the host"
    );
    // The host's queued-signal limit counts the user's signals: other tests' may use it up for
    // a moment (a dump of 1000 threads queues 1000), signals left queued would for good.
    let deadline = Instant::now() + Duration::from_secs(60);
    let timer = loop {
        host.send("timer");
        let answer = host.line();
        if answer == "timer ok" || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(timer, "timer ok", "the host cannot create a timer");

    let loop_tid = tids["signal-loop"];
    let waiter_tid = tids["waiter-1"];
    let loop_reason = format!("thread {loop_tid} (signal-loop): waits in sigtimedwait");
    let waiter_reason = format!("thread {waiter_tid} (waiter-1): blocks SIGRTMIN+7");
    let block_comments = comments(&block);
    for reason in [&loop_reason, &waiter_reason] {
        assert!(
            block_comments.contains(reason.as_str()),
            "block profile comments lack {reason:?}:\n{block_comments}"
        );
    }
    for (form, text) in [("debug=2", &full_dumps[0]), ("debug=1", &grouped)] {
        for reason in [&loop_reason, &waiter_reason] {
            assert!(
                text.contains(reason.as_str()),
                "goroutine {form} lacks {reason:?}:\n{text}"
            );
        }
    }
    let dump_comments = comments(&dump_profile);
    for reason in [&loop_reason, &waiter_reason] {
        assert!(
            dump_comments.contains(reason.as_str()),
            "goroutine profile comments lack {reason:?}:\n{dump_comments}"
        );
    }
    let cpu_comments = comments(&cpu);
    assert!(
        cpu_comments.contains("threads block pprofd's CPU timer signal (SIGRTMIN+6)"),
        "CPU profile comments:\n{cpu_comments}"
    );

    // pprofd still works for the thread that blocks nothing.
    for dump in &full_dumps {
        let plain = dump
            .split("\n\n")
            .find(|b| b.contains("\"plain-worker\""))
            .unwrap_or_else(|| panic!("no plain-worker block:\n{dump}"));
        assert!(plain.contains("sigwait_host::plain_wait\n\t"), "{plain}");
    }
    host.finish();
}
