//! `/debug/pprof/goroutine` and `/debug/pprof/threadcreate` against a separate workload
//! process (`examples/thread_workload.rs`), over real HTTP.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use support::{function_names, get, go_tool_pprof_bytes, label, Workload};

/// One `thread TID "name" [state]:` block of a `debug=2` dump.
struct Block {
    tid: i32,
    name: String,
    state: String,
    body: String,
}

/// The thread blocks of a `debug=2` dump (task blocks and `#` notes follow them).
fn blocks(dump: &str) -> Vec<Block> {
    dump.split("\n\n")
        .filter(|b| !b.trim().is_empty() && !b.starts_with("# ") && !b.starts_with("task "))
        .map(|b| {
            let (header, body) = b.split_once('\n').unwrap_or((b, ""));
            let rest = header
                .strip_prefix("thread ")
                .unwrap_or_else(|| panic!("not a thread header: {header:?}"));
            let (tid, rest) = rest.split_once(' ').unwrap();
            let (name, state) = rest[1..].split_once("\" [").unwrap();
            Block {
                tid: tid.parse().unwrap(),
                name: name.to_string(),
                state: state.trim_end_matches("]:").to_string(),
                body: body.to_string(),
            }
        })
        .collect()
}

/// How a dump shows a thread that did not answer within pprofd's 1 s deadline.
const NO_ANSWER: &str = "[no answer within 1000 ms]";

/// `thread_workload.rs:LINE` of the line holding `marker`.
fn workload_site(marker: &str) -> String {
    let source = include_str!("../examples/thread_workload.rs");
    let line = source
        .lines()
        .position(|l| l.contains(marker))
        .expect("marker in the workload source")
        + 1;
    format!("examples/thread_workload.rs:{line}")
}

/// Whether the thread waits in `Mutex::lock`.
fn blocked_on_a_mutex(block: &Block) -> bool {
    block.state.starts_with("futex wait") && block.body.contains("Mutex<T>::lock\n")
}

