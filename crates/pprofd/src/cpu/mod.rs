//! The CPU profiler: per-thread CPU-time sampling with in-handler DWARF unwinding.
//!
//! [`CpuProfile::start`] installs the timer signal's handler (once per process; the signal is
//! [`timer_signal`], a real-time signal, not SIGPROF: see `signal`), prepares unwind
//! tables and a sample ring, and starts a collector thread. The collector gives every thread
//! its own CPU-time timer (new threads within one tick), drains the ring and keeps the unwind
//! tables and stack bounds current. [`CpuProfile::stop`] turns the samples into a
//! [`ProfileBuilder`]; dropping a running profile stops it and frees everything.

mod cost;
mod signal;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::labels::LabelSetId;
use crate::procfs;
use crate::profile::{Frame, Label, ProfileBuilder};
use crate::sighandler::Disposition;
use crate::threads::procinfo;
use crate::unwind::ring::{StackRecord, StackRing};
use crate::unwind::{StackBounds, UnwindTables};
#[doc(hidden)]
pub use cost::{measure_sample_cost, SampleCost};
pub use signal::timer_signal;
use signal::{SamplingState, ThreadTimer, SAMPLING, STACK_BOUNDS};

/// Sampling frequency Go uses.
pub const DEFAULT_HZ: u32 = 100;
/// Highest sampling frequency accepted.
pub const MAX_HZ: u32 = 1000;
/// How often the collector looks for new threads and drains samples.
const COLLECT_INTERVAL: Duration = Duration::from_millis(50);
/// How often a running profile checks that the host left the timer signal to pprofd.
const DISPOSITION_CHECK: Duration = Duration::from_millis(10);
/// Ring slots; at 1000 Hz on 50 busy threads the collector drains 2,500 per tick.
const RING_SLOTS: usize = 8192;

static RUNNING: AtomicBool = AtomicBool::new(false);

/// Why a CPU profile could not start.
#[derive(Debug)]
pub enum CpuProfileError {
    /// Another CPU profile is running (Go's "cpu profiling already in use").
    InUse,
    /// The frequency is outside `1..=MAX_HZ`.
    BadFrequency(u32),
    /// Installing the signal handler or starting the collector failed.
    Setup(std::io::Error),
}

impl std::fmt::Display for CpuProfileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CpuProfileError::InUse => f.write_str("cpu profiling already in use"),
            CpuProfileError::BadFrequency(hz) => {
                write!(f, "sampling frequency {hz} Hz is outside 1..={MAX_HZ}")
            }
            CpuProfileError::Setup(e) => write!(f, "could not set up CPU sampling: {e}"),
        }
    }
}

impl std::error::Error for CpuProfileError {}

/// How a sampled stack ends.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Ending {
    /// At the thread's root.
    Root,
    /// Before the root (bad read, depth limit, no free unwinder cache).
    Truncated,
    /// Not walked: too little stack left below the handler (the leaf alone).
    NoRoom,
}

/// What tells one aggregated sample from another.
#[derive(PartialEq, Eq, Hash)]
struct SampleKey {
    tid: i32,
    ending: Ending,
    labels: LabelSetId,
    task: u64,
    stack: Vec<u64>,
}

/// Aggregated samples.
type StackCounts = HashMap<SampleKey, Caught>;

/// How often one stack was caught: signals taken, and the timer periods they stand for.
#[derive(Default)]
struct Caught {
    signals: u64,
    periods: u64,
}

/// What the collector thread hands back when it stops.
struct Collected {
    counts: StackCounts,
    thread_names: HashMap<i32, String>,
    lost: u64,
    /// Changes of the timer signal's disposition by the host that the collector undid.
    displaced: Vec<Disposition>,
    /// Threads left without a timer because they block the timer signal, with the collector ticks
    /// until the next look at them (see `sync_timers`).
    no_timer: HashMap<i32, u32>,
}

/// A running CPU profile. Stop it with [`CpuProfile::stop`]; dropping it stops it too.
pub struct CpuProfile {
    hz: u32,
    started: SystemTime,
    started_at: Instant,
    stop: Arc<AtomicBool>,
    collector: Option<JoinHandle<Collected>>,
}

