//! pprofd never harms its host: a host program (`examples/host_safety.rs`) forks, changes
//! SIGPROF, runs with little stack left, on a small sigaltstack and on a switched stack,
//! while CPU profiles, heap sampling (every allocation sampled) and thread dumps run.

mod support;

use std::time::{Duration, Instant};

use pprofd::profile::proto::Profile;
use support::{function_names, get, Workload};

/// Every allocation sampled: the allocator's path runs as often as it can.
fn host() -> Workload {
    Workload::start_with_env(
        "host_safety",
        &[],
        &[("PPROF_ADDR", "127.0.0.1:0"), ("PPROF_MEM_RATE", "1")],
    )
}

fn ask(host: &mut Workload, command: &str) -> String {
    host.send(command);
    host.line()
}

#[test]
fn a_child_forked_while_profiling_never_hangs_and_inherits_no_profile() {
    let mut host = host();
    // Forks while a profile and dumps run in the background.
    let addr = host.addr();
    let background = std::thread::spawn(move || {
        let profile = get(addr, "/debug/pprof/profile?seconds=3&hz=250").status;
        let dump = get(addr, "/debug/pprof/goroutine?debug=2").status;
        (profile, dump)
    });
    let forked = ask(&mut host, "fork 150");
    assert_eq!(
        forked, "forked 150 hung 0 failed 0",
        "children must neither hang nor inherit a profile"
    );
    assert_eq!(background.join().unwrap(), (200, 200));
    host.finish();
}

#[test]
fn a_host_that_changes_sigprof_keeps_it_and_is_still_profiled() {
    let mut host = host();
    // pprofd's handler is installed by a first profile; then the host takes SIGPROF back.
    assert_eq!(host.get("/debug/pprof/profile?seconds=1").status, 200);
    for how in ["handler", "ignore", "default"] {
        assert_eq!(
            ask(&mut host, &format!("sigprof {how}")),
            format!("sigprof {how}")
        );
        let profile = host.profile("/debug/pprof/profile?seconds=1");
        assert!(
            !profile.sample.is_empty(),
            "SIGPROF {how}: the profile still has samples"
        );
    }
    assert_eq!(ask(&mut host, "sigprof handler"), "sigprof handler");
    assert_eq!(ask(&mut host, "raise-sigprof"), "raised");
    assert_eq!(
        ask(&mut host, "sigprof-count"),
        "sigprofs 1",
        "the host's own handler runs"
    );
    // A host that resets SIGPROF to its default while a profile runs is not ended by it.
    let addr = host.addr();
    let running = std::thread::spawn(move || get(addr, "/debug/pprof/profile?seconds=2").profile());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ask(&mut host, "sigprof default"), "sigprof default");
    assert!(!running.join().unwrap().sample.is_empty());
    // Even pprofd's own timer signal reset to SIG_DFL before a profile: put back, said so.
    assert_eq!(
        ask(&mut host, "timer-signal default"),
        "timer-signal default"
    );
    let profile = host.profile("/debug/pprof/profile?seconds=1");
    assert!(!profile.sample.is_empty());
    let comments: Vec<&str> = profile
        .comment
        .iter()
        .map(|&i| profile.string_table[i as usize].as_str())
        .collect();
    assert!(
        comments.iter().any(|c| c.contains("reset to SIG_DFL")),
        "{comments:#?}"
    );
    assert_eq!(ask(&mut host, "sigprof-count"), "sigprofs 1");
    host.finish();
}

#[test]
fn a_host_that_sends_itself_the_timer_signal_gets_every_one_while_recording_and_profiling() {
    // Recording keeps pprofd's collector waiting on the timer signal's number almost all the
    // time; signals the host sends to the process with that number must still all reach the
    // host's handler, and sampling goes on.
    let mut host = Workload::start_with_env(
        "host_safety",
        &[],
        &[("PPROF_ADDR", "127.0.0.1:0"), ("PPROF_RECORD", "1m")],
    );
    let addr = host.addr();
    let running = std::thread::spawn(move || get(addr, "/debug/pprof/profile?seconds=2").profile());
    // Gives the profile time to start, so that it likely samples while the signals come.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        ask(&mut host, "timer-signal handler"),
        "timer-signal handler"
    );
    // Until pprofd's next check puts its handler back in front, the host's handler also
    // gets pprofd's timer signals: count from after that.
    let deadline = Instant::now() + Duration::from_secs(60);
    while ask(&mut host, "timer-signal-holder") == "holder host" {
        assert!(
            Instant::now() < deadline,
            "pprofd never put its handler back in front"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let count = |host: &mut Workload| -> u64 {
        let answer = ask(host, "sigprof-count");
        answer["sigprofs ".len()..].parse().expect("a count")
    };
    let before = count(&mut host);
    assert_eq!(ask(&mut host, "raise-timer-signal 100"), "raised");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut received = count(&mut host) - before;
    while received < 100 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        received = count(&mut host) - before;
    }
    assert_eq!(
        received, 100,
        "every signal the host sent reached its handler, and only those"
    );
    assert!(!running.join().unwrap().sample.is_empty());
    let past = host.profile("/debug/pprof/profile?past=2");
    assert!(!past.sample.is_empty(), "the recording kept sampling");
    host.finish();
}

/// Runs `command` on the host while a 1 s CPU profile at 1000 Hz, then a thread dump, run
/// beside it; returns the profile.
fn profiled(host: &mut Workload, command: &str) -> Profile {
    let addr = host.addr();
    let background = std::thread::spawn(move || {
        let profile = get(addr, "/debug/pprof/profile?seconds=1&hz=1000");
        let dump = get(addr, "/debug/pprof/goroutine?debug=2");
        (profile, dump.status)
    });
    assert_eq!(ask(host, command), format!("{command} done"));
    let (profile, dump) = background.join().unwrap();
    assert_eq!((profile.status, dump), (200, 200), "{command}");
    profile.profile()
}

#[test]
fn little_stack_small_altstacks_and_switched_stacks_do_not_crash_the_host() {
    let mut host = host();
    profiled(&mut host, "small-stack");
    // Only a few samples on the altstack find too little room (2-5% of them, those caught
    // deep in the work), and a round can take few samples or none: tens on a loaded machine,
    // none when the collector first sees the new thread inside pthread_create (it looks
    // again 1 s later). Rounds repeat until one catches a sample out of room.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let profile = profiled(&mut host, "altstack");
        let out_of_room = profile.sample.iter().any(|s| {
            function_names(&profile, s)
                .iter()
                .any(|f| f == "[lost: no stack room]")
        });
        if out_of_room {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "samples on the 8 KiB sigaltstack are kept as lost for want of room"
        );
    }
    profiled(&mut host, "switched");
    let heap = host.profile("/debug/pprof/heap");
    assert!(!heap.sample.is_empty());
    host.finish();
}
