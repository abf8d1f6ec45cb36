//! A service-shaped workload for pprofd's thread-dump tests and benchmark.
//!
//! Every mode spawns thread "before-pprofd", starts the pprof server (`PPROF_ADDR`), spawns
//! thread "made-by-spawner" from `spawn_from_named_function` (the threadcreate test looks for
//! both), prints
//! `listening <addr>` once everything is in place, and stops when stdin closes.
//!
//! - `--deadlock`: threads "deadlock-a" and "deadlock-b" take two mutexes in opposite orders
//!   and deadlock; a two-worker tokio runtime runs handlers that block on the same mutex, so
//!   every worker of the service's runtime is stuck too.
//! - `--threads IDLE BUSY`: IDLE threads named `idle-NNNN` wait on a condvar, BUSY threads
//!   named `busy-N` spin.
//! - `--syscalls`: threads blocked most of the time in a pipe `read`, tokio's `epoll_wait`,
//!   `nanosleep` and a `Condvar` wait, each checking its own results; printed as a `results`
//!   line on each `results` line on stdin and when stdin closes.
//! - `--late-threads N`: on a `start-late-threads` line on stdin, thread "late-spawner"
//!   starts N threads named `late-N`, prints `late threads started` and joins them.
//! - `--bench-dump N`: no server; N idle threads, then times thread dumps in-process and
//!   prints the figures.

use std::hint::black_box;
use std::io::{BufRead, Read, Write};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Set when stdin closes; every thread of the workload ends soon after.
static STOP: AtomicBool = AtomicBool::new(false);
/// Wakes the condvar waiters at shutdown.
static SHUTDOWN: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

fn wait_for_shutdown() {
    let (lock, cv) = &SHUTDOWN;
    let guard = lock.lock().unwrap();
    drop(cv.wait_while(guard, |stopped| !*stopped).unwrap());
}

fn signal_shutdown() {
    STOP.store(true, Ordering::Relaxed);
    *SHUTDOWN.0.lock().unwrap() = true;
    SHUTDOWN.1.notify_all();
}

/// Spawns a thread and returns once it runs, so its name is set (a new thread names itself).
fn spawn_named<T: Send + 'static>(
    builder: std::thread::Builder,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let (started_tx, started) = std::sync::mpsc::channel();
    let handle = builder
        .spawn(move || {
            started_tx.send(()).unwrap();
            f()
        })
        .unwrap();
    started.recv().unwrap();
    handle
}

fn named(name: &str) -> std::thread::Builder {
    std::thread::Builder::new().name(name.into())
}

#[inline(never)]
fn spawn_from_named_function() -> JoinHandle<()> {
    spawn_named(named("made-by-spawner"), wait_for_shutdown)
}

static FIRST: Mutex<u64> = Mutex::new(0);
static SECOND: Mutex<u64> = Mutex::new(0);

#[inline(never)]
fn lock_first_then_second(both_hold_one: &Barrier) {
    let first = FIRST.lock().unwrap();
    both_hold_one.wait();
    let second = SECOND.lock().unwrap(); // deadlock-a blocks here
    black_box((*first, *second));
}

#[inline(never)]
fn lock_second_then_first(both_hold_one: &Barrier) {
    let second = SECOND.lock().unwrap();
    both_hold_one.wait();
    let first = FIRST.lock().unwrap(); // deadlock-b blocks here
    black_box((*first, *second));
}

/// A request handler that takes the deadlocked mutex, wedging the worker that runs it.
async fn wedged_handler(request: u64) -> u64 {
    let guard = FIRST.lock().unwrap();
    *guard + request
}

fn deadlock() {
    let barrier = Arc::new(Barrier::new(2));
    let b = barrier.clone();
    // The deadlocked threads never finish; they are not joined.
    spawn_named(named("deadlock-a"), move || lock_first_then_second(&b));
    spawn_named(named("deadlock-b"), move || {
        lock_second_then_first(&barrier)
    });
    // Both threads hold one lock once the handlers below start blocking on FIRST.
    while FIRST.try_lock().is_ok() || SECOND.try_lock().is_ok() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    for request in 0..4 {
        runtime.spawn(wedged_handler(request));
    }
    // The runtime cannot shut down while its workers are blocked.
    std::mem::forget(runtime);
}