impl CpuProfile {
    /// Starts sampling every thread's CPU time at `hz` samples per CPU-second.
    pub fn start(hz: u32) -> Result<CpuProfile, CpuProfileError> {
        if !(1..=MAX_HZ).contains(&hz) {
            return Err(CpuProfileError::BadFrequency(hz));
        }
        if RUNNING.swap(true, Ordering::AcqRel) {
            return Err(CpuProfileError::InUse);
        }
        let release = |e| {
            RUNNING.store(false, Ordering::Release);
            CpuProfileError::Setup(e)
        };
        // Checked before any timer is armed: a host may have changed the signal since
        // pprofd installed its handler (see `signal`).
        let displaced = signal::ensure_handler().map_err(release)?;
        STACK_BOUNDS.replace(Some(Box::new(StackBounds::load())));
        SAMPLING.replace(Some(Box::new(SamplingState {
            ring: StackRing::new(RING_SLOTS),
            tables: UnwindTables::load(),
        })));
        let stop = Arc::new(AtomicBool::new(false));
        let collector = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("pprofd-cpu".into())
                .spawn(move || collect(hz, &stop, displaced))
                .map_err(|e| {
                    SAMPLING.replace(None);
                    STACK_BOUNDS.replace(None);
                    release(e)
                })?
        };
        Ok(CpuProfile {
            hz,
            started: SystemTime::now(),
            started_at: Instant::now(),
            stop,
            collector: Some(collector),
        })
    }

    /// Stops sampling and returns the samples as an unsymbolized profile.
    pub fn stop(mut self) -> ProfileBuilder {
        let collected = self.halt();
        let period = 1_000_000_000 / self.hz as i64;
        let mut builder = ProfileBuilder::new(
            &[("samples", "count"), ("cpu", "nanoseconds")],
            ("cpu", "nanoseconds"),
            period,
        );
        builder.set_time(self.started, self.started_at.elapsed());
        let (mut truncated, mut no_room, mut signals, mut periods) = (0, 0, 0, 0);
        for (key, caught) in collected.counts {
            let SampleKey {
                tid,
                ending,
                labels,
                task,
                stack,
            } = key;
            signals += caught.signals;
            periods += caught.periods;
            let mut frames: Vec<Frame> = stack.into_iter().map(Frame::Address).collect();
            match ending {
                Ending::Root => {}
                Ending::Truncated => {
                    truncated += caught.signals;
                    frames.push(Frame::Synthetic("[truncated]".into()));
                }
                Ending::NoRoom => {
                    no_room += caught.signals;
                    frames.push(Frame::Synthetic("[lost: no stack room]".into()));
                }
            }
            let name = collected
                .thread_names
                .get(&tid)
                .cloned()
                .unwrap_or_else(|| format!("thread-{tid}"));
            let mut labels = crate::labels::profile_labels(labels, task);
            labels.push(Label::str("thread", name));
            labels.push(Label::num("thread_id", tid as i64, None));
            // `samples` counts the stacks caught; `cpu` every period they stand for.
            builder.add_sample(
                frames,
                vec![caught.signals as i64, caught.periods as i64 * period],
                labels,
            );
        }
        if periods > signals {
            builder.add_comment(format!(
                "{signals} samples stand for {periods} timer periods of CPU time: the kernel \
                 checks CPU timers once per scheduler tick, so above its tick rate a sample \
                 carries the periods that elapsed since the last one (cpu values count them all)"
            ));
        }
        if truncated > 0 {
            builder.add_comment(format!(
                "{truncated} samples have truncated stacks (rooted at [truncated])"
            ));
        }
        if no_room > 0 {
            builder.add_comment(format!(
                "{no_room} samples lost: no stack room (the thread had less than {} bytes of \
                 stack left below the signal handler, so only its leaf is kept, under [lost: no \
                 stack room])",
                crate::unwind::WALK_STACK_NEED
            ));
        }
        let timer_signal = procinfo::signal_name(signal::timer_signal());
        for disposition in &collected.displaced {
            builder.add_comment(format!(
                "the disposition of pprofd's timer signal ({timer_signal}) was {} after pprofd \
                 installed its handler; pprofd put its handler back in front (chaining what the \
                 host set) within {} ms, and samples of that interval may be missing",
                disposition.describe(),
                DISPOSITION_CHECK.as_millis()
            ));
        }
        if signals == 0 && collected.no_timer.is_empty() {
            builder.add_comment(
                "no samples: no thread of the process used CPU time it could be sampled in \
                 while the profile ran"
                    .to_string(),
            );
        }
        if collected.lost > 0 {
            builder.add_comment(format!(
                "{} samples lost: sample buffer full",
                collected.lost
            ));
        }
        if !collected.no_timer.is_empty() {
            builder.add_comment(format!(
                "{} threads block pprofd's CPU timer signal ({timer_signal}) or wait for signals, \
                 and were not sampled: their timer signals would stay pending or reach the \
                 host's signal loop",
                collected.no_timer.len()
            ));
        }
        builder
    }

    fn halt(&mut self) -> Collected {
        self.stop.store(true, Ordering::Release);
        let collected = self
            .collector
            .take()
            .and_then(|c| c.join().ok())
            .unwrap_or_else(|| Collected {
                counts: HashMap::new(),
                thread_names: HashMap::new(),
                lost: 0,
                displaced: Vec::new(),
                no_timer: HashMap::new(),
            });
        RUNNING.store(false, Ordering::Release);
        collected
    }
}

impl Drop for CpuProfile {
    fn drop(&mut self) {
        if self.collector.is_some() {
            self.halt();
        }
    }
}

