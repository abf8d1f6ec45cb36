//! The sampling session: the timers, the ring and the collector thread, shared by the two
//! consumers of CPU samples, an on-demand profile ([`super::CpuProfile`]) and the flight
//! recorder ([`SampleSink`], `crate::recorder`).
//!
//! A session starts with its first consumer and ends with its last. The timers run at the
//! highest rate a consumer asked for; each sample carries the CPU time it stands for, so a
//! consumer that asked for less still reads true CPU time. A profile that starts while the
//! recorder runs raises the rate for its duration and gets every sample from its start to
//! its stop; the recorder keeps taking them meanwhile.
//!
//! Locks: [`SESSION`] is taken by whoever starts or stops a consumer, never by the collector
//! and never in a signal handler; it is held across `fork` (`before_fork`), so critical
//! sections under it are short (starting or joining the collector, which is woken for it:
//! `Shared::ask_collector`). The collector takes the consumers' lock while it hands samples
//! over.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::signal::{self, ProcessCpuAlarm, SamplingState, ThreadTimer, Waited, SAMPLING, STACK_BOUNDS};
use super::{CpuProfileError, Ending, SampleKey, MAX_HZ};
use crate::labels::LabelSetId;
use crate::procfs;
use crate::sighandler::Disposition;
use crate::threads::procinfo;
use crate::unwind::ring::{StackRecord, StackRing};
use crate::unwind::{StackBounds, UnwindTables};

/// How often the collector looks for new threads and drains samples while a profile runs.
const PROFILE_INTERVAL: Duration = Duration::from_millis(50);
/// The same while only the recorder runs: its rate is low, and every tick reads `/proc`.
const RECORDING_INTERVAL: Duration = Duration::from_millis(250);
/// The shortest time between two checks that the host left the timer signal to pprofd
/// (`Collector::sleep` paces them by the process's CPU time); also the step of the plain
/// sleep used when the collector has no alarm.
const DISPOSITION_CHECK: Duration = Duration::from_millis(10);
/// Ring slots (about 1 KiB each) while a profile runs: at 1000 Hz on 50 busy threads the
/// collector drains 2,500 per tick.
const PROFILE_RING_SLOTS: usize = 8192;
/// Busy threads whose samples of one tick the ring holds while only the recorder runs. Every
/// slot becomes resident once used, so a recorder that runs for hours keeps the ring as
/// small as its rate allows: 1,024 slots at 100 Hz, 256 at the default 19 Hz.
const RECORDING_RING_THREADS: usize = 40;

/// One sample, as the collector hands it to consumers.
pub(crate) struct Sample<'a> {
    /// Kernel thread id of the sampled thread.
    pub tid: i32,
    /// How the stack ends.
    pub ending: Ending,
    /// The thread's labels when it was sampled.
    pub labels: LabelSetId,
    /// The tokio task being polled (0: none).
    pub task: u64,
    /// Leaf first.
    pub stack: &'a [u64],
    /// The CPU time the sample stands for: the timer periods it covers times the period.
    pub cpu_ns: u64,
}

/// A consumer of samples for the life of the process: the flight recorder.
pub(crate) trait SampleSink: Send {
    /// Takes one sample.
    fn add(&mut self, sample: &Sample<'_>);
    /// Called after every drain (at least once a second): the names of the threads sampled
    /// so far, and the samples lost since the last call (ring full).
    fn end_batch(&mut self, thread_names: &HashMap<i32, String>, lost: u64);
}

/// What an on-demand profile gathers between its start and its stop.
pub(super) struct ProfileSink {
    /// The rate it asked for.
    pub hz: u32,
    /// The timers' period while it ran (the recorder may have asked for a higher rate).
    pub period_ns: u64,
    pub counts: HashMap<SampleKey, Caught>,
    pub thread_names: HashMap<i32, String>,
    pub lost: u64,
    /// Changes of the timer signal's disposition by the host that the collector undid.
    pub displaced: Vec<Disposition>,
    /// Threads without a timer (they block the timer signal or wait for signals) at the stop.
    pub without_timer: usize,
}

/// How often one stack was caught: signals taken, and the timer periods they stand for.
#[derive(Default)]
pub(super) struct Caught {
    pub signals: u64,
    pub periods: u64,
}

impl ProfileSink {
    /// What a profile whose session is gone (a forked child's) gathered: nothing.
    pub(super) fn empty() -> Self {
        ProfileSink::new(1, None)
    }

