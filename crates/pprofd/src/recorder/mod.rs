//! The flight recorder: the recent past of CPU and heap, kept in the process, so that
//! `profile?past=N`, `heap?past=N` and `allocs?past=N` answer at once about what already
//! happened.
//!
//! Off unless `PPROF_RECORD` (or [`crate::Config::record`]) sets a window. Then:
//! - CPU: the CPU session (`cpu::session`) samples every thread at `PPROF_RECORD_HZ` (default
//!   19) for the life of the process and hands every sample to [`cpu_history`], which keeps
//!   one-second buckets of CPU time per stack, labels and thread. A profile asked for meanwhile
//!   raises the rate while it runs; the recorder keeps every sample.
//! - Heap: a thread of its own (`pprofd-record`) takes a snapshot of the heap profiler's
//!   counters every [`HEAP_INTERVAL`] into [`heap_history`]; the answer to `heap?past=N` is
//!   the change since the snapshot closest to N seconds ago.
//!
//! Memory is bounded: CPU buckets by [`CPU_BUDGET`], heap changes by [`HEAP_BUDGET`], the
//! sample ring (1 MiB while only recording) and the unwind tables it shares with profiles.
//! The index page reports what is held and how far back it reaches.

mod cpu_history;
mod heap_history;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::cpu::{self, CpuProfileError, Sample, SampleSink};
use crate::heap::{self, HeapSnapshot};
use crate::profile::ProfileBuilder;
use crate::RECORD_ENV;
use cpu_history::CpuHistory;
use heap_history::HeapHistory;

/// The recorder's CPU sampling rate unless told otherwise: low, and not a divisor of the
/// common timer rates, so it does not beat with periodic work.
pub const DEFAULT_HZ: u32 = 19;
/// The longest window.
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// How often the heap's counters are snapshotted.
pub const HEAP_INTERVAL: Duration = Duration::from_secs(5);
/// The most the CPU buckets and their stacks hold; past it, the oldest seconds go.
pub const CPU_BUDGET: usize = 8 << 20;
/// The most the heap changes hold; past it, old intervals merge.
pub const HEAP_BUDGET: usize = 4 << 20;

/// What the recorder keeps: its window and CPU rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordSettings {
    /// How far back `past` may ask.
    pub window: Duration,
    /// CPU samples a second.
    pub hz: u32,
}

struct Recorder {
    settings: RecordSettings,
    cpu: Arc<Mutex<CpuHistory>>,
    /// None when the heap profiler is not the global allocator.
    heap: Option<Arc<Mutex<HeapHistory>>>,
}

static RECORDER: OnceLock<Recorder> = OnceLock::new();
/// Cleared in a forked child: its recorder's threads stayed in the parent.
static RECORDS_HERE: AtomicBool = AtomicBool::new(true);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Hands the CPU session's samples to the history.
struct CpuRecording(Arc<Mutex<CpuHistory>>);

impl SampleSink for CpuRecording {
    fn add(&mut self, sample: &Sample<'_>) {
        lock(&self.0).add(sample);
    }

    fn end_batch(&mut self, thread_names: &std::collections::HashMap<i32, String>, lost: u64) {
        lock(&self.0).end_batch(thread_names, lost);
    }
}

/// Starts recording for the life of the process. Calling it again changes nothing.
pub(crate) fn start(settings: RecordSettings) -> Result<(), CpuProfileError> {
    if RECORDER.get().is_some() {
        return Ok(());
    }
    let cpu_history = Arc::new(Mutex::new(CpuHistory::new(
        settings.window,
        settings.hz,
        CPU_BUDGET,
    )));
    cpu::start_recording(settings.hz, Box::new(CpuRecording(cpu_history.clone())))?;
    let heap = heap::is_installed().then(|| {
        let history = Arc::new(Mutex::new(HeapHistory::new(settings.window, HEAP_BUDGET)));
        let snapshots = history.clone();
        let spawned = std::thread::Builder::new()
            .name("pprofd-record".into())
            .spawn(move || {
                let _internal = crate::procfs::register_internal_thread();
                loop {
                    let snapshot = HeapSnapshot::take();
                    lock(&snapshots).push(snapshot);
                    std::thread::sleep(HEAP_INTERVAL);
                }
            });
        if let Err(e) = &spawned {
            log::warn!("pprofd: the flight recorder records no heap: no thread for it ({e})");
        }
        spawned.ok().map(|_| history)
    });
    let _ = RECORDER.set(Recorder {
        settings,
        cpu: cpu_history,
        heap: heap.flatten(),
    });
    Ok(())
}

fn recorder() -> Result<&'static Recorder, String> {
    match RECORDER.get() {
        Some(recorder) if RECORDS_HERE.load(Ordering::Acquire) => Ok(recorder),
        _ => Err(format!(
            "past=N answers from the flight recorder, which is off: start the service with \
             {RECORD_ENV}=10m (or another window: 300s, 1h) to keep the recent past, then ask \
             again; or ask for seconds=N to profile from now"
        )),
    }
}

/// Checks `past` against the window; the error is the 400's message.
fn check_past(recorder: &Recorder, past: Duration) -> Result<(), String> {
    let window = recorder.settings.window;
    if past > window {
        return Err(format!(
            "past={} is longer than the flight recorder's window ({}={}): ask for at most \
             past={}",
            past.as_secs(),
            RECORD_ENV,
            format_duration(window),
            window.as_secs()
        ));
    }
    Ok(())
}

