//! Where threads wait: the block and mutex profiles, by off-CPU sampling.
//!
//! While a [`BlockProfile`] runs, a sampler thread wakes at a fixed rate (default
//! [`DEFAULT_HZ`] per thread), reads `/proc/self/task/TID/syscall` of every thread that is not
//! pprofd's own, and takes the stack of each thread that sits in a blocking system call with
//! the thread-dump signal and handler ([`crate::threads`]; the same in-handler unwinder and
//! rules as the CPU profiler). Each sample stands for the time since the previous tick.
//! A wait seen in consecutive ticks with the same `syscall` line (number, arguments, stack
//! pointer, PC) is one contention; its delay is the sum of its samples. Such a thread is
//! signalled only at the first tick of its wait: while it sits in the same call at the same
//! stack pointer its stack cannot change, so later ticks reuse the stack taken first. Long
//! waits (idle pools, parked workers) therefore cost one signal, not one per tick.
//!
//! Reading `/proc` for every thread at every tick costs about 3 µs a thread, most of a core
//! for 1,000 threads at 100 Hz. So the look at a thread that stays in the same wait backs off,
//! doubling the interval up to `MAX_CHECK_INTERVAL` (16) ticks; between looks the wait is charged
//! as still going on. A wait's end can thus be charged late by at most that many ticks, and
//! only for waits that already lasted about twice as long; waits shorter than ~30 ticks are
//! followed at every tick.
//!
//! At the end, stacks are symbolized once and classified (module `classify`): the block profile
//! keeps synchronization waits (mutex, rwlock, condvar, channel, other futex); the mutex
//! profile keeps lock acquisitions (mutex, rwlock). I/O readiness waits, sleeps, other system
//! calls and the idle parking of runtimes and pools are left out unless `idle=1` asks for
//! them; every sample carries `thread` and `wait` labels, and the labels active on the waiting
//! thread (`crate::labels`).
//!
//! Side effects (docs/invariants.md, "Signals and system calls"): each thread receives one signal per
//! new wait it enters while a profile runs (at most `hz` a second). The handler is installed with `SA_RESTART`:
//! untimed futex waits and pipe or socket reads resume; `epoll_wait`, `poll`, `nanosleep` and
//! timed waits return `EINTR` and std, tokio and mio retry them. A woken futex waiter
//! re-checks its futex word, so no wake-up is lost. Threads that are running are never
//! signalled, and neither are threads that block the signal, wait for signals
//! (`sigwaitinfo`/`sigtimedwait`, a signalfd read) or still have one pending
//! ([`crate::threads`]' signal module): they are left out of the profile, whose comments name
//! them and why (`thread 1234 (signal-loop): blocks SIGRTMIN+7`). A blocked thread is looked
//! at again at each tick, but never queued a second signal.

mod classify;

use crate::labels::LabelSetId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::procfs;
use crate::profile::legacy_text::LegacyText;
use crate::profile::{Frame, Label, ProfileBuilder, Resolver, SourceFrame};
use crate::symbolize::ProcessSymbols;
use crate::threads;
use crate::threads::procinfo::{parse_syscall_number, Obstacle};
use crate::threads::signal::{self, Answer, Unwinding};
use crate::unwind::StackBounds;
use classify::WaitKind;

/// Samples per second per blocked thread.
pub const DEFAULT_HZ: u32 = 100;
/// Most ticks between looks at a thread that stays in one wait (see the module doc).
const MAX_CHECK_INTERVAL: u64 = 16;
/// Seconds sampled when a request does not say.
pub const DEFAULT_SECONDS: u64 = 5;

static RUNNING: AtomicBool = AtomicBool::new(false);

/// Which view of the samples to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Time blocked on synchronization (`/debug/pprof/block`).
    Block,
    /// Time waiting to acquire locks (`/debug/pprof/mutex`).
    Mutex,
}

/// Why off-CPU sampling could not start.
#[derive(Debug)]
pub enum BlockProfileError {
    /// Another block or mutex profile is sampling.
    InUse,
    /// The sampler thread or the signal handler could not be set up.
    Setup(std::io::Error),
}

impl std::fmt::Display for BlockProfileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockProfileError::InUse => f.write_str("block/mutex profiling already in use"),
            BlockProfileError::Setup(e) => write!(f, "could not set up off-CPU sampling: {e}"),
        }
    }
}

impl std::error::Error for BlockProfileError {}