    fn new(hz: u32, displaced: Option<Disposition>) -> Self {
        ProfileSink {
            hz,
            period_ns: period_ns(hz),
            counts: HashMap::new(),
            thread_names: HashMap::new(),
            lost: 0,
            displaced: displaced.into_iter().collect(),
            without_timer: 0,
        }
    }
}

/// Who takes the session's samples.
struct Consumers {
    profile: Option<ProfileSink>,
    /// The recorder and its rate.
    recording: Option<(u32, Box<dyn SampleSink>)>,
    /// A stopping profile asked for its samples while the recorder goes on: the collector
    /// drains the ring and moves the profile here.
    handed_over: Option<ProfileSink>,
    handover_asked: bool,
}

impl Consumers {
    fn rate(&self) -> Option<u32> {
        let profile = self.profile.as_ref().map(|p| p.hz);
        let recording = self.recording.as_ref().map(|(hz, _)| *hz);
        profile.max(recording)
    }
}

struct Shared {
    consumers: Mutex<Consumers>,
    /// Signalled when a profile is handed over.
    handed_over: Condvar,
    /// Set when the consumers change, so the collector re-arms at once.
    changed: AtomicBool,
    stop: AtomicBool,
    /// The collector's thread id once its alarm exists (0 before, or without an alarm): who
    /// sets `changed` or `stop` wakes it there.
    collector_tid: AtomicI32,
}

impl Shared {
    fn consumers(&self) -> MutexGuard<'_, Consumers> {
        self.consumers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets `flag` (`changed` or `stop`) and wakes the collector. Called with the session
    /// lock held, which the collector's thread outlives (it is joined under that lock), so
    /// the thread woken is the collector.
    fn ask_collector(&self, flag: &AtomicBool) {
        flag.store(true, Ordering::Release);
        match self.collector_tid.load(Ordering::Acquire) {
            0 => {}
            tid => signal::wake(tid),
        }
    }
}

struct Session {
    shared: Arc<Shared>,
    collector: JoinHandle<()>,
}

/// The running session, if any.
static SESSION: Mutex<Option<Session>> = Mutex::new(None);

fn session() -> MutexGuard<'static, Option<Session>> {
    SESSION
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn period_ns(hz: u32) -> u64 {
    1_000_000_000 / hz.clamp(1, MAX_HZ) as u64
}

/// Starts an on-demand profile at `hz`, starting the session if none runs.
pub(super) fn attach_profile(hz: u32) -> Result<(), CpuProfileError> {
    let mut session = session();
    if let Some(running) = session.as_ref() {
        let mut consumers = running.shared.consumers();
        if consumers.profile.is_some() {
            return Err(CpuProfileError::InUse);
        }
        // Checked before the timers speed up, as at a session's start.
        let displaced = signal::ensure_handler().map_err(CpuProfileError::Setup)?;
        consumers.profile = Some(ProfileSink::new(hz, displaced));
        running.shared.ask_collector(&running.shared.changed);
        return Ok(());
    }
    *session = Some(start_session(Consumers {
        profile: Some(ProfileSink::new(hz, None)),
        recording: None,
        handed_over: None,
        handover_asked: false,
    })?);
    Ok(())
}

/// Stops the on-demand profile and returns what it gathered, ending the session unless the
/// recorder uses it.
pub(super) fn detach_profile() -> Option<ProfileSink> {
    let mut session = session();
    let running = session.as_ref()?;
    let shared = running.shared.clone();
    let recording = {
        let mut consumers = shared.consumers();
        consumers.profile.as_ref()?;
        if consumers.recording.is_some() {
            consumers.handover_asked = true;
            shared.ask_collector(&shared.changed);
        }
        consumers.recording.is_some()
    };
    if recording {
        let mut consumers = shared.consumers();
        while consumers.handed_over.is_none() {
            consumers = shared
                .handed_over
                .wait(consumers)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        consumers.handover_asked = false;
        return consumers.handed_over.take();
    }
    let running = session.take()?;
    running.shared.ask_collector(&running.shared.stop);
    let _ = running.collector.join();
    let profile = running.shared.consumers().profile.take();
    profile
}

/// Starts recording: `sink` takes every sample at `hz` or more for the life of the process.
/// Calling it again changes nothing.
pub(crate) fn start_recording(hz: u32, sink: Box<dyn SampleSink>) -> Result<(), CpuProfileError> {
    if !(1..=MAX_HZ).contains(&hz) {
        return Err(CpuProfileError::BadFrequency(hz));
    }
    let mut session = session();
    if let Some(running) = session.as_ref() {
        let mut consumers = running.shared.consumers();
        if consumers.recording.is_none() {
            consumers.recording = Some((hz, sink));
            running.shared.ask_collector(&running.shared.changed);
        }
        return Ok(());
    }
    *session = Some(start_session(Consumers {
        profile: None,
        recording: Some((hz, sink)),
        handed_over: None,
        handover_asked: false,
    })?);
    Ok(())
}

fn start_session(consumers: Consumers) -> Result<Session, CpuProfileError> {
    crate::fork::register_handlers();
    // Checked before any timer is armed: a host may have changed the signal since pprofd
    // installed its handler (see `signal`).
    let displaced = signal::ensure_handler().map_err(CpuProfileError::Setup)?;
    let slots = ring_slots(&consumers);
    let shared = Arc::new(Shared {
        consumers: Mutex::new(consumers),
        handed_over: Condvar::new(),
        changed: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        collector_tid: AtomicI32::new(0),
    });
    if let (Some(change), Some(profile)) = (displaced, shared.consumers().profile.as_mut()) {
        profile.displaced.push(change);
    }
    STACK_BOUNDS.replace(Some(Box::new(StackBounds::load())));
    SAMPLING.replace(Some(Box::new(SamplingState {
        ring: StackRing::new(slots),
        tables: UnwindTables::load(),
    })));
    let collector = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("pprofd-cpu".into())
            .spawn(move || Collector::new(shared).run())
            .map_err(|e| {
                SAMPLING.replace(None);
                STACK_BOUNDS.replace(None);
                CpuProfileError::Setup(e)
            })?
    };
    Ok(Session { shared, collector })
}

fn ring_slots(consumers: &Consumers) -> usize {
    match (&consumers.profile, &consumers.recording) {
        (None, Some((hz, _))) => {
            let per_tick = *hz as usize * RECORDING_RING_THREADS * RECORDING_INTERVAL.as_millis()
                as usize
                / 1000;
            per_tick.next_power_of_two().clamp(256, 1024)
        }
        _ => PROFILE_RING_SLOTS,
    }
}

/// The collector thread's state.
struct Collector {
    shared: Arc<Shared>,
    timers: HashMap<i32, ThreadTimer>,
    thread_names: HashMap<i32, String>,
    /// Threads left without a timer because they block the timer signal, with when to look
    /// at them again (see `sync_timers`).
    no_timer: HashMap<i32, Instant>,
    armed_period_ns: u64,
    ring_slots: usize,
    /// The ring's lost count already handed to consumers.
    lost_seen: u64,
    /// Whether the profile takes samples: only those drained after the timers were set for
    /// it, so samples from before its start do not count.
    profile_fed: bool,
    /// Threads that exited at the last look: their names stay one more tick, for the samples
    /// they left in the ring.
    exited: Vec<i32>,
    /// Paces the disposition checks by the process's CPU time; `None` when it could not be
    /// made, or after it took a host's signal (then the checks come every 10 ms).
    alarm: Option<ProcessCpuAlarm>,
    /// When the last check was made, and the process's CPU time then.
    last_check: (Instant, Duration),
    /// The stack bounds this collector last published (`None` before its first reading, so
    /// that reading is published whatever `start_session` published), and when it last read
    /// them.
    bounds: Option<StackBounds>,
    bounds_read: Instant,
}

impl Collector {
    fn new(shared: Arc<Shared>) -> Self {
        let (period, slots, profile) = {
            let consumers = shared.consumers();
            (
                period_ns(consumers.rate().unwrap_or(1)),
                ring_slots(&consumers),
                consumers.profile.is_some(),
            )
        };
        Collector {
            shared,
            timers: HashMap::new(),
            thread_names: HashMap::new(),
            no_timer: HashMap::new(),
            armed_period_ns: period,
            ring_slots: slots,
            lost_seen: 0,
            // A session started for a profile samples for it from its first signal.
            profile_fed: profile,
            exited: Vec::new(),
            alarm: None,
            last_check: (Instant::now(), procfs::process_cpu_time()),
            bounds: None,
            bounds_read: Instant::now(),
        }
    }

