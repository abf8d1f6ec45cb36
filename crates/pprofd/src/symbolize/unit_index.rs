//! Where things are in the DWARF units symbolization has read, kept between requests.
//!
//! Reading a unit means running its line program and walking its DIE tree from the start
//! until every asked-for address is found: most of symbolization's CPU, since a unit's
//! program and tree are read byte by byte and hold no index (a 10 s profile of the demo
//! router touches ~50 units). While reading, symbolization notes the address range and
//! offset of each line-program sequence and of each outermost function DIE it passes, and
//! where it stopped. A later request for an address in a noted range runs just that
//! sequence and walks just that function's subtree; any other address resumes the reading
//! where it stopped. So a service profiled again and again (a scraper every 15 s, an SRE's
//! second look) pays for each part of a unit once.
//!
//! The index holds offsets and address ranges only, no names or strings: [`Span`]s of 24
//! bytes, per object by path and build ID, at most [`MAX_SPANS`] in all (the whole index
//! starts over past it). Objects without a build ID are not indexed (a file replaced in
//! place could not be told apart). The lock around it is only ever tried, never waited for.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, TryLockError};

/// An address range and where the thing covering it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Span {
    pub begin: u64,
    pub end: u64,
    /// Offset of the sequence in the unit's line program, or of the DIE in the unit.
    pub at: u32,
    /// The DIE's depth in the unit's tree (0 for sequences).
    pub depth: i32,
}

/// Spans that do not overlap, sorted by address once [`Spans::sort`] has run.
#[derive(Default)]
pub(super) struct Spans(Vec<Span>);

impl Spans {
    /// The span holding `address`, if any.
    pub fn holding(&self, address: u64) -> Option<&Span> {
        let after = self.0.partition_point(|s| s.begin <= address);
        self.0[..after].last().filter(|s| address < s.end)
    }

    /// Notes a span passed while reading (call [`Spans::sort`] when the reading ends).
    pub fn push(&mut self, span: Span) {
        if span.begin < span.end {
            self.0.push(span);
        }
    }

    /// Sorts by address; of spans that start together (bad or folded DWARF), the one read
    /// last is found, as a walk from the start would keep the last.
    pub fn sort(&mut self) {
        self.0.sort_unstable_by_key(|s| (s.begin, s.at));
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn bytes(&self) -> usize {
        self.0.capacity() * std::mem::size_of::<Span>()
    }
}

/// Where the walk of a unit's DIE tree stopped: the next DIE to read, its depth, and the
/// depth of the function whose subtree was being skipped there.
#[derive(Clone, Copy, Debug)]
pub(super) struct DieResume {
    /// `None`: the unit's first DIE.
    pub offset: Option<usize>,
    pub depth: isize,
    pub skip_below: Option<isize>,
}

/// What is known of where things are in one unit.
pub(super) struct UnitIndex {
    /// Line-program sequences read to their end.
    pub sequences: Spans,
    /// Where reading the line program stopped (a sequence's start); `None`: at its end.
    pub lines_from: Option<usize>,
    /// Outermost function DIEs whose ranges were read (one span per range).
    pub functions: Spans,
    /// Where walking the DIE tree stopped; `None`: at its end.
    pub dies_from: Option<DieResume>,
}

impl UnitIndex {
    /// A unit not read yet.
    fn new() -> Self {
        UnitIndex {
            sequences: Spans::default(),
            lines_from: Some(0),
            functions: Spans::default(),
            dies_from: Some(DieResume {
                offset: None,
                depth: 0,
                skip_below: None,
            }),
        }
    }

    fn spans(&self) -> usize {
        self.sequences.len() + self.functions.len()
    }

