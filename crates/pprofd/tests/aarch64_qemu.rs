//! pprofd on aarch64 Linux, run under qemu-user: the CPU split and whole stacks of a
//! stock release build (no frame pointers), a goroutine dump and a heap profile.
//!
//! `.ci/run` builds `.ci/platform-service` for aarch64-unknown-linux-gnu with Debian's
//! toolchain and passes its path in `PPROFD_AARCH64_SERVICE`; without it the test is skipped,
//! except under `CI=true`. It runs as `qemu-aarch64 -L / SERVICE`: `/` holds Debian's arm64
//! multiarch libraries (`-L /usr/aarch64-linux-gnu` mixes two glibc builds and hangs), and
//! libc6-dbg:arm64 names glibc's thread roots, which Debian's arm64 libc has only in its
//! separate debug file (its `.dynsym` lacks `thread_start` and `start_thread`). qemu reports
//! the host's system call numbers in /proc/<tid>/syscall and its own signal mask in SigBlk, so
//! the test keeps to what qemu shows faithfully: not block profiles, not system call names.

mod support;

use std::time::{Duration, Instant};

use support::{
    assert_seventy_thirty, binary_from_ci, function_names, label, profile_while_spawning_a_worker,
    reaches_root_through, share_of, Workload,
};

/// The record of thread `name` in a `debug=2` dump.
fn thread_record<'a>(dump: &'a str, name: &str) -> Option<&'a str> {
    dump.split("\n\n")
        .find(|record| record.contains(&format!("\"{name}\"")))
}

/// Whether a stack (leaf first) runs through the workers' code to a thread root.
fn is_whole(functions: &[String]) -> bool {
    let roots = ["thread_start", "clone3", "clone", "start_thread", "_start"];
    reaches_root_through(functions, "platform_service::worker", &roots)
}

#[test]
fn an_aarch64_service_gets_a_dump_its_cpu_split_with_whole_stacks_and_a_heap_profile() {
    let Some(path) = binary_from_ci(
        "PPROFD_AARCH64_SERVICE",
        "the aarch64 service",
        "an aarch64 build of .ci/platform-service",
    ) else {
        return;
    };
    let mut service = Workload::start_under(
        &["qemu-aarch64", "-L", "/"],
        &path,
        &[],
        &[("PPROF_ADDR", "127.0.0.1:0"), ("PPROF_MEM_RATE", "4096")],
    );

    // The dump first, once both workers run their loop: whole stacks, each worker's walked in a
    // signal handler (like a CPU sample) from its leaf through the service's frames to glibc's
    // thread root.
    let deadline = Instant::now() + Duration::from_secs(60);
    let dump = loop {
        let dump = service.text("/debug/pprof/goroutine?debug=2");
        let working = |worker: &str| {
            thread_record(&dump, worker).is_some_and(|r| r.contains("platform_service::hot_"))
        };
        if working("worker-1") && working("worker-2") {
            break dump;
        }
        assert!(Instant::now() < deadline, "the workers never ran: {dump}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(dump.contains("\"pprofd-http\""), "{dump}");
    assert!(dump.contains("main.rs:"), "file:line in the dump: {dump}");
    for worker in ["worker-1", "worker-2"] {
        let record = thread_record(&dump, worker).unwrap();
        let functions: Vec<String> = record
            .lines()
            .skip(1)
            .filter(|line| !line.starts_with('\t'))
            .map(str::to_string)
            .collect();
        assert!(
            is_whole(&functions),
            "{worker}'s stack reaches its root: {record}"
        );
    }

    // A third worker starts a second into the profile: its stack is a mapping the profile's
    // first reading of the stack bounds lacks, and its samples must be whole too. (They were
    // leaf-only while the collector published new bounds only after arming a new thread's
    // timer, or never for a thread created while the session started: see `refresh_bounds`
    // in src/cpu/session.rs. Reading /proc/self/maps takes tens of milliseconds under qemu.)
    let profile = profile_while_spawning_a_worker(&mut service);
    let samples: i64 = profile.sample.iter().map(|s| s.value[0]).sum();
    assert!(
        samples > 40,
        "two busy threads for 4 s at 100 Hz give up to 800 samples (fewer on a loaded machine), got {samples}"
    );
    assert_seventy_thirty(&profile, "hot_seventy", "hot_thirty", 0.1);
    let mut unrooted = Vec::new();
    let rooted: i64 = profile
        .sample
        .iter()
        .filter(|s| {
            let names = function_names(&profile, s);
            let whole = is_whole(&names);
            if !whole && unrooted.len() < 3 {
                unrooted.push(names);
            }
            whole
        })
        .map(|s| s.value[0])
        .sum();
    assert!(
        rooted as f64 > 0.95 * samples as f64,
        "only {rooted} of {samples} CPU samples reach the thread root; for example {unrooted:#?}"
    );
    let (third, third_whole) = profile
        .sample
        .iter()
        .filter(|s| label(&profile, s, "thread") == Some("worker-3"))
        .fold((0, 0), |(all, whole), s| {
            let names = function_names(&profile, s);
            (
                all + s.value[0],
                whole + s.value[0] * i64::from(is_whole(&names)),
            )
        });
    assert!(
        third > 10 && third_whole as f64 > 0.95 * third as f64,
        "{third_whole} of the {third} samples of worker-3, started during the profile, reach its root"
    );

    // The workers' rounds run in a `Labels` scope: their samples carry it on aarch64 too.
    let in_rounds: i64 = profile
        .sample
        .iter()
        .filter(|s| {
            function_names(&profile, s)
                .iter()
                .any(|f| f.ends_with("hot_seventy") || f.ends_with("hot_thirty"))
        })
        .map(|s| s.value[0])
        .sum();
    let labelled: i64 = profile
        .sample
        .iter()
        .filter(|s| label(&profile, s, "operation") == Some("Round"))
        .map(|s| s.value[0])
        .sum();
    assert!(
        labelled as f64 >= 0.95 * in_rounds as f64,
        "{labelled} of the {in_rounds} samples in the rounds carry operation=Round"
    );

    let heap = service.profile("/debug/pprof/heap");
    let allocs: i64 = heap.sample.iter().map(|s| s.value[0]).sum();
    assert!(allocs > 0, "the workers' allocations are sampled");
    assert!(
        share_of(&heap, "platform_service::worker") > 0.0,
        "heap samples are charged to the workers"
    );
    service.finish();
}
