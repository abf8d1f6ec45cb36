//! `/debug/pprof/block` and `/debug/pprof/mutex` against separate workload processes
//! (`examples/block_workload.rs`, `examples/thread_workload.rs`), over real HTTP.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pprofd::profile::proto;
use support::{example_binary, go_tool_pprof_bytes, label, Workload};

/// `block_workload.rs:LINE` of the line holding `marker`.
fn site(marker: &str) -> (String, i64) {
    let source = include_str!("../examples/block_workload.rs");
    let line = source
        .lines()
        .position(|l| l.contains(marker))
        .expect("marker in the workload source")
        + 1;
    ("examples/block_workload.rs".to_string(), line as i64)
}

/// Whether any frame of `sample` (inline frames included) is at `file:line`.
fn passes_through(profile: &proto::Profile, sample: &proto::Sample, at: &(String, i64)) -> bool {
    let locations: HashMap<u64, &proto::Location> =
        profile.location.iter().map(|l| (l.id, l)).collect();
    let functions: HashMap<u64, &proto::Function> =
        profile.function.iter().map(|f| (f.id, f)).collect();
    sample.location_id.iter().any(|id| {
        locations[id].line.iter().any(|line| {
            let file = &profile.string_table[functions[&line.function_id].filename as usize];
            line.line == at.1 && file.ends_with(&at.0)
        })
    })
}

/// The share of the profile's delay whose stacks pass through `at`.
fn delay_share(profile: &proto::Profile, at: &(String, i64)) -> f64 {
    let delay = |s: &proto::Sample| s.value[1] as f64;
    let total: f64 = profile.sample.iter().map(delay).sum();
    assert!(total > 0.0, "the profile has no delay");
    let at_site: f64 = profile
        .sample
        .iter()
        .filter(|s| passes_through(profile, s, at))
        .map(delay)
        .sum();
    at_site / total
}

