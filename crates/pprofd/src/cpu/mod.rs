//! The CPU profiler: per-thread CPU-time sampling with in-handler DWARF unwinding.
//!
//! [`CpuProfile::start`] installs the timer signal's handler (once per process; the signal is
//! [`timer_signal`], a real-time signal, not SIGPROF: see `signal`), prepares unwind
//! tables and a sample ring, and starts a collector thread (`session`, which the flight
//! recorder shares). The collector gives every thread its own CPU-time timer (new threads
//! within one tick), drains the ring and keeps the unwind tables and stack bounds current.
//! [`CpuProfile::stop`] turns the samples into a [`ProfileBuilder`]; dropping a running
//! profile stops it, and frees everything unless the recorder still samples.

mod cost;
mod session;
mod signal;

use std::time::{Instant, SystemTime};

use crate::labels::LabelSetId;
use crate::profile::{Frame, Label, ProfileBuilder};
use crate::threads::procinfo;
#[doc(hidden)]
pub use cost::{measure_sample_cost, SampleCost};
pub(crate) use session::{start_recording, Sample, SampleSink};
use session::ProfileSink;
pub use signal::timer_signal;

/// Sampling frequency Go uses.
pub const DEFAULT_HZ: u32 = 100;
/// Highest sampling frequency accepted.
pub const MAX_HZ: u32 = 1000;

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
pub(crate) enum Ending {
    /// At the thread's root.
    Root,
    /// Before the root (bad read, depth limit, no free unwinder cache).
    Truncated,
    /// Not walked: too little stack left below the handler (the leaf alone).
    NoRoom,
}

/// What tells one aggregated sample of a profile from another.
#[derive(PartialEq, Eq, Hash)]
struct SampleKey {
    tid: i32,
    ending: Ending,
    labels: LabelSetId,
    task: u64,
    stack: Vec<u64>,
}

/// A running CPU profile. Stop it with [`CpuProfile::stop`]; dropping it stops it too.
pub struct CpuProfile {
    started: SystemTime,
    started_at: Instant,
    running: bool,
}

impl CpuProfile {
    /// Starts sampling every thread's CPU time at `hz` samples per CPU-second (or faster,
    /// while the flight recorder asks for a higher rate: the profile then says so).
    pub fn start(hz: u32) -> Result<CpuProfile, CpuProfileError> {
        if !(1..=MAX_HZ).contains(&hz) {
            return Err(CpuProfileError::BadFrequency(hz));
        }
        session::attach_profile(hz)?;
        Ok(CpuProfile {
            started: SystemTime::now(),
            started_at: Instant::now(),
            running: true,
        })
    }

