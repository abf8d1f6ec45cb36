//! An async service for pprofd's task-dump tests (feature `tokio-tasks`).
//!
//! A two-worker tokio runtime, registered with `pprofd::watch_tokio_runtime`, runs a task
//! `hold_orders_lock` that holds a `tokio::sync::Mutex` while it sleeps, and a task
//! `wait_for_orders_lock` waiting for that mutex. Prints `listening <addr>`, then obeys stdin:
//!
//! - `wedge`: blocks both workers synchronously (in `block_worker`), as a deadlocked handler
//!   would; prints `wedged` once both are blocked.
//! - `unwedge`: releases them; prints `unwedged` once both are back.
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("a tokio runtime");
    pprofd::watch_tokio_runtime(runtime.handle());
    let server = pprofd::init_from_env()
        .expect("PPROF_ADDR is valid")
        .expect("PPROF_ADDR is set");

    let orders = Arc::new(tokio::sync::Mutex::new(0u64));
    let (held_tx, held) = std::sync::mpsc::channel();
    runtime.spawn(boxed(hold_orders_lock(orders.clone(), held_tx)));
    held.recv().expect("the lock holder runs");
    runtime.spawn(boxed(wait_for_orders_lock(orders)));

    println!("listening {}", server.local_addr());
    for line in std::io::stdin().lock().lines() {
        match line.expect("stdin").trim() {
            "wedge" => {
                *WEDGE.0.lock().unwrap() = true;
                let both_blocked = Arc::new(Barrier::new(3));
                for _ in 0..2 {
                    let both_blocked = both_blocked.clone();
                    runtime.spawn(async move { block_worker(&both_blocked) });
                }
                both_blocked.wait();
                println!("wedged");
            }
            "unwedge" => {
                *WEDGE.0.lock().unwrap() = false;
                WEDGE.1.notify_all();
                // Both workers answer a task again once they are back in the scheduler.
                let back = runtime.block_on(async {
                    let a = tokio::spawn(async {});
                    let b = tokio::spawn(async {});
                    a.await.is_ok() && b.await.is_ok()
                });
                assert!(back);
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
fn block_worker(both_blocked: &Barrier) {
    both_blocked.wait();
    let guard = WEDGE.0.lock().unwrap();
    drop(WEDGE.1.wait_while(guard, |wedged| *wedged).unwrap());
}
