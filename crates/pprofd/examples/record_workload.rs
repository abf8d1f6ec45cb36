//! The flight recorder's truth workload (`tests/recorder.rs`): a service whose past is known.
//!
//! - On `phases`: one thread runs `phase_alpha` for 6 s, prints `phase_beta`, runs
//!   `phase_beta` for 6 s, then prints `phases done <alpha cpu ns> <beta cpu ns>` (each
//!   phase's thread CPU time).
//! - All the while, a thread leaks [`LEAK_BYTES`] at `leak_site` every [`LEAK_EVERY`] on a
//!   fixed schedule (a late wake-up catches up), so the leak is a function of the time since
//!   start: the truth is its rate. On `leaked`, prints `leaked <count>`.
//! - On `busy N`: two threads (`busy-1`, `busy-2`) work for N seconds through stacks of many
//!   shapes (a recursion 0 to 47 deep ending in one of four functions, each allocating and
//!   freeing), then print `busy done`; commands are answered meanwhile. This is the service
//!   of the recorder's overhead benchmark (`benches/recorder_overhead.rs`).
//! - On `idle`: prints `idle` (a fence for the test).
//!
//! Prints `listening <addr>` once serving; exits when stdin closes. Run it with
//! `PPROF_RECORD` set.

#[path = "support/thread_cpu.rs"]
mod thread_cpu;
use thread_cpu::thread_cpu_ns;

#[path = "support/spin.rs"]
mod spin;

use std::hint::black_box;
use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use spin::spin;

#[global_allocator]
static ALLOC: pprofd::Allocator<std::alloc::System> = pprofd::Allocator::system();

/// Bytes leaked each time.
const LEAK_BYTES: usize = 64 << 10;
/// How often the leak grows: 640 KiB a second.
const LEAK_EVERY: Duration = Duration::from_millis(100);
/// How many leaks so far.
static LEAKED: AtomicU64 = AtomicU64::new(0);
/// How long each CPU phase runs.
const PHASE: Duration = Duration::from_secs(6);

/// Burns CPU for `how_long` of wall time; returns the CPU time it used.
fn burn(how_long: Duration, mut step: impl FnMut(u64) -> u64) -> u64 {
    let started = Instant::now();
    let cpu = thread_cpu_ns();
    let mut x = 88172645463325252u64;
    while started.elapsed() < how_long {
        x = step(x);
    }
    black_box(x);
    thread_cpu_ns() - cpu
}

#[inline(never)]
fn phase_alpha(seed: u64) -> u64 {
    spin(seed, 100_000)
}

/// Not the same body as `phase_alpha` (a different count), or the linker may fold the two.
#[inline(never)]
fn phase_beta(seed: u64) -> u64 {
    spin(seed, 90_000)
}

#[inline(never)]
fn leak_site(kept: &mut Vec<Vec<u8>>) {
    kept.push(black_box(vec![7u8; LEAK_BYTES]));
}

/// One step of the benchmark's work: a recursion `depth` deep, then a leaf picked by `leaf`.
#[inline(never)]
fn descend(depth: u32, leaf: u64, x: u64) -> u64 {
    if depth == 0 {
        return match leaf % 4 {
            0 => leaf_a(x),
            1 => leaf_b(x),
            2 => leaf_c(x),
            _ => leaf_d(x),
        };
    }
    black_box(descend(depth - 1, leaf, x.rotate_left(1)))
}

macro_rules! leaves {
    ($($name:ident: $rounds:expr),*) => {$(
        #[inline(never)]
        fn $name(x: u64) -> u64 {
            let kept = black_box(vec![x as u8; (x % 4096) as usize + 16]);
            spin(x ^ kept.len() as u64, $rounds)
        }
    )*};
}
leaves!(leaf_a: 2_000, leaf_b: 2_100, leaf_c: 2_200, leaf_d: 2_300);

fn busy(seconds: u64) {
    std::thread::scope(|s| {
        for n in 1..=2u64 {
            std::thread::Builder::new()
                .name(format!("busy-{n}"))
                .spawn_scoped(s, move || {
                    let started = Instant::now();
                    let mut x = 88172645463325252u64 ^ n;
                    while started.elapsed() < Duration::from_secs(seconds) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x = descend((x % 48) as u32, x >> 8, x);
                    }
                    black_box(x);
                })
                .expect("busy thread");
        }
    });
}

fn main() {
    // A bad variable is the error a service would print: its Display says which and why.
    let server = match pprofd::init_from_env() {
        Ok(server) => server.expect("PPROF_ADDR is set"),
        Err(e) => {
            eprintln!("record_workload: {e}");
            std::process::exit(2);
        }
    };
    std::thread::Builder::new()
        .name("leaker".into())
        .spawn(|| {
            // On a schedule, not sleep after sleep: two copies of this service side by side
            // (the memory benchmark) must hold the same leak however late each wakes.
            let started = Instant::now();
            let mut kept = Vec::new();
            for n in 1u32.. {
                leak_site(&mut kept);
                LEAKED.store(n.into(), Ordering::Relaxed);
                let next = started + LEAK_EVERY * n;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
        .expect("leak thread");
    println!("listening {}", server.local_addr());
    for line in std::io::stdin().lock().lines() {
        match line.expect("stdin").as_str() {
            "phases" => {
                let alpha = burn(PHASE, phase_alpha);
                // The test times its look at the recent past from here, not from `phases`.
                println!("phase_beta");
                let beta = burn(PHASE, phase_beta);
                println!("phases done {alpha} {beta}");
            }
            "idle" => println!("idle"),
            "leaked" => println!("leaked {}", LEAKED.load(Ordering::Relaxed)),
            busy_line if busy_line.starts_with("busy ") => {
                // Beside the command loop, so `leaked` is answered during a long busy run.
                let seconds = busy_line[5..].trim().parse().expect("busy SECONDS");
                std::thread::spawn(move || {
                    busy(seconds);
                    println!("busy done");
                });
            }
            other => println!("unknown command {other}"),
        }
    }
}
