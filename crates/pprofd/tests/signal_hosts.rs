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

/// Waits (at most 5 s) until `ready` holds for the thread's `/proc` file.
fn wait_until(pid: u32, tid: i32, file: &str, ready: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
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

/// The user's queued-signal count (`SigQ: count/limit` of the process's `status`).
fn queued_signals(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("SigQ:"))
        .and_then(|q| q.trim().split('/').next()?.parse().ok())
        .expect("SigQ line")
}

/// Threads of `pid` that have a pprofd dump signal pending.
fn threads_with_dump_signal_pending(pid: u32) -> Vec<String> {
    let bit = 1u64 << (libc::SIGRTMIN() + 7 - 1);
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|tid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
                .unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("SigPnd:"))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
                .is_some_and(|m| m & bit != 0)
        })
        .collect()
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
    let queued_before = queued_signals(pid);

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
    let queued_after = queued_signals(pid);
    // Other processes of the same user queue signals too; pprofd's leak was hundreds.
    assert!(
        queued_after <= queued_before + 16,
        "queued signals grew from {queued_before} to {queued_after}"
    );
    assert_eq!(
        threads_with_dump_signal_pending(pid),
        Vec::<String>::new(),
        "threads left with a pprofd signal pending"
    );
    host.send("timer");
    assert_eq!(host.line(), "timer ok", "the host cannot create a timer");

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
