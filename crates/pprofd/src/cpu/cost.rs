//! What one CPU sample costs, measured in this process for the `cpu_overhead` benchmark.
//!
//! The kernel raises CPU-time timer signals at most once per scheduler tick per thread, so
//! the difference in CPU time between profiled and unprofiled runs is a few milliseconds
//! per second, below the run-to-run noise of a shared machine. Instead the calling thread
//! queues itself the signal a timer would send, thousands of times, and reads its own CPU
//! clock: once with signals the handler samples (it unwinds and records the stack), once
//! with signals it passes on. The difference is the handler's own work; the second figure
//! is what the kernel charges for queueing and delivering a signal.

use std::time::Duration;

use super::signal::raise_timer_signal;
use crate::procfs;
use super::{CpuProfile, CpuProfileError};

/// Per-signal CPU costs measured by [`measure_sample_cost`].
#[derive(Debug, Clone, Copy)]
pub struct SampleCost {
    /// The handler's work for a sample: unwinding the interrupted stack into the ring.
    pub handler: Duration,
    /// Queueing the signal, delivering it and returning from a handler that does nothing:
    /// an upper bound for what a timer's signal costs the kernel.
    pub delivery: Duration,
    /// Samples the profile holds afterwards, of the signals the handler was to sample: the
    /// check that the handler did record each one.
    pub recorded: u64,
    /// Signals the handler was to sample.
    pub sent: u64,
}

/// Signals per batch: well under the ring's capacity, so the collector drains every
/// sample between batches and none is dropped (a dropped sample would cost less).
const BATCH: usize = 1024;

/// Measures the handler's cost per sample over `signals` samples of the calling thread,
/// with a CPU profile running (at 1 Hz, so the timers add nothing of note).
#[doc(hidden)]
pub fn measure_sample_cost(signals: usize) -> Result<SampleCost, CpuProfileError> {
    let mut profile = CpuProfile::start(1)?;
    let batches = signals.div_ceil(BATCH).max(1);
    let mut sampled = Duration::ZERO;
    let mut passed_on = Duration::ZERO;
    for _ in 0..batches {
        sampled += timed_batch(true).map_err(CpuProfileError::Setup)?;
        passed_on += timed_batch(false).map_err(CpuProfileError::Setup)?;
        // Let the collector drain the ring (it wakes every 50 ms).
        std::thread::sleep(Duration::from_millis(60));
    }
    let recorded = profile
        .halt()
        .counts
        .values()
        .map(|caught| caught.signals)
        .sum();
    let sent = batches * BATCH;
    let per_signal = |total: Duration| total / sent as u32;
    Ok(SampleCost {
        handler: per_signal(sampled.saturating_sub(passed_on)),
        delivery: per_signal(passed_on),
        recorded,
        sent: sent as u64,
    })
}

fn timed_batch(ours: bool) -> std::io::Result<Duration> {
    let started = procfs::thread_cpu_time();
    for _ in 0..BATCH {
        raise_timer_signal(ours)?;
    }
    Ok(procfs::thread_cpu_time().saturating_sub(started))
}
