//! The recorder's heap snapshots: the latest one whole, and before it the change over each
//! interval, site by site, for the sites that changed.
//!
//! The heap as it was at an interval's start is the latest snapshot minus every change since;
//! `heap?past=N` is today's counters minus that. Changes are stored as varints (a site that
//! changed costs a few tens of bytes), and when they pass the budget, the oldest two intervals
//! of the same length merge into one: the far past coarsens, the recent past stays fine.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use crate::heap::{HeapSnapshot, SiteCounts};

/// The change of every site that changed over one interval.
struct Interval {
    start: Instant,
    start_time: SystemTime,
    /// Length: up to the next interval's start, or the latest snapshot.
    span: Duration,
    encoded: Vec<u8>,
}

/// Heap snapshots of the last `window`.
pub(super) struct HeapHistory {
    window: Duration,
    budget: usize,
    latest: Option<HeapSnapshot>,
    latest_time: SystemTime,
    intervals: VecDeque<Interval>,
    bytes: usize,
}

/// The snapshot a `past` answer is the change since, and how far back it really is.
pub(super) struct Baseline {
    pub snapshot: HeapSnapshot,
    /// How long before now it was taken.
    pub age: Duration,
}

impl HeapHistory {
    pub(super) fn new(window: Duration, budget: usize) -> Self {
        HeapHistory {
            window,
            budget,
            latest: None,
            latest_time: SystemTime::now(),
            intervals: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Bytes held by the changes (the latest snapshot not counted: the heap report holds as
    /// much while it answers).
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes a new snapshot in.
    pub(super) fn push(&mut self, snapshot: HeapSnapshot) {
        let time = SystemTime::now();
        if let Some(previous) = self.latest.take() {
            let encoded = encode_change(&previous, &snapshot);
            self.bytes += encoded.capacity();
            self.intervals.push_back(Interval {
                start: previous.taken_at(),
                start_time: self.latest_time,
                span: snapshot.taken_at().duration_since(previous.taken_at()),
                encoded,
            });
        }
        self.latest = Some(snapshot);
        self.latest_time = time;
        // Keep the oldest interval while the next one still starts inside the window, so a
        // question about the whole window has a start to answer from.
        let now = Instant::now();
        while self.intervals.len() > 1
            && now.duration_since(self.intervals[1].start) >= self.window
        {
            if let Some(gone) = self.intervals.pop_front() {
                self.bytes -= gone.encoded.capacity();
            }
        }
        while self.bytes > self.budget && self.intervals.len() > 2 {
            self.merge_oldest_pair();
        }
    }

    /// Merges the oldest two neighbouring intervals of the same span (or the oldest two).
    fn merge_oldest_pair(&mut self) {
        let same = (0..self.intervals.len() - 1)
            .find(|&i| self.intervals[i].span == self.intervals[i + 1].span);
        let i = same.unwrap_or(0);
        let Some(later) = self.intervals.remove(i + 1) else {
            return;
        };
        let earlier = &mut self.intervals[i];
        let mut sum = decode_change(&earlier.encoded);
        for (site, change) in decode_change(&later.encoded) {
            let counts = sum.entry(site).or_default();
            for (c, d) in counts.iter_mut().zip(change) {
                *c += d;
            }
        }
        self.bytes -= earlier.encoded.capacity() + later.encoded.capacity();
        earlier.encoded = encode_sites(&sum);
        earlier.span += later.span;
        self.bytes += earlier.encoded.capacity();
    }

    /// The recorded snapshot taken closest to `past` ago, or `None` before the first one.
    pub(super) fn baseline(&self, past: Duration) -> Option<Baseline> {
        let latest = self.latest.as_ref()?;
        let now = Instant::now();
        let target = now.checked_sub(past).unwrap_or(now);
        let distance = |at: Instant| {
            if at > target {
                at - target
            } else {
                target - at
            }
        };
        // Candidates: each interval's start, and the latest snapshot (index len).
        let mut best = self.intervals.len();
        let mut best_distance = distance(latest.taken_at());
        for (i, interval) in self.intervals.iter().enumerate() {
            if distance(interval.start) < best_distance {
                best = i;
                best_distance = distance(interval.start);
            }
        }
        let Some(chosen) = self.intervals.get(best) else {
            return Some(Baseline {
                snapshot: latest.before(&HashMap::new(), self.latest_time, latest.taken_at()),
                age: now.duration_since(latest.taken_at()),
            });
        };
        let mut changes: HashMap<usize, SiteCounts> = HashMap::new();
        for interval in self.intervals.range(best..) {
            for (site, change) in decode_change(&interval.encoded) {
                let counts = changes.entry(site).or_default();
                for (c, d) in counts.iter_mut().zip(change) {
                    *c += d;
                }
            }
        }
        Some(Baseline {
            snapshot: latest.before(&changes, chosen.start_time, chosen.start),
            age: now.duration_since(chosen.start),
        })
    }

    /// How far back the snapshots reach.
    pub(super) fn reaches_back(&self) -> Duration {
        self.intervals
            .front()
            .map(|i| i.start)
            .or(self.latest.as_ref().map(|l| l.taken_at()))
            .map_or(Duration::ZERO, |at| at.elapsed())
    }

    /// How many intervals are held (the index page says it).
    pub(super) fn intervals(&self) -> usize {
        self.intervals.len()
    }
}

fn encode_change(earlier: &HeapSnapshot, later: &HeapSnapshot) -> Vec<u8> {
    let mut changed: HashMap<usize, SiteCounts> = HashMap::new();
    for (site, now) in later.site_counts() {
        let before = earlier.site_counts().get(site).copied().unwrap_or_default();
        if *now != before {
            let mut change = *now;
            for (c, b) in change.iter_mut().zip(before) {
                *c -= b;
            }
            changed.insert(*site, change);
        }
    }
    encode_sites(&changed)
}

/// Sites in increasing order, each as the varint gap from the previous one, then its eight
/// changes as zigzag varints.
fn encode_sites(sites: &HashMap<usize, SiteCounts>) -> Vec<u8> {
    let mut order: Vec<&usize> = sites.keys().collect();
    order.sort_unstable();
    let mut out = Vec::new();
    let mut previous = 0;
    for site in order {
        put_varint(&mut out, (*site - previous) as u64);
        previous = *site;
        for value in sites[site] {
            put_varint(&mut out, ((value << 1) ^ (value >> 63)) as u64);
        }
    }
    out.shrink_to_fit();
    out
}

fn decode_change(mut bytes: &[u8]) -> HashMap<usize, SiteCounts> {
    let mut sites = HashMap::new();
    let mut site = 0usize;
    while !bytes.is_empty() {
        site += take_varint(&mut bytes) as usize;
        let mut counts = SiteCounts::default();
        for value in counts.iter_mut() {
            let zigzag = take_varint(&mut bytes);
            *value = (zigzag >> 1) as i64 ^ -((zigzag & 1) as i64);
        }
        sites.insert(site, counts);
    }
    sites
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a varint written by `put_varint` (the history writes every byte it reads).
fn take_varint(bytes: &mut &[u8]) -> u64 {
    let mut value = 0u64;
    let mut shift = 0;
    while let Some((&byte, rest)) = bytes.split_first() {
        *bytes = rest;
        value |= ((byte & 0x7f) as u64) << shift;
        shift += 7;
        if byte < 0x80 || shift >= 64 {
            break;
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_through_the_encoding() {
        let mut sites = HashMap::new();
        sites.insert(3, [1, -1, i64::MAX, i64::MIN, 0, 7, -300, 1 << 40]);
        sites.insert(8191, [0, 0, 0, 0, 0, 0, 0, 1]);
        sites.insert(0, [5; 8]);
        assert_eq!(decode_change(&encode_sites(&sites)), sites);
        assert!(decode_change(&[]).is_empty());
    }
}