/// The CPU profile of the last `past`, unsymbolized; the error is the 400's message.
pub(crate) fn cpu_profile(past: Duration) -> Result<ProfileBuilder, String> {
    let recorder = recorder()?;
    check_past(recorder, past)?;
    Ok(lock(&recorder.cpu).profile(past))
}

/// The heap as the recorder saw it closest to `past` ago, with a comment saying when that
/// was; `Ok(None)` when the heap profiler is not installed. The error is the 400's message.
pub(crate) fn heap_baseline(past: Duration) -> Result<Option<(HeapSnapshot, String)>, String> {
    let recorder = recorder()?;
    check_past(recorder, past)?;
    let Some(heap) = recorder.heap.as_ref() else {
        return Ok(None);
    };
    let history = lock(heap);
    let Some(baseline) = history.baseline(past) else {
        return Err(format!(
            "the flight recorder has no heap snapshot yet (it takes one every {} s from its \
             start); ask again in a few seconds",
            HEAP_INTERVAL.as_secs()
        ));
    };
    let comment = format!(
        "from pprofd's flight recorder: the change since its heap snapshot of {:.1} s ago \
         (past={} asked; snapshots every {} s, coarser further back)",
        baseline.age.as_secs_f64(),
        past.as_secs(),
        HEAP_INTERVAL.as_secs()
    );
    Ok(Some((baseline.snapshot, comment)))
}

/// One line for the index page: whether the recorder runs, what it holds and how far back.
pub(crate) fn status() -> String {
    let Ok(recorder) = recorder() else {
        return format!(
            "Flight recorder: off. Start the service with {RECORD_ENV}=10m to keep the last \
             minutes of CPU and heap, then ask profile, heap or allocs with ?past=N (seconds)."
        );
    };
    let RecordSettings { window, hz } = recorder.settings;
    let cpu = lock(&recorder.cpu).coverage();
    let (heap_bytes, heap_back, intervals) = match recorder.heap.as_ref() {
        Some(heap) => {
            let heap = lock(heap);
            (heap.bytes(), heap.reaches_back(), heap.intervals())
        }
        None => (0, Duration::ZERO, 0),
    };
    let heap = match recorder.heap {
        Some(_) => format!(
            "heap every {} s, {intervals} intervals reaching back {}",
            HEAP_INTERVAL.as_secs(),
            format_duration(heap_back.min(window))
        ),
        None => "no heap (pprofd's allocator is not the global allocator)".to_string(),
    };
    format!(
        "Flight recorder: on, window {} ({RECORD_ENV}). CPU at {hz} Hz in one-second buckets, \
         reaching back {}{}; {heap}. Holds {:.1} MiB of its {} MiB bound ({} MiB CPU, {} MiB \
         heap, plus a sample ring of at most 1 MiB and the unwind tables). Ask profile, heap or allocs \
         with ?past=N (seconds, up to {}).",
        format_duration(window),
        format_duration(cpu.reaches_back),
        match cpu.cut_by_budget {
            true => " (cut short by its memory bound)",
            false => "",
        },
        (cpu.bytes + heap_bytes) as f64 / (1u64 << 20) as f64,
        (CPU_BUDGET + HEAP_BUDGET) >> 20,
        CPU_BUDGET >> 20,
        HEAP_BUDGET >> 20,
        window.as_secs()
    )
}

/// `pthread_atfork` child (see `crate::fork`): the recorder's threads are the parent's.
pub(crate) fn after_fork_in_child() {
    RECORDS_HERE.store(false, Ordering::Release);
}

/// Parses a window: a number of seconds, or numbers with units `h`, `m`, `s` (`10m`,
/// `1h30m`, `300s`), from 1 s to [`MAX_WINDOW`].
pub fn parse_window(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let mut total = 0u64;
    let mut number = String::new();
    let mut any_unit = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(format!("`{c}` is not a unit: use h, m or s (10m, 1h30m, 300s)")),
        };
        let value: u64 = number
            .parse()
            .map_err(|_| format!("a number must come before `{c}` (10m, 1h30m, 300s)"))?;
        total = total.saturating_add(value.saturating_mul(unit));
        number.clear();
        any_unit = true;
    }
    if !number.is_empty() {
        if any_unit {
            return Err("a number at the end has no unit (10m, 1h30m, 300s)".into());
        }
        total = number
            .parse()
            .map_err(|_| "not a number of seconds".to_string())?;
    } else if !any_unit {
        return Err("empty: give a window such as 10m, 1h or 300s".into());
    }
    let window = Duration::from_secs(total);
    if window.is_zero() || window > MAX_WINDOW {
        return Err(format!(
            "the window must be from 1s to {}",
            format_duration(MAX_WINDOW)
        ));
    }
    Ok(window)
}

/// `1h30m`, `10m`, `45s`: the shortest form of a whole number of seconds.
fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_as_durations_and_bad_ones_say_why() {
        assert_eq!(parse_window("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_window("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_window(" 300s "), Ok(Duration::from_secs(300)));
        assert_eq!(parse_window("90"), Ok(Duration::from_secs(90)));
        assert!(parse_window("10x").unwrap_err().contains("not a unit"));
        assert!(parse_window("").unwrap_err().contains("empty"));
        assert!(parse_window("0s").unwrap_err().contains("from 1s"));
        assert!(parse_window("25h").unwrap_err().contains("24h"));
        assert!(parse_window("1h5").unwrap_err().contains("no unit"));
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(0)), "0s");
    }
}
