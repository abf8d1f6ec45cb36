//! Two labelled operations interleaved, with their true CPU time and bytes, for the labels
//! truth tests (`tests/labels.rs`).
//!
//! `--form instrument` and `--form tracing` run requests as tasks on a two-worker tokio
//! runtime, labelled `operation=Alpha` or `operation=Beta` by `Labels::instrument` or by a
//! tracing span under `TracingLabels`; each request yields between chunks of work, so it
//! migrates between the workers. Each chunk of Alpha spins 3 units and allocates 64 KiB; each
//! of Beta spins 1 unit and allocates 192 KiB. Alpha's last 200 buffers stay alive. An unlabelled task (`unlabelled_work`) runs
//! beside them on the same workers; the runtime's poll hooks (`pprofd::labels::tokio_task_ids`)
//! name every task in the samples. `--form scope` does the same on plain threads with
//! `Labels::scope`, and adds a thread that waits for a lock inside `operation=Waiting`.
//!
//! Commands on stdin: `reset` zeroes the truth; `report` prints `truth <op> <cpu_ns> <bytes>`
//! for Alpha and Beta, then `end`. Prints `listening <addr>` first; exits when stdin closes.

#[path = "support/thread_cpu.rs"]
mod thread_cpu;
use thread_cpu::thread_cpu_ns;

#[path = "support/spin.rs"]
mod spin;

use std::hint::black_box;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pprofd::Labels;
use spin::spin;
use tracing::Instrument;

#[global_allocator]
static ALLOCATOR: pprofd::Allocator<std::alloc::System> = pprofd::Allocator::system();

const UNIT: u64 = 60_000;

/// One operation's true cost: thread CPU nanoseconds spent in its work, bytes allocated.
#[derive(Default)]
struct Truth {
    cpu_ns: AtomicU64,
    bytes: AtomicU64,
}

static ALPHA: Truth = Truth {
    cpu_ns: AtomicU64::new(0),
    bytes: AtomicU64::new(0),
};
static BETA: Truth = Truth {
    cpu_ns: AtomicU64::new(0),
    bytes: AtomicU64::new(0),
};

/// Runs `work` and charges its thread CPU time and `bytes` to `truth`.
fn measured(truth: &Truth, bytes: usize, work: impl FnOnce() -> u64) -> u64 {
    let start = thread_cpu_ns();
    let result = work();
    truth
        .cpu_ns
        .fetch_add(thread_cpu_ns() - start, Ordering::Relaxed);
    truth.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    result
}

/// Alpha's last buffers, kept alive: in-use memory that its sampled allocations must keep
/// labelled until they are freed.
static RETAINED: Mutex<std::collections::VecDeque<Vec<u8>>> =
    Mutex::new(std::collections::VecDeque::new());
const RETAINED_BUFFERS: usize = 200;

#[inline(never)]
fn alpha_work(seed: u64) -> u64 {
    measured(&ALPHA, 64 << 10, || {
        let buffer = black_box(vec![seed as u8; 64 << 10]);
        let x = spin(seed ^ buffer[7] as u64, 3 * UNIT);
        let mut retained = RETAINED.lock().unwrap();
        retained.push_back(buffer);
        if retained.len() > RETAINED_BUFFERS {
            retained.pop_front();
        }
        x
    })
}

#[inline(never)]
fn beta_work(seed: u64) -> u64 {
    measured(&BETA, 192 << 10, || {
        let buffer = black_box(vec![seed as u8; 192 << 10]);
        spin(seed ^ buffer[7] as u64, UNIT)
    })
}

#[inline(never)]
fn unlabelled_work(seed: u64) -> u64 {
    let buffer = black_box(vec![seed as u8; 32 << 10]);
    spin(seed ^ buffer[3] as u64, UNIT)
}

const CHUNKS: u64 = 20;
const SCOPE_CHUNKS: u64 = 200;

async fn request(alpha: bool, seed: u64) -> u64 {
    let mut x = seed;
    for _ in 0..CHUNKS {
        x = if alpha { alpha_work(x) } else { beta_work(x) };
        tokio::task::yield_now().await;
    }
    x
}

