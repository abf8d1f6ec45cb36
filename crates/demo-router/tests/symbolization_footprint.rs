//! Answering a CPU profile or a goroutine dump raises the router's peak memory by a bounded
//! amount (docs/invariants.md invariant 14), measured by the kernel (`clear_refs` + `VmHWM`),
//! on the release build of the router (39 MB with `debug = "limited"`).

mod support;

use std::time::Duration;

use support::footprint::{measure, symbolization_ms, Load};
use support::{decode, report, ProfiledRouter};

/// Largest peak RSS growth while one request is answered. Measured on the 2-core dev machine
/// with 2 clients loading the router: CPU profile (5 s) 5.4-5.7 MiB (2-3 MiB of it the CPU
/// sample ring), goroutine dump 2.5-2.7 MiB; with blazesym's per-request symbolizer and a
/// ring written whole at start both were 50-60 MiB.
const PEAK_GROWTH_BOUND_KIB: u64 = 10 * 1024;

#[test]
fn a_profile_or_dump_raises_peak_memory_by_at_most_10_mib() {
    let router = ProfiledRouter::start();
    let load = Load::start(&router, 2);
    std::thread::sleep(Duration::from_secs(1));
    // One-time costs first: pprofd's pool threads, their malloc arenas, the code pages of
    // the symbolizer itself.
    for path in [
        "/debug/pprof/profile?seconds=1",
        "/debug/pprof/goroutine?debug=2",
    ] {
        assert_eq!(measure(&router, path).status, 200, "{path}");
    }
    let cpu = measure(&router, "/debug/pprof/profile?seconds=5");
    assert_eq!(cpu.status, 200);
    let profile = decode("cpu", &cpu.body);
    let names: Vec<&str> = profile
        .function
        .iter()
        .map(|f| profile.string_table[f.name as usize].as_str())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("demo_router::")),
        "the profile is symbolized: {names:?}"
    );
    report(&format!(
        "CPU profile: peak +{:.1} MiB, after {:+.1} MiB, symbolization {:?} ms",
        cpu.peak_growth_kib as f64 / 1024.0,
        cpu.after_kib as f64 / 1024.0,
        symbolization_ms(&profile)
    ));
    drop(load);
    let dump = measure(&router, "/debug/pprof/goroutine?debug=2");
    assert_eq!(dump.status, 200);
    let text = String::from_utf8_lossy(&dump.body);
    assert!(text.contains("demo_router::"), "the dump is symbolized");
    report(&format!(
        "goroutine?debug=2: peak +{:.1} MiB, after {:+.1} MiB",
        dump.peak_growth_kib as f64 / 1024.0,
        dump.after_kib as f64 / 1024.0
    ));
    for (what, cost) in [("CPU profile", &cpu), ("goroutine dump", &dump)] {
        assert!(
            cost.peak_growth_kib <= PEAK_GROWTH_BOUND_KIB,
            "{what} raised peak RSS by {} KiB (bound {PEAK_GROWTH_BOUND_KIB} KiB)",
            cost.peak_growth_kib
        );
    }
}