fn idle_and_busy(idle: usize, busy: usize) -> Vec<JoinHandle<()>> {
    let mut threads = Vec::new();
    for i in 0..idle {
        threads.push(spawn_named(
            named(&format!("idle-{i:04}")).stack_size(64 << 10),
            wait_for_shutdown,
        ));
    }
    for i in 1..=busy {
        threads.push(spawn_named(named(&format!("busy-{i}")), || {
            let mut x = 1u64;
            while !STOP.load(Ordering::Relaxed) {
                x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }));
    }
    threads
}

/// What the `--syscalls` threads observed.
#[derive(Default)]
struct Results {
    pipe_reads: AtomicU64,
    pipe_errors: AtomicU64,
    socket_reads: AtomicU64,
    socket_errors: AtomicU64,
    sleeps: AtomicU64,
    short_sleeps: AtomicU64,
    condvar_changes: AtomicU64,
    condvar_errors: AtomicU64,
}

fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe() returns.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors are fresh and owned by nobody else.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

/// Sends 8-byte sequence numbers every 2 ms until shutdown, then closes.
fn send_sequence(mut out: impl Write) {
    let mut seq = 0u64;
    while !STOP.load(Ordering::Relaxed) {
        if out.write_all(&seq.to_le_bytes()).is_err() {
            return;
        }
        seq += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn syscalls(results: &Arc<Results>) -> Vec<JoinHandle<()>> {
    let mut threads = Vec::new();
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| spawn_named(named(name), f);

    // A plain read(2) per message: an EINTR would surface as an error here.
    let (mut reader, writer) = pipe();
    threads.push(spawn(
        "pipe-writer",
        Box::new(move || send_sequence(writer)),
    ));
    let r = results.clone();
    threads.push(spawn(
        "pipe-reader",
        Box::new(move || {
            let mut expected = 0u64;
            let mut buf = [0u8; 8];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => return,
                    Ok(8) if u64::from_le_bytes(buf) == expected => {
                        expected += 1;
                        r.pipe_reads.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) | Err(_) => {
                        r.pipe_errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }),
    ));

    // tokio's reactor: epoll_wait on a Unix socket, plus timers.
    let (socket_out, socket_in) = std::os::unix::net::UnixStream::pair().unwrap();
    threads.push(spawn(
        "socket-writer",
        Box::new(move || send_sequence(socket_out)),
    ));
    let r = results.clone();
    threads.push(spawn(
        "epoll-waiter",
        Box::new(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                use tokio::io::AsyncReadExt;
                socket_in.set_nonblocking(true).unwrap();
                let mut socket = tokio::net::UnixStream::from_std(socket_in).unwrap();
                let mut expected = 0u64;
                let mut buf = [0u8; 8];
                loop {
                    match socket.read_exact(&mut buf).await {
                        Ok(_) if u64::from_le_bytes(buf) == expected => {
                            expected += 1;
                            r.socket_reads.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {
                            r.socket_errors.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
                        Err(_) => {
                            r.socket_errors.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                    if expected.is_multiple_of(16) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            });
        }),
    ));

    // nanosleep: a sleep cut short by a signal would be too short.
    let r = results.clone();
    threads.push(spawn(
        "sleeper",
        Box::new(move || {
            while !STOP.load(Ordering::Relaxed) {
                let started = Instant::now();
                std::thread::sleep(Duration::from_millis(5));
                if started.elapsed() < Duration::from_millis(5) {
                    r.short_sleeps.fetch_add(1, Ordering::Relaxed);
                }
                r.sleeps.fetch_add(1, Ordering::Relaxed);
            }
        }),
    ));

    // Condvar: every change the notifier makes is seen in order, and the last one arrives.
    let state = Arc::new((Mutex::new((0u64, false)), Condvar::new()));
    let notifier_state = state.clone();
    threads.push(spawn(
        "condvar-notifier",
        Box::new(move || {
            let (lock, cv) = &*notifier_state;
            while !STOP.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
                lock.lock().unwrap().0 += 1;
                cv.notify_one();
            }
            lock.lock().unwrap().1 = true;
            cv.notify_one();
        }),
    ));
    let r = results.clone();
    threads.push(spawn(
        "condvar-waiter",
        Box::new(move || {
            let (lock, cv) = &*state;
            let mut seen = 0u64;
            let mut guard = lock.lock().unwrap();
            loop {
                guard = cv
                    .wait_while(guard, |(value, done)| *value == seen && !*done)
                    .unwrap();
                if guard.0 < seen {
                    r.condvar_errors.fetch_add(1, Ordering::Relaxed);
                }
                if guard.0 != seen {
                    seen = guard.0;
                    r.condvar_changes.fetch_add(1, Ordering::Relaxed);
                }
                if guard.1 {
                    return;
                }
            }
        }),
    ));
    threads
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, n: usize| -> Option<usize> {
        let i = args.iter().position(|a| a == name)?;
        Some(args[i + n].parse().expect("a number"))
    };
    if let Some(threads) = arg("--bench-dump", 1) {
        bench_dump(threads);
        return;
    }
    // Created before pprofd starts, so its creation is not recorded.
    let early = spawn_named(named("before-pprofd"), wait_for_shutdown);
    let server = pprofd::init_from_env().unwrap_or_else(|e| panic!("{e}"));
    let results = Arc::new(Results::default());
    let mut threads = vec![early, spawn_from_named_function()];
    if args.iter().any(|a| a == "--deadlock") {
        deadlock();
    }
    if let (Some(idle), Some(busy)) = (arg("--threads", 1), arg("--threads", 2)) {
        threads.extend(idle_and_busy(idle, busy));
    }
    if args.iter().any(|a| a == "--syscalls") {
        threads.extend(syscalls(&results));
    }
    let (start_late, late_asked) = std::sync::mpsc::channel();
    if let Some(late) = arg("--late-threads", 1) {
        threads.push(spawn_named(named("late-spawner"), move || {
            // The channel closes at shutdown when no start was asked for.
            if late_asked.recv().is_err() {
                return;
            }
            let late: Vec<_> = (0..late)
                .map(|i| spawn_named(named(&format!("late-{i}")), wait_for_shutdown))
                .collect();
            println!("late threads started");
            for t in late {
                t.join().unwrap();
            }
        }));
    }
    match &server {
        Some(s) => println!("listening {}", s.local_addr()),
        None => println!("listening none"),
    }
    for line in std::io::stdin().lock().lines() {
        match line.expect("stdin").as_str() {
            "start-late-threads" => start_late.send(()).expect("a late spawner"),
            "results" => print_results(&results),
            _ => {}
        }
    }
    drop(start_late);
    signal_shutdown();
    for t in threads {
        t.join().unwrap();
    }
    print_results(&results);
}

/// What the `--syscalls` threads observed so far, as a `results` line.
fn print_results(r: &Results) {
    let get = |v: &AtomicU64| v.load(Ordering::Relaxed);
    println!(
        "results pipe_reads={} pipe_errors={} socket_reads={} socket_errors={} sleeps={} short_sleeps={} condvar_changes={} condvar_errors={}",
        get(&r.pipe_reads),
        get(&r.pipe_errors),
        get(&r.socket_reads),
        get(&r.socket_errors),
        get(&r.sleeps),
        get(&r.short_sleeps),
        get(&r.condvar_changes),
        get(&r.condvar_errors),
    );
}

/// Times dumps of a process with `threads` idle threads: the capture alone (signals, handlers,
/// `/proc` reads) and the `debug=2` text (capture, symbolization and formatting).
fn bench_dump(threads: usize) {
    let idle = idle_and_busy(threads, 0);
    std::thread::sleep(Duration::from_millis(200));
    let mut capture_ms = Vec::new();
    let mut text_ms = Vec::new();
    let mut listed = 0;
    for round in 0..11 {
        let started = Instant::now();
        let dump =
            pprofd::threads::ThreadDump::capture(pprofd::threads::DEFAULT_DEADLINE).expect("dump");
        let captured = started.elapsed();
        let text = dump.full_text();
        let rendered = started.elapsed();
        assert_eq!(dump.unanswered(), 0, "every thread answers");
        listed = dump.thread_count();
        black_box(text);
        if round > 0 {
            capture_ms.push(captured.as_secs_f64() * 1000.0);
            text_ms.push(rendered.as_secs_f64() * 1000.0);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!(
        "threads {listed} capture_ms median {:.1} max {:.1} debug2_ms median {:.1} max {:.1}",
        median(&mut capture_ms),
        max(&capture_ms),
        median(&mut text_ms),
        max(&text_ms),
    );
    signal_shutdown();
    for t in idle {
        t.join().unwrap();
    }
}