/// One distinct wait site: thread, stack (leaf first), truncation and system call.
type WaitKey = (i32, Vec<u64>, bool, libc::c_long, LabelSetId);

#[derive(Clone, Default)]
struct Totals {
    contentions: i64,
    delay_ns: i64,
}

/// What the sampler gathered.
#[derive(Clone, Default)]
struct Gathered {
    waits: HashMap<WaitKey, Totals>,
    names: HashMap<i32, String>,
    ticks: u64,
    signals: u64,
    unanswered: u64,
    /// Blocked threads not signalled, with the latest reason (module doc).
    skipped: HashMap<i32, Obstacle>,
}

/// A running off-CPU sampling session. Dropping it stops sampling.
pub struct BlockProfile {
    hz: u32,
    started: SystemTime,
    started_at: Instant,
    stop: Arc<AtomicBool>,
    gathered: Arc<Mutex<Gathered>>,
    sampler: Option<JoinHandle<std::io::Result<()>>>,
}

impl BlockProfile {
    /// Starts sampling blocked threads `hz` times a second (1..=1000).
    pub fn start(hz: u32) -> Result<BlockProfile, BlockProfileError> {
        let hz = hz.clamp(1, 1000);
        if RUNNING.swap(true, Ordering::AcqRel) {
            return Err(BlockProfileError::InUse);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let gathered = Arc::new(Mutex::new(Gathered::default()));
        let sampler = {
            let (stop, gathered) = (stop.clone(), gathered.clone());
            std::thread::Builder::new()
                .name("pprofd-block".into())
                .spawn(move || sample(hz, &stop, &gathered))
                .map_err(|e| {
                    RUNNING.store(false, Ordering::Release);
                    BlockProfileError::Setup(e)
                })?
        };
        Ok(BlockProfile {
            hz,
            started: SystemTime::now(),
            started_at: Instant::now(),
            stop,
            gathered,
            sampler: Some(sampler),
        })
    }

    /// The samples so far, while sampling goes on.
    pub fn snapshot(&self) -> OffCpuSamples {
        OffCpuSamples {
            hz: self.hz,
            started: self.started,
            duration: self.started_at.elapsed(),
            gathered: self
                .gathered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            cumulative: true,
        }
    }

    /// Stops sampling and returns the samples.
    pub fn stop(mut self) -> std::io::Result<OffCpuSamples> {
        self.halt()?;
        Ok(OffCpuSamples {
            cumulative: false,
            ..self.snapshot()
        })
    }

    fn halt(&mut self) -> std::io::Result<()> {
        self.stop.store(true, Ordering::Release);
        let result = match self.sampler.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("the sampler thread panicked")),
            None => Ok(()),
        };
        RUNNING.store(false, Ordering::Release);
        result
    }
}

/// The process-wide sampler started by [`start_continuous`], never stopped.
static CONTINUOUS: OnceLock<BlockProfile> = OnceLock::new();

/// Starts continuous off-CPU sampling at `hz` for the life of the process (Go's
/// `SetBlockProfileRate`; pprofd starts it from `PPROF_BLOCK_RATE`). Block and mutex requests
/// then answer from it: without `seconds`, everything since it started; with `seconds=N`, the
/// difference over the next N seconds. Calling it again changes nothing.
pub fn start_continuous(hz: u32) -> Result<(), BlockProfileError> {
    if CONTINUOUS.get().is_some() {
        return Ok(());
    }
    let profile = BlockProfile::start(hz)?;
    let _ = CONTINUOUS.set(profile);
    Ok(())
}

/// The continuous sampler, when one runs.
pub fn continuous() -> Option<&'static BlockProfile> {
    CONTINUOUS.get()
}

impl Drop for BlockProfile {
    fn drop(&mut self) {
        if self.sampler.is_some() {
            let _ = self.halt();
        }
    }
}

