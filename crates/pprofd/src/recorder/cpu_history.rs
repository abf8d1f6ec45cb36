//! The recorder's CPU samples: one bucket per second of the window, each holding the CPU time
//! per distinct (stack, labels, thread), with the stacks interned once for the whole window.
//!
//! Memory is bounded twice: buckets older than the window are dropped with every sample that
//! moves time on, and when the estimate of what is held passes the budget, the oldest
//! buckets go first (the answer then says how far back it reaches). A stack is freed with
//! the last bucket that uses it. Task ids are not kept: every task would be a new entry.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::cpu::{self, Ending, Sample};
use crate::labels::LabelSetId;
use crate::profile::ProfileBuilder;

/// What tells one recorded entry of a second from another.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct EntryKey {
    stack: u32,
    labels: LabelSetId,
    tid: i32,
    ending: Ending,
}

#[derive(Clone, Copy, Default)]
struct Counts {
    signals: u32,
    cpu_ns: u64,
}

/// One second of samples, frozen once the second is over.
struct Bucket {
    /// Seconds since the recorder's origin.
    second: u64,
    entries: Box<[(EntryKey, Counts)]>,
}

/// Interned stacks, each with the number of entries (in buckets) that use it.
#[derive(Default)]
struct Stacks {
    ids: HashMap<Arc<[u64]>, u32>,
    slots: Vec<Option<(Arc<[u64]>, u32)>>,
    free: Vec<u32>,
    frames: usize,
}

impl Stacks {
    /// The id of `stack`, counted as used once more.
    fn intern(&mut self, stack: &[u64]) -> u32 {
        if let Some(&id) = self.ids.get(stack) {
            if let Some((_, refs)) = self.slots[id as usize].as_mut() {
                *refs += 1;
            }
            return id;
        }
        let frames: Arc<[u64]> = stack.into();
        self.frames += frames.len();
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some((frames.clone(), 1));
                id
            }
            None => {
                self.slots.push(Some((frames.clone(), 1)));
                (self.slots.len() - 1) as u32
            }
        };
        self.ids.insert(frames, id);
        id
    }

    fn release(&mut self, id: u32) {
        let slot = &mut self.slots[id as usize];
        if let Some((frames, refs)) = slot.as_mut() {
            *refs -= 1;
            if *refs == 0 {
                self.frames -= frames.len();
                self.ids.remove(&**frames);
                *slot = None;
                self.free.push(id);
            }
        }
    }

    fn get(&self, id: u32) -> &[u64] {
        self.slots[id as usize].as_ref().map_or(&[], |(f, _)| f)
    }

    fn bytes(&self) -> usize {
        // The frames with their Arc and allocation headers, and the tables as allocated (a
        // hash map entry is a fat pointer, the id and a control byte).
        self.frames * 8
            + self.ids.len() * 32
            + self.ids.capacity() * (std::mem::size_of::<(Arc<[u64]>, u32)>() + 1)
            + self.slots.capacity() * std::mem::size_of::<Option<(Arc<[u64]>, u32)>>()
            + self.free.capacity() * 4
    }
}

/// The recorded CPU samples of the last `window`.
pub(super) struct CpuHistory {
    window_secs: u64,
    budget: usize,
    hz: u32,
    origin: Instant,
    origin_time: SystemTime,
    stacks: Stacks,
    current_second: u64,
    current: HashMap<EntryKey, Counts>,
    buckets: VecDeque<Bucket>,
    entries: usize,
    thread_names: HashMap<i32, String>,
    lost: u64,
    /// The oldest second dropped to stay under the budget, if any was.
    budget_cut: Option<u64>,
}

/// What a recorded profile covers, for its comments and for the index page.
pub(super) struct Coverage {
    /// How far back the recording reaches now.
    pub reaches_back: Duration,
    /// Bytes held (estimated).
    pub bytes: usize,
    /// Whether the budget cut the window short.
    pub cut_by_budget: bool,
}

const ENTRY_BYTES: usize = std::mem::size_of::<(EntryKey, Counts)>();

impl CpuHistory {
    pub(super) fn new(window: Duration, hz: u32, budget: usize) -> Self {
        CpuHistory {
            window_secs: window.as_secs().max(1),
            budget,
            hz,
            origin: Instant::now(),
            origin_time: SystemTime::now(),
            stacks: Stacks::default(),
            current_second: 0,
            current: HashMap::new(),
            buckets: VecDeque::new(),
            entries: 0,
            thread_names: HashMap::new(),
            lost: 0,
            budget_cut: None,
        }
    }

    fn now_second(&self) -> u64 {
        self.origin.elapsed().as_secs()
    }

    /// Adds one sample to the current second.
    pub(super) fn add(&mut self, sample: &Sample<'_>) {
        self.advance(self.now_second());
        let mut key = EntryKey {
            stack: u32::MAX,
            labels: sample.labels,
            tid: sample.tid,
            ending: sample.ending,
        };
        // The stack is interned once per entry of a second; the map lookup by contents is
        // the price of not holding a key per sample.
        key.stack = self.stacks.intern(sample.stack);
        let counts = match self.current.get_mut(&key) {
            Some(counts) => {
                self.stacks.release(key.stack);
                counts
            }
            None => self.current.entry(key).or_default(),
        };
        counts.signals += 1;
        counts.cpu_ns += sample.cpu_ns;
    }

