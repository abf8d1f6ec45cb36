//! An async service for pprofd's task-dump tests (feature `tokio-tasks`).
//!
//! A tokio runtime, registered with `pprofd::watch_tokio_runtime`, runs a task
//! `hold_orders_lock` that holds a `tokio::sync::Mutex` while it sleeps, and a task
//! `wait_for_orders_lock` waiting for that mutex. The runtime is a current-thread one driven
//! by a thread named `tokio-runtime`, or with `--multi-thread` a two-worker one. Prints
//! `listening <addr>`, then obeys stdin:
//!
//! - `wedge`: blocks every worker synchronously (in `block_worker`), as a deadlocked handler
//!   would; prints `wedged` once all are blocked.
//! - `unwedge`: releases them; prints `unwedged` once the runtime runs a task again.
//!
//! Exits when stdin closes.

use std::future::Future;
use std::io::BufRead;
use std::pin::Pin;
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::Duration;

/// Released by `unwedge`: the workers blocked by `wedge` wait on it.
static WEDGE: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

fn main() {
    let multi_thread = std::env::args().any(|a| a == "--multi-thread");
    let (handle, workers) = if multi_thread {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .expect("a tokio runtime");
        let handle = runtime.handle().clone();
        // Kept alive to the end of the process, like a service's runtime.
        std::mem::forget(runtime);
        (handle, 2)
    } else {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a tokio runtime");
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("tokio-runtime".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .expect("the runtime thread starts");
        (handle, 1)
    };
    pprofd::watch_tokio_runtime(&handle);
    let server = pprofd::init_from_env()
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("PPROF_ADDR is set");

    let orders = Arc::new(tokio::sync::Mutex::new(0u64));
    let (held_tx, held) = std::sync::mpsc::channel();
    handle.spawn(boxed(hold_orders_lock(orders.clone(), held_tx)));
    held.recv().expect("the lock holder runs");
    // The waiter is labelled: dumps show its labels beside its stack.
    let checkout = pprofd::Labels::new([("operation", "Checkout")]);
    handle.spawn(boxed(checkout.instrument(wait_for_orders_lock(orders))));

    println!("listening {}", server.local_addr());
    for line in std::io::stdin().lock().lines() {
        match line.expect("stdin").trim() {
            "wedge" => {
                *WEDGE.0.lock().unwrap() = true;
                let all_blocked = Arc::new(Barrier::new(workers + 1));
                for _ in 0..workers {
                    let all_blocked = all_blocked.clone();
                    handle.spawn(async move { block_worker(&all_blocked) });
                }
                all_blocked.wait();
                println!("wedged");
            }
            "unwedge" => {
                *WEDGE.0.lock().unwrap() = false;
                WEDGE.1.notify_all();
                let (ran_tx, ran) = std::sync::mpsc::channel();
                handle.spawn(async move { ran_tx.send(()).unwrap() });
                ran.recv_timeout(Duration::from_secs(10))
                    .expect("the runtime runs tasks again");
                println!("unwedged");
            }
            other => panic!("unknown command {other:?}"),
        }
    }
}

/// Spawned futures are boxed, as servers box each connection's: tokio's trace stops below
/// the task's root poll, which would otherwise inline the `async fn` and hide its frame.
fn boxed(
    future: impl Future<Output = ()> + Send + 'static,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(future)
}

async fn hold_orders_lock(orders: Arc<tokio::sync::Mutex<u64>>, held: std::sync::mpsc::Sender<()>) {
    let mut guard = orders.lock().await;
    *guard += 1;
    held.send(()).unwrap();
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

async fn wait_for_orders_lock(orders: Arc<tokio::sync::Mutex<u64>>) {
    let guard = orders.lock().await;
    std::hint::black_box(*guard);
}

/// Blocks this worker thread until `unwedge`, without yielding to the scheduler.
#[inline(never)]
fn block_worker(all_blocked: &Barrier) {
    all_blocked.wait();
    let guard = WEDGE.0.lock().unwrap();
    drop(WEDGE.1.wait_while(guard, |wedged| *wedged).unwrap());
}