/// The sampler thread: one tick per period until told to stop.
fn sample(hz: u32, stop: &AtomicBool, shared: &Mutex<Gathered>) -> std::io::Result<()> {
    let _internal = procfs::register_internal_thread();
    let period = Duration::from_secs(1) / hz;
    let mut unwinding = Unwinding::load();
    let mut known_tids: Vec<i32> = Vec::new();
    let mut last_wait: HashMap<i32, Watch> = HashMap::new();
    let mut last_tick = Instant::now();
    let mut next_tick = last_tick + period;
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if next_tick > now {
            std::thread::sleep(next_tick - now);
        }
        next_tick += period;
        let now = Instant::now();
        if next_tick < now {
            next_tick = now + period;
        }
        let weight = (now - last_tick).min(period * 2).as_nanos() as i64;
        last_tick = now;
        // Held for the tick; snapshots wait at most one tick.
        let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
        let gathered = &mut *guard;

        let tids = procfs::thread_ids();
        if tids != known_tids {
            unwinding.bounds = Arc::new(StackBounds::load());
            known_tids = tids;
        }
        if unwinding.tables.is_stale() {
            unwinding = Unwinding::load();
        }
        // Threads still in the wait they were in at the previous tick keep its stack without
        // being signalled again; the others are signalled.
        let mut waiting: HashMap<i32, Watch> = HashMap::new();
        let mut to_signal: Vec<(i32, libc::c_long, String)> = Vec::new();
        for &tid in &known_tids {
            if procfs::is_internal_thread(tid) {
                continue;
            }
            let previous = last_wait.remove(&tid);
            if let Some(watch) = previous.as_ref().filter(|w| gathered.ticks < w.next_check) {
                // A long wait, not due for a look: charged as still going on.
                charge(gathered, &watch.key, weight);
                waiting.insert(tid, previous.expect("checked above"));
                continue;
            }
            let Some((nr, line)) = blocking_call(tid) else {
                continue;
            };
            match previous {
                Some(mut watch) if watch.line == line => {
                    charge(gathered, &watch.key, weight);
                    watch.interval = (watch.interval * 2).min(MAX_CHECK_INTERVAL);
                    watch.next_check = gathered.ticks + watch.interval;
                    waiting.insert(tid, watch);
                }
                _ => to_signal.push((tid, nr, line)),
            }
        }
        if !to_signal.is_empty() {
            let tids: Vec<i32> = to_signal.iter().map(|(tid, _, _)| *tid).collect();
            let answers = signal::collect(&tids, now + period, &unwinding)?;
            for ((tid, nr, line), answer) in to_signal.into_iter().zip(answers) {
                let captured = match answer {
                    Answer::Stack(captured) => captured,
                    Answer::Skipped(obstacle) => {
                        gathered.names.insert(tid, procfs::thread_name(tid));
                        gathered.skipped.insert(tid, obstacle);
                        continue;
                    }
                    Answer::Gone => continue,
                    Answer::Silent => {
                        gathered.signals += 1;
                        gathered.unanswered += 1;
                        continue;
                    }
                };
                gathered.signals += 1;
                if !captured.in_syscall {
                    // Woken between the /proc read and the signal: running, not blocked.
                    continue;
                }
                let key = (
                    tid,
                    captured.frames[..captured.depth].to_vec(),
                    captured.truncated,
                    nr,
                    captured.labels,
                );
                // Read at each new wait: a thread names itself after it starts.
                gathered.names.insert(tid, procfs::thread_name(tid));
                let totals = gathered.waits.entry(key.clone()).or_default();
                totals.delay_ns += weight;
                totals.contentions += 1;
                waiting.insert(
                    tid,
                    Watch {
                        line,
                        key,
                        interval: 1,
                        next_check: gathered.ticks + 1,
                    },
                );
            }
        }
        last_wait = waiting;
        gathered.ticks += 1;
    }
    Ok(())
}

/// A thread's current wait, as the sampler follows it.
struct Watch {
    /// The `syscall` line of the wait.
    line: String,
    /// Where the wait's samples go.
    key: WaitKey,
    /// Ticks between looks at `/proc` for this wait, doubling while it goes on.
    interval: u64,
    /// The tick of the next look.
    next_check: u64,
}

fn charge(gathered: &mut Gathered, key: &WaitKey, weight: i64) {
    if let Some(totals) = gathered.waits.get_mut(key) {
        totals.delay_ns += weight;
    }
}

/// The blocking system call `tid` sits in, with its `syscall` line; `None` when it runs, is
/// between calls, or only wakes others (a futex wake).
fn blocking_call(tid: i32) -> Option<(libc::c_long, String)> {
    let line = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    let nr = parse_syscall_number(&line)?;
    if nr == libc::SYS_futex {
        let op = line.split_ascii_whitespace().nth(2)?;
        let op = u64::from_str_radix(op.trim_start_matches("0x"), 16).ok()?;
        if !classify::futex_op_waits(op) {
            return None;
        }
    }
    Some((nr, line))
}