#[test]
fn deadlocked_threads_show_their_lock_call_sites_while_the_runtime_is_wedged() {
    let workload = Workload::start("thread_workload", &["--deadlock"]);
    // The deadlocked threads and the runtime's workers (once they pick up the handlers)
    // block on the mutexes when they get to run: dump until all four do.
    let deadline = Instant::now() + Duration::from_secs(60);
    let dump = loop {
        let started = Instant::now();
        let dump = workload.text("/debug/pprof/goroutine?debug=2");
        // Every dump answers while the runtime is wedged; the bound leaves room for load.
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the dump took {:?}",
            started.elapsed()
        );
        let mut blocked: Vec<String> = blocks(&dump)
            .into_iter()
            .filter(blocked_on_a_mutex)
            .map(|b| b.name)
            .collect();
        blocked.sort();
        if blocked
            == [
                "deadlock-a",
                "deadlock-b",
                "tokio-rt-worker",
                "tokio-rt-worker",
            ]
        {
            break dump;
        }
        assert!(
            Instant::now() < deadline,
            "blocked on the mutexes: {blocked:?}\n{dump}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let blocks = blocks(&dump);
    for (thread, function, marker) in [
        (
            "deadlock-a",
            "lock_first_then_second",
            "deadlock-a blocks here",
        ),
        (
            "deadlock-b",
            "lock_second_then_first",
            "deadlock-b blocks here",
        ),
    ] {
        let block = blocks
            .iter()
            .find(|b| b.name == thread)
            .unwrap_or_else(|| panic!("{thread} missing from\n{dump}"));
        let site = format!("{function}\n\t");
        let at = block
            .body
            .find(&site)
            .unwrap_or_else(|| panic!("{function} missing from {thread}:\n{}", block.body));
        let line = block.body[at + site.len()..].lines().next().unwrap();
        assert!(
            line.ends_with(&workload_site(marker)),
            "{thread} blocks at {line}, not at the second acquisition"
        );
    }
    let workers: Vec<&Block> = blocks
        .iter()
        .filter(|b| b.name.starts_with("tokio-rt"))
        .collect();
    assert_eq!(workers.len(), 2, "the runtime's two workers:\n{dump}");
    for worker in workers {
        assert!(worker.body.contains("wedged_handler"), "{}", worker.body);
    }
    workload.finish();
}

#[test]
fn a_thousand_idle_and_four_busy_threads_each_appear_once_with_their_name() {
    let workload = Workload::start("thread_workload", &["--threads", "1000", "4"]);
    let task_dir = format!("/proc/{}/task", workload.pid());
    let live = std::fs::read_dir(&task_dir).unwrap().count();

    let dump = workload.text("/debug/pprof/goroutine?debug=2");
    let blocks = blocks(&dump);
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for b in &blocks {
        *by_name.entry(b.name.as_str()).or_default() += 1;
    }
    for i in 0..1000 {
        let name = format!("idle-{i:04}");
        assert_eq!(by_name.get(name.as_str()), Some(&1), "{name}");
    }
    for i in 1..=4 {
        let name = format!("busy-{i}");
        assert_eq!(by_name.get(name.as_str()), Some(&1), "{name}");
    }
    let mut tids: Vec<i32> = blocks.iter().map(|b| b.tid).collect();
    tids.sort_unstable();
    tids.dedup();
    assert_eq!(tids.len(), blocks.len(), "a thread listed twice");
    assert!(
        blocks.len() >= live,
        "{} threads listed, {live} alive",
        blocks.len()
    );
    // pprofd waits 1 s for the threads' answers, which a loaded machine can make some of
    // the 1,000 miss: the dump lists those as unanswered, without a stack.
    let mut answered = 0;
    for b in blocks.iter().filter(|b| b.name.starts_with("idle-")) {
        if b.body.contains("wait_for_shutdown") {
            answered += 1;
        } else {
            assert!(b.body.starts_with(NO_ANSWER), "{}:\n{}", b.name, b.body);
        }
    }
    assert!(answered > 0, "no idle thread answered:\n{dump}");

    let profile = workload.profile("/debug/pprof/goroutine");
    let total: i64 = profile.sample.iter().map(|s| s.value[0]).sum();
    assert_eq!(total as usize, blocks.len());
    let idle: i64 = profile
        .sample
        .iter()
        .filter(|s| label(&profile, s, "thread").is_some_and(|n| n.starts_with("idle-")))
        .map(|s| s.value[0])
        .sum();
    assert_eq!(idle, 1000);
    assert!(profile
        .sample
        .iter()
        .any(|s| label(&profile, s, "thread") == Some("busy-1")
            && label(&profile, s, "state") == Some("running")));

    let grouped = workload.text("/debug/pprof/goroutine?debug=1");
    let total: usize = grouped
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("goroutine profile: total "))
        .expect("Go's header")
        .parse()
        .unwrap();
    assert!(total >= 1005, "total {total}");
    let grouped_threads: usize = grouped
        .lines()
        .filter_map(|l| l.split_once(" @ "))
        .map(|(count, _)| count.parse::<usize>().unwrap())
        .sum();
    assert_eq!(grouped_threads, total, "the groups add up to the total");
    // The idle threads that answered (and "before-pprofd" and "made-by-spawner", unless one
    // is caught between two calls) all wait in wait_for_shutdown and share one group; those
    // that did not share the unanswered group.
    let idle_in = |group: &str| group.matches("\"idle-").count();
    let (unanswered, answered): (Vec<&str>, Vec<&str>) = grouped
        .split("\n\n")
        .filter(|g| idle_in(g) > 0)
        .partition(|g| g.contains(NO_ANSWER));
    let [idle_group] = answered[..] else {
        panic!(
            "the idle threads that answered are in {} groups",
            answered.len()
        );
    };
    let unanswered_idle: usize = unanswered.iter().map(|g| idle_in(g)).sum();
    assert_eq!(idle_in(idle_group) + unanswered_idle, 1000);
    let count_line = idle_group.lines().find(|l| l.contains(" @ ")).unwrap();
    let grouped_idle: usize = count_line.split(' ').next().unwrap().parse().unwrap();
    assert!(
        (idle_in(idle_group)..=idle_in(idle_group) + 2).contains(&grouped_idle),
        "identical stacks are grouped: {}",
        &count_line[..40]
    );
    workload.finish();
}