/// The collector thread: keeps timers, tables and bounds current and drains samples until
/// told to stop, then tears sampling down and returns what it gathered.
fn collect(hz: u32, stop: &AtomicBool, displaced: Option<Disposition>) -> Collected {
    let _internal = procfs::register_internal_thread();
    let period_ns = 1_000_000_000 / hz as u64;
    let mut timers: HashMap<i32, ThreadTimer> = HashMap::new();
    let mut collected = Collected {
        counts: HashMap::new(),
        thread_names: HashMap::new(),
        lost: 0,
        displaced: displaced.into_iter().collect(),
        no_timer: HashMap::new(),
    };
    let mut bounds = StackBounds::load();
    loop {
        if stop.load(Ordering::Acquire) {
            // Deleting the timers stops new signals; a signal already pending finds nothing
            // published once `replace(None)` returns, and is ignored.
            timers.clear();
            if let Some(state) = SAMPLING.replace(None) {
                retire(&state.ring, &mut collected);
            }
            STACK_BOUNDS.replace(None);
            return collected;
        }
        sync_timers(
            &mut timers,
            &mut collected.thread_names,
            &mut collected.no_timer,
            period_ns,
        );
        let fresh = StackBounds::load();
        if fresh != bounds {
            bounds = fresh.clone();
            STACK_BOUNDS.replace(Some(Box::new(fresh)));
        }
        // SAFETY: this collector is the only publisher of SAMPLING while its profile runs.
        if unsafe { SAMPLING.with_owner(|s| s.is_some_and(|s| s.tables.is_stale())) } {
            // An object was loaded or unloaded: swap in fresh tables, then drain the old ring.
            let fresh = SamplingState {
                ring: StackRing::new(RING_SLOTS),
                tables: UnwindTables::load(),
            };
            if let Some(old) = SAMPLING.replace(Some(Box::new(fresh))) {
                retire(&old.ring, &mut collected);
            }
        }
        // SAFETY: as above.
        unsafe { SAMPLING.with_owner(|s| s.map(|s| drain(&s.ring, &mut collected))) };
        for _ in 0..COLLECT_INTERVAL.as_millis() / DISPOSITION_CHECK.as_millis() {
            std::thread::sleep(DISPOSITION_CHECK);
            if let Ok(Some(change)) = signal::ensure_handler() {
                collected.displaced.push(change);
            }
        }
    }
}

fn drain(ring: &StackRing, collected: &mut Collected) {
    ring.drain(|record: &StackRecord| {
        let stack = record.frames[..record.depth].to_vec();
        let key = SampleKey {
            tid: record.tid,
            ending: ending(record),
            labels: record.labels,
            task: record.task,
            stack,
        };
        let caught = collected.counts.entry(key).or_default();
        caught.signals += 1;
        caught.periods += record.weight;
    });
}

fn ending(record: &StackRecord) -> Ending {
    match (record.no_room, record.truncated) {
        (true, _) => Ending::NoRoom,
        (false, true) => Ending::Truncated,
        (false, false) => Ending::Root,
    }
}

/// `pthread_atfork` child (see `crate::fork`): the child has no collector and no timers, so
/// it drops the parent's profile without freeing it and may start one of its own.
pub(crate) fn after_fork_in_child() {
    SAMPLING.forget_in_child();
    STACK_BOUNDS.forget_in_child();
    RUNNING.store(false, Ordering::Release);
}

/// Drains a ring that handlers can no longer reach and counts what it lost.
fn retire(ring: &StackRing, collected: &mut Collected) {
    drain(ring, collected);
    collected.lost += ring.lost();
}

/// Gives every live thread except pprofd's own a timer and forgets threads that exited.
/// A thread that blocks the timer signal, or waits for signals, gets no timer while it does (invariant
/// 13): its signals would pile up pending or be taken by the host's `sigwait` loop. It is
/// looked at again after `RECHECK_TICKS` calls (1 s; reading `/proc` at every tick would cost
/// 1,000 blocking threads a fifth of a core) and kept in `no_timer` while it has none. The check is
/// made when the timer is created; a thread that blocks the signal later keeps its timer, and
/// then holds at most one of its signals pending (the kernel queues a POSIX timer's signal
/// once and counts further expirations as overruns).
fn sync_timers(
    timers: &mut HashMap<i32, ThreadTimer>,
    names: &mut HashMap<i32, String>,
    no_timer: &mut HashMap<i32, u32>,
    period_ns: u64,
) {
    const RECHECK_TICKS: u32 = 20;
    let tids = procfs::thread_ids();
    timers.retain(|tid, _| tids.binary_search(tid).is_ok());
    for tid in tids {
        if timers.contains_key(&tid) || procfs::is_internal_thread(tid) {
            continue;
        }
        if let Some(ticks) = no_timer.get_mut(&tid).filter(|t| **t > 0) {
            *ticks -= 1;
            continue;
        }
        if procinfo::signal_obstacle(tid, signal::timer_signal()).is_some() {
            no_timer.insert(tid, RECHECK_TICKS);
            continue;
        }
        if let Ok(timer) = ThreadTimer::start(tid, period_ns) {
            timers.insert(tid, timer);
            no_timer.remove(&tid);
            names.insert(tid, procfs::thread_name(tid));
        }
    }
}
