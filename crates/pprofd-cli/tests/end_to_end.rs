//! End to end against the demo router started as a separate process: each incident's culprit
//! is found with the CLI, and `pprofd collect` writes archives `go tool pprof` reads.
//!
//! The leak and hang tests need the heap and goroutine endpoints; while a pprofd build answers
//! them with 404 those tests print why and check nothing else.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::time::{Duration, Instant};

use common::{get, go_available, not_served_yet, pprofd, Load, RouterProcess};

const CACHE_SOURCE: &str = include_str!("../../demo-router/src/cache.rs");

/// The line of `cache.rs` carrying `marker` in a comment.
fn cache_line(marker: &str) -> usize {
    CACHE_SOURCE
        .lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("cache.rs has no line marked {marker:?}"))
        + 1
}

/// The first row of a `top` or `diff` table: the line after the header row.
fn first_row<'a>(report: &'a str, header_word: &str) -> &'a str {
    let mut lines = report.lines();
    lines
        .by_ref()
        .find(|l| l.contains(header_word))
        .unwrap_or_else(|| panic!("no header row with {header_word:?} in:\n{report}"));
    lines
        .next()
        .unwrap_or_else(|| panic!("no rows in:\n{report}"))
}

/// Parses `+24.87MiB`-style byte values of `pprofd diff`.
fn parse_bytes(text: &str) -> f64 {
    let text = text.trim_start_matches('+');
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap();
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unit {other}"),
    };
    number.parse::<f64>().unwrap() * scale
}

#[test]
fn hotspot_wasteful_serializer_holds_the_largest_flat_share() {
    let router = RouterProcess::start(&["hotspot"]);
    let _load = Load::start(&router, 4);
    let url = format!("{}/debug/pprof/profile?seconds=5", router.pprof);
    let (status, profile) = get(&url, Duration::from_secs(60));
    assert_eq!(status, 200);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cpu.pb.gz");
    std::fs::write(&file, profile).unwrap();
    let file = file.to_str().unwrap();
    let output = pprofd(&["top", file, "-n", "5", "--sample-index", "cpu"]);
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let top = first_row(&report, "flat%");
    assert!(
        top.contains("demo_router::serialize::write_json_rechecking")
            && top.contains("serialize.rs:"),
        "the serializer is not on top:\n{report}"
    );
    let flat_share: f64 = top
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!(
        flat_share > 30.0,
        "the serializer holds only {flat_share}%:\n{report}"
    );
    // By operation: the router labels each request with its operation's name.
    let output = pprofd(&["top", file, "--tag", "operation"]);
    let by_operation = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{by_operation}");
    let top = first_row(&by_operation, "share");
    assert!(
        top.contains("ProductsWithReviews (demo_router::serialize::write_json_rechecking)"),
        "{by_operation}"
    );
    let output = pprofd(&["top", file, "--tag-focus", "operation=NoSuchOperation"]);
    let refused = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        refused.contains(
            "no sample has operation=\"NoSuchOperation\"; its values are: ProductsWithReviews"
        ),
        "{refused}"
    );
    let focused = pprofd(&["top", file, "--tag-focus", "operation=ProductsWithReviews"]);
    assert!(focused.status.success());
    assert!(String::from_utf8_lossy(&focused.stdout).contains("write_json_rechecking"));
}

/// The files of the `.tar.gz` at `path` by file name (the archive keeps them under one folder).
fn archive_members(path: &std::path::Path) -> HashMap<String, Vec<u8>> {
    let mut members = HashMap::new();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(path).unwrap(),
    ));
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry
            .path()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        members.insert(name, data);
    }
    members
}

