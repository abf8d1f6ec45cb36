//! Heap and allocs profiles, end to end: example workloads run as separate processes with
//! pprofd's allocator, and their `/debug/pprof/heap` and `/allocs` are fetched over HTTP and
//! read with pprofd's decoder and with `go tool pprof`.

mod support;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use pprofd::profile::proto::Profile;
use support::{
    example_binary, function_names, get, go_tool_pprof, go_tool_pprof_bytes, sample_index,
    ScratchDir, Workload,
};

/// Whether any frame (inline frames included) of the sample is a function containing `name`.
fn sample_has_function(
    profile: &Profile,
    sample: &pprofd::profile::proto::Sample,
    name: &str,
) -> bool {
    function_names(profile, sample)
        .iter()
        .any(|function| function.contains(name))
}

/// Sum of one sample type over the samples whose stack holds `function` (all when `None`).
fn total(profile: &Profile, sample_type: &str, function: Option<&str>) -> i64 {
    let index = sample_index(profile, sample_type);
    profile
        .sample
        .iter()
        .filter(|s| function.is_none_or(|f| sample_has_function(profile, s, f)))
        .map(|s| s.value[index])
        .sum()
}

fn assert_within(what: &str, measured: f64, expected: f64, tolerance: f64) {
    let error = (measured - expected).abs() / expected;
    assert!(
        error <= tolerance,
        "{what}: measured {measured:.0}, expected {expected:.0} ({:.1}% off, allowed {:.0}%)",
        error * 100.0,
        tolerance * 100.0
    );
}

/// The `cum` value in bytes of the first `-top` row naming `function`.
fn top_cum_bytes(top: &str, function: &str) -> f64 {
    let row = top
        .lines()
        .find(|l| l.contains(function))
        .unwrap_or_else(|| panic!("no {function} row in\n{top}"));
    let cum = row.split_whitespace().nth(3).expect("cum column");
    let split = cum
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(cum.len());
    let (number, unit) = cum.split_at(split);
    let scale = match unit {
        "B" | "" => 1.0,
        "kB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unknown unit {other} in {row}"),
    };
    number.parse::<f64>().expect("number") * scale
}

/// Reads `allocated <bytes> kept <bytes>` from an accuracy workload.
fn accuracy_figures(workload: &mut Workload) -> (f64, f64) {
    let line = workload.line();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[0], "allocated", "{line}");
    (words[1].parse().unwrap(), words[3].parse().unwrap())
}

