//! 1,000 profiles in a row from the running router: every one answers, none hangs, and the
//! router's memory levels off instead of growing with each profile served.

mod support;

use std::time::{Duration, Instant};

use support::{client, decode, get, report, Memory, ProfiledRouter};

/// Profiles served in the run.
const PROFILES: usize = 1_000;
/// RSS is compared between this many profiles in and every later checkpoint. By then every
/// endpoint has run 25 times or more and a few CPU profiles have, so the one-time costs are
/// paid: the binary's pages mapped in for symbolization, the debug info tokio's task dumps
/// keep cached, pprofd's blocking pool threads and the malloc arenas they and tokio's dump
/// threads use.
const WARM: usize = 250;
/// Largest RSS growth from profile 250 to any later checkpoint. Measured on the 2-core dev
/// machine: 28.0 MiB at profile 250, then 27.7 to 29.0 MiB to the end (+1.0 MiB), with the
/// live heap near zero throughout. Before pprofd trimmed glibc's heaps after each symbolizer,
/// stopped sampling its own threads and cleared the cache tokio's task dumps fill, the same
/// run went from 67 MiB at profile 50 to 83 MiB at 1,000. The bound leaves room for glibc's
/// arena fragmentation, which wanders by several MiB on a loaded machine; a leak of 22 KiB
/// per profile (16 MiB over the 750 profiles after warm-up) crosses it.
const GROWTH_BOUND_KIB: u64 = 16 * 1024;
/// A profile that has not answered in this time counts as a hang. The slowest request is a
/// 1 s CPU profile; goroutine dumps of this router take ~50 ms; the rest is room for a
/// loaded machine.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Every 100th request (the first included) is a CPU profile; the others cycle through
/// [`CHEAP`].
const CPU_EVERY: usize = 100;
const CPU_PROFILE: &str = "/debug/pprof/profile?seconds=1";

/// The endpoints that answer at once, with what their body starts with: `None` for a gzipped
/// pprof profile, which the test decodes instead.
const CHEAP: &[(&str, Option<&str>)] = &[
    ("/debug/pprof/heap", None),
    ("/debug/pprof/allocs", None),
    ("/debug/pprof/goroutine?debug=0", None),
    (
        "/debug/pprof/goroutine?debug=1",
        Some("goroutine profile: total "),
    ),
    ("/debug/pprof/goroutine?debug=2", Some("thread ")),
    ("/debug/pprof/threadcreate", None),
    (
        "/debug/pprof/cmdline",
        Some(env!("CARGO_BIN_EXE_demo-router")),
    ),
    ("/debug/pprof/symbol", Some("num_symbols: 1\n")),
    ("/debug/pprof/", Some("<html>")),
];

/// Threads in the router process, from /proc/PID/status.
fn threads(router: &ProfiledRouter) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", router.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads: in /proc/PID/status")
}

/// The router's live heap as its own heap profile estimates it (inuse_space), in KiB.
fn live_heap_kib(router: &ProfiledRouter, agent: &ureq::Agent) -> u64 {
    let (status, body) = get(agent, &format!("{}/debug/pprof/heap", router.pprof)).unwrap();
    assert_eq!(status, 200);
    let heap = decode("heap", &body);
    let inuse_space = heap
        .sample_type
        .iter()
        .position(|t| heap.string_table[t.r#type as usize] == "inuse_space")
        .expect("heap profiles have inuse_space");
    heap.sample
        .iter()
        .map(|s| s.value[inuse_space])
        .sum::<i64>() as u64
        / 1024
}

#[test]
fn a_thousand_profiles_in_a_row_all_answer_and_memory_levels_off() {
    let mut router = ProfiledRouter::start();
    let agent = client(REQUEST_TIMEOUT);
    let at_start = router.memory();
    let threads_at_start = threads(&router);
    let mut checkpoints: Vec<(usize, Memory, u64)> =
        vec![(0, at_start, live_heap_kib(&router, &agent))];
    let mut slowest = (Duration::ZERO, "");
    let started = Instant::now();

    for i in 0..PROFILES {
        let (path, starts_with) = if i % CPU_EVERY == 0 {
            (CPU_PROFILE, None)
        } else {
            CHEAP[i % CHEAP.len()]
        };
        let asked = Instant::now();
        let (status, body) = get(&agent, &format!("{}{path}", router.pprof))
            .unwrap_or_else(|e| panic!("profile {i}, {path}: no answer: {e}"));
        let took = asked.elapsed();
        if took > slowest.0 {
            slowest = (took, path);
        }
        assert_eq!(
            status,
            200,
            "profile {i}, {path}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
        match starts_with {
            None => {
                decode(path, &body);
            }
            Some(prefix) => assert!(
                body.starts_with(prefix.as_bytes()),
                "profile {i}, {path} does not start with {prefix:?}: {:?}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        }
        let served = i + 1;
        if served == WARM || served % 250 == 0 {
            checkpoints.push((served, router.memory(), live_heap_kib(&router, &agent)));
        }
    }
    let elapsed = started.elapsed();
    let threads_at_end = threads(&router);

    for (served, memory, live_kib) in &checkpoints {
        report(&format!(
            "after {served:>4} profiles: {memory}; live heap (heap profile inuse_space) {:.1} MiB",
            *live_kib as f64 / 1024.0
        ));
    }
    let (_, at_warm, live_at_warm) = checkpoints.iter().find(|(n, ..)| *n == WARM).unwrap();
    let (peak_at, at_end, live_at_end) = checkpoints
        .iter()
        .filter(|(n, ..)| *n >= WARM)
        .max_by_key(|(_, memory, _)| memory.rss_kib)
        .unwrap();
    let growth_kib = at_end.rss_kib as i64 - at_warm.rss_kib as i64;
    report(&format!(
        "{PROFILES} profiles in {:.1} s (slowest {:.2} s, {}); RSS growth from profile {WARM} to the highest later checkpoint (profile {peak_at}): {:+.1} MiB (bound {} MiB); threads {threads_at_start} at start, {threads_at_end} at the end",
        elapsed.as_secs_f64(),
        slowest.0.as_secs_f64(),
        slowest.1,
        growth_kib as f64 / 1024.0,
        GROWTH_BOUND_KIB / 1024
    ));

    assert!(
        growth_kib < GROWTH_BOUND_KIB as i64,
        "the router's RSS grew by {:.1} MiB from profile {WARM} ({at_warm}) to profile {peak_at} ({at_end}); the bound is {} MiB. Its live heap by the heap profile went from {:.1} to {:.1} MiB",
        growth_kib as f64 / 1024.0,
        GROWTH_BOUND_KIB / 1024,
        *live_at_warm as f64 / 1024.0,
        *live_at_end as f64 / 1024.0
    );
    // pprofd's blocking pool keeps up to 4 threads for a while after use; a thread per
    // profile that never exits would show here as hundreds.
    assert!(
        threads_at_end <= threads_at_start + 4,
        "the router had {threads_at_start} threads before the profiles and {threads_at_end} after"
    );
    // And the service itself still answers.
    let (status, health) = get(&agent, &format!("{}/healthz", router.url)).unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&health));
    assert!(router.is_running());
}