#[test]
fn collect_writes_an_archive_whose_every_profile_go_tool_pprof_reads() {
    let router = RouterProcess::start(&["hotspot"]);
    let _load = Load::start(&router, 2);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("support.tar.gz");
    let output = pprofd(&[
        "collect",
        &router.pprof,
        "--seconds",
        "2",
        "-o",
        archive.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("wrote"), "{stdout}");

    let members = archive_members(&archive);
    let manifest: serde_json::Value = serde_json::from_slice(&members["manifest.json"]).unwrap();
    assert_eq!(manifest["target"], router.pprof.as_str());
    assert!(manifest["started"].as_str().unwrap().ends_with('Z'));
    assert!(members.contains_key("README.txt"));
    assert!(
        members.contains_key("cpu.pb.gz"),
        "members: {:?}",
        members.keys()
    );
    assert!(members.contains_key("cmdline.txt"));
    let listed: Vec<&str> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["file"].as_str().unwrap())
        .collect();
    for file in &listed {
        assert!(
            members.contains_key(*file),
            "manifest lists {file}, archive lacks it"
        );
    }
    for failure in manifest["failed"].as_array().unwrap() {
        assert!(!failure["error"].as_str().unwrap().is_empty(), "{failure}");
        assert!(!members.contains_key(failure["file"].as_str().unwrap()));
    }
    let profiles: Vec<&String> = members.keys().filter(|n| n.ends_with(".pb.gz")).collect();
    for name in &profiles {
        pprofd::profile::decode(&members[*name]).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // Reading straight from the archive.
    let top = pprofd(&["top", &format!("{}:cpu", archive.display())]);
    assert!(
        top.status.success(),
        "{}",
        String::from_utf8_lossy(&top.stderr)
    );
    let svg = dir.path().join("cpu.svg");
    let flame = pprofd(&[
        "flame",
        archive.to_str().unwrap(),
        "-o",
        svg.to_str().unwrap(),
    ]);
    assert!(
        flame.status.success(),
        "{}",
        String::from_utf8_lossy(&flame.stderr)
    );
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));

    if go_available() {
        for name in profiles {
            let path = dir.path().join(name);
            std::fs::write(&path, &members[name]).unwrap();
            let go = std::process::Command::new("go")
                .args(["tool", "pprof", "-top"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                go.status.success(),
                "go tool pprof -top {name}: {}",
                String::from_utf8_lossy(&go.stderr)
            );
        }
    }
}

/// `--past` against a service without the flight recorder (no `PPROF_RECORD`): the normal
/// collection is whole, and each recorded file's refusal is that file's error in the manifest
/// and on stdout. Needs the server side of issue 14 (`past=N` answered 400 when not recording);
/// a server that ignores `past` answers with a live profile, which this test reports.
#[test]
fn collect_past_from_a_service_not_recording_keeps_the_normal_files_and_records_the_refusal() {
    let router = RouterProcess::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("past.tar.gz");
    let output = pprofd(&[
        "collect",
        &router.pprof,
        "--seconds",
        "1",
        "--past",
        "1m",
        "-o",
        archive.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "a refused --past must not fail the collection: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let members = archive_members(&archive);
    let manifest: serde_json::Value = serde_json::from_slice(&members["manifest.json"]).unwrap();
    let failed = manifest["failed"].as_array().unwrap();
    let failure = |file: &str| failed.iter().find(|f| f["file"] == file);
    // The normal files: each one collected or, where this build lacks the endpoint, recorded
    // as failed; the ones every build serves must be there.
    for endpoint in pprofd::endpoints::ENDPOINTS {
        for file in endpoint.archive {
            assert!(
                members.contains_key(file.file) || failure(file.file).is_some(),
                "{} is neither in the archive nor in the manifest's failures: {:?}",
                file.file,
                members.keys()
            );
        }
    }
    for file in [
        "cpu.pb.gz",
        "heap.pb.gz",
        "goroutine-debug2.txt",
        "cmdline.txt",
    ] {
        assert!(
            members.contains_key(file),
            "{file} missing: {:?}",
            members.keys()
        );
    }
    pprofd::profile::decode(&members["cpu.pb.gz"]).unwrap();

    assert!(
        !members.contains_key("cpu-past.pb.gz"),
        "the service is not recording, yet cpu-past.pb.gz was collected: the server does not \
         refuse past=N without PPROF_RECORD yet (issue 14's server side)"
    );
    let cpu_past = failure("cpu-past.pb.gz")
        .unwrap_or_else(|| panic!("the manifest records no error for cpu-past.pb.gz: {failed:?}"));
    let error = cpu_past["error"].as_str().unwrap();
    assert!(error.contains("HTTP 400"), "{error}");
    assert!(
        error.contains("PPROF_RECORD"),
        "the server's message should say to set PPROF_RECORD: {error}"
    );
    assert_eq!(cpu_past["endpoint"], "/debug/pprof/profile?past=60");
    assert_eq!(cpu_past["past_seconds"], 60);
    assert!(
        stdout.contains("cpu-past.pb.gz") && stdout.contains("PPROF_RECORD"),
        "the refusal is printed: {stdout}"
    );
}

#[test]
fn leak_diff_of_two_heap_profiles_names_the_registration_site() {
    let router = RouterProcess::start(&["leak"]);
    let heap = format!("{}/debug/pprof/heap", router.pprof);
    let (status, before) = get(&heap, Duration::from_secs(60));
    if not_served_yet(
        "leak_diff_of_two_heap_profiles_names_the_registration_site",
        &heap,
        status,
        &before,
    ) {
        return;
    }
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&before));
    let health = |router: &RouterProcess| -> serde_json::Value {
        let (_, body) = get(&format!("{}/healthz", router.url), Duration::from_secs(5));
        serde_json::from_slice(&body).unwrap()
    };
    let held_before = health(&router)["subscription_backlog_bytes"]
        .as_f64()
        .unwrap();
    for _ in 0..400 {
        let (status, _) = get(
            &format!("{}/subscribe?topic=prices", router.url),
            Duration::from_secs(5),
        );
        assert_eq!(status, 200);
    }
    let leaked = health(&router)["subscription_backlog_bytes"]
        .as_f64()
        .unwrap()
        - held_before;
    assert_eq!(
        leaked,
        400.0 * 64.0 * 1024.0,
        "the router leaks one backlog per subscription"
    );
    let (status, after) = get(&heap, Duration::from_secs(60));
    assert_eq!(status, 200);

    let dir = tempfile::tempdir().unwrap();
    let (base, new) = (
        dir.path().join("before.pb.gz"),
        dir.path().join("after.pb.gz"),
    );
    std::fs::write(&base, before).unwrap();
    std::fs::write(&new, after).unwrap();
    let output = pprofd(&[
        "diff",
        base.to_str().unwrap(),
        new.to_str().unwrap(),
        "--sample-index",
        "inuse_space",
    ]);
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let top = first_row(&report, "call site");
    assert!(
        top.contains("demo_router::subscriptions::register") && top.contains("subscriptions.rs:"),
        "the registration site is not the top growth:\n{report}"
    );
    let growth = parse_bytes(top.split_whitespace().next().unwrap());
    assert!(
        (growth - leaked).abs() <= 0.2 * leaked,
        "diff says {growth} bytes grew at the registration site, the router leaked {leaked}:\n{report}"
    );
}

