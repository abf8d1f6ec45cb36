//! The busy loop shared by the CPU workload (`cpu_workload`) and the CPU overhead benchmark
//! (`benches/cpu_overhead.rs`), so that both measure the same work.

use std::hint::black_box;

/// `rounds` xorshift steps from `x`. Always inlined, so the CPU time it takes is charged to
/// the function that calls it (`hot_seventy`, `hot_thirty`).
#[inline(always)]
pub fn spin(mut x: u64, rounds: u64) -> u64 {
    for _ in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = black_box(x);
    }
    x
}