/// The samples of a finished session, ready to be viewed as a block or mutex profile.
pub struct OffCpuSamples {
    hz: u32,
    started: SystemTime,
    duration: Duration,
    gathered: Gathered,
    /// Taken from a sampler that keeps running (continuous sampling).
    cumulative: bool,
}

/// One wait site after symbolization and classification.
struct Site<'a> {
    tid: i32,
    stack: &'a [u64],
    truncated: bool,
    kind: WaitKind,
    /// The labels active on the waiting thread.
    labels: LabelSetId,
    totals: &'a Totals,
}

impl OffCpuSamples {
    /// What happened between `earlier` (a snapshot of the same sampler) and these samples.
    pub fn since(&self, earlier: &OffCpuSamples) -> OffCpuSamples {
        let mut waits = HashMap::new();
        for (key, totals) in &self.gathered.waits {
            let before = earlier.gathered.waits.get(key).cloned().unwrap_or_default();
            let delta = Totals {
                contentions: totals.contentions - before.contentions,
                delay_ns: totals.delay_ns - before.delay_ns,
            };
            if delta.delay_ns > 0 {
                waits.insert(key.clone(), delta);
            }
        }
        OffCpuSamples {
            hz: self.hz,
            started: earlier.started + earlier.duration,
            duration: self.duration.saturating_sub(earlier.duration),
            gathered: Gathered {
                waits,
                names: self.gathered.names.clone(),
                ticks: self.gathered.ticks - earlier.gathered.ticks,
                signals: self.gathered.signals - earlier.gathered.signals,
                unanswered: self.gathered.unanswered - earlier.gathered.unanswered,
                skipped: self.gathered.skipped.clone(),
            },
            cumulative: false,
        }
    }

    /// How many stacks were asked for (signals sent to blocked threads) while sampling.
    pub fn signals_sent(&self) -> u64 {
        self.gathered.signals
    }

    /// Builds the `view` as a symbolized pprof profile (`contentions/count`, `delay/nanoseconds`),
    /// with idle and I/O waits when `include_idle`.
    pub fn profile(&self, view: View, include_idle: bool) -> crate::profile::proto::Profile {
        let symbols = self.symbols();
        let sites = self.sites(&symbols, view, include_idle);
        let mut builder = ProfileBuilder::new(
            &[("contentions", "count"), ("delay", "nanoseconds")],
            ("contentions", "count"),
            1,
        );
        builder.set_default_sample_type("delay");
        builder.set_time(self.started, self.duration);
        for site in &sites {
            let mut frames: Vec<Frame> = site.stack.iter().map(|&a| Frame::Address(a)).collect();
            if site.truncated {
                frames.push(Frame::Synthetic("[truncated]".into()));
            }
            let mut labels = crate::labels::profile_labels(site.labels, 0);
            labels.extend([
                Label::str("thread", self.name(site.tid)),
                Label::num("thread_id", site.tid as i64, None),
                Label::str("wait", site.kind.label()),
            ]);
            builder.add_sample(
                frames,
                vec![site.totals.contentions, site.totals.delay_ns],
                labels,
            );
        }
        for comment in self.comments(view, include_idle, sites.is_empty()) {
            builder.add_comment(comment);
        }
        builder.build(&symbols)
    }

