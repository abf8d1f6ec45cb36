//! The accuracy workload of `heap_workload` with pprofd's wrapper around mimalloc instead of
//! the system allocator. Prints `listening <addr>`, then `allocated <bytes> kept <bytes>`;
//! exits when stdin closes.

#[path = "support/heap.rs"]
mod support;

use std::io::BufRead;

use support::Counting;

#[global_allocator]
static ALLOC: pprofd::Allocator<Counting<mimalloc::MiMalloc>> =
    pprofd::Allocator::new(Counting(mimalloc::MiMalloc));

fn main() {
    let server = pprofd::init_from_env()
        .expect("PPROF_ADDR is valid")
        .expect("PPROF_ADDR is set");
    println!("listening {}", server.local_addr());
    support::accuracy(std::io::stdin().lock().lines());
}