    /// Stops sampling and returns the samples as an unsymbolized profile.
    pub fn stop(mut self) -> ProfileBuilder {
        let duration = self.started_at.elapsed();
        let gathered = self.halt();
        let period = gathered.period_ns as i64;
        let mut builder = ProfileBuilder::new(
            &[("samples", "count"), ("cpu", "nanoseconds")],
            ("cpu", "nanoseconds"),
            period,
        );
        builder.set_time(self.started, duration);
        let (mut signals, mut periods) = (0, 0);
        let mut endings = EndingCounts::default();
        for (key, caught) in gathered.counts {
            let SampleKey {
                tid,
                ending,
                labels,
                task,
                stack,
            } = key;
            signals += caught.signals;
            periods += caught.periods;
            endings.count(ending, caught.signals);
            let name = gathered.thread_names.get(&tid).map(String::as_str);
            // `samples` counts the stacks caught; `cpu` every period they stand for.
            builder.add_sample(
                sample_frames(&stack, ending),
                vec![caught.signals as i64, caught.periods as i64 * period],
                sample_labels(labels, task, tid, name),
            );
        }
        if gathered.period_ns != 1_000_000_000 / gathered.hz as u64 {
            builder.add_comment(format!(
                "sampled at {} Hz, not the {} Hz asked for: the flight recorder (PPROF_RECORD) \
                 asked for a higher rate; cpu values are CPU time either way",
                1_000_000_000 / gathered.period_ns,
                gathered.hz
            ));
        }
        if periods > signals {
            builder.add_comment(format!(
                "{signals} samples stand for {periods} timer periods of CPU time: the kernel \
                 checks CPU timers once per scheduler tick, so above its tick rate a sample \
                 carries the periods that elapsed since the last one (cpu values count them all)"
            ));
        }
        endings.comment(&mut builder);
        let timer_signal = procinfo::signal_name(signal::timer_signal());
        for disposition in &gathered.displaced {
            builder.add_comment(format!(
                "the disposition of pprofd's timer signal ({timer_signal}) was {} after pprofd \
                 installed its handler; pprofd put its handler back in front (chaining what the \
                 host set) at its next check, within one timer period of the process's CPU \
                 time, and samples of that interval may be missing",
                disposition.describe()
            ));
        }
        if signals == 0 && gathered.without_timer == 0 {
            builder.add_comment(
                "no samples: no thread of the process used CPU time it could be sampled in \
                 while the profile ran"
                    .to_string(),
            );
        }
        if gathered.lost > 0 {
            builder.add_comment(format!("{} samples lost: sample buffer full", gathered.lost));
        }
        if gathered.without_timer > 0 {
            builder.add_comment(format!(
                "{} threads block pprofd's CPU timer signal ({timer_signal}) or wait for signals, \
                 and were not sampled: their timer signals would stay pending or reach the \
                 host's signal loop",
                gathered.without_timer
            ));
        }
        builder
    }

    fn halt(&mut self) -> ProfileSink {
        self.running = false;
        session::detach_profile().unwrap_or_else(ProfileSink::empty)
    }
}

impl Drop for CpuProfile {
    fn drop(&mut self) {
        if self.running {
            self.halt();
        }
    }
}

/// A sample's frames: its addresses, then a synthetic root frame saying why a stack that
/// did not reach its thread's root ended.
pub(crate) fn sample_frames(stack: &[u64], ending: Ending) -> Vec<Frame> {
    let mut frames: Vec<Frame> = stack.iter().copied().map(Frame::Address).collect();
    match ending {
        Ending::Root => {}
        Ending::Truncated => frames.push(Frame::Synthetic("[truncated]".into())),
        Ending::NoRoom => frames.push(Frame::Synthetic("[lost: no stack room]".into())),
    }
    frames
}

/// A sample's labels: the thread's label set and task, then `thread` and `thread_id`.
pub(crate) fn sample_labels(
    labels: LabelSetId,
    task: u64,
    tid: i32,
    thread_name: Option<&str>,
) -> Vec<Label> {
    let name = thread_name.map_or_else(|| format!("thread-{tid}"), str::to_owned);
    let mut labels = crate::labels::profile_labels(labels, task);
    labels.push(Label::str("thread", name));
    labels.push(Label::num("thread_id", tid as i64, None));
    labels
}

/// Samples whose stacks did not reach their thread's root, for the profile's comments.
#[derive(Default)]
pub(crate) struct EndingCounts {
    truncated: u64,
    no_room: u64,
}

impl EndingCounts {
    /// Counts `signals` samples that ended so.
    pub(crate) fn count(&mut self, ending: Ending, signals: u64) {
        match ending {
            Ending::Root => {}
            Ending::Truncated => self.truncated += signals,
            Ending::NoRoom => self.no_room += signals,
        }
    }

    /// Says in `builder`'s comments how many stacks were cut, and why.
    pub(crate) fn comment(&self, builder: &mut ProfileBuilder) {
        if self.truncated > 0 {
            builder.add_comment(format!(
                "{} samples have truncated stacks (rooted at [truncated])",
                self.truncated
            ));
        }
        if self.no_room > 0 {
            builder.add_comment(format!(
                "{} samples lost: no stack room (the thread had less than {} bytes of \
                 stack left below the signal handler, so only its leaf is kept, under [lost: no \
                 stack room])",
                self.no_room,
                crate::unwind::WALK_STACK_NEED
            ));
        }
    }
}

pub(crate) use session::{after_fork_in_child, after_fork_in_parent, before_fork};
