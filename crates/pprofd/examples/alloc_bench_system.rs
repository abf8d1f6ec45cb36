//! The allocation benchmark workload on the bare system allocator (the baseline). Run by
//! `cargo bench --bench heap_overhead`.

#[path = "support/alloc_bench.rs"]
mod alloc_bench;

fn main() {
    alloc_bench::main(|| 0);
}
