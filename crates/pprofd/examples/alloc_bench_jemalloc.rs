//! The allocation benchmark workload on jemalloc (configure it with `_RJEM_MALLOC_CONF`,
//! e.g. `prof:true,lg_prof_sample:19`). Run by `cargo bench --bench heap_overhead`.

#[path = "support/alloc_bench.rs"]
mod alloc_bench;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    alloc_bench::main(|| 0);
}
