//! A host with its own signal loop, for pprofd's test that it never signals threads that
//! block its signals or wait for them (`tests/signal_hosts.rs`).
//!
//! The classic pattern: `main` blocks every signal before it starts any thread, so every
//! thread inherits the full mask, and thread `signal-loop` takes signals with
//! `sigwaitinfo(full set)`, counting what it receives. Threads `waiter-1`..`waiter-3` wait on a
//! condvar (block sampling wants their stacks); thread `plain-worker` unblocks every signal
//! and waits on the same condvar in `plain_wait`, so it is one pprofd can and does sample.
//!
//! At start the process lowers its queued-signal limit (`RLIMIT_SIGPENDING`) to 256 above the
//! user's current count, so that signals left queued show within seconds as a failing
//! `timer_create`. It serves pprofd with `Server::start` on 127.0.0.1:0 and prints
//! `listening ADDR`, then `tids signal-loop=T plain-worker=T waiter-1=T ...`. Commands on
//! stdin: `count` prints `received rtmin7=N rtmin6=N (pprofd's CPU timer signal) other=N` (what the loop took);
//! `timer` creates and deletes a POSIX timer and prints `timer ok` or `timer error ERRNO`.
//! It exits when stdin closes.

use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};

static RTMIN7: AtomicU64 = AtomicU64::new(0);
static RTMIN6: AtomicU64 = AtomicU64::new(0);
static OTHER: AtomicU64 = AtomicU64::new(0);

fn gettid() -> i64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

fn full_set() -> libc::sigset_t {
    // SAFETY: sigfillset initializes the zeroed set it is given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        set
    }
}

/// The host's signal loop: takes every signal sent to it or to the process.
fn signal_loop() -> ! {
    let set = full_set();
    loop {
        // SAFETY: zeroed siginfo is a valid buffer for the kernel to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` and `info` are valid for the call.
        let signo = unsafe { libc::sigwaitinfo(&set, &mut info) };
        let counter = if signo == libc::SIGRTMIN() + 7 {
            &RTMIN7
        } else if signo == pprofd::cpu::timer_signal() {
            &RTMIN6
        } else if signo > 0 {
            &OTHER
        } else {
            continue;
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits on the condvar that nobody signals.
fn wait_forever(gate: &(Mutex<()>, Condvar)) -> ! {
    let mut guard = gate.0.lock().unwrap();
    loop {
        guard = gate.1.wait(guard).unwrap();
    }
}

/// Where `plain-worker` waits; its dump stack passes through here.
#[inline(never)]
fn plain_wait(gate: &(Mutex<()>, Condvar)) -> ! {
    wait_forever(gate)
}

/// Sets the queued-signal limit 256 above the user's count now (`SigQ: count/limit`).
fn tighten_sigpending_limit() {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let queued: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("SigQ:"))
        .and_then(|q| q.trim().split('/').next()?.parse().ok())
        .expect("SigQ line");
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is valid to write into and then read.
    unsafe {
        libc::getrlimit(libc::RLIMIT_SIGPENDING, &mut limit);
        limit.rlim_cur = (queued + 256).min(limit.rlim_max);
        libc::setrlimit(libc::RLIMIT_SIGPENDING, &limit);
    }
}

/// Creates an unarmed POSIX timer, as a host would, and deletes it: fails with EAGAIN when
/// the queued-signal limit is used up.
fn try_timer() -> Result<(), i32> {
    // SAFETY: a zeroed sigevent is valid; the fields set below are the ones SIGEV_SIGNAL reads.
    let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
    event.sigev_notify = libc::SIGEV_SIGNAL;
    event.sigev_signo = libc::SIGUSR1;
    let mut timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: `event` and `timer` are valid for the call; the timer is deleted at once.
    unsafe {
        if libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) != 0 {
            return Err(*libc::__errno_location());
        }
        libc::timer_delete(timer);
    }
    Ok(())
}

fn main() {
    tighten_sigpending_limit();
    let set = full_set();
    // SAFETY: blocks every signal in this thread; threads started later inherit the mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };

    let gate = Arc::new((Mutex::new(()), Condvar::new()));
    let (tid_tx, tid_rx) = mpsc::channel();
    let spawn = |name: &str, body: Box<dyn FnOnce() + Send>| {
        let tid_tx = tid_tx.clone();
        let thread_name = name.to_string();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                tid_tx.send((thread_name, gettid())).unwrap();
                body()
            })
            .unwrap();
    };
    spawn("signal-loop", Box::new(|| signal_loop()));
    for i in 1..=3 {
        let gate = gate.clone();
        spawn(
            &format!("waiter-{i}"),
            Box::new(move || wait_forever(&gate)),
        );
    }
    let plain = gate.clone();
    spawn(
        "plain-worker",
        Box::new(move || {
            let empty = {
                // SAFETY: sigemptyset initializes the zeroed set it is given.
                unsafe {
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    set
                }
            };
            // SAFETY: unblocks every signal in this thread only.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) };
            plain_wait(&plain)
        }),
    );
    // Each thread keeps its sender for life: take one id per thread started.
    let mut tids: Vec<(String, i64)> = tid_rx.iter().take(5).collect();
    tids.sort();

    let server = pprofd::Server::start(pprofd::Config::new("127.0.0.1:0")).expect("pprofd");
    println!("listening {}", server.local_addr());
    let tids: Vec<String> = tids.iter().map(|(n, t)| format!("{n}={t}")).collect();
    println!("tids {}", tids.join(" "));
    for line in std::io::stdin().lock().lines() {
        match line.expect("stdin").as_str() {
            "count" => println!(
                "received rtmin7={} rtmin6={} other={}",
                RTMIN7.load(Ordering::Relaxed),
                RTMIN6.load(Ordering::Relaxed),
                OTHER.load(Ordering::Relaxed)
            ),
            "timer" => match try_timer() {
                Ok(()) => println!("timer ok"),
                Err(errno) => println!("timer error {errno}"),
            },
            other => println!("unknown command {other}"),
        }
    }
    // The other threads wait forever; leaving main ends the process.
}
