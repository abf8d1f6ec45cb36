//! A workload for pprofd's block and mutex profile tests and benchmark.
//!
//! Prints `listening <addr>` once its threads run and stops when stdin closes.
//!
//! - `--mutex std` / `--mutex parking_lot`: eight threads `contender-N` take one shared
//!   mutex around a 2 ms critical section; thread `uncontended` takes a mutex of its own
//!   the same way, and never waits for it.
//! - `--channel`: thread `consumer` receives from a `std::sync::mpsc` channel that thread
//!   `producer` feeds every 2 ms.
//! - `--idle-runtime`: a two-worker tokio runtime with one task that sleeps on a timer.
//! - `--bench ROUNDS`: no server; fixed lock-heavy work on eight threads, in rounds
//!   alternating without and with block sampling, printing the overhead in wall and CPU time.

use std::hint::black_box;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);

/// Busy work for `duration`, keeping the thread on the CPU (a held lock is not a sleep).
fn spin_for(duration: Duration) {
    let started = Instant::now();
    let mut x = 1u64;
    while started.elapsed() < duration {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

trait Lock: Send + Sync + 'static {
    fn with(&self, f: impl FnOnce(&mut u64));
}

impl Lock for std::sync::Mutex<u64> {
    #[inline(always)]
    fn with(&self, f: impl FnOnce(&mut u64)) {
        f(&mut self.lock().unwrap());
    }
}

impl Lock for parking_lot::Mutex<u64> {
    #[inline(always)]
    fn with(&self, f: impl FnOnce(&mut u64)) {
        f(&mut self.lock());
    }
}

/// The critical section: 2 ms on the CPU with the lock held.
fn update(v: &mut u64) {
    spin_for(Duration::from_millis(2));
    *v += 1;
}

#[inline(never)]
fn contended_section<L: Lock>(shared: &L) {
    shared.with(update); // contended lock site
}

#[inline(never)]
fn uncontended_section<L: Lock>(own: &L) {
    own.with(update); // uncontended lock site
}

fn contention<L: Lock>(shared: L, own: L) -> Vec<JoinHandle<()>> {
    let shared = Arc::new(shared);
    let mut threads: Vec<JoinHandle<()>> = (1..=8)
        .map(|i| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("contender-{i}"))
                .spawn(move || {
                    while !STOP.load(Ordering::Relaxed) {
                        contended_section(&*shared);
                    }
                })
                .unwrap()
        })
        .collect();
    threads.push(
        std::thread::Builder::new()
            .name("uncontended".into())
            .spawn(move || {
                while !STOP.load(Ordering::Relaxed) {
                    uncontended_section(&own);
                }
            })
            .unwrap(),
    );
    threads
}

#[inline(never)]
fn receive_all(rx: mpsc::Receiver<u64>) -> u64 {
    let mut sum = 0;
    loop {
        let received = rx.recv(); // channel receive site
        match received {
            Ok(v) => sum += v,
            Err(_) => return sum,
        }
    }
}

fn channel() -> Vec<JoinHandle<()>> {
    let (tx, rx) = mpsc::channel();
    vec![
        std::thread::Builder::new()
            .name("producer".into())
            .spawn(move || {
                let mut i = 0;
                while !STOP.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(2));
                    tx.send(i).unwrap();
                    i += 1;
                }
            })
            .unwrap(),
        std::thread::Builder::new()
            .name("consumer".into())
            .spawn(move || {
                black_box(receive_all(rx));
            })
            .unwrap(),
    ]
}

fn idle_runtime() -> tokio::runtime::Runtime {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    runtime
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        let i = args.iter().position(|a| a == name)?;
        args.get(i + 1).cloned()
    };
    if let Some(rounds) = value("--bench") {
        bench(rounds.parse().expect("rounds"));
        return;
    }
    let server = pprofd::init_from_env().unwrap_or_else(|e| panic!("{e}"));
    let mut threads = Vec::new();
    match value("--mutex").as_deref() {
        Some("std") => threads = contention(std::sync::Mutex::new(0), std::sync::Mutex::new(0)),
        Some("parking_lot") => {
            threads = contention(parking_lot::Mutex::new(0), parking_lot::Mutex::new(0))
        }
        Some(other) => panic!("unknown mutex {other}"),
        None => {}
    }
    if args.iter().any(|a| a == "--channel") {
        threads.extend(channel());
    }
    let runtime = args
        .iter()
        .any(|a| a == "--idle-runtime")
        .then(idle_runtime);
    match &server {
        Some(s) => println!("listening {}", s.local_addr()),
        None => println!("listening none"),
    }
    for _ in std::io::stdin().lock().lines() {}
    STOP.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    drop(runtime);
}

/// Eight threads each take one mutex `ops` times around 5 µs of work; returns the wall and
/// CPU seconds (user + system, whole process) the round took.
fn lock_heavy_round(ops: u64) -> (f64, f64) {
    let shared = Arc::new(std::sync::Mutex::new(0u64));
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for _ in 0..ops {
                    let mut guard = shared.lock().unwrap();
                    spin_for(Duration::from_micros(5));
                    *guard += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    (started.elapsed().as_secs_f64(), cpu_seconds() - cpu_before)
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// Alternates rounds of fixed lock-heavy work without and with block sampling at the default
/// rate and prints the overhead in wall and CPU time.
fn bench(rounds: u64) {
    let ops = 40_000;
    let (mut plain, mut sampled) = ((0.0, 0.0), (0.0, 0.0));
    let mut signals = 0;
    for _ in 0..rounds {
        let (wall, cpu) = lock_heavy_round(ops);
        plain = (plain.0 + wall, plain.1 + cpu);
        let profile = pprofd::offcpu::BlockProfile::start(pprofd::offcpu::DEFAULT_HZ)
            .expect("sampling starts");
        let (wall, cpu) = lock_heavy_round(ops);
        signals += profile.stop().expect("sampling stops").signals_sent();
        sampled = (sampled.0 + wall, sampled.1 + cpu);
    }
    println!(
        "wall_s plain {:.3} sampled {:.3} overhead {:+.2}% cpu_s plain {:.3} sampled {:.3} overhead {:+.2}% signals {signals}",
        plain.0,
        sampled.0,
        (sampled.0 / plain.0 - 1.0) * 100.0,
        plain.1,
        sampled.1,
        (sampled.1 / plain.1 - 1.0) * 100.0,
    );
}