    /// Keeps timers, tables and bounds current and drains samples until told to stop, then
    /// tears sampling down.
    fn run(mut self) {
        let _internal = procfs::register_internal_thread();
        self.alarm = ProcessCpuAlarm::for_this_thread().ok();
        if self.alarm.is_some() {
            self.shared
                .collector_tid
                .store(procfs::gettid(), Ordering::Release);
        }
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                // Deleting the timers stops new signals; a signal already pending finds
                // nothing published once `replace(None)` returns, and is ignored.
                self.timers.clear();
                if let Some(state) = SAMPLING.replace(None) {
                    self.drain(&state.ring);
                }
                STACK_BOUNDS.replace(None);
                return;
            }
            self.shared.changed.store(false, Ordering::Release);
            let (period, slots, profile) = {
                let consumers = self.shared.consumers();
                (
                    period_ns(consumers.rate().unwrap_or(1)),
                    ring_slots(&consumers),
                    consumers.profile.is_some(),
                )
            };
            if period != self.armed_period_ns
                || slots != self.ring_slots
                || profile != self.profile_fed
            {
                // Samples already taken go to the consumers of when they were taken, at the
                // period they were taken at.
                // SAFETY: this collector is the only publisher of SAMPLING while its session runs.
                unsafe { SAMPLING.with_owner(|s| s.map(|s| self.drain(&s.ring))) };
                self.rearm(period);
                if slots != self.ring_slots {
                    self.resize_ring(slots);
                }
                self.profile_fed = profile;
            }
            // Reading and parsing /proc/self/maps is most of an idle tick's cost: while only
            // the recorder runs, it is read when threads appeared (their stacks are new
            // mappings; `sync_timers` reads it then) and otherwise once a second.
            let bounds_read = self.sync_timers();
            if !bounds_read && (profile || self.bounds_read.elapsed() >= Duration::from_secs(1)) {
                self.refresh_bounds();
            }
            // SAFETY: as above.
            if unsafe { SAMPLING.with_owner(|s| s.is_some_and(|s| s.tables.is_stale())) } {
                // An object was loaded or unloaded: swap in fresh tables, then drain the old ring.
                let fresh = SamplingState {
                    ring: StackRing::new(self.ring_slots),
                    tables: UnwindTables::load(),
                };
                if let Some(old) = SAMPLING.replace(Some(Box::new(fresh))) {
                    self.drain(&old.ring);
                }
                self.lost_seen = 0;
            }
            // SAFETY: as above.
            unsafe { SAMPLING.with_owner(|s| s.map(|s| self.drain(&s.ring))) };
            self.hand_over();
            self.sleep(match profile {
                true => PROFILE_INTERVAL,
                false => RECORDING_INTERVAL,
            });
        }
    }

    /// Sleeps `interval`, checking the timer signal's disposition on the way, and returns
    /// early when the consumers change.
    ///
    /// Only CPU time makes the timers fire, so the checks are paced by the process's CPU
    /// time: the next comes once the process has used one timer period of it (on average at
    /// most one signal between a host's change and the check, whatever the number of threads;
    /// half a period, tried first, took a busy 2-thread service at 19 Hz to 0.21% of its CPU),
    /// but no sooner than 10 ms after the last while the process keeps using CPU that fast,
    /// and at the latest at the end of `interval`. An idle process costs no wakeups but the
    /// ticks.
    fn sleep(&mut self, interval: Duration) {
        let deadline = Instant::now() + interval;
        loop {
            let now = Instant::now();
            let Some(left) = deadline.checked_duration_since(now).filter(|d| !d.is_zero()) else {
                return;
            };
            match self.alarm.take() {
                Some(alarm) => {
                    let cpu = self.cpu_before_next_check(now);
                    match alarm.wait(cpu, left) {
                        Waited::Done => self.alarm = Some(alarm),
                        // The host uses the timer signal's number for itself: leave its
                        // signals to it (the alarm is dropped).
                        Waited::TookForeignSignal => {
                            self.shared.collector_tid.store(0, Ordering::Release)
                        }
                    }
                }
                None => std::thread::sleep(DISPOSITION_CHECK.min(left)),
            }
            if let Ok(Some(change)) = signal::ensure_handler() {
                if let Some(profile) = self.shared.consumers().profile.as_mut() {
                    profile.displaced.push(change);
                }
            }
            if self.shared.changed.load(Ordering::Acquire)
                || self.shared.stop.load(Ordering::Acquire)
            {
                return;
            }
        }
    }

    /// The process CPU time, in ns, to let pass before the next disposition check: one timer
    /// period, or what the process used in 10 ms at its rate since the last check if
    /// that is more.
    fn cpu_before_next_check(&mut self, now: Instant) -> u64 {
        let cpu = procfs::process_cpu_time();
        let (then, cpu_then) = std::mem::replace(&mut self.last_check, (now, cpu));
        let wall = now.saturating_duration_since(then).as_nanos().max(1);
        let used = cpu.saturating_sub(cpu_then).as_nanos();
        let in_ten_ms = used * DISPOSITION_CHECK.as_nanos() / wall;
        (self.armed_period_ns as u128).max(in_ten_ms) as u64
    }

    /// Moves a stopping profile out for `detach_profile` once its samples are drained.
    fn hand_over(&mut self) {
        let shared = self.shared.clone();
        let mut consumers = shared.consumers();
        if consumers.handover_asked && consumers.handed_over.is_none() {
            let mut profile = consumers.profile.take();
            if let Some(profile) = profile.as_mut() {
                profile.without_timer = self.no_timer.len();
            }
            consumers.handed_over = profile;
            self.shared.handed_over.notify_all();
        }
    }

    /// Hands every sample in `ring` to the consumers.
    fn drain(&mut self, ring: &StackRing) {
        let shared = self.shared.clone();
        let mut consumers = shared.consumers();
        let Consumers {
            profile, recording, ..
        } = &mut *consumers;
        let period = self.armed_period_ns;
        let fed = self.profile_fed;
        let mut profile = profile.as_mut().filter(|_| fed);
        ring.drain(|record: &StackRecord| {
            let sample = Sample {
                tid: record.tid,
                ending: ending(record),
                labels: record.labels,
                task: record.task,
                stack: &record.frames[..record.depth],
                cpu_ns: record.weight * period,
            };
            if let Some(profile) = profile.as_mut() {
                let key = SampleKey {
                    tid: sample.tid,
                    ending: sample.ending,
                    labels: sample.labels,
                    task: sample.task,
                    stack: sample.stack.to_vec(),
                };
                let caught = profile.counts.entry(key).or_default();
                caught.signals += 1;
                // In the profile's own periods, which the timers' may be shorter than.
                caught.periods += record.weight;
            }
            if let Some((_, sink)) = recording.as_mut() {
                sink.add(&sample);
            }
        });
        let lost = ring.lost();
        let new_lost = lost.saturating_sub(self.lost_seen);
        self.lost_seen = lost;
        if let Some(profile) = profile.as_mut() {
            profile.lost += new_lost;
            profile.period_ns = period;
            profile.without_timer = self.no_timer.len();
            for tid in profile.counts.keys().map(|k| k.tid) {
                if let (Entry::Vacant(slot), Some(name)) =
                    (profile.thread_names.entry(tid), self.thread_names.get(&tid))
                {
                    slot.insert(name.clone());
                }
            }
        }
        if let Some((_, sink)) = recording.as_mut() {
            sink.end_batch(&self.thread_names, new_lost);
        }
    }

    /// Sets every timer to `period_ns`.
    fn rearm(&mut self, period_ns: u64) {
        self.armed_period_ns = period_ns;
        self.timers.retain(|_, timer| timer.set_period(period_ns).is_ok());
    }

    /// Publishes a ring of `slots` slots, keeping the unwind tables, and drains the old one.
    fn resize_ring(&mut self, slots: usize) {
        self.ring_slots = slots;
        // Handlers find nothing published for the moment between the two stores and skip
        // their sample; the tables move to the new state without being loaded again.
        let Some(old) = SAMPLING.replace(None) else {
            return;
        };
        let SamplingState { ring, tables } = *old;
        SAMPLING.replace(Some(Box::new(SamplingState {
            ring: StackRing::new(slots),
            tables,
        })));
        self.drain(&ring);
        self.lost_seen = 0;
    }

    /// Gives every live thread except pprofd's own a timer and forgets threads that exited.
    /// A thread that blocks the timer signal, or waits for signals, gets no timer while it
    /// does (invariant 13): its signals would pile up pending or be taken by the host's
    /// `sigwait` loop. It is looked at again after `RECHECK` (reading `/proc` at every tick
    /// would cost 1,000 blocking threads a fifth of a core; counted in time, not ticks, since
    /// the recorder's ticks are five times longer: a thread caught inside `pthread_create`,
    /// which blocks every signal for a moment, must not go unsampled for seconds) and kept in
    /// `no_timer` while it has none. The check is made when the timer is
    /// created; a thread that blocks the signal later keeps its timer, and then holds at
    /// most one of its signals pending (the kernel queues a POSIX timer's signal once and
    /// counts further expirations as overruns).
    /// Returns whether it read the stack bounds, which it does before arming a new thread's
    /// timer.
    fn sync_timers(&mut self) -> bool {
        const RECHECK: Duration = Duration::from_secs(1);
        let now = Instant::now();
        let tids = procfs::thread_ids();
        for tid in self.exited.drain(..) {
            self.thread_names.remove(&tid);
        }
        let exited = &mut self.exited;
        self.timers.retain(|tid, _| {
            let alive = tids.binary_search(tid).is_ok();
            if !alive {
                exited.push(*tid);
            }
            alive
        });
        self.no_timer.retain(|tid, _| tids.binary_search(tid).is_ok());
        let new: Vec<i32> = tids
            .into_iter()
            .filter(|tid| !self.timers.contains_key(tid) && !procfs::is_internal_thread(*tid))
            .filter(|tid| self.no_timer.get(tid).is_none_or(|look_again| now >= *look_again))
            .collect();
        if new.is_empty() {
            return false;
        }
        // A new thread's stack must be in the published bounds before its timer can fire: a
        // sample whose stack pointer lies in no known mapping is leaf-only. Read after the
        // thread list, the maps hold the stack of every thread in it (pthread_create maps a
        // stack before the thread exists). Reading them after arming, as before, left a busy
        // new thread's first samples leaf-only; under qemu-user, where a reading takes tens
        // of milliseconds, several of them.
        self.refresh_bounds();
        for tid in new {
            if procinfo::signal_obstacle(tid, signal::timer_signal()).is_some() {
                self.no_timer.insert(tid, now + RECHECK);
                continue;
            }
            if let Ok(timer) = ThreadTimer::start(tid, self.armed_period_ns) {
                self.timers.insert(tid, timer);
                self.no_timer.remove(&tid);
                self.thread_names.insert(tid, procfs::thread_name(tid));
            }
        }
        true
    }

    /// Reads the stack bounds and publishes them if they differ from what this collector last
    /// published. Comparing with its own last publication, not with a reading of its own:
    /// `start_session` publishes a reading taken before the unwind tables load and this
    /// thread starts, and a thread created in between (tens of milliseconds under
    /// qemu-user) was missing from the published bounds for the whole profile while every
    /// later reading equalled the collector's first.
    fn refresh_bounds(&mut self) {
        self.bounds_read = Instant::now();
        let fresh = StackBounds::load();
        if self.bounds.as_ref() != Some(&fresh) {
            self.bounds = Some(fresh.clone());
            STACK_BOUNDS.replace(Some(Box::new(fresh)));
        }
    }
}

