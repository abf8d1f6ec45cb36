//! Heap-profile workloads for pprofd's tests, run as separate processes.
//!
//! - `accuracy`: keeps 100 MB alive at `kept_site` while four threads make millions of
//!   short-lived allocations at `churn_site`, then prints `allocated <bytes> kept <bytes>`.
//! - `leak`: on each `leak N` line on stdin, leaks N bytes at `leak_site` and prints `leaked`;
//!   on `rate N`, sets the sampling rate and prints `rate <rate in effect>`.
//! - `stress`: eight threads allocate, reallocate and free (sizes 0 to 16 MiB, alignments up
//!   to 4096, a third of the blocks freed by another thread) until a `stop` line on stdin,
//!   free everything and print `done live_sampled_blocks <n>`.
//!
//! Prints `listening <addr>` once serving; exits when stdin closes.

#[path = "support/heap.rs"]
mod support;

use std::alloc::{Layout, System};
use std::hint::black_box;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use support::{Counting, Rng};

#[global_allocator]
static ALLOC: pprofd::Allocator<Counting<System>> = pprofd::Allocator::new(Counting(System));

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let server = pprofd::init_from_env()
        .expect("PPROF_ADDR is valid")
        .expect("PPROF_ADDR is set");
    println!("listening {}", server.local_addr());
    let mut lines = std::io::stdin().lock().lines();
    match args.get(1).map(String::as_str) {
        Some("accuracy") => support::accuracy(lines),
        Some("leak") => {
            let mut rng = Rng(3);
            for line in lines.by_ref() {
                let line = line.expect("stdin");
                if let Some(n) = line.strip_prefix("leak ") {
                    leak_site(n.trim().parse().expect("byte count"), &mut rng);
                    println!("leaked");
                } else if let Some(rate) = line.strip_prefix("rate ") {
                    pprofd::heap::set_sample_rate(rate.trim().parse().expect("byte count"));
                    println!("rate {}", pprofd::heap::sample_rate());
                }
            }
        }
        Some("stress") => {
            let stop = AtomicBool::new(false);
            std::thread::scope(|s| {
                s.spawn(|| stress(&stop));
                for line in lines.by_ref() {
                    if line.expect("stdin") == "stop" {
                        break;
                    }
                }
                stop.store(true, Ordering::Relaxed);
            });
            println!(
                "done live_sampled_blocks {}",
                pprofd::heap::live_sampled_blocks()
            );
            for _ in lines.by_ref() {}
        }
        other => panic!("unknown mode {other:?}"),
    }
}

/// A block allocated with `std::alloc`, freed by whichever thread owns it last.
struct Block {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: a block is plain memory owned by one thread at a time.
unsafe impl Send for Block {}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `std::alloc::alloc(layout)` or `realloc` to this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

fn stress(stop: &AtomicBool) {
    const THREADS: usize = 8;
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..THREADS).map(|_| mpsc::channel::<Block>()).unzip();
    std::thread::scope(|s| {
        for (i, inbox) in receivers.into_iter().enumerate() {
            let neighbour = senders[(i + 1) % THREADS].clone();
            s.spawn(move || stress_thread(i as u64, stop, inbox, neighbour));
        }
        drop(senders);
    });
}

#[inline(never)]
fn stress_thread(
    seed: u64,
    stop: &AtomicBool,
    inbox: mpsc::Receiver<Block>,
    neighbour: mpsc::Sender<Block>,
) {
    let mut rng = Rng(0x1234_5678 + seed);
    let mut held: Vec<Block> = Vec::new();
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        // Freed here but allocated by the previous thread.
        while let Ok(block) = inbox.try_recv() {
            drop(block);
        }
        let size = if rng.next().is_multiple_of(64) {
            (rng.next() % (16 << 20)) as usize
        } else {
            (rng.next() % 4097) as usize
        };
        if size == 0 {
            // Zero-sized requests never reach a global allocator; collections skip it.
            black_box(Vec::<u8>::with_capacity(0));
            continue;
        }
        let align = 1usize << (rng.next() % 13);
        let layout = Layout::from_size_align(size, align).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        assert!(!ptr.is_null(), "allocation of {size} bytes failed");
        let mut block = Block { ptr, layout };
        if round.is_multiple_of(3) {
            let new_size = 1 + (rng.next() % (size as u64 * 2)) as usize;
            // SAFETY: `block` holds a live allocation with `layout`; the new size is non-zero.
            let new = unsafe { std::alloc::realloc(block.ptr, block.layout, new_size) };
            assert!(!new.is_null(), "realloc to {new_size} bytes failed");
            block.ptr = new;
            block.layout = Layout::from_size_align(new_size, align).expect("valid layout");
        }
        match rng.next() % 3 {
            // When the neighbour has finished, the block comes back in the error and is
            // freed here.
            0 => drop(neighbour.send(block)),
            1 => drop(block),
            _ => held.push(block),
        }
        if held.len() > 64 {
            held.drain(..32);
        }
    }
    drop(held);
    drop(neighbour);
    // Blocks sent before the neighbour stopped reading are freed when their channel drops.
    for block in inbox.try_iter() {
        drop(block);
    }
}

/// Leaks `total` bytes in blocks of 2 to 4 MiB.
#[inline(never)]
fn leak_site(total: usize, rng: &mut Rng) {
    // Blocks of 4 to 8 MiB, the remainder folded into the last one: at the default 512 KiB
    // rate each is sampled with probability at least 1 - e^-8, so the tests' 10% bounds
    // fail about once in a thousand runs rather than once in twenty (as 2 MiB blocks did).
    const MIN: usize = 4 << 20;
    let mut bytes = 0;
    while bytes < total {
        let size = MIN + (rng.next() % MIN as u64) as usize;
        let left = total - bytes;
        let size = if left < size + MIN { left } else { size };
        std::mem::forget(black_box(Vec::<u8>::with_capacity(size)));
        bytes += size;
    }
}