fn assert_delay_types(profile: &proto::Profile) {
    let types: Vec<(&str, &str)> = profile
        .sample_type
        .iter()
        .map(|t| {
            (
                profile.string_table[t.r#type as usize].as_str(),
                profile.string_table[t.unit as usize].as_str(),
            )
        })
        .collect();
    assert_eq!(types, [("contentions", "count"), ("delay", "nanoseconds")]);
}

fn contended_mutex_dominates(mutex: &str) {
    let workload = Workload::start("block_workload", &["--mutex", mutex]);
    let profile = workload.profile("/debug/pprof/mutex?seconds=3");
    assert_delay_types(&profile);
    let contended = delay_share(&profile, &site("// contended lock site"));
    let uncontended = delay_share(&profile, &site("// uncontended lock site"));
    assert!(
        contended >= 0.8,
        "{mutex}: {:.0}% of the delay at the contended lock()",
        contended * 100.0
    );
    assert!(
        uncontended < 0.05,
        "{mutex}: {:.0}% of the delay at the uncontended lock()",
        uncontended * 100.0
    );
    assert!(profile
        .sample
        .iter()
        .all(|s| label(&profile, s, "wait") == Some("mutex")));
    assert!(profile
        .sample
        .iter()
        .any(|s| label(&profile, s, "thread").is_some_and(|t| t.starts_with("contender-"))));
    workload.finish();
}

#[test]
fn std_mutex_contention_is_charged_to_the_contended_lock_call() {
    contended_mutex_dominates("std");
}

#[test]
fn parking_lot_mutex_contention_is_charged_to_the_contended_lock_call() {
    contended_mutex_dominates("parking_lot");
}

#[test]
fn channel_receive_waits_are_charged_to_the_recv_call() {
    let workload = Workload::start("block_workload", &["--channel"]);
    let profile = workload.profile("/debug/pprof/block?seconds=3");
    assert_delay_types(&profile);
    let share = delay_share(&profile, &site("// channel receive site"));
    assert!(share >= 0.8, "{:.0}% of the delay at recv()", share * 100.0);
    assert!(profile
        .sample
        .iter()
        .any(|s| label(&profile, s, "wait") == Some("channel")
            && label(&profile, s, "thread") == Some("consumer")));
    // A channel wait is not a lock acquisition. std's channel does hold a small internal
    // mutex while it wakes the receiver; on a loaded machine a thread preempted inside it
    // makes a real, brief lock wait, so the bound is a share, not zero.
    let mutex = workload.profile("/debug/pprof/mutex?seconds=1");
    let delay = |p: &proto::Profile| p.sample.iter().map(|s| s.value[1]).sum::<i64>() as f64;
    let block_per_second = delay(&profile) / 3.0;
    assert!(
        delay(&mutex) <= 0.05 * block_per_second,
        "lock waits of {:.0} ns in a second against channel waits of {:.0} ns per second",
        delay(&mutex),
        block_per_second
    );
    workload.finish();
}

#[test]
fn an_idle_runtime_shows_no_contention_unless_idle_waits_are_asked_for() {
    let workload = Workload::start("block_workload", &["--idle-runtime"]);
    let comments = |p: &proto::Profile| -> String {
        p.comment
            .iter()
            .map(|&c| p.string_table[c as usize].as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mutex = workload.profile("/debug/pprof/mutex?seconds=2");
    assert!(
        mutex.sample.is_empty(),
        "{} mutex samples",
        mutex.sample.len()
    );
    assert!(comments(&mutex).contains("no thread waited to acquire a lock"));
    let block = workload.profile("/debug/pprof/block?seconds=2");
    assert!(
        block.sample.is_empty(),
        "{} block samples",
        block.sample.len()
    );
    assert!(comments(&block).contains("idle=1"), "{}", comments(&block));
    let with_idle = workload.profile("/debug/pprof/block?seconds=2&idle=1");
    let idle_workers = with_idle
        .sample
        .iter()
        .filter(|s| label(&with_idle, s, "thread").is_some_and(|t| t.starts_with("tokio-rt")))
        .map(|s| label(&with_idle, s, "wait").unwrap())
        .collect::<Vec<_>>();
    assert!(!idle_workers.is_empty(), "idle=1 shows the parked workers");
    assert!(
        idle_workers.iter().all(|w| *w == "idle" || *w == "I/O"),
        "{idle_workers:?}"
    );
    assert!(
        with_idle
            .sample
            .iter()
            .all(|s| !label(&with_idle, s, "thread")
                .unwrap()
                .starts_with("pprofd")),
        "pprofd's own threads are never in a profile"
    );
    let text = workload.text("/debug/pprof/block?seconds=1&debug=1&idle=1");
    assert!(
        text.starts_with("--- contention:\ncycles/second=1000000000\n"),
        "{text}"
    );
    workload.finish();
}

#[test]
fn a_second_request_while_one_samples_is_refused_with_409() {
    let workload = Workload::start("block_workload", &[]);
    std::thread::scope(|s| {
        let first = s.spawn(|| workload.get("/debug/pprof/block?seconds=10"));
        // The first samples once its sampler thread runs, and for 10 s from then: the second
        // comes well within them, however busy the machine.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !support::has_thread(workload.pid(), "pprofd-block") {
            assert!(Instant::now() < deadline, "no block sampler thread");
            std::thread::sleep(Duration::from_millis(10));
        }
        let second = workload.get("/debug/pprof/mutex?seconds=1");
        assert_eq!(second.status, 409, "{}", second.text());
        assert!(second.text().contains("already in use"));
        assert_eq!(first.join().unwrap().status, 200);
    });
    let again = workload.get("/debug/pprof/mutex?seconds=1");
    assert_eq!(
        again.status, 200,
        "sampling is free again once the first profile ends"
    );
    let zero = workload.get("/debug/pprof/block?seconds=0");
    assert_eq!(zero.status, 400, "{}", zero.text());
    workload.finish();
}

#[test]
fn continuous_sampling_answers_at_once_and_never_conflicts() {
    let workload = Workload::start_with_env(
        "block_workload",
        &["--mutex", "std"],
        &[("PPROF_ADDR", "127.0.0.1:0"), ("PPROF_BLOCK_RATE", "50")],
    );
    std::thread::sleep(Duration::from_secs(2));
    let asked = SystemTime::now();
    let since_start = workload.profile("/debug/pprof/mutex");
    // From when sampling started, before the request: not a window sampled from the request on.
    let began = UNIX_EPOCH + Duration::from_nanos(since_start.time_nanos as u64);
    assert!(
        began < asked,
        "no sampling window: the profile began {:?} after it was asked for",
        began.duration_since(asked).unwrap_or_default()
    );
    let share = delay_share(&since_start, &site("// contended lock site"));
    assert!(
        share >= 0.8,
        "{:.0}% at the contended lock()",
        share * 100.0
    );
    assert!(since_start
        .comment
        .iter()
        .any(|&c| since_start.string_table[c as usize].contains("cumulative")));
    std::thread::scope(|s| {
        let block = s.spawn(|| workload.profile("/debug/pprof/block?seconds=1"));
        let mutex = workload.profile("/debug/pprof/mutex?seconds=1");
        let block = block.join().unwrap();
        for delta in [&block, &mutex] {
            let delay: i64 = delta.sample.iter().map(|s| s.value[1]).sum();
            let total: i64 = since_start.sample.iter().map(|s| s.value[1]).sum();
            assert!(delay > 0, "the last second had contention");
            assert!(delay < total, "a delta, not everything since start");
        }
    });
    workload.finish();
}

#[test]
fn a_bad_block_rate_stops_the_program_with_a_clear_message() {
    let output = Command::new(example_binary("block_workload"))
        .env("PPROF_ADDR", "127.0.0.1:0")
        .env("PPROF_BLOCK_RATE", "fast")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("PPROF_BLOCK_RATE=\"fast\" is not a sampling rate"),
        "{stderr}"
    );
}

#[test]
fn threads_keep_correct_results_under_thirty_seconds_of_sampling() {
    let workload = Workload::start("thread_workload", &["--syscalls"]);
    let profile = workload.profile("/debug/pprof/block?seconds=30&idle=1");
    assert!(profile.sample.iter().any(|s| {
        label(&profile, s, "thread") == Some("condvar-waiter")
            && label(&profile, s, "wait") == Some("condvar")
    }));
    let output = workload.finish();
    let results = output
        .lines()
        .find_map(|l| l.strip_prefix("results "))
        .expect("results line");
    for errors in [
        "pipe_errors=0",
        "socket_errors=0",
        "short_sleeps=0",
        "condvar_errors=0",
    ] {
        assert!(results.split(' ').any(|kv| kv == errors), "{results}");
    }
    // Each kept going: a call wedged by a sample would stop its count near 0. Not more than
    // 100: the counts measure the load as much as the calls (on 2 busy cores a 5 ms sleep
    // takes ~25 ms to come back; a floor of 1000 in 30 s allowed it 30 ms).
    for progress in ["pipe_reads", "socket_reads", "sleeps", "condvar_changes"] {
        let count: u64 = results
            .split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{progress}=")))
            .unwrap()
            .parse()
            .unwrap();
        assert!(count > 100, "{progress}: {results}");
    }
}

#[test]
fn go_tool_pprof_reads_block_and_mutex_profiles() {
    let Some(go) = support::go() else {
        return;
    };
    let workload = Workload::start("block_workload", &["--mutex", "std"]);
    for name in ["block", "mutex"] {
        let response = workload.get(&format!("/debug/pprof/{name}?seconds=1"));
        assert_eq!(response.status, 200);
        let top = go_tool_pprof_bytes(&go, &["-top", "-sample_index=delay"], &response.body);
        assert!(top.contains("Type: delay"), "{top}");
        assert!(top.contains("futex"), "{top}");
    }
    workload.finish();
}
