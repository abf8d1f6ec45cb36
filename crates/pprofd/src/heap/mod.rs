//! Heap and allocation profiles (`/debug/pprof/heap`, `/debug/pprof/allocs`) for any global
//! allocator, through the [`Allocator`] wrapper.
//!
//! The wrapper forwards every call to the allocator it wraps and samples allocations as a
//! Poisson process over bytes (one sample per [`sample_rate`] bytes on average, as Go's
//! `MemProfileRate`). A sampled allocation records its stack and size; its free is matched
//! through a set of live sampled blocks. Reports weight each sample by the inverse of its
//! chance of being sampled, so the four values Go reports (objects and bytes allocated, and
//! still in use) estimate the whole heap.
//!
//! Invariants (docs/invariants.md 9), kept by the code beside them:
//! - One predictable branch when off: an allocation costs a thread-local subtraction and a
//!   branch (`sampler::countdown`), a free a load and a branch (`sampler::may_be_live`).
//!   Without `PPROF_ADDR` sampling is never turned on and the wrapper only forwards.
//! - Never recurses: a sampled allocation sets a thread-local flag, and nothing allocated
//!   on a thread with the flag set is sampled. The profiler's tables come from the inner
//!   allocator directly.
//! - Never deadlocks, no allocation or lock inside unwinding: the sampled path unwinds with
//!   tables published before sampling starts (`crate::unwind::unwind_current_thread`) and
//!   records into lock-free bounded tables (`tables`); frees of unsampled blocks take no
//!   lock either.
//! - Bounded memory: `tables::HeapTables` is allocated once, with fixed capacities; what
//!   does not fit is counted and reported in the profile's comments.

mod allocator;
mod report;
mod sampler;
mod tables;

use std::sync::atomic::Ordering;
use std::sync::Mutex;

pub use allocator::Allocator;
pub(crate) use report::{Counts as SiteCounts, HeapSnapshot, ProfileKind};
pub(crate) use sampler::{exclude_current_thread, set_thread_stack};

use crate::unwind::{StackBounds, UnwindTables};

/// Go's default `MemProfileRate`: one sample per 512 KiB allocated, on average.
pub const DEFAULT_SAMPLE_RATE: usize = 512 * 1024;
/// The environment variable read when the server starts: mean bytes between samples, `0`
/// for off.
pub const RATE_ENV: &str = "PPROF_MEM_RATE";

/// Serialises everything that publishes unwind tables or the rate (never the allocator).
static CONTROL: Mutex<Control> = Mutex::new(Control {
    serving: false,
    requested_rate: None,
});

struct Control {
    /// Whether a server started; sampling runs only then.
    serving: bool,
    /// A rate set in code, which wins over the environment.
    requested_rate: Option<usize>,
}

/// Sets the mean number of bytes between sampled allocations (`0` turns heap sampling off).
///
/// Takes effect at once if the pprof server runs, otherwise when it starts; a rate set here
/// wins over `PPROF_MEM_RATE`. Rates above 4 GiB are treated as 4 GiB.
pub fn set_sample_rate(bytes: usize) {
    let mut control = CONTROL.lock().unwrap_or_else(|e| e.into_inner());
    control.requested_rate = Some(bytes);
    if control.serving {
        apply_rate(bytes);
    }
}

/// The sampling rate in effect: mean bytes between samples, `0` when heap sampling is off
/// (as it is until the pprof server starts).
pub fn sample_rate() -> usize {
    sampler::RATE.load(Ordering::Acquire)
}

/// Whether a pprofd [`Allocator`] is the global allocator.
pub(crate) fn is_installed() -> bool {
    sampler::INSTALLED.load(Ordering::Relaxed)
}

/// Number of sampled blocks currently live; 0 once everything sampled is freed. For tests.
#[doc(hidden)]
pub fn live_sampled_blocks() -> usize {
    sampler::live_blocks()
}

/// Number of allocations sampled since the start. For benchmarks.
#[doc(hidden)]
pub fn sampled_allocations() -> u64 {
    report::sampled_allocations()
}

/// Turns sampling on when the server starts (if the wrapper is installed): the rate set in
/// code, else `PPROF_MEM_RATE`, else [`DEFAULT_SAMPLE_RATE`].
pub(crate) fn start_with_server() {
    if !is_installed() {
        return;
    }
    let mut control = CONTROL.lock().unwrap_or_else(|e| e.into_inner());
    control.serving = true;
    let rate = control.requested_rate.unwrap_or_else(rate_from_env);
    apply_rate(rate);
}

fn rate_from_env() -> usize {
    match std::env::var(RATE_ENV) {
        Ok(value) => match value.trim().parse::<usize>() {
            Ok(rate) => rate,
            Err(_) => {
                log::warn!(
                    "pprofd: {RATE_ENV}={value:?} is not a byte count; using {DEFAULT_SAMPLE_RATE}"
                );
                DEFAULT_SAMPLE_RATE
            }
        },
        Err(_) => DEFAULT_SAMPLE_RATE,
    }
}

/// Publishes unwind tables (if sampling needs them and none are published), then the rate.
/// The caller holds [`CONTROL`].
fn apply_rate(rate: usize) {
    let rate = rate.min(u32::MAX as usize);
    // SAFETY: the caller holds CONTROL, which every publisher of these values holds.
    if rate > 0 && unsafe { sampler::UNWIND_TABLES.with_owner(|t| t.is_none()) } {
        let tables = sampler::without_sampling(UnwindTables::load);
        sampler::UNWIND_TABLES.replace(Some(Box::new(tables)));
        let maps = sampler::without_sampling(StackBounds::load);
        sampler::STACK_MAPS.replace(Some(Box::new(maps)));
    }
    sampler::RATE.store(rate, Ordering::Release);
}

/// Reloads the unwind tables if objects were loaded or unloaded since they were read, and
/// the mappings where stacks are found (threads and switched stacks come and go).
pub(crate) fn refresh_unwind_tables() {
    let _control = CONTROL.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: CONTROL is held (see `apply_rate`).
    if unsafe { sampler::UNWIND_TABLES.with_owner(|t| t.is_some_and(UnwindTables::is_stale)) } {
        let fresh = sampler::without_sampling(UnwindTables::load);
        let old = sampler::UNWIND_TABLES.replace(Some(Box::new(fresh)));
        sampler::without_sampling(|| drop(old));
    }
    // SAFETY: as above.
    if unsafe { sampler::STACK_MAPS.with_owner(|m| m.is_some()) } {
        let fresh = sampler::without_sampling(StackBounds::load);
        let old = sampler::STACK_MAPS.replace(Some(Box::new(fresh)));
        sampler::without_sampling(|| drop(old));
    }
}

/// `pthread_atfork` child (see `crate::fork`): heap sampling off. The child has no server to
/// read the samples; it turns on again if the child starts one.
pub(crate) fn after_fork_in_child() {
    sampler::RATE.store(0, Ordering::Release);
}