    /// Keeps the names of sampled threads and counts lost samples.
    pub(super) fn end_batch(&mut self, thread_names: &HashMap<i32, String>, lost: u64) {
        self.lost += lost;
        for (tid, name) in thread_names {
            self.thread_names
                .entry(*tid)
                .or_insert_with(|| name.clone());
        }
        self.advance(self.now_second());
    }

    /// Freezes the current second when time has moved past it and drops what the window and
    /// the budget no longer hold.
    fn advance(&mut self, now: u64) {
        if now != self.current_second {
            let entries: Box<[(EntryKey, Counts)]> = self.current.drain().collect();
            self.entries += entries.len();
            if !entries.is_empty() {
                self.buckets.push_back(Bucket {
                    second: self.current_second,
                    entries,
                });
            }
            self.current_second = now;
            self.prune_thread_names();
        }
        while let Some(oldest) = self.buckets.front() {
            let expired = oldest.second + self.window_secs <= now;
            let over_budget = self.bytes() > self.budget;
            if !expired && !over_budget {
                break;
            }
            if over_budget && !expired {
                self.budget_cut = Some(oldest.second);
            }
            self.drop_oldest();
        }
    }

    /// Threads come and go: past a thousand names, keeps those the window still holds
    /// (looked at once a second).
    fn prune_thread_names(&mut self) {
        if self.thread_names.len() <= 1024 {
            return;
        }
        let held: std::collections::HashSet<i32> = self
            .buckets
            .iter()
            .flat_map(|b| b.entries.iter().map(|(key, _)| key.tid))
            .collect();
        self.thread_names.retain(|tid, _| held.contains(tid));
    }

    fn drop_oldest(&mut self) {
        if let Some(bucket) = self.buckets.pop_front() {
            self.entries -= bucket.entries.len();
            for (key, _) in bucket.entries.iter() {
                self.stacks.release(key.stack);
            }
        }
    }

    fn bytes(&self) -> usize {
        self.entries * ENTRY_BYTES
            + self.buckets.capacity() * std::mem::size_of::<Bucket>()
            + self.current.capacity() * (ENTRY_BYTES + 1)
            + self.stacks.bytes()
    }

    /// How far back the recording reaches and what it holds.
    pub(super) fn coverage(&mut self) -> Coverage {
        let now = self.now_second();
        self.advance(now);
        let elapsed = self.origin.elapsed();
        // From the start, the window's edge, or the last second the budget dropped.
        let cut = self.budget_cut.filter(|cut| cut + self.window_secs > now);
        let from = cut.map_or(Duration::ZERO, |cut| Duration::from_secs(cut + 1));
        Coverage {
            reaches_back: elapsed
                .saturating_sub(from)
                .min(Duration::from_secs(self.window_secs)),
            bytes: self.bytes(),
            cut_by_budget: cut.is_some(),
        }
    }

    /// The CPU profile of the last `past`: every second that started less than `past` ago
    /// (the current one, partly over, included).
    pub(super) fn profile(&mut self, past: Duration) -> ProfileBuilder {
        let coverage = self.coverage();
        let now = self.now_second();
        let past_secs = past.as_secs().max(1);
        let first = (now + 1).saturating_sub(past_secs);
        let mut totals: HashMap<EntryKey, Counts> = HashMap::new();
        for bucket in self.buckets.iter().filter(|b| b.second >= first) {
            for (key, counts) in bucket.entries.iter() {
                let total = totals.entry(*key).or_default();
                total.signals += counts.signals;
                total.cpu_ns += counts.cpu_ns;
            }
        }
        for (key, counts) in &self.current {
            let total = totals.entry(*key).or_default();
            total.signals += counts.signals;
            total.cpu_ns += counts.cpu_ns;
        }
        let period = 1_000_000_000 / self.hz as i64;
        let mut builder = ProfileBuilder::new(
            &[("samples", "count"), ("cpu", "nanoseconds")],
            ("cpu", "nanoseconds"),
            period,
        );
        let start = Duration::from_secs(first);
        builder.set_time(
            self.origin_time + start,
            self.origin.elapsed().saturating_sub(start),
        );
        let mut endings = cpu::EndingCounts::default();
        for (key, counts) in totals {
            endings.count(key.ending, counts.signals as u64);
            let name = self.thread_names.get(&key.tid).map(String::as_str);
            builder.add_sample(
                cpu::sample_frames(self.stacks.get(key.stack), key.ending),
                vec![counts.signals as i64, counts.cpu_ns as i64],
                cpu::sample_labels(key.labels, 0, key.tid, name),
            );
        }
        builder.add_comment(format!(
            "from pprofd's flight recorder: the last {} s, recorded at {} Hz (faster while a \
             profile ran), in one-second buckets; cpu values are CPU time",
            past_secs, self.hz
        ));
        if past > coverage.reaches_back + Duration::from_secs(1) {
            builder.add_comment(format!(
                "the recording reaches back only {} s{}",
                coverage.reaches_back.as_secs(),
                match coverage.cut_by_budget {
                    true => ", its memory bound",
                    false => ", since it started",
                }
            ));
        }
        endings.comment(&mut builder);
        if self.lost > 0 {
            builder.add_comment(format!(
                "{} samples lost since recording started: sample buffer full",
                self.lost
            ));
        }
        builder
    }
}
