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
//! - `--bench SECONDS`: no server; a lock-heavy loop on eight threads, timed in rounds
//!   alternating without and with block sampling, printing the overhead ratio.

use std::hint::black_box;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    if let Some(seconds) = value("--bench") {
        bench(seconds.parse().expect("seconds"));
        return;
    }
    let server = pprofd::init_from_env().expect("PPROF_ADDR is valid");
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

/// Lock operations done by eight threads on one mutex in `duration`.
fn lock_heavy_round(duration: Duration) -> u64 {
    let shared = Arc::new(std::sync::Mutex::new(0u64));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (shared, done, stop) = (shared.clone(), done.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut ops = 0;
                while !stop.load(Ordering::Relaxed) {
                    *shared.lock().unwrap() += 1;
                    spin_for(Duration::from_micros(5));
                    ops += 1;
                }
                done.fetch_add(ops, Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    done.load(Ordering::Relaxed)
}

/// Alternates rounds without and with block sampling and prints throughput and overhead.
fn bench(seconds: u64) {
    let round = Duration::from_secs(seconds);
    let (mut plain, mut sampled) = (0u64, 0u64);
    for _ in 0..3 {
        plain += lock_heavy_round(round);
        let profile = pprofd::offcpu::BlockProfile::start(pprofd::offcpu::DEFAULT_HZ)
            .expect("sampling starts");
        sampled += lock_heavy_round(round);
        drop(profile.stop().expect("sampling stops"));
    }
    let overhead = 1.0 - sampled as f64 / plain as f64;
    println!(
        "lock_ops_per_s plain {:.0} sampled {:.0} overhead {:.2}%",
        plain as f64 / (3 * seconds) as f64,
        sampled as f64 / (3 * seconds) as f64,
        overhead * 100.0
    );
}
