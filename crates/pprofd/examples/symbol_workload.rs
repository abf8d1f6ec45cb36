//! A workload for the symbolization tests: two threads, each hot in a different type's
//! `Iterator::next`, so a profile has two trait methods of the same name that must stay
//! whole and distinct (`<symbol_workload::Squares as core::iter::traits::iterator::Iterator>::next`
//! and `<symbol_workload::Collatz<u64> as ...>::next`, whose generic argument must stay in the
//! name). Prints `listening <addr>` once serving, and stops when stdin closes.

use std::hint::black_box;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

// The allocator wrapper, as a service has it, so that every profile on the index answers.
#[global_allocator]
static ALLOC: pprofd::Allocator<std::alloc::System> = pprofd::Allocator::system();

/// Squares of a counter, summed by its consumer.
struct Squares {
    n: u64,
}

impl Iterator for Squares {
    type Item = u64;

    #[inline(never)]
    fn next(&mut self) -> Option<u64> {
        self.n = black_box(self.n.wrapping_add(1));
        Some(self.n.wrapping_mul(self.n) ^ (self.n >> 7))
    }
}

/// Collatz steps of a wandering value; generic so that its `next` has a generic argument
/// in its name.
struct Collatz<T> {
    x: T,
}

impl Iterator for Collatz<u64> {
    type Item = u64;

    #[inline(never)]
    fn next(&mut self) -> Option<u64> {
        let x = black_box(self.x);
        self.x = if x.is_multiple_of(2) {
            x / 2
        } else {
            3 * x + 1
        } | 0x100;
        Some(self.x)
    }
}

/// Drains `iter` until `stop`, in batches.
fn drain(mut iter: impl Iterator<Item = u64>, stop: &AtomicBool) {
    let mut total = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..10_000 {
            total = total.wrapping_add(iter.next().unwrap_or(0));
        }
    }
    black_box(total);
}

fn main() {
    let server = pprofd::init_from_env().expect("PPROF_ADDR is valid");
    let stop = Arc::new(AtomicBool::new(false));
    let threads = [
        std::thread::Builder::new().name("squares".into()).spawn({
            let stop = stop.clone();
            move || drain(Squares { n: 0 }, &stop)
        }),
        std::thread::Builder::new().name("collatz".into()).spawn({
            let stop = stop.clone();
            move || drain(Collatz { x: 27 }, &stop)
        }),
    ]
    .map(|t| t.expect("threads start"));
    match &server {
        Some(s) => println!("listening {}", s.local_addr()),
        None => println!("listening none"),
    }
    for _ in std::io::stdin().lock().lines() {}
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
}
