//! What labels cost, measured in one run:
//! - entering and leaving a `Labels::scope` (one set; and a nested one, whose merged set comes
//!   from the thread's cache), and a poll through `Labels::instrument`, in nanoseconds;
//! - allocations made by entering and leaving scopes (none expected), counted by a wrapping
//!   allocator;
//! - the CPU overhead of labels at 100 Hz: a two-thread workload of short labelled requests
//!   (a scope each, two operations) against the same work unlabelled, both under a 100 Hz CPU
//!   profile, alternated round by round; the ratio of the threads' CPU time, labelled /
//!   unlabelled (the signal handler's work is charged to the thread it interrupts).
//!
//! Run: `cargo bench -p pprofd --bench labels_overhead`; with `--features tracing` it also
//! prints what entering and leaving a labelled span costs under `TracingLabels`.

#[path = "../examples/support/spin.rs"]
mod spin;

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use pprofd::cpu::CpuProfile;
use pprofd::Labels;
use spin::spin;

/// Counts allocations, to show that scopes make none.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to System unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is System's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SCOPES: u64 = 20_000_000;

/// Nanoseconds per call of `f`, the best of five runs of `SCOPES` calls.
fn per_call(mut f: impl FnMut(u64)) -> f64 {
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for i in 0..SCOPES {
                f(i);
            }
            start.elapsed().as_nanos() as f64 / SCOPES as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// A future that is ready on its second poll.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        if std::mem::replace(&mut self.0, true) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

fn scope_costs() {
    let operation = Labels::new([("operation", "GetUser")]);
    let tenant = Labels::new([("tenant", "acme")]);
    let empty = per_call(|i| {
        black_box(i);
    });
    // The first nested entry interns the merged set (allocating once); warm it up.
    operation.scope(|| tenant.scope(|| ()));
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let one = per_call(|i| {
        operation.scope(|| black_box(i));
    });
    let nested = per_call(|i| {
        operation.scope(|| tenant.scope(|| black_box(i)));
    });
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    let mut cx = Context::from_waker(Waker::noop());
    let polls = per_call(|_| {
        let mut future = pin!(operation.instrument(YieldOnce(false)));
        while future.as_mut().poll(&mut cx).is_pending() {}
    });
    let bare_polls = per_call(|_| {
        let mut future = pin!(YieldOnce(false));
        while future.as_mut().poll(&mut cx).is_pending() {}
    });
    println!(
        "scope enter+leave, one label set:       {:.1} ns",
        one - empty
    );
    println!(
        "scope enter+leave, nested (two scopes): {:.1} ns",
        nested - empty
    );
    println!(
        "instrumented future, two polls:         {:.1} ns more than bare ({:.1} ns per poll)",
        polls - bare_polls,
        (polls - bare_polls) / 2.0
    );
    println!(
        "allocations while entering and leaving {} scopes: {allocations}",
        15 * SCOPES
    );
}

fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec pointer for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// `count` short requests on each of two threads, each inside a scope when `labelled`; the
/// CPU time the two threads used (thread CPU clocks: other load on the machine does not
/// count, as wall time would).
fn requests(count: u64, labelled: bool) -> Duration {
    let operations = [
        Labels::new([("operation", "Alpha")]),
        Labels::new([("operation", "Beta")]),
    ];
    std::thread::scope(|s| {
        let threads: Vec<_> = [1u64, 2]
            .into_iter()
            .map(|seed| {
                s.spawn(move || {
                    let start = thread_cpu();
                    let mut x = 88172645463325252u64 ^ seed;
                    for i in 0..count {
                        // About 20 µs of work per request.
                        let work = |x| spin(x, 20_000);
                        x = if labelled {
                            operations[(i % 2) as usize].scope(|| work(x))
                        } else {
                            work(x)
                        };
                    }
                    black_box(x);
                    thread_cpu() - start
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a request thread"))
            .sum()
    })
}

fn overhead_at_100_hz() {
    let _profile = CpuProfile::start(100).expect("no other CPU profile runs");
    let count = 20_000;
    let mut ratios = Vec::new();
    for _ in 0..15 {
        let unlabelled = requests(count, false);
        let labelled = requests(count, true);
        ratios.push(labelled.as_secs_f64() / unlabelled.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "CPU time labelled / unlabelled under a 100 Hz CPU profile: {:.4} (median of 15 alternated rounds of 2 x {count} requests; range {:.4}-{:.4})",
        ratios[7], ratios[0], ratios[14]
    );
}

/// Entering and leaving a span whose field `TracingLabels` turns into labels, against the same
/// span under a registry without the layer.
#[cfg(feature = "tracing")]
fn tracing_costs() {
    use tracing_subscriber::layer::SubscriberExt;
    let enter_leave = |span: &tracing::Span| {
        per_call(|i| {
            let _entered = span.enter();
            black_box(i);
        })
    };
    let plain = tracing::subscriber::with_default(tracing_subscriber::registry(), || {
        enter_leave(&tracing::info_span!("request", operation = "GetUser"))
    });
    let layered = tracing_subscriber::registry().with(pprofd::TracingLabels::new(["operation"]));
    let labelled = tracing::subscriber::with_default(layered, || {
        enter_leave(&tracing::info_span!("request", operation = "GetUser"))
    });
    println!(
        "span enter+leave with TracingLabels:     {labelled:.1} ns ({plain:.1} ns without the layer)"
    );
}

fn main() {
    scope_costs();
    #[cfg(feature = "tracing")]
    tracing_costs();
    overhead_at_100_hz();
}
