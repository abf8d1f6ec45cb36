//! A service-shaped workload for pprofd's CPU profile tests.
//!
//! Two threads ("worker-1", "worker-2") each loop over `hot_seventy` (7 units of work) and
//! `hot_thirty` (3 units), so a correct CPU profile gives them 70% and 30%. With `--churn`,
//! more threads allocate, spawn and join threads, format backtraces and dlopen/dlclose a
//! system library, the hostile background of the stress test. With `--late-zlib`, a third
//! thread loads zlib a second after start and compresses in a loop. A counting allocator reports
//! allocations made while the CPU timer signal is blocked, which on these threads means "inside the
//! CPU sampling handler" (pprofd's own collector, which keeps that signal blocked to wait
//! for its alarm and is never sampled, is left out). Prints `listening <addr>` once serving, and stops when stdin closes.

#[path = "support/spin.rs"]
mod spin;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use spin::spin;

struct CountingAllocator;

static ALLOCATIONS_IN_SAMPLING_HANDLER: AtomicU64 = AtomicU64::new(0);

fn timer_signal_blocked() -> bool {
    // SAFETY: reading the current mask with a null `set` changes nothing.
    unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
        libc::sigismember(&mask, pprofd::cpu::timer_signal()) == 1
    }
}

/// Whether the calling thread is one of pprofd's (named `pprofd-*`).
fn on_pprofd_thread() -> bool {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer it is given.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    name.starts_with(b"pprofd-")
}

// SAFETY: forwards to System unchanged; only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if timer_signal_blocked() && !on_pprofd_thread() {
            ALLOCATIONS_IN_SAMPLING_HANDLER.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is System's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const UNIT: u64 = 200_000;

#[inline(never)]
fn hot_seventy(seed: u64) -> u64 {
    spin(seed, 7 * UNIT)
}

#[inline(never)]
fn hot_thirty(seed: u64) -> u64 {
    spin(seed, 3 * UNIT)
}

/// Runs the 70/30 loop until `stop`, returning the rounds done.
fn worker(stop: &AtomicBool) -> u64 {
    let mut x = 88172645463325252u64;
    let mut done = 0;
    while !stop.load(Ordering::Relaxed) {
        x = hot_seventy(x);
        x = hot_thirty(x);
        done += 1;
    }
    black_box(x);
    done
}

fn churn(stop: &AtomicBool) {
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let v: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 16 << (i % 10)]).collect();
        black_box(&v);
        let handle = std::thread::Builder::new()
            .name("churn-child".into())
            .spawn(move || black_box((0..1000u64).sum::<u64>()))
            .unwrap();
        handle.join().unwrap();
        if round.is_multiple_of(8) {
            black_box(std::backtrace::Backtrace::force_capture().to_string());
            // SAFETY: loading and unloading a system library with no initialisers we depend on.
            unsafe {
                let lib = libc::dlopen(c"libm.so.6".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
                if !lib.is_null() {
                    libc::dlclose(lib);
                }
                let lib = libc::dlopen(c"libz.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
                if !lib.is_null() {
                    libc::dlclose(lib);
                }
            }
        }
        round += 1;
    }
}

/// Waits a second, then loads zlib (absent when sampling started) and compresses in a loop:
/// its frames can only be unwound if the profiler picks up libraries loaded later.
fn late_zlib(stop: &AtomicBool) {
    std::thread::sleep(std::time::Duration::from_secs(1));
    type Compress =
        unsafe extern "C" fn(*mut u8, *mut libc::c_ulong, *const u8, libc::c_ulong) -> libc::c_int;
    // SAFETY: dlopen/dlsym with valid C strings; `compress` has zlib's documented signature.
    let compress: Compress = unsafe {
        let lib = libc::dlopen(c"libz.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        assert!(!lib.is_null(), "libz.so.1 is installed");
        let f = libc::dlsym(lib, c"compress".as_ptr());
        assert!(!f.is_null());
        std::mem::transmute::<*mut libc::c_void, Compress>(f)
    };
    let input: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut output = vec![0u8; input.len() * 2];
    while !stop.load(Ordering::Relaxed) {
        let mut len = output.len() as libc::c_ulong;
        // SAFETY: both buffers are valid for the lengths passed.
        unsafe {
            compress(
                output.as_mut_ptr(),
                &mut len,
                input.as_ptr(),
                input.len() as libc::c_ulong,
            )
        };
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let server = pprofd::init_from_env().expect("PPROF_ADDR is valid");
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for i in 1..=2 {
        let stop = stop.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || worker(&stop))
                .unwrap(),
        );
    }
    if args.iter().any(|a| a == "--churn") {
        for i in 1..=2 {
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("churn-{i}"))
                    .spawn(move || {
                        churn(&stop);
                        0
                    })
                    .unwrap(),
            );
        }
    }
    if args.iter().any(|a| a == "--late-zlib") {
        let stop = stop.clone();
        threads.push(
            std::thread::Builder::new()
                .name("zlib-worker".into())
                .spawn(move || {
                    late_zlib(&stop);
                    0
                })
                .unwrap(),
        );
    }
    match &server {
        Some(s) => println!("listening {}", s.local_addr()),
        None => println!("listening none"),
    }
    // Run until the parent closes stdin.
    for _ in std::io::stdin().lock().lines() {}
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    println!(
        "allocations_in_sampling_handler {}",
        ALLOCATIONS_IN_SAMPLING_HANDLER.load(Ordering::Relaxed)
    );
}
