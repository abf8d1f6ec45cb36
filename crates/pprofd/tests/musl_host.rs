//! pprofd in a static x86_64 musl build: whole CPU stacks to the thread root, honest stacks
//! for threads blocked in the C library, and the heap profile's allocating site.
//!
//! musl's libc.a (Debian's, like musl's default build) has no CFI, and its C code keeps no
//! frame pointers, so a walk cannot go through it soundly: it stops at the first C library
//! frame. That frame is the thread's root for Rust code (`start`, pthread_create's entry, or
//! `libc_start_main_stage2` for the main thread) and the stack is whole; anywhere else (a
//! thread blocked in `read`, in musl's malloc) it is marked truncated.
//!
//! `.ci/run` builds `.ci/platform-service` for x86_64-unknown-linux-musl (std from source,
//! linked statically) and passes its path in `PPROFD_MUSL_SERVICE`; without it the test is
//! skipped, except under `CI=true`.

mod support;

use std::time::{Duration, Instant};

use support::{
    assert_seventy_thirty, binary_from_ci, function_names, label, profile_while_spawning_a_worker,
    reaches_root_through, sample_index, Workload,
};

/// What a `debug=2` dump says after a stack the unwinder did not finish.
const ELIDED: &str = "...additional frames elided";

/// The record of the thread whose header line contains `header`.
fn thread_record<'a>(dump: &'a str, header: &str) -> Option<&'a str> {
    dump.split("\n\n")
        .find(|record| record.lines().next().is_some_and(|l| l.contains(header)))
}

/// The functions of a dump record, leaf first.
fn record_functions(record: &str) -> Vec<&str> {
    record
        .lines()
        .skip(1)
        .filter(|line| !line.starts_with('\t') && !line.starts_with("labels:"))
        .filter(|line| !line.starts_with(ELIDED))
        .collect()
}

/// musl's functions that the Rust code's stacks start in.
const ROOTS: [&str; 2] = ["start", "libc_start_main_stage2"];

/// Whether a CPU stack (leaf first) runs through a worker's code to the thread's root.
fn is_whole_worker_stack(functions: &[String]) -> bool {
    reaches_root_through(functions, "platform_service::worker", &["start"])
}

#[test]
fn a_static_musl_service_gets_whole_cpu_stacks_honest_dumps_and_its_heap_sites() {
    let Some(path) = binary_from_ci(
        "PPROFD_MUSL_SERVICE",
        "the musl service",
        "a static x86_64 musl build of .ci/platform-service",
    ) else {
        return;
    };
    let mut service = Workload::start_binary(
        &path,
        &[],
        &[("PPROF_ADDR", "127.0.0.1:0"), ("PPROF_MEM_RATE", "4096")],
    );

    // Once both workers run their loop and the main thread waits for stdin: the workers'
    // stacks, walked in the dump's signal handler as a CPU sample is, reach musl's `start`,
    // unmarked.
    let main_header = format!("thread {} ", service.pid());
    let deadline = Instant::now() + Duration::from_secs(30);
    let dump = loop {
        let dump = service.text("/debug/pprof/goroutine?debug=2");
        let working = |worker: &str| {
            thread_record(&dump, &format!("\"{worker}\""))
                .is_some_and(|r| r.contains("platform_service::hot_"))
        };
        let reading = thread_record(&dump, &main_header)
            .is_some_and(|r| r.lines().next().is_some_and(|l| l.contains("[read")));
        if working("worker-1") && working("worker-2") && reading {
            break dump;
        }
        assert!(
            Instant::now() < deadline,
            "the workers never ran or main never read: {dump}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for worker in ["\"worker-1\"", "\"worker-2\""] {
        let record = thread_record(&dump, worker).unwrap();
        let functions = record_functions(record);
        assert!(
            functions.last() == Some(&"start")
                && functions
                    .iter()
                    .any(|f| f.ends_with("platform_service::worker"))
                && !record.contains(ELIDED),
            "{worker}'s stack reaches musl's thread root, unmarked: {record}"
        );
    }
    // The main thread waits in `read` on stdin, inside musl's code: its stack is whole (to
    // musl's `libc_start_main_stage2` through `main`) or marked truncated with only C library
    // frames. A made-up frame (what following `rbp` through musl gave) would most likely
    // name Rust code: nearly all of this binary's text is.
    let main = thread_record(&dump, &main_header).unwrap();
    let functions = record_functions(main);
    let whole = functions.last() == Some(&"libc_start_main_stage2")
        && functions
            .iter()
            .any(|f| f.ends_with("platform_service::main"))
        && !main.contains(ELIDED);
    let honest = main.contains(ELIDED)
        && !functions.is_empty()
        && functions.iter().all(|f| !f.contains("::"));
    assert!(
        whole || honest,
        "the main thread's stack is whole or marked truncated, without made-up frames: {main}"
    );

    // A third worker starts a second into the profile (see tests/aarch64_qemu.rs).
    let profile = profile_while_spawning_a_worker(&mut service);
    let samples: i64 = profile.sample.iter().map(|s| s.value[0]).sum();
    assert!(
        samples > 100,
        "two busy threads for 4 s at 100 Hz give up to 800 samples (fewer on a loaded machine), got {samples}"
    );
    assert_seventy_thirty(
        &profile,
        "platform_service::hot_seventy",
        "platform_service::hot_thirty",
        0.1,
    );
    let (mut whole, mut third, mut third_whole) = (0, 0, 0);
    for sample in &profile.sample {
        let names = function_names(&profile, sample);
        let root = names.last().map(String::as_str);
        assert!(
            root == Some("[truncated]") || root.is_some_and(|r| ROOTS.contains(&r)),
            "every stack ends at a thread root or says it is truncated: {names:#?}"
        );
        let is_whole = is_whole_worker_stack(&names);
        if is_whole {
            whole += sample.value[0];
        }
        if label(&profile, sample, "thread") == Some("worker-3") {
            third += sample.value[0];
            third_whole += sample.value[0] * i64::from(is_whole);
        }
    }
    assert!(
        whole as f64 > 0.95 * samples as f64,
        "only {whole} of {samples} CPU samples run whole from a worker to musl's `start`"
    );
    assert!(
        third > 10 && third_whole as f64 > 0.95 * third as f64,
        "{third_whole} of the {third} samples of worker-3, started during the profile, are whole"
    );

    // The workers' rounds allocate 32 KiB each (`vec![x; 4096]` in their closure): that is the
    // site heap samples start at, the allocator's frames cut.
    let heap = service.profile("/debug/pprof/heap");
    let alloc_space = sample_index(&heap, "alloc_space");
    let biggest = heap
        .sample
        .iter()
        .max_by_key(|s| s.value[alloc_space])
        .expect("the workers' allocations are sampled");
    let names = function_names(&heap, biggest);
    assert!(
        names
            .first()
            .is_some_and(|leaf| leaf.ends_with("platform_service::worker::{closure#0}")),
        "the most allocating stack starts at the workers' vec!: {names:#?}"
    );
    assert!(
        names.last().is_some_and(|root| root == "start"),
        "and reaches the thread root: {names:#?}"
    );
    service.finish();
}