#[test]
fn hang_thread_dump_shows_threads_blocked_at_both_lock_sites() {
    let router = RouterProcess::start(&["deadlock"]);
    let dump_url = format!("{}/debug/pprof/goroutine?debug=2", router.pprof);
    let _load = Load::start(&router, 4);
    // Wait until the router stops answering: the two lock orders have met.
    let started = Instant::now();
    // A healthy router answers in milliseconds; 5 s leaves a loaded machine room.
    let probe = common::client(Duration::from_secs(5));
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the router kept answering for 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
        if probe
            .get(&format!("{}/healthz", router.url))
            .call()
            .is_err()
        {
            break;
        }
    }
    let (status, body) = get(&dump_url, Duration::from_secs(30));
    if not_served_yet(
        "hang_thread_dump_shows_threads_blocked_at_both_lock_sites",
        &dump_url,
        status,
        &body,
    ) {
        return;
    }
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let dump = String::from_utf8_lossy(&body);
    let blocked_at = |line: usize| {
        let site = format!("cache.rs:{line}");
        dump.split("\n\n").any(|thread| {
            thread.contains(&site)
                && (thread.contains("lock_contended") || thread.contains("futex"))
        })
    };
    let order_a = cache_line("lock order A, second lock");
    let order_b = cache_line("lock order B, second lock");
    assert!(
        blocked_at(order_a),
        "no thread blocked at cache.rs:{order_a} (stats under entries):\n{dump}"
    );
    assert!(
        blocked_at(order_b),
        "no thread blocked at cache.rs:{order_b} (entries under stats):\n{dump}"
    );
}

