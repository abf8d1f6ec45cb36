//! What answering a profile costs the router in memory and CPU, for two builds of it: the
//! workspace's release build (`debug = "limited"`) and one with full debug info
//! (`debug = true`), to show the cost grows far slower than the binary.
//!
//! Measured on the 2-core dev machine with other engineers' builds running (load 3-8, which
//! inflates thread CPU time), `debug = "limited"` (32 MiB binary, 27.5 MiB of DWARF) /
//! `debug = true` (74 MiB, 69 MiB of DWARF): the 10 s CPU profile raised peak RSS by 3.9-6.3
//! / 4.8-7.0 MiB and its symbolization took 16.7-39.4 / 37.8-57.4 ms of thread CPU for
//! 386-657 addresses (the count varies run to run); goroutine?debug=0 (55 addresses) 10.5-15
//! / 26-28 ms. Before the line-program state machine, the per-abbreviation DIE walk and the
//! 2 MiB page allowance: 5.6 / 6.3 MiB and 59.8 / 78.5 ms (address count not recorded then),
//! goroutine?debug=0 27.6 / 44.3 ms.
//!
//! With the index of units read before (symbolize/unit_index.rs), load ~9 (another build and
//! a benchmark running), `debug = "limited"` (34.9 MiB binary, 29.7 MiB of DWARF) /
//! `debug = true` (80.2 MiB, 75.0 MiB of DWARF): the first 10 s profile, with the index
//! empty, 33.7 / 50.5 ms for 526 / 508 addresses; the 10 s profiles after it 14.9 / 22.0 ms
//! (median of 3; 14.7 and 15.5 ms in two other runs of the limited build), peak RSS +3.6 /
//! +6.2 MiB; goroutine?debug=0 4.1 / 5.1 ms for 57 addresses; the index then held 13,664 /
//! 13,447 ranges, 481 / 464 KiB. On a quiet machine (load 0.3), whose load clients drew more
//! distinct addresses: first 10 s profile 32.7 / 66.0 ms for 735 / 713 addresses, the ones
//! after it 19.1 / 23.3 ms for 704 / 718, goroutine?debug=0 3.8 / 4.7 ms, peak RSS +4.2 /
//! +3.8 MiB, index 15,063 / 14,324 ranges, 508 / 479 KiB.
//!
//! Per request kind it prints the peak RSS growth while the request runs (`clear_refs` +
//! `VmHWM`), RSS after the answer against before, the router's CPU time for the request
//! (whole process, measured with no load) and, where the profile says, the thread CPU time
//! of symbolization with the number of addresses symbolized; first, the symbolization of one
//! 10 s profile taken before any other request. The CPU profile (10 s, 100 Hz) runs with 2
//! clients loading the router.
//!
//! Run:
//! ```sh
//! CARGO_PROFILE_RELEASE_DEBUG=true cargo build --release -p demo-router --target-dir target/debug-full
//! cargo bench -p demo-router --bench symbolization_cost
//! ```
//! `DEMO_ROUTER_FULL_DEBUG=PATH` names another full-debug binary; without either, only the
//! first build is measured.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use support::footprint::{measure, symbolization_ms, Cost, Load};
use support::{decode, ProfiledRouter};

const RUNS: usize = 3;

fn main() {
    let full_debug = std::env::var("DEMO_ROUTER_FULL_DEBUG").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../target/debug-full/release/demo-router"
        )
        .to_string()
    });
    let mut binaries = vec![(
        "debug=\"limited\"",
        env!("CARGO_BIN_EXE_demo-router").to_string(),
    )];
    if std::path::Path::new(&full_debug).exists() {
        binaries.push(("debug=true", full_debug));
    } else {
        println!("no full-debug build at {full_debug}: see the module docs to build one");
    }
    println!(
        "{:<16} {:>8} {:>8}  {:<22} {:>11} {:>9} {:>12} {:>16}",
        "build",
        "binary",
        "DWARF",
        "request",
        "peak RSS+",
        "after",
        "request CPU",
        "symbolize/addrs"
    );
    for (build, binary) in &binaries {
        measure_build(build, binary);
    }
}

/// How many addresses the profile's comment says were symbolized (the work grows with them).
fn symbolized_addresses(profile: &pprofd::profile::proto::Profile) -> Option<u64> {
    profile.comment.iter().find_map(|&c| {
        let text = &profile.string_table[c as usize];
        let rest = text.strip_prefix("pprofd: symbolized ")?;
        rest.split(' ').next()?.parse().ok()
    })
}

