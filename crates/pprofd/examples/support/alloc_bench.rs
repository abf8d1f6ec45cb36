//! The allocation-heavy workload of the heap-overhead benchmark, shared by the
//! `alloc_bench_*` examples (one per global allocator, since a process has one).
//!
//! Four threads each allocate `--iterations` blocks of mixed sizes (1 B to 32 KiB, spread
//! over the powers of two), touch one byte per page, and keep the last 4096 (about 80 MiB
//! live in all), freeing the block they replace. Prints one line:
//! `wall_seconds W cpu_seconds C allocated_bytes B maxrss_kib R sampled S`
//! and, with `--fetch-profile`, `profile_maxrss_kib R` after fetching its own heap profile.

use std::hint::black_box;
use std::io::{Read, Write};
use std::time::Instant;

const THREADS: u64 = 4;
const WINDOW: usize = 4096;
const PAGE: usize = 4096;

/// Runs the workload; `sampled` reports how many allocations the profiler sampled.
pub fn main(sampled: impl Fn() -> u64) {
    let args: Vec<String> = std::env::args().collect();
    let iterations: u64 = args
        .iter()
        .position(|a| a == "--iterations")
        .map_or(2_000_000, |i| args[i + 1].parse().expect("iteration count"));
    let fetch_profile = args.iter().any(|a| a == "--fetch-profile");
    let server = pprofd::init_from_env().expect("PPROF_ADDR is valid");

    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let allocated: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| s.spawn(move || churn(0x9e37_79b9 + t, iterations)))
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    println!(
        "wall_seconds {wall:.4} cpu_seconds {cpu:.4} allocated_bytes {allocated} maxrss_kib {} sampled {}",
        maxrss_kib(),
        sampled()
    );
    if let (true, Some(server)) = (fetch_profile, &server) {
        let bytes = http_get(&server.local_addr().to_string(), "/debug/pprof/heap");
        pprofd::profile::decode(&bytes).expect("heap profile decodes");
        println!("profile_maxrss_kib {}", maxrss_kib());
    }
}

/// One thread's share; returns the bytes it allocated.
#[inline(never)]
fn churn(seed: u64, iterations: u64) -> u64 {
    let mut rng = seed | 1;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut window: Vec<Vec<u8>> = (0..WINDOW).map(|_| Vec::new()).collect();
    let mut allocated = 0;
    for i in 0..iterations {
        let top = 1 + next() % 15;
        let size = 1 + (next() % (1 << top)) as usize;
        let mut block = Vec::<u8>::with_capacity(size);
        // SAFETY: the capacity is `size`; one byte per page is written, within it.
        unsafe {
            for offset in (0..size).step_by(PAGE) {
                block.as_mut_ptr().add(offset).write(i as u8);
            }
        }
        allocated += size as u64;
        window[(i as usize) % WINDOW] = black_box(block);
    }
    allocated
}

fn rusage() -> libc::rusage {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    }
}

fn cpu_seconds() -> f64 {
    let usage = rusage();
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

fn maxrss_kib() -> i64 {
    rusage().ru_maxrss
}

fn http_get(addr: &str, path: &str) -> Vec<u8> {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    response.split_off(split + 4)
}