#[test]
fn demo_names_each_culprit_or_says_which_profile_was_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let output = pprofd(&["demo", "--seconds", "4", "-o", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("culprit: demo_router::serialize::write_json_rechecking"),
        "{stdout}"
    );
    assert!(
        stdout.contains("operation `ProductsWithReviews`: ")
            && stdout.contains("of CPU, in `demo_router::serialize::write_json_rechecking`"),
        "the hotspot names its operation:\n{stdout}"
    );
    assert!(dir.path().join("hotspot-cpu.svg").is_file());
    assert!(dir.path().join("demo-profiles.tar.gz").is_file());
    // Each later incident either names its culprit or says which profile was missing and why.
    let section = |number: &str| {
        let start = stdout
            .find(&format!("\n{number}. "))
            .unwrap_or_else(|| panic!("no section {number}:\n{stdout}"));
        let rest = &stdout[start + 1..];
        let end = rest.find("\n[").unwrap_or(rest.len());
        rest[..end].to_string()
    };
    for (number, culprits) in [
        (
            "2",
            &[
                "demo_router::subscriptions::register",
                "operation `Subscribe` allocated",
            ][..],
        ),
        ("3", &["demo_router::cache::stock_holding_lock"][..]),
        (
            "4",
            &[
                "demo_router::cache::stock_holding_lock",
                "demo_router::cache::sweep_stats_first",
            ][..],
        ),
    ] {
        let text = section(number);
        if text.contains("unavailable, so no culprit is claimed") {
            assert!(text.contains("HTTP 404"), "{text}");
        } else {
            // Per operation, the program's own code is named, not the C library it waits in.
            assert!(!text.contains("in `syscall`"), "{text}");
            for culprit in culprits {
                assert!(
                    text.contains(culprit),
                    "section {number} misses {culprit}:\n{text}"
                );
            }
        }
    }
    // The sample output in the CLI's README stays what the demo prints: each culprit it
    // names, function and file, is named by this run too (the hottest line moves from run to
    // run, and the README shortens paths).
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let sample = readme
        .split("```")
        .find(|block| block.contains("1. CPU hotspot:"))
        .expect("the README shows a demo run");
    for line in sample.lines() {
        let Some((_, culprit)) = line.split_once("culprit: ") else {
            continue;
        };
        let Some((function, place)) = culprit.split_once(" at ") else {
            continue;
        };
        let file = place.rsplit_once(':').map_or(place, |(file, _)| file);
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(&format!("culprit: {function} at ")) && l.contains(file)),
            "the README's sample names `{function}` at {file}, this run does not (regenerate the sample):\n{stdout}"
        );
    }
}

#[test]
fn a_browser_asking_for_a_profile_gets_a_flame_graph_and_tools_get_the_protobuf() {
    let router = RouterProcess::start(&["hotspot"]);
    let _load = Load::start(&router, 2);
    let url = format!("{}/debug/pprof/profile?seconds=2", router.pprof);
    let agent = common::client(Duration::from_secs(60));
    let mut browser = agent
        .get(&url)
        .header(
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        )
        .call()
        .unwrap();
    assert_eq!(browser.status().as_u16(), 200);
    assert_eq!(browser.headers()["content-type"], "image/svg+xml");
    let svg = browser.body_mut().read_to_string().unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("write_json_rechecking"),
        "{}",
        &svg[..svg.len().min(500)]
    );
    let (status, body) = get(&url, Duration::from_secs(60));
    assert_eq!(status, 200);
    pprofd::profile::decode(&body)
        .expect("without a browser Accept header the answer is the profile");
}

#[test]
fn collect_every_takes_a_heap_series_that_diff_reads() {
    let router = RouterProcess::start(&["leak"]);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("series.tar.gz");
    let archive_arg = archive.to_str().unwrap();
    let output = pprofd(&[
        "collect",
        &router.pprof,
        "--every",
        "1s",
        "--count",
        "2",
        "-o",
        archive_arg,
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let (status, _) = get(
        &format!("{}/debug/pprof/heap", router.pprof),
        Duration::from_secs(60),
    );
    if status == 404 {
        // No heap endpoint in this build: the series must fail loudly, not write an empty archive.
        assert_eq!(output.status.code(), Some(1));
        assert!(
            stderr.contains("no heap profile collected") && stderr.contains("404"),
            "{stderr}"
        );
        assert!(!archive.exists());
        return;
    }
    assert!(output.status.success(), "{stderr}");
    let diff = pprofd(&[
        "diff",
        &format!("{archive_arg}:heap-01"),
        &format!("{archive_arg}:heap-02"),
    ]);
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stderr)
    );
    assert!(String::from_utf8_lossy(&diff.stdout).contains("inuse_space from"));
}
