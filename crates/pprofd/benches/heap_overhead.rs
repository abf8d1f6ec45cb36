//! What pprofd's heap sampling costs, against the bare system allocator and against jemalloc's
//! own profiling, in one run:
//!
//! ```text
//! cargo build --release -p pprofd --examples && cargo bench -p pprofd --bench heap_overhead
//! ```
//!
//! Each configuration runs the same allocation-heavy workload (`examples/alloc_bench_*`) in a
//! process of its own, several rounds interleaved, and the medians are compared. Throughput
//! ratios move by a few percent from run to run on a shared machine, so the cost of sampling
//! is also measured per event (docs/invariants.md, "Measuring overhead"): CPU time at a high sampling
//! rate minus CPU time with sampling off, divided by the allocations sampled.

use std::path::PathBuf;
use std::process::Command;

const ROUNDS: usize = 5;
const ITERATIONS: &str = "4000000";

struct Config {
    name: &'static str,
    example: &'static str,
    env: &'static [(&'static str, &'static str)],
}

const CONFIGS: &[Config] = &[
    Config {
        name: "system (bare)",
        example: "alloc_bench_system",
        env: &[],
    },
    Config {
        name: "pprofd, sampling off",
        example: "alloc_bench_pprofd",
        env: &[],
    },
    Config {
        name: "pprofd, 512 KiB",
        example: "alloc_bench_pprofd",
        env: &[("PPROF_ADDR", "127.0.0.1:0"), ("PPROF_MEM_RATE", "524288")],
    },
    Config {
        name: "pprofd, 4 KiB",
        example: "alloc_bench_pprofd",
        env: &[("PPROF_ADDR", "127.0.0.1:0"), ("PPROF_MEM_RATE", "4096")],
    },
    Config {
        name: "jemalloc, prof off",
        example: "alloc_bench_jemalloc",
        env: &[("_RJEM_MALLOC_CONF", "prof:false")],
    },
    Config {
        name: "jemalloc, prof 2^19",
        example: "alloc_bench_jemalloc",
        env: &[("_RJEM_MALLOC_CONF", "prof:true,lg_prof_sample:19")],
    },
    Config {
        name: "jemalloc, prof 2^12",
        example: "alloc_bench_jemalloc",
        env: &[("_RJEM_MALLOC_CONF", "prof:true,lg_prof_sample:12")],
    },
];

#[derive(Default, Clone, Copy)]
struct Run {
    wall: f64,
    cpu: f64,
    allocated: f64,
    maxrss_kib: f64,
    sampled: f64,
    profile_maxrss_kib: f64,
}

fn examples_dir() -> PathBuf {
    // target/release/deps/heap_overhead-HASH -> target/release/examples
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("examples")
}

fn run(config: &Config) -> Run {
    let path = examples_dir().join(config.example);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --release -p pprofd --examples` first",
        path.display()
    );
    let output = Command::new(&path)
        .args(["--iterations", ITERATIONS, "--fetch-profile"])
        .env_remove("PPROF_ADDR")
        .env_remove("PPROF_MEM_RATE")
        .env_remove("_RJEM_MALLOC_CONF")
        .envs(config.env.iter().copied())
        .output()
        .expect("run the workload");
    assert!(output.status.success(), "{} failed", config.name);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut run = Run::default();
    for line in stdout.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.chunks(2) {
            let value: f64 = pair[1].parse().expect("number");
            match pair[0] {
                "wall_seconds" => run.wall = value,
                "cpu_seconds" => run.cpu = value,
                "allocated_bytes" => run.allocated = value,
                "maxrss_kib" => run.maxrss_kib = value,
                "sampled" => run.sampled = value,
                "profile_maxrss_kib" => run.profile_maxrss_kib = value,
                other => panic!("unknown field {other}"),
            }
        }
    }
    run
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo bench -- --list` asks what benchmarks exist.
        println!("heap_overhead: bench");
        return;
    }
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); CONFIGS.len()];
    for _ in 0..ROUNDS {
        for (config, runs) in CONFIGS.iter().zip(runs.iter_mut()) {
            runs.push(run(config));
        }
    }
    let medians: Vec<Run> = runs
        .iter()
        .map(|r| {
            let m = |f: fn(&Run) -> f64| median(r.iter().map(f).collect());
            Run {
                wall: m(|r| r.wall),
                cpu: m(|r| r.cpu),
                allocated: m(|r| r.allocated),
                maxrss_kib: m(|r| r.maxrss_kib),
                sampled: m(|r| r.sampled),
                profile_maxrss_kib: m(|r| r.profile_maxrss_kib),
            }
        })
        .collect();
    let base = medians[0];
    let allocations = 4.0 * ITERATIONS.parse::<f64>().unwrap();
    println!(
        "{} allocations on 4 threads, {ROUNDS} rounds, medians:",
        allocations
    );
    println!(
        "{:<22} {:>8} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "configuration", "wall s", "cpu s", "wall/bare", "cpu/bare", "maxrss MiB", "sampled"
    );
    for (config, m) in CONFIGS.iter().zip(&medians) {
        println!(
            "{:<22} {:>8.3} {:>8.3} {:>10.3} {:>10.3} {:>10.1} {:>10.0}",
            config.name,
            m.wall,
            m.cpu,
            m.wall / base.wall,
            m.cpu / base.cpu,
            m.maxrss_kib / 1024.0,
            m.sampled
        );
    }
    let [_, off, at_512k, at_4k, je, je19, je12] = medians[..] else {
        unreachable!("seven configurations")
    };
    let per_sample_ns = (at_4k.cpu - off.cpu) / at_4k.sampled * 1e9;
    // Both samplers draw exponential intervals over bytes, so at the same mean (4 KiB) the
    // same allocations give jemalloc the number of samples pprofd counted.
    let je_samples = at_4k.sampled;
    let je_per_sample_ns = (je12.cpu - je.cpu) / je_samples * 1e9;
    println!();
    println!(
        "pprofd: {per_sample_ns:.0} ns CPU per sampled allocation ({:.0} sampled at 4 KiB)",
        at_4k.sampled
    );
    println!(
        "jemalloc: {je_per_sample_ns:.0} ns CPU per sampled allocation (about {je_samples:.0} sampled at 2^12: pprofd's count at the same mean)"
    );
    println!(
        "pprofd at 512 KiB: {:.0} sampled; {per_sample_ns:.0} ns each is {:.3}% of the run's CPU; measured cpu ratio vs off {:.3}",
        at_512k.sampled,
        per_sample_ns * at_512k.sampled / 1e9 / off.cpu * 100.0,
        at_512k.cpu / off.cpu
    );
    println!(
        "pprofd off: {:.2} ns CPU per allocation more than bare (noise-level when near 0)",
        (off.cpu - base.cpu) / allocations * 1e9
    );
    println!(
        "jemalloc prof 2^19 vs jemalloc without: cpu ratio {:.3}, maxrss +{:.1} MiB",
        je19.cpu / je.cpu,
        (je19.maxrss_kib - je.maxrss_kib) / 1024.0
    );
    let rss_overhead = at_512k.maxrss_kib - base.maxrss_kib;
    println!(
        "peak RSS, pprofd 512 KiB vs bare: {:+.1} MiB ({:+.2}%); after serving a heap profile: {:+.1} MiB",
        rss_overhead / 1024.0,
        rss_overhead / base.maxrss_kib * 100.0,
        (at_512k.profile_maxrss_kib - base.maxrss_kib) / 1024.0
    );
}
