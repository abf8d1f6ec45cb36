//! The allocation benchmark workload on pprofd's wrapper around the system allocator:
//! sampling is off without `PPROF_ADDR` and at `PPROF_MEM_RATE` (default 512 KiB) with it.
//! Run by `cargo bench --bench heap_overhead`.

#[path = "support/alloc_bench.rs"]
mod alloc_bench;

#[global_allocator]
static ALLOC: pprofd::Allocator<std::alloc::System> = pprofd::Allocator::system();

fn main() {
    alloc_bench::main(pprofd::heap::sampled_allocations);
}