/// What the profile says symbolization's index of units holds.
fn index_held(profile: &pprofd::profile::proto::Profile) -> Option<String> {
    profile.comment.iter().find_map(|&c| {
        let text = &profile.string_table[c as usize];
        let (_, rest) = text.split_once("; its index")?;
        Some(format!("the index{rest}"))
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// The binary's size and the size of its `.debug_*` sections, from `readelf -SW`.
fn sizes(binary: &str) -> (u64, u64) {
    let size = std::fs::metadata(binary).map(|m| m.len()).unwrap_or(0);
    let sections = std::process::Command::new("readelf")
        .args(["-SW", binary])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let dwarf = sections
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let name = fields.iter().position(|f| f.starts_with(".debug_"))?;
            u64::from_str_radix(fields.get(name + 4)?, 16).ok()
        })
        .sum();
    (size, dwarf)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn measure_build(build: &str, binary: &str) {
    let (size, dwarf) = sizes(binary);
    let router = ProfiledRouter::start_binary(binary);
    // The first profile reads every unit its addresses fall in from the start; later ones
    // find most of what they need through the index of what was read (symbolize/unit_index.rs).
    {
        let _load = Load::start(&router, 2);
        std::thread::sleep(Duration::from_millis(500));
        let path = "/debug/pprof/profile?seconds=10";
        let cost = measure(&router, path);
        assert_eq!(cost.status, 200, "{path}");
        let profile = decode(path, &cost.body);
        println!(
            "{:<16} first profile?seconds=10, the index empty: symbolized {} addresses in {:.1} ms",
            build,
            symbolized_addresses(&profile).unwrap_or(0),
            symbolization_ms(&profile).unwrap_or(f64::NAN)
        );
    }
    // One-time costs first (pool threads, arenas, the symbolizer's own code pages).
    {
        let _load = Load::start(&router, 2);
        std::thread::sleep(Duration::from_secs(1));
        for path in [
            "/debug/pprof/profile?seconds=1",
            "/debug/pprof/heap",
            "/debug/pprof/goroutine?debug=2",
        ] {
            assert_eq!(measure(&router, path).status, 200, "{path}");
        }
    }
    let kinds: [(&str, bool, bool); 4] = [
        ("/debug/pprof/profile?seconds=10", true, true),
        ("/debug/pprof/heap", false, true),
        ("/debug/pprof/goroutine?debug=2", false, false),
        ("/debug/pprof/goroutine?debug=0", false, true),
    ];
    let mut last_index = None;
    for (path, loaded, protobuf) in kinds {
        let costs: Vec<(Cost, Option<(f64, u64)>)> = (0..RUNS)
            .map(|_| {
                let _load = loaded.then(|| Load::start(&router, 2));
                if loaded {
                    std::thread::sleep(Duration::from_millis(500));
                }
                let cost = measure(&router, path);
                assert_eq!(cost.status, 200, "{path}");
                let symbolize = protobuf
                    .then(|| {
                        let profile = decode(path, &cost.body);
                        Some((symbolization_ms(&profile)?, symbolized_addresses(&profile)?))
                    })
                    .flatten();
                (cost, symbolize)
            })
            .collect();
        let peak = median(
            costs
                .iter()
                .map(|(c, _)| c.peak_growth_kib as f64 / 1024.0)
                .collect(),
        );
        let after = median(
            costs
                .iter()
                .map(|(c, _)| c.after_kib as f64 / 1024.0)
                .collect(),
        );
        let cpu = median(
            costs
                .iter()
                .map(|(c, _)| c.process_cpu.as_secs_f64() * 1e3)
                .collect(),
        );
        let symbolize: Vec<(f64, u64)> = costs.iter().filter_map(|(_, s)| *s).collect();
        let symbolize = if symbolize.is_empty() {
            "-".to_string()
        } else {
            let ms = median(symbolize.iter().map(|s| s.0).collect());
            let addresses = median(symbolize.iter().map(|s| s.1 as f64).collect());
            format!("{ms:.1} ms / {addresses:.0}")
        };
        let cpu = if loaded {
            "(loaded)".to_string()
        } else {
            format!("{cpu:.1} ms")
        };
        if let Some(index) = costs
            .iter()
            .filter(|_| protobuf)
            .find_map(|(c, _)| index_held(&decode(path, &c.body)))
        {
            last_index = Some(index);
        }
        println!(
            "{:<16} {:>5.1}MiB {:>5.1}MiB  {:<22} {:>7.1} MiB {:>5.1} MiB {:>12} {:>16}",
            build,
            mib(size),
            mib(dwarf),
            path.trim_start_matches("/debug/pprof/"),
            peak,
            after,
            cpu,
            symbolize
        );
    }
    if let Some(index) = last_index {
        println!("{build:<16} after these requests: {index}");
    }
}
