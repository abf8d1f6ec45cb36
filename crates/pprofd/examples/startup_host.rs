//! A host whose pprof start-up fails, for `tests/server_safety.rs`: it shows what a failed
//! `pprofd::init_from_env()` leaves behind, as the service could see it.
//!
//! With the environment the test sets (a bad `PPROF_BLOCK_RATE`, or an address in use), it
//! calls `init_from_env()`, which must fail, then prints one line:
//! `failed <same threads: true|false> <heap sample rate> <allocations sampled> <error>`,
//! after allocating 64 MiB and spawning a parked thread from `spawn_after_failed_start`.
//! On the line `start` on stdin it starts a valid server on a free loopback port, spawns a
//! thread from `spawn_after_valid_start`, allocates 64 MiB again and prints
//! `started <allocations sampled> <threadcreate has spawn_after_failed_start: bool>
//! <threadcreate has spawn_after_valid_start: bool>`. Exits when stdin closes.

use std::alloc::System;
use std::hint::black_box;
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};

#[global_allocator]
static ALLOC: pprofd::Allocator<System> = pprofd::Allocator::system();

fn main() {
    let before = thread_ids();
    let error = match pprofd::init_from_env() {
        Ok(_) => panic!("init_from_env must fail with the environment the test set"),
        Err(e) => e.to_string(),
    };
    let same_threads = thread_ids() == before;
    allocate_64_mib();
    spawn_after_failed_start();
    println!(
        "failed {same_threads} {} {} {error}",
        pprofd::heap::sample_rate(),
        pprofd::heap::sampled_allocations()
    );
    for line in std::io::stdin().lock().lines() {
        if line.expect("stdin") != "start" {
            continue;
        }
        let server =
            pprofd::Server::start(pprofd::Config::new("127.0.0.1:0")).expect("a free port");
        spawn_after_valid_start();
        allocate_64_mib();
        let creations = get(server.local_addr(), "/debug/pprof/threadcreate?debug=1");
        println!(
            "started {} {} {}",
            pprofd::heap::sampled_allocations(),
            creations.contains("spawn_after_failed_start"),
            creations.contains("spawn_after_valid_start"),
        );
    }
}

/// The ids of this process's threads, sorted.
fn thread_ids() -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

/// 64 MiB in 4 KiB blocks: about 128 samples at the default rate, if sampling is on.
#[inline(never)]
fn allocate_64_mib() {
    for _ in 0..16 * 1024 {
        black_box(vec![1u8; 4096]);
    }
}

#[inline(never)]
fn spawn_after_failed_start() {
    // Used after the call, so the call is not a tail call and this frame stays on the stack.
    black_box(park_forever());
}

#[inline(never)]
fn spawn_after_valid_start() {
    // Used after the call, so the call is not a tail call and this frame stays on the stack.
    black_box(park_forever());
}

/// Starts a thread that parks for the life of the process, so its creation stays listed.
fn park_forever() -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        tx.send(()).expect("main waits");
        loop {
            std::thread::park();
        }
    });
    rx.recv().expect("the thread started");
    thread
}

/// GETs `path` and returns the body (a minimal HTTP/1.1 client; the response is small).
fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("the server listens");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    response
}