/// Checks the kept site's in-use bytes and the total allocated bytes against what the
/// workload says it did, with pprofd's decoder and with `go tool pprof`.
fn check_accuracy(example: &str) {
    let mut workload = Workload::start(example, &["accuracy"]);
    let (allocated, kept) = accuracy_figures(&mut workload);
    let response = workload.get("/debug/pprof/heap");
    let heap = response.profile();

    let types: Vec<&str> = heap
        .sample_type
        .iter()
        .map(|t| heap.string_table[t.r#type as usize].as_str())
        .collect();
    assert_eq!(
        types,
        [
            "alloc_objects",
            "alloc_space",
            "inuse_objects",
            "inuse_space"
        ]
    );
    assert_eq!(
        heap.string_table[heap.default_sample_type as usize],
        "inuse_space"
    );
    assert_eq!(heap.period, 512 * 1024);
    let bytes_key = heap.string_table.iter().position(|s| s == "bytes").unwrap() as i64;
    assert!(
        heap.sample
            .iter()
            .all(|s| s.label.iter().any(|l| l.key == bytes_key && l.num > 0)),
        "every sample carries a bytes label"
    );

    assert_within(
        "inuse_space at kept_site",
        total(&heap, "inuse_space", Some("kept_site")) as f64,
        kept,
        0.10,
    );
    assert_within(
        "alloc_space in total",
        total(&heap, "alloc_space", None) as f64,
        allocated,
        0.10,
    );
    assert!(
        total(&heap, "inuse_space", Some("churn_site")) < (kept as i64) / 20,
        "short-lived blocks are not in use"
    );
    assert!(
        !heap
            .sample
            .iter()
            .any(|s| sample_has_function(&heap, s, "pprofd::heap")),
        "the allocator's own frames are left out of stacks"
    );

    let allocs = workload.profile("/debug/pprof/allocs");
    assert_eq!(
        allocs.string_table[allocs.default_sample_type as usize],
        "alloc_space"
    );

    if let Some(go) = support::go() {
        let top = go_tool_pprof_bytes(&go, &["-top", "-sample_index=inuse_space"], &response.body);
        assert_within(
            "go tool pprof cum of kept_site",
            top_cum_bytes(&top, "kept_site"),
            kept,
            0.10,
        );
    }
    workload.finish();
}

#[test]
fn inuse_and_alloc_space_match_what_the_workload_did() {
    check_accuracy("heap_workload");
}

#[test]
fn works_around_mimalloc() {
    check_accuracy("heap_mimalloc");
}

#[test]
fn base_diff_names_the_leak_and_its_size() {
    const LEAK: usize = 50_000_000;
    let mut workload = Workload::start("heap_workload", &["leak"]);
    let before_response = workload.get("/debug/pprof/heap");
    let before = before_response.profile();
    workload.send(&format!("leak {LEAK}"));
    assert_eq!(workload.line(), "leaked");
    let after_response = workload.get("/debug/pprof/heap");
    let after = after_response.profile();
    let leaked = total(&after, "inuse_space", Some("leak_site"))
        - total(&before, "inuse_space", Some("leak_site"));
    assert_within("leak_site growth", leaked as f64, LEAK as f64, 0.10);

    if let Some(go) = support::go() {
        let scratch = ScratchDir::create();
        let base = scratch.write("base.pb.gz", &before_response.body);
        let new = scratch.write("new.pb.gz", &after_response.body);
        let top = go_tool_pprof(
            &go,
            &[
                "-top",
                "-sample_index=inuse_space",
                "-base",
                base.to_str().unwrap(),
                new.to_str().unwrap(),
            ],
        );
        assert_within(
            "go tool pprof -base cum of leak_site",
            top_cum_bytes(&top, "leak_site"),
            LEAK as f64,
            0.10,
        );
    }
    workload.finish();
}

#[test]
fn delta_text_and_parameters_behave_as_go() {
    const LEAK: usize = 20_000_000;
    let mut workload = Workload::start("heap_workload", &["leak"]);
    let addr = workload.addr();
    // The leak must fall inside the delta's window, which the delta gives: a run where the
    // request took its first snapshot after the leak began (or its last before the leak was
    // done) proves nothing, and is run again.
    let mut runs = 0;
    let delta = loop {
        let request = std::thread::spawn(move || get(addr, "/debug/pprof/allocs?seconds=2"));
        std::thread::sleep(Duration::from_millis(500));
        let sent = SystemTime::now();
        workload.send(&format!("leak {LEAK}"));
        assert_eq!(workload.line(), "leaked");
        let leaked = SystemTime::now();
        let response = request.join().unwrap();
        assert_eq!(response.status, 200);
        let delta = pprofd::profile::decode(&response.body).expect("delta decodes");
        let window = support::window(&delta);
        if window.contains(&sent) && window.contains(&leaked) {
            break delta;
        }
        runs += 1;
        assert!(
            runs < 10,
            "the delta's window {window:?} never held the leak: sent {sent:?}, done {leaked:?}"
        );
    };
    assert_within(
        "alloc_space at leak_site during the delta",
        total(&delta, "alloc_space", Some("leak_site")) as f64,
        LEAK as f64,
        0.10,
    );
    assert!(delta.duration_nanos >= 2_000_000_000);

    let text = workload.text("/debug/pprof/heap?debug=1&gc=1");
    let header = text.lines().next().unwrap();
    assert!(
        header.starts_with("heap profile: ") && header.ends_with(" @ heap/1048576"),
        "{header}"
    );
    assert!(text.contains("leak_site"), "text form names functions");

    let response = workload.get("/debug/pprof/heap?seconds=1&debug=1");
    assert_eq!(response.status, 400, "{}", response.text());
    let response = workload.get("/debug/pprof/heap?seconds=x");
    assert_eq!(response.status, 400);
    assert!(response.text().contains("seconds="));

    workload.send("rate 65536");
    assert_eq!(workload.line(), "rate 65536");
    let heap = workload.profile("/debug/pprof/heap");
    assert_eq!(heap.period, 65536, "the rate set in code is the period");
    workload.send("rate 0");
    assert_eq!(workload.line(), "rate 0");

    let index = workload.text("/debug/pprof/?debug=1");
    assert!(index.contains("/debug/pprof/heap\tA sampling of memory allocations of live objects"));
    assert!(index.contains("/debug/pprof/allocs\tA sampling of all past memory allocations"));
    workload.finish();
}

#[test]
fn without_the_wrapper_heap_says_how_to_enable_it() {
    // cpu_workload has its own counting allocator, not pprofd's.
    let workload = Workload::start("cpu_workload", &[]);
    for path in ["/debug/pprof/heap", "/debug/pprof/allocs"] {
        let response = workload.get(path);
        assert_eq!(response.status, 404);
        let body = String::from_utf8(response.body).unwrap();
        assert!(
            body.contains(
                "static ALLOC: pprofd::Allocator<std::alloc::System> = pprofd::Allocator::system();"
            ),
            "{body}"
        );
    }
    drop(workload);
}

#[test]
fn stress_across_threads_leaves_no_live_samples() {
    // A small rate samples one allocation in a few, so every path (realloc, cross-thread
    // free, large alignments) runs often.
    let mut workload = Workload::start_with_env(
        "heap_workload",
        &["stress"],
        &[("PPROF_ADDR", "127.0.0.1:0"), ("PPROF_MEM_RATE", "8192")],
    );
    let addr = workload.addr();
    // The stress runs until stopped: 8 s, and until the heap endpoint has answered twice
    // during it.
    let started = Instant::now();
    let mut fetched = 0;
    while fetched < 2 || started.elapsed() < Duration::from_secs(8) {
        let response = get(addr, "/debug/pprof/heap");
        assert_eq!(response.status, 200);
        pprofd::profile::decode(&response.body).expect("profile decodes under stress");
        fetched += 1;
    }
    workload.send("stop");
    let line = workload.line();
    assert!(line.starts_with("done live_sampled_blocks "), "{line}");

    let heap = workload.profile("/debug/pprof/heap");
    assert!(
        total(&heap, "alloc_objects", Some("stress_thread")) > 1000,
        "the stress allocations were sampled"
    );
    assert_eq!(total(&heap, "inuse_objects", Some("stress_thread")), 0);
    assert_eq!(total(&heap, "inuse_space", Some("stress_thread")), 0);
    let live: usize = line.rsplit(' ').next().unwrap().parse().unwrap();
    let comment = format!("pprofd: {live} sampled blocks live");
    let comments: Vec<&str> = heap
        .comment
        .iter()
        .map(|&c| heap.string_table[c as usize].as_str())
        .collect();
    // Blocks still live belong to the rest of the program (server, runtime), a handful.
    assert!(
        live < 100,
        "{live} sampled blocks live after freeing everything: {comments:?}"
    );
    assert!(
        comments
            .iter()
            .any(|c| c.starts_with("pprofd: ") && c.ends_with(" sampled blocks live")),
        "{comments:?} lacks {comment:?}"
    );
    workload.finish();
}

#[test]
fn without_pprof_addr_the_wrapper_only_forwards() {
    let output = Command::new(example_binary("alloc_bench_pprofd"))
        .args(["--iterations", "200000"])
        .env_remove("PPROF_ADDR")
        .env("PPROF_MEM_RATE", "1")
        .output()
        .expect("run alloc_bench_pprofd");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.trim_end().ends_with(" sampled 0"), "{stdout}");
}

/// The first `-top` row's function name.
fn first_top_row(top: &str) -> String {
    let header = top
        .lines()
        .position(|l| l.trim_start().starts_with("flat"))
        .unwrap_or_else(|| panic!("no table in\n{top}"));
    let row = top.lines().nth(header + 1).expect("a first row");
    row.split_whitespace().skip(5).collect::<Vec<_>>().join(" ")
}

#[test]
fn heap_stacks_start_at_the_allocating_function_unless_allocator_frames_is_asked() {
    let mut workload = Workload::start("heap_workload", &["leak"]);
    workload.send("leak 50000000");
    assert_eq!(workload.line(), "leaked");
    let trimmed = workload.get("/debug/pprof/heap");
    let full = workload.get("/debug/pprof/heap?allocator_frames=1");
    let bad = workload.get("/debug/pprof/allocs?allocator_frames=2");
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("allocator_frames=2"), "{}", bad.text());
    // pprofd's own reading: every stack's leaf is leak_site's location, the plumbing gone.
    let profile = trimmed.profile();
    assert!(!profile.sample.is_empty());
    for sample in &profile.sample {
        let names = function_names(&profile, sample);
        assert!(names[0].ends_with("leak_site"), "{names:?}");
    }
    let Some(go) = support::go() else { return };
    let top = go_tool_pprof_bytes(&go, &["-top"], &trimmed.body);
    assert!(first_top_row(&top).ends_with("leak_site"), "{top}");
    // The thread's root frames (`<Box<F> as FnOnce>::call_once` and the like) did not cut
    // the stack: main is still above leak_site.
    assert!(top.contains("heap_workload::main"), "{top}");
    let top = go_tool_pprof_bytes(&go, &["-top"], &full.body);
    let first = first_top_row(&top);
    assert!(!first.contains("leak_site"), "{top}");
    assert!(
        top.contains("alloc::raw_vec"),
        "the plumbing is kept:\n{top}"
    );
}