fn operation(alpha: bool) -> &'static str {
    if alpha {
        "Alpha"
    } else {
        "Beta"
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Form {
    Instrument,
    Tracing,
    Scope,
}

fn run_tasks(form: Form, stop: Arc<AtomicBool>) {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2);
    // Every polled task's samples name the task, labelled or not.
    let runtime = pprofd::labels::tokio_task_ids(&mut builder)
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let unlabelled = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut x = 1;
                while !stop.load(Ordering::Relaxed) {
                    x = unlabelled_work(x);
                    tokio::task::yield_now().await;
                }
                x
            })
        };
        let mut requests = tokio::task::JoinSet::new();
        let mut next = 0u64;
        while !stop.load(Ordering::Relaxed) {
            // Four requests in flight, Alpha and Beta in turn.
            while requests.len() < 4 {
                let alpha = next.is_multiple_of(2);
                let work = request(alpha, next + 1);
                match form {
                    Form::Instrument => {
                        let labels = Labels::new([("operation", operation(alpha))]);
                        requests.spawn(labels.instrument(work));
                    }
                    _ => {
                        let span = tracing::info_span!("request", operation = operation(alpha));
                        requests.spawn(work.instrument(span));
                    }
                }
                next += 1;
            }
            black_box(requests.join_next().await);
        }
        black_box(unlabelled.await.ok());
    });
}

fn run_threads(stop: Arc<AtomicBool>) {
    let mut threads = Vec::new();
    {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut x = 1;
            let mut next = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let alpha = next.is_multiple_of(2);
                let labels = Labels::new([("operation", operation(alpha))]);
                // Requests of tens of milliseconds, longer than the kernel's tick (which paces
                // CPU timers), so their rhythm cannot alias with the sampling.
                x = labels.scope(|| {
                    (0..SCOPE_CHUNKS)
                        .fold(x, |x, _| if alpha { alpha_work(x) } else { beta_work(x) })
                });
                next += 1;
            }
            x
        }));
    }
    {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut x = 1;
            while !stop.load(Ordering::Relaxed) {
                x = unlabelled_work(x);
            }
            x
        }));
    }
    // A thread holds a lock for 50 ms at a time; another waits for it inside a labelled scope.
    let lock = Arc::new(Mutex::new(0u64));
    {
        let (stop, lock) = (stop.clone(), lock.clone());
        std::thread::Builder::new()
            .name("lock-holder".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut held = lock.lock().unwrap();
                    std::thread::sleep(Duration::from_millis(50));
                    *held += 1;
                    drop(held);
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
            .expect("spawn");
    }
    std::thread::Builder::new()
        .name("lock-waiter".into())
        .spawn(move || {
            let waiting = Labels::new([("operation", "Waiting")]);
            waiting.scope(|| {
                while !stop.load(Ordering::Relaxed) {
                    *lock.lock().unwrap() += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .expect("spawn");
    for thread in threads {
        black_box(thread.join().ok());
    }
}

fn main() {
    let form = match std::env::args()
        .skip_while(|a| a != "--form")
        .nth(1)
        .as_deref()
    {
        Some("instrument") => Form::Instrument,
        Some("tracing") => Form::Tracing,
        Some("scope") => Form::Scope,
        other => panic!("--form instrument|tracing|scope, not {other:?}"),
    };
    if form == Form::Tracing {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber =
            tracing_subscriber::registry().with(pprofd::TracingLabels::new(["operation"]));
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    }
    let server = pprofd::init_from_env().expect("PPROF_ADDR is valid");
    match &server {
        Some(server) => println!("listening {}", server.local_addr()),
        None => println!("listening none"),
    }
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || match form {
            Form::Scope => run_threads(stop),
            _ => run_tasks(form, stop),
        })
    };
    for line in std::io::stdin().lock().lines() {
        match line.expect("stdin").trim() {
            "reset" => {
                for truth in [&ALPHA, &BETA] {
                    truth.cpu_ns.store(0, Ordering::Relaxed);
                    truth.bytes.store(0, Ordering::Relaxed);
                }
                println!("reset");
            }
            "report" => {
                for (name, truth) in [("Alpha", &ALPHA), ("Beta", &BETA)] {
                    println!(
                        "truth {name} {} {}",
                        truth.cpu_ns.load(Ordering::Relaxed),
                        truth.bytes.load(Ordering::Relaxed)
                    );
                }
                println!("end");
            }
            other => panic!("unknown command {other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    worker.join().expect("the workload stops");
}