    fn bytes(&self) -> usize {
        self.sequences.bytes() + self.functions.bytes()
    }
}

/// The units of one object's DWARF, by `.debug_info` offset.
#[derive(Default)]
pub(super) struct ObjectIndex {
    units: HashMap<usize, UnitIndex>,
}

impl ObjectIndex {
    /// The index of the unit at `.debug_info` offset `unit`.
    pub fn unit(&mut self, unit: usize) -> &mut UnitIndex {
        self.units.entry(unit).or_insert_with(UnitIndex::new)
    }

    fn spans(&self) -> usize {
        self.units.values().map(UnitIndex::spans).sum()
    }

    /// Memory held: the spans and the table of units.
    fn bytes(&self) -> usize {
        let table = self.units.capacity() * std::mem::size_of::<(usize, UnitIndex)>();
        table + self.units.values().map(UnitIndex::bytes).sum::<usize>()
    }
}

/// Most spans kept, over every object: 1.5 MiB. The demo router's benchmark (four 10 s CPU
/// profiles and a few dumps) leaves 13,460 of them, 480 KiB with the tables.
const MAX_SPANS: usize = 1 << 16;

/// The index of every object, by path and build ID.
static INDEXES: Mutex<Vec<(String, String, ObjectIndex)>> = Mutex::new(Vec::new());

/// The indexes, unless another request holds them. Never waited for: two requests at once
/// do not queue behind each other, and a child forked while a request held the lock (the
/// lock stays taken in the child, by a thread that does not exist there) never blocks on it.
fn indexes() -> Option<MutexGuard<'static, Vec<(String, String, ObjectIndex)>>> {
    match INDEXES.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::WouldBlock) => None,
        // A panic while reading leaves spans that may be partial: start over.
        Err(TryLockError::Poisoned(poisoned)) => {
            let mut guard = poisoned.into_inner();
            guard.clear();
            INDEXES.clear_poison();
            Some(guard)
        }
    }
}

/// Runs `read` with the index of the object at `path` with `build_id`; with a fresh one,
/// dropped after, when the object has no build ID or another request holds the indexes.
pub(super) fn with_object<R>(
    path: &str,
    build_id: &str,
    read: impl FnOnce(&mut ObjectIndex) -> R,
) -> R {
    let Some(mut all) = indexes().filter(|_| !build_id.is_empty()) else {
        return read(&mut ObjectIndex::default());
    };
    let at = match all.iter().position(|(p, b, _)| p == path && b == build_id) {
        Some(at) => at,
        None => {
            all.push((path.to_string(), build_id.to_string(), ObjectIndex::default()));
            all.len() - 1
        }
    };
    let result = read(&mut all[at].2);
    if held_spans(&all) > MAX_SPANS {
        all.clear();
    }
    result
}

fn held_spans(all: &[(String, String, ObjectIndex)]) -> usize {
    all.iter().map(|(_, _, index)| index.spans()).sum()
}

/// The spans held now and the memory they take, for the profile's comment (`None` while
/// another request holds them).
pub(super) fn held() -> Option<(usize, usize)> {
    let all = indexes()?;
    let bytes = all.iter().map(|(p, b, index)| p.len() + b.len() + index.bytes());
    Some((held_spans(&all), bytes.sum()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(begin: u64, end: u64) -> Span {
        Span {
            begin,
            end,
            at: begin as u32,
            depth: 0,
        }
    }

    #[test]
    fn finds_the_span_holding_an_address_and_none_between() {
        let mut spans = Spans::default();
        for (begin, end) in [(30, 40), (10, 20), (20, 25), (50, 50)] {
            spans.push(span(begin, end));
        }
        spans.sort();
        assert_eq!(spans.len(), 3, "an empty range is not noted");
        assert_eq!(spans.holding(10), Some(&span(10, 20)));
        assert_eq!(spans.holding(19), Some(&span(10, 20)));
        assert_eq!(spans.holding(20), Some(&span(20, 25)));
        assert_eq!(spans.holding(25), None);
        assert_eq!(spans.holding(39), Some(&span(30, 40)));
        assert_eq!(spans.holding(40), None);
        assert_eq!(spans.holding(5), None);
    }
}