fn ending(record: &StackRecord) -> Ending {
    match (record.no_room, record.truncated) {
        (true, _) => Ending::NoRoom,
        (false, true) => Ending::Truncated,
        (false, false) => Ending::Root,
    }
}

thread_local! {
    /// The session lock, held by the forking thread from `pthread_atfork`'s prepare handler
    /// to its parent or child handler.
    static HELD_ACROSS_FORK: std::cell::RefCell<Option<MutexGuard<'static, Option<Session>>>> =
        const { std::cell::RefCell::new(None) };
}

/// `pthread_atfork` prepare (see `crate::fork`): takes the session lock, so the child does
/// not inherit it held by a thread it does not have. Taken before every other lock of
/// pprofd's handlers: starting a session creates a thread under it.
pub(crate) fn before_fork() {
    let guard = session();
    let _ = HELD_ACROSS_FORK.try_with(|held| *held.borrow_mut() = Some(guard));
}

/// `pthread_atfork` parent: releases the lock.
pub(crate) fn after_fork_in_parent() {
    let _ = HELD_ACROSS_FORK.try_with(|held| held.borrow_mut().take());
}

/// `pthread_atfork` child: the child has no collector and no timers, so it drops the
/// parent's session without freeing it and may start one of its own.
pub(crate) fn after_fork_in_child() {
    let _ = HELD_ACROSS_FORK.try_with(|held| {
        if let Some(mut guard) = held.borrow_mut().take() {
            std::mem::forget(guard.take());
        }
    });
    SAMPLING.forget_in_child();
    STACK_BOUNDS.forget_in_child();
}