#[test]
fn blocked_system_calls_keep_working_through_a_hundred_dumps() {
    let mut workload = Workload::start("thread_workload", &["--syscalls"]);
    std::thread::sleep(Duration::from_millis(200));
    // Which states each thread was caught in, over all dumps.
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..100 {
        let dump = workload.text("/debug/pprof/goroutine?debug=2");
        for b in blocks(&dump) {
            seen.entry(b.name).or_default().push(b.state);
        }
    }
    let caught_in = |thread: &str, calls: &[&str]| {
        let states = &seen[thread];
        assert_eq!(states.len(), 100, "{thread} is in every dump");
        assert!(
            states
                .iter()
                .any(|s| calls.iter().any(|c| s.starts_with(c))),
            "{thread} never caught in {calls:?}: {states:?}"
        );
    };
    caught_in("pipe-reader", &["read"]);
    caught_in("epoll-waiter", &["epoll_wait", "epoll_pwait"]);
    caught_in("sleeper", &["clock_nanosleep", "nanosleep"]);
    caught_in("condvar-waiter", &["futex wait"]);

    // Each kept going: a call wedged by a dump makes no progress after the dumps. No floor
    // on the counts: on 2 busy cores (this binary's other tests run beside it) a 5 ms sleep
    // takes ~25 ms to come back, so they measure the load more than the calls.
    let mut ask_results = || {
        workload.send("results");
        results(&workload.line())
    };
    let after_dumps = ask_results();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = ask_results();
        let stuck: Vec<&str> = ["pipe_reads", "socket_reads", "sleeps", "condvar_changes"]
            .into_iter()
            .filter(|progress| now[*progress] <= after_dumps[*progress])
            .collect();
        if stuck.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no progress after the dumps: {stuck:?} in {now:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let output = workload.finish();
    let line = output.lines().find(|l| l.starts_with("results "));
    let at_exit = results(line.expect("results line"));
    for errors in [
        "pipe_errors",
        "socket_errors",
        "short_sleeps",
        "condvar_errors",
    ] {
        assert_eq!(at_exit[errors], 0, "{output}");
    }
}

/// The counts of a `--syscalls` workload's `results` line.
fn results(line: &str) -> HashMap<String, u64> {
    line.strip_prefix("results ")
        .unwrap_or_else(|| panic!("not a results line: {line:?}"))
        .split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

#[test]
fn threadcreate_names_the_function_that_spawned_a_thread() {
    let workload = Workload::start("thread_workload", &[]);
    let profile = workload.profile("/debug/pprof/threadcreate");
    assert_eq!(
        profile.string_table[profile.sample_type[0].r#type as usize],
        "threadcreate"
    );
    let spawned = profile
        .sample
        .iter()
        .find(|s| label(&profile, s, "thread") == Some("made-by-spawner"))
        .expect("the spawned thread is listed");
    let names = function_names(&profile, spawned);
    assert!(
        names
            .iter()
            .any(|n| n == "thread_workload::spawn_from_named_function"),
        "{names:#?}"
    );
    let main = profile
        .sample
        .iter()
        .find(|s| label(&profile, s, "thread") == Some("thread_workload"))
        .expect("the main thread is listed");
    assert_eq!(function_names(&profile, main), ["[process main thread]"]);
    let early = profile
        .sample
        .iter()
        .find(|s| label(&profile, s, "thread") == Some("before-pprofd"))
        .expect("a thread created before pprofd started is listed");
    assert_eq!(
        function_names(&profile, early),
        ["[creation not recorded]"],
        "pprofd records nothing before it is started"
    );

    let text = workload.text("/debug/pprof/threadcreate?debug=1");
    assert!(text.starts_with("threadcreate profile: total "), "{text}");
    let group = text
        .split("\n\n")
        .find(|g| g.contains("\"made-by-spawner\""))
        .expect("a group with the spawned thread");
    assert!(group.contains("thread_workload::spawn_from_named_function\t"));
    workload.finish();
}

#[test]
fn go_tool_pprof_reads_goroutine_and_threadcreate_profiles() {
    let Some(go) = support::go() else {
        return;
    };
    let workload = Workload::start("thread_workload", &[]);
    for (name, function) in [
        ("goroutine", "wait_for_shutdown"),
        ("threadcreate", "spawn_from_named_function"),
    ] {
        let response = workload.get(&format!("/debug/pprof/{name}"));
        assert_eq!(response.status, 200);
        let top = go_tool_pprof_bytes(&go, &["-top", "-cum", "-nodecount=500"], &response.body);
        assert!(top.contains(&format!("Type: {name}")), "{top}");
        assert!(top.contains(function), "{top}");
    }
    workload.finish();
}

#[test]
fn dumps_and_a_cpu_profile_run_side_by_side() {
    let workload = Workload::start("thread_workload", &["--threads", "20", "2"]);
    std::thread::scope(|s| {
        let cpu = s.spawn(|| workload.profile("/debug/pprof/profile?seconds=2"));
        for _ in 0..10 {
            let dump = workload.text("/debug/pprof/goroutine?debug=2");
            let blocks = blocks(&dump);
            for name in ["busy-1", "busy-2", "idle-0019"] {
                let block = blocks.iter().find(|b| b.name == name).expect(name);
                assert!(
                    !block.body.starts_with('['),
                    "{name} has a stack:\n{}",
                    block.body
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let cpu = cpu.join().unwrap();
        let samples: i64 = cpu.sample.iter().map(|s| s.value[0]).sum();
        assert!(samples > 20, "the CPU profile kept sampling: {samples}");
    });
    workload.finish();
}

#[test]
fn a_goroutine_delta_shows_the_threads_that_appeared() {
    // The late threads must start inside both deltas' windows, which the deltas give: a run
    // where a request took its first snapshot after the threads were asked for (or its last
    // before they ran) proves nothing, and is run again.
    let mut runs = 0;
    let (workload, delta, created) = loop {
        let mut workload = Workload::start("thread_workload", &["--late-threads", "3"]);
        let addr = workload.addr();
        let (delta, created, asked, started) = std::thread::scope(|s| {
            let created =
                s.spawn(move || get(addr, "/debug/pprof/threadcreate?seconds=3").profile());
            let delta = s.spawn(move || get(addr, "/debug/pprof/goroutine?seconds=3").profile());
            // The requests take their first snapshots as they arrive.
            std::thread::sleep(Duration::from_secs(1));
            let asked = SystemTime::now();
            workload.send("start-late-threads");
            assert_eq!(workload.line(), "late threads started");
            let started = SystemTime::now();
            (
                delta.join().unwrap(),
                created.join().unwrap(),
                asked,
                started,
            )
        });
        let (delta_window, created_window) = (support::window(&delta), support::window(&created));
        if [&delta_window, &created_window]
            .iter()
            .all(|w| w.contains(&asked) && w.contains(&started))
        {
            break (workload, delta, created);
        }
        runs += 1;
        assert!(
            runs < 5,
            "the windows {delta_window:?} and {created_window:?} never held the threads' \
             start: asked {asked:?}, started {started:?}"
        );
    };
    // threadcreate's delta: the three new threads, each created by the spawner's closure
    // (pprofd's own blocking-pool threads may appear too: the dumps start them).
    let late_samples: Vec<_> = created
        .sample
        .iter()
        .filter(|s| label(&created, s, "thread").is_some_and(|n| n.starts_with("late-")))
        .collect();
    let mut new_threads: Vec<(&str, i64)> = late_samples
        .iter()
        .map(|s| (label(&created, s, "thread").unwrap(), s.value[0]))
        .collect();
    new_threads.sort();
    assert_eq!(new_threads, [("late-0", 1), ("late-1", 1), ("late-2", 1)]);
    for sample in late_samples {
        let stack = function_names(&created, sample);
        assert!(
            stack
                .iter()
                .any(|f| f.starts_with("thread_workload::main::")),
            "created from the workload's late-spawner closure: {stack:?}"
        );
    }
    let mut late: Vec<(&str, i64)> = delta
        .sample
        .iter()
        .filter_map(|s| Some((label(&delta, s, "thread")?, s.value[0])))
        .filter(|(name, _)| name.starts_with("late-"))
        .collect();
    late.sort();
    // The spawner moved from waiting for the command to joining: its old stack -1, its new
    // one +1.
    assert_eq!(
        late,
        [
            ("late-0", 1),
            ("late-1", 1),
            ("late-2", 1),
            ("late-spawner", -1),
            ("late-spawner", 1)
        ]
    );
    assert!(
        !delta
            .sample
            .iter()
            .any(|s| label(&delta, s, "thread") == Some("made-by-spawner")),
        "a thread that did not change is not in the delta"
    );
    let response = workload.get("/debug/pprof/goroutine?seconds=1&debug=1");
    assert_eq!(response.status, 400, "{}", response.text());
    workload.finish();
}