    /// Go's `debug=1` text: `--- contention:`, then `delay count @ addresses` per stack.
    pub fn text(&self, view: View, include_idle: bool) -> String {
        let symbols = self.symbols();
        let sites = self.sites(&symbols, view, include_idle);
        let mut grouped: HashMap<&[u64], (i64, i64, Vec<&'static str>)> = HashMap::new();
        for site in &sites {
            let entry = grouped.entry(site.stack).or_default();
            entry.0 += site.totals.delay_ns;
            entry.1 += site.totals.contentions;
            if !entry.2.contains(&site.kind.label()) {
                entry.2.push(site.kind.label());
            }
        }
        let mut grouped: Vec<_> = grouped.into_iter().collect();
        grouped.sort_by_key(|(_, (delay, _, _))| std::cmp::Reverse(*delay));
        let mut out = LegacyText::new("--- contention:\ncycles/second=1000000000", &symbols);
        for comment in self.comments(view, include_idle, sites.is_empty()) {
            out.comment(&comment);
        }
        for (stack, (delay, contentions, kinds)) in grouped {
            let frames: Vec<Frame> = stack.iter().map(|&a| Frame::Address(a)).collect();
            let notes = [format!("wait: {}", kinds.join(", "))];
            out.stack(&format!("{delay} {contentions}"), &frames, &notes);
        }
        out.finish()
    }

    fn symbols(&self) -> ProcessSymbols {
        ProcessSymbols::resolve(
            self.gathered
                .waits
                .keys()
                .flat_map(|(_, stack, _, _, _)| stack.iter().copied()),
        )
    }

    fn sites<'a>(
        &'a self,
        symbols: &ProcessSymbols,
        view: View,
        include_idle: bool,
    ) -> Vec<Site<'a>> {
        let mut sites: Vec<Site<'a>> = self
            .gathered
            .waits
            .iter()
            .map(|((tid, stack, truncated, nr, labels), totals)| {
                let frames: Vec<&SourceFrame> =
                    stack.iter().flat_map(|&a| symbols.frames(a)).collect();
                Site {
                    tid: *tid,
                    stack,
                    truncated: *truncated,
                    kind: classify::classify(*nr, &frames),
                    labels: *labels,
                    totals,
                }
            })
            .filter(|site| match view {
                View::Mutex => site.kind.is_lock(),
                View::Block => include_idle || site.kind.is_synchronization(),
            })
            .collect();
        sites.sort_by_key(|s| std::cmp::Reverse(s.totals.delay_ns));
        sites
    }

    fn name(&self, tid: i32) -> String {
        self.gathered
            .names
            .get(&tid)
            .cloned()
            .unwrap_or_else(|| format!("thread-{tid}"))
    }

    fn comments(&self, view: View, include_idle: bool, empty: bool) -> Vec<String> {
        let mut comments = vec![format!(
            "off-CPU sampling of blocked threads at {} Hz for {:.1} s ({} ticks); \
             each sample's delay is the time since the previous tick",
            self.hz,
            self.duration.as_secs_f64(),
            self.gathered.ticks
        )];
        if self.cumulative {
            comments.push(
                "cumulative since continuous sampling started (PPROF_BLOCK_RATE); \
                 ask with seconds=N for the last N seconds"
                    .to_string(),
            );
        }
        if empty {
            comments.push(match (view, include_idle) {
                (View::Mutex, _) => "no thread waited to acquire a lock while sampling".to_string(),
                (View::Block, false) => "no thread waited on synchronization while sampling \
                     (idle, I/O and sleep waits are left out: add idle=1)"
                    .to_string(),
                (View::Block, true) => "no thread was blocked while sampling".to_string(),
            });
        }
        if self.gathered.unanswered > 0 {
            comments.push(format!(
                "{} samples lost: blocked threads that did not answer the sampling signal in time",
                self.gathered.unanswered
            ));
        }
        let mut skipped: Vec<(i32, &str, Obstacle)> = self
            .gathered
            .skipped
            .iter()
            .map(|(&tid, &obstacle)| {
                let name = self.gathered.names.get(&tid).map_or("?", String::as_str);
                (tid, name, obstacle)
            })
            .collect();
        skipped.sort_by_key(|&(tid, _, _)| tid);
        comments.extend(threads::skipped_threads_note(&skipped));
        comments
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(waits: &[(i32, i64, i64)], ticks: u64) -> OffCpuSamples {
        OffCpuSamples {
            hz: 100,
            started: SystemTime::UNIX_EPOCH,
            duration: Duration::from_secs(ticks / 100),
            gathered: Gathered {
                waits: waits
                    .iter()
                    .map(|&(tid, contentions, delay_ns)| {
                        (
                            (tid, vec![0x10], false, libc::SYS_futex, LabelSetId::NONE),
                            Totals {
                                contentions,
                                delay_ns,
                            },
                        )
                    })
                    .collect(),
                ticks,
                ..Default::default()
            },
            cumulative: true,
        }
    }

    #[test]
    fn a_delta_keeps_only_what_happened_in_between() {
        let earlier = samples(&[(1, 2, 50), (2, 1, 10)], 100);
        let later = samples(&[(1, 3, 80), (2, 1, 10), (3, 1, 5)], 300);
        let delta = later.since(&earlier);
        let mut waits: Vec<(i32, i64, i64)> = delta
            .gathered
            .waits
            .iter()
            .map(|(key, t)| (key.0, t.contentions, t.delay_ns))
            .collect();
        waits.sort();
        assert_eq!(
            waits,
            [(1, 1, 30), (3, 1, 5)],
            "an unchanged wait drops out"
        );
        assert_eq!(delta.gathered.ticks, 200);
        assert_eq!(delta.duration, Duration::from_secs(2));
        assert!(!delta.cumulative);
    }
}
