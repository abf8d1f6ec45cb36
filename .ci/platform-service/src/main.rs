//! The smallest service with pprofd, which must build wherever a Rust service builds, and a
//! workload to profile where pprofd profiles: two threads (`worker-1`, `worker-2`) each loop
//! over `hot_seventy` (7 units of work) and `hot_thirty` (3 units), allocating a little on
//! each round, so a correct CPU profile gives them 70% and 30% and the heap profile has
//! samples. Each round runs in a `pprofd::Labels` scope, as a service labels its requests.
//! Prints `listening <addr>` (or `listening none`); each `spawn` line on stdin starts one more
//! such worker (`worker-3`, ...; answered `spawned worker-3`), for threads created during a
//! profile; stops when stdin closes.

use std::hint::black_box;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[global_allocator]
static ALLOC: pprofd::Allocator<std::alloc::System> = pprofd::Allocator::system();

const UNIT: u64 = 100_000;

/// `rounds` steps of xorshift: work the optimiser cannot remove. Inlined, so the samples
/// land in `hot_seventy` and `hot_thirty` themselves (a call would be a tail call, which
/// leaves no frame of theirs on the stack).
#[inline(always)]
fn spin(mut x: u64, rounds: u64) -> u64 {
    for _ in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    black_box(x)
}

#[inline(never)]
fn hot_seventy(seed: u64) -> u64 {
    spin(seed, 7 * UNIT)
}

#[inline(never)]
fn hot_thirty(seed: u64) -> u64 {
    spin(seed, 3 * UNIT)
}

fn worker(stop: &AtomicBool) {
    let mut x = 88172645463325252u64;
    let labels = pprofd::Labels::new([("operation", "Round")]);
    while !stop.load(Ordering::Relaxed) {
        x = labels.scope(|| {
            let x = hot_thirty(hot_seventy(x));
            black_box(vec![x; 4096]);
            x
        });
    }
}

fn main() {
    let pprof = pprofd::init_from_env().expect("PPROF_ADDR is a valid address");
    match &pprof {
        Some(server) => println!("listening {}", server.local_addr()),
        None => println!("listening none"),
    }
    let stop = Arc::new(AtomicBool::new(false));
    let spawn = |i: usize| {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || worker(&stop))
            .expect("spawn a worker")
    };
    let mut workers: Vec<_> = (1..=2).map(spawn).collect();
    for line in std::io::stdin().lock().lines() {
        if line.expect("stdin").trim() == "spawn" {
            workers.push(spawn(workers.len() + 1));
            println!("spawned worker-{}", workers.len());
        }
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("a worker finished");
    }
}
