//! Turning the heap tables into Go's heap and allocs profiles (protobuf and text).
//!
//! A [`HeapSnapshot`] copies every site's counters; two snapshots give a delta
//! (`seconds=N`). Reports run on the server's threads with sampling off for the thread, so
//! the profiler's own work does not show up in its profiles.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};

use super::sampler;
use super::tables::{self, HeapTables, SiteCounters, FIXED_ONE, OVERFLOW_SITE};
use crate::labels::LabelSetId;
use crate::profile::legacy_text::LegacyText;
use crate::profile::{self, Frame, Label, ProfileBuilder, Resolver};
use crate::symbolize::ProcessSymbols;

/// Which of Go's two views of the same data to serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProfileKind {
    /// Live objects: default sample type `inuse_space`.
    Heap,
    /// Everything allocated: default sample type `alloc_space`.
    Allocs,
}

impl ProfileKind {
    fn default_sample_type(self) -> &'static str {
        match self {
            ProfileKind::Heap => "inuse_space",
            ProfileKind::Allocs => "alloc_space",
        }
    }
}

/// The heap profiles' `drop_frames`: the allocator's plumbing, cut from each stack with
/// everything it calls, so that a sample starts at the function of the program that allocates
/// (`Vec::with_capacity` inlined into `register` is charged to `register`'s line), as Go's heap
/// profiles start at the caller of `mallocgc`. pprof matches it against whole function names
/// cut at their first `(`, from the root down (see [`profile::remove_uninteresting_frames`]).
///
/// It names pprofd's sampler, the global-allocator shims, the `alloc` crate's functions and
/// its types' trait impls, hashbrown and std's collections. Not `<Box<F> as FnOnce>::call_once`
/// and its kind: they run closures, and sit near the root of every thread, where a match would
/// cut the whole stack. A closure called by a matching function (`collect`'s `from_iter`,
/// `format!`'s `Display` calls) is charged to the caller of that function.
pub(crate) const ALLOCATOR_FRAMES: &str = concat!(
    r"__rust_(alloc|alloc_zeroed|realloc)|__rg_(alloc|alloc_zeroed|realloc)|__rdl_(alloc|alloc_zeroed|realloc)",
    r"|<?pprofd::(heap|unwind)::.*",
    r"|alloc::.*",
    r"|<alloc::(alloc|raw_vec|vec|string|collections|sync|rc|ffi|fmt|str|slice|borrow)::.*",
    r"|<[^ ]+ as alloc::.*|<[^ ]+ as core::convert::Into<alloc::.*",
    r"|<?hashbrown::.*|std::collections::.*",
);

/// Counter indices in [`Counts`].
const ALLOC_SAMPLES: usize = 0;
const ALLOC_SAMPLED_BYTES: usize = 1;
const ALLOC_OBJECTS_FP: usize = 2;
const ALLOC_BYTES: usize = 3;
const FREE_SAMPLES: usize = 4;
const FREE_SAMPLED_BYTES: usize = 5;
const FREE_OBJECTS_FP: usize = 6;
const FREE_BYTES: usize = 7;

/// A site's counters, signed so that deltas fit.
pub(crate) type Counts = [i64; 8];

fn read(c: &SiteCounters) -> Counts {
    [
        &c.alloc_samples,
        &c.alloc_sampled_bytes,
        &c.alloc_objects_fp,
        &c.alloc_bytes,
        &c.free_samples,
        &c.free_sampled_bytes,
        &c.free_objects_fp,
        &c.free_bytes,
    ]
    .map(|a| a.load(Relaxed) as i64)
}

/// The heap profiler's counters at one moment (or their change between two moments).
pub(crate) struct HeapSnapshot {
    rate: usize,
    time: SystemTime,
    taken_at: Instant,
    duration: Duration,
    sites: HashMap<usize, Counts>,
    /// Said in the profile's comments, first.
    notes: Vec<String>,
}

impl HeapSnapshot {
    /// Copies every site's counters.
    pub fn take() -> HeapSnapshot {
        sampler::without_sampling(|| {
            let sites = sampler::tables()
                .map(|t| {
                    t.sites()
                        .map(|(site, _, _)| (site, read(t.counters(site))))
                        .collect()
                })
                .unwrap_or_default();
            HeapSnapshot {
                rate: super::sample_rate(),
                time: SystemTime::now(),
                taken_at: Instant::now(),
                duration: Duration::ZERO,
                sites,
                notes: Vec::new(),
            }
        })
    }

    /// What changed from `earlier` to `self`: allocations made in between, and the change
    /// in what is in use.
    pub fn since(mut self, earlier: &HeapSnapshot) -> HeapSnapshot {
        for (site, counts) in self.sites.iter_mut() {
            if let Some(before) = earlier.sites.get(site) {
                for (now, then) in counts.iter_mut().zip(before) {
                    *now -= then;
                }
            }
        }
        self.duration = self.taken_at.duration_since(earlier.taken_at);
        self.time = earlier.time;
        self
    }

    /// Every site's counters, by site index (for the flight recorder's history).
    pub fn site_counts(&self) -> &HashMap<usize, Counts> {
        &self.sites
    }

    /// When the snapshot was taken.
    pub fn taken_at(&self) -> Instant {
        self.taken_at
    }

    /// The snapshot as it was at `taken_at` (wall-clock `time`), `changes` (per site) earlier.
    pub fn before(
        &self,
        changes: &HashMap<usize, Counts>,
        time: SystemTime,
        taken_at: Instant,
    ) -> HeapSnapshot {
        let mut sites = self.sites.clone();
        for (site, change) in changes {
            let counts = sites.entry(*site).or_default();
            for (count, change) in counts.iter_mut().zip(change) {
                *count -= change;
            }
        }
        HeapSnapshot {
            rate: self.rate,
            time,
            taken_at,
            duration: Duration::ZERO,
            sites,
            notes: Vec::new(),
        }
    }

    /// Adds `note` to the profile's comments (where a `past` answer came from).
    pub fn with_note(mut self, note: String) -> HeapSnapshot {
        self.notes.push(note);
        self
    }

    /// The profile, symbolized. Stacks are cut at the allocator's frames
    /// ([`ALLOCATOR_FRAMES`], also written as the profile's `drop_frames` so that tools cut
    /// what only they can symbolize, as for stripped builds) unless `allocator_frames`.
    pub fn profile(&self, kind: ProfileKind, allocator_frames: bool) -> profile::proto::Profile {
        sampler::without_sampling(|| {
            let records = self.records(Trim::None);
            let mut builder = ProfileBuilder::new(
                &[
                    ("alloc_objects", "count"),
                    ("alloc_space", "bytes"),
                    ("inuse_objects", "count"),
                    ("inuse_space", "bytes"),
                ],
                ("space", "bytes"),
                self.rate as i64,
            );
            builder.set_default_sample_type(kind.default_sample_type());
            builder.set_time(self.time, self.duration);
            for comment in self.comments() {
                builder.add_comment(comment);
            }
            for record in &records.list {
                let c = &record.counts;
                let objects = |fp: i64| (fp as f64 / FIXED_ONE).round() as i64;
                let values = vec![
                    objects(c[ALLOC_OBJECTS_FP]),
                    c[ALLOC_BYTES],
                    objects(c[ALLOC_OBJECTS_FP] - c[FREE_OBJECTS_FP]),
                    c[ALLOC_BYTES] - c[FREE_BYTES],
                ];
                if values.iter().all(|&v| v == 0) {
                    continue;
                }
                let mut labels = crate::labels::profile_labels(record.labels, 0);
                labels.push(Label::num("bytes", record.block_size, None));
                builder.add_sample(record.frames.clone(), values, labels);
            }
            if !allocator_frames {
                builder.set_drop_frames(ALLOCATOR_FRAMES);
            }
            let mut built = builder.build(&records.symbols);
            // Cut here too, so readers that do not apply `drop_frames` (speedscope, this
            // crate's flame graphs) show what `go tool pprof` shows.
            profile::remove_uninteresting_frames(&mut built)
                .expect("ALLOCATOR_FRAMES is a valid pattern (tested)");
            built
        })
    }

    /// Go's legacy text form (`debug=1`): sampled counts, `heap/2*rate` as Go writes it,
    /// and each stack's frames as comments.
    pub fn text(&self) -> String {
        sampler::without_sampling(|| {
            let records = self.records(Trim::AllocatorPrefix);
            let inuse = |c: &Counts| {
                (
                    c[ALLOC_SAMPLES] - c[FREE_SAMPLES],
                    c[ALLOC_SAMPLED_BYTES] - c[FREE_SAMPLED_BYTES],
                )
            };
            let mut total = [0i64; 8];
            for record in &records.list {
                for (t, v) in total.iter_mut().zip(record.counts) {
                    *t += v;
                }
            }
            let (objects, bytes) = inuse(&total);
            let header = format!(
                "heap profile: {objects}: {bytes} [{}: {}] @ heap/{}",
                total[ALLOC_SAMPLES],
                total[ALLOC_SAMPLED_BYTES],
                2 * self.rate
            );
            // Go prints return addresses; the stored frames are return addresses minus one.
            let mut out = LegacyText::new(&header, &records.symbols).showing_return_addresses();
            for record in &records.list {
                if record.counts[ALLOC_SAMPLES] == 0 && record.counts[FREE_SAMPLES] == 0 {
                    continue;
                }
                let (objects, bytes) = inuse(&record.counts);
                let values = format!(
                    "{objects}: {bytes} [{}: {}]",
                    record.counts[ALLOC_SAMPLES], record.counts[ALLOC_SAMPLED_BYTES]
                );
                out.stack(&values, &record.frames, &[]);
            }
            for comment in self.comments() {
                out.comment(&comment);
            }
            for comment in records.symbols.comments() {
                out.comment(comment);
            }
            out.finish()
        })
    }

    /// The sites with counters, their stacks (stripped of the allocator's own frames with
    /// [`Trim::AllocatorPrefix`]), and the symbols of every address.
    fn records(&self, trim: Trim) -> Records {
        let Some(tables) = sampler::tables() else {
            return Records {
                list: Vec::new(),
                symbols: AllocatorTrimmed {
                    symbols: ProcessSymbols::resolve([]),
                    skip_inline: HashMap::new(),
                },
            };
        };
        let mut raw = Vec::new();
        for (site, stack, labels) in tables.sites() {
            let Some(&counts) = self.sites.get(&site) else {
                continue;
            };
            if counts.iter().all(|&c| c == 0) {
                continue;
            }
            raw.push((counts, labels, stored_stack(tables, site, stack)));
        }
        let mut symbols = AllocatorTrimmed {
            symbols: ProcessSymbols::resolve(
                raw.iter()
                    .flat_map(|(_, _, (frames, _))| frames.iter().copied()),
            ),
            skip_inline: HashMap::new(),
        };
        let allocator_frames = regex_lite::Regex::new(&format!("^({ALLOCATOR_FRAMES})$"))
            .expect("ALLOCATOR_FRAMES is a valid pattern (tested)");
        let list = raw
            .into_iter()
            .map(|(counts, labels, (frames, marker))| {
                let (callers, skip_inline) = match trim {
                    Trim::AllocatorPrefix => {
                        allocator_prefix(&symbols.symbols, &frames, &allocator_frames)
                    }
                    Trim::None => (0, 0),
                };
                if skip_inline > 0 {
                    symbols.skip_inline.insert(frames[callers], skip_inline);
                }
                let mut frames: Vec<Frame> = frames[callers..]
                    .iter()
                    .map(|&a| Frame::Address(a))
                    .collect();
                if let Some(marker) = marker {
                    frames.push(Frame::Synthetic(marker.into()));
                }
                // Go's `bytes` label: the average size of the sampled blocks.
                let block_size = counts[ALLOC_SAMPLED_BYTES] / counts[ALLOC_SAMPLES].max(1);
                Record {
                    counts,
                    frames,
                    block_size,
                    labels,
                }
            })
            .collect();
        Records { list, symbols }
    }

    fn comments(&self) -> Vec<String> {
        let mut comments = self.notes.clone();
        if self.rate == 0 {
            comments.push(format!(
                "pprofd: heap sampling is off ({} is 0 or the server has not started)",
                super::RATE_ENV
            ));
        } else {
            comments.push(format!(
                "pprofd: one sampled allocation per {} bytes allocated on average",
                self.rate
            ));
        }
        comments.push(
            "pprofd: allocations by pprofd's own threads (its server, symbolization) are not sampled"
                .into(),
        );
        comments.push(format!(
            "pprofd: {} sampled blocks live",
            sampler::live_blocks()
        ));
        if let Some(t) = sampler::tables() {
            let (frames, stacks, sites) = t.usage();
            comments.push(format!(
                "pprofd: heap profiler memory: {} bytes of tables and {} bytes of stack frames, holding {stacks}/{} stacks, {frames}/{} frames, {sites}/{} sites, {}/{} live blocks",
                std::mem::size_of::<HeapTables>(),
                t.chunk_bytes(),
                tables::STACKS,
                tables::ARENA_FRAMES,
                tables::SITES,
                sampler::live_blocks(),
                tables::LIVE_SLOTS,
            ));
            let full = t.losses.table_full.load(Relaxed);
            if full > 0 {
                comments.push(format!(
                    "pprofd: {full} samples recorded under [pprofd: tables full] (stack or site table full)"
                ));
            }
            let no_room = t.losses.no_stack_room.load(Relaxed);
            if no_room > 0 {
                comments.push(format!(
                    "pprofd: {no_room} samples recorded under [truncated] without their stack: lost: no stack room (the allocating thread had too little stack left to walk it safely)"
                ));
            }
            let unknown = t.losses.unknown_stack.load(Relaxed);
            if unknown > 0 {
                comments.push(format!(
                    "pprofd: {unknown} samples recorded under [truncated] without their stack: it was on memory no known mapping held (a stack created since the last report)"
                ));
            }
            let live_full = t.losses.live_set_full.load(Relaxed);
            if live_full > 0 {
                comments.push(format!(
                    "pprofd: {live_full} sampled blocks counted freed at once (live set full); in-use figures miss them"
                ));
            }
        }
        comments
    }
}

/// How [`HeapSnapshot::records`] trims stacks.
#[derive(Clone, Copy)]
enum Trim {
    /// Leaves stacks whole (the protobuf profile is cut by its `drop_frames` instead).
    None,
    /// Drops the leading allocator frames, as Go's text form hides the runtime's.
    AllocatorPrefix,
}

struct Record {
    counts: Counts,
    frames: Vec<Frame>,
    block_size: i64,
    /// The labels active on the allocating thread.
    labels: LabelSetId,
}

struct Records {
    list: Vec<Record>,
    symbols: AllocatorTrimmed,
}

/// Symbols with the allocator's inline frames removed from the addresses where the program
/// calls into it (the global allocator is often inlined into its callers).
struct AllocatorTrimmed {
    symbols: ProcessSymbols,
    /// Innermost inline frames to leave out, by address.
    skip_inline: HashMap<u64, usize>,
}

impl Resolver for AllocatorTrimmed {
    fn mappings(&self) -> &[profile::MappingInfo] {
        self.symbols.mappings()
    }

    fn frames(&self, address: u64) -> &[profile::SourceFrame] {
        let frames = self.symbols.frames(address);
        let skip = self.skip_inline.get(&address).copied().unwrap_or(0);
        &frames[skip.min(frames.len())..]
    }

    fn comments(&self) -> &[String] {
        self.symbols.comments()
    }
}

/// A site's frames as recorded, and the marker frame to put at its root, if any.
fn stored_stack(
    tables: &HeapTables,
    site: usize,
    stack: Option<usize>,
) -> (Vec<u64>, Option<&'static str>) {
    if site == OVERFLOW_SITE {
        return (Vec::new(), Some("[pprofd: tables full]"));
    }
    match stack.and_then(|s| tables.stack(s)) {
        Some(stored) => (
            stored.frames.to_vec(),
            stored.truncated.then_some("[truncated]"),
        ),
        // Claimed but not yet published by the sampling thread: the next report has it.
        None => (Vec::new(), Some("[truncated]")),
    }
}

/// Where a sampled stack leaves the allocator: the number of leading addresses that are
/// all allocator code, and how many innermost inline frames of the next address are too.
///
/// The allocator is pprofd's sampler and wrapper and the compiler's global-allocator shims,
/// then the frames after them that [`ALLOCATOR_FRAMES`] names (Go leaves its allocator out of
/// heap stacks too). Inlining varies with the
/// build, so this walks the inline frames from the leaf and cuts after the outermost
/// allocator frame near the leaf, rather than counting frames.
fn allocator_prefix(
    symbols: &ProcessSymbols,
    frames: &[u64],
    allocator_frames: &regex_lite::Regex,
) -> (usize, usize) {
    /// The sampled path is a handful of frames deep; deeper matches are the program's own.
    const SEARCH: usize = 32;
    let is_allocator = |name: &str| {
        let last = name.rsplit("::").next().unwrap_or(name);
        ["pprofd::heap::", "<pprofd::heap::", "pprofd::unwind::"]
            .iter()
            .any(|p| name.starts_with(p))
            || [
                "__rust_alloc",
                "__rust_alloc_zeroed",
                "__rust_realloc",
                "__rg_alloc",
                "__rg_alloc_zeroed",
                "__rg_realloc",
            ]
            .contains(&last)
    };
    let is_alloc_api = |name: &str| allocator_frames.is_match(name);
    // (address index, inline index, function), innermost first.
    let inline_frames: Vec<(usize, usize, &str)> = frames
        .iter()
        .enumerate()
        .take(SEARCH)
        .flat_map(|(i, &address)| {
            let chain = symbols.frames(address);
            let unknown = chain.is_empty().then_some((i, 0, ""));
            chain
                .iter()
                .enumerate()
                .map(move |(j, f)| (i, j, f.function.as_str()))
                .chain(unknown)
        })
        .collect();
    let Some(entry) = inline_frames
        .iter()
        .rposition(|&(_, _, name)| is_allocator(name))
    else {
        return (0, 0);
    };
    let api = inline_frames[entry + 1..]
        .iter()
        .take_while(|&&(_, _, name)| is_alloc_api(name))
        .count();
    match inline_frames.get(entry + 1 + api) {
        Some(&(address, inline, _)) => (address, inline),
        None => (frames.len().min(SEARCH), 0),
    }
}

/// Allocations sampled since the start.
pub(super) fn sampled_allocations() -> u64 {
    sampler::tables().map_or(0, |t| {
        t.sites()
            .map(|(site, _, _)| t.counters(site).alloc_samples.load(Relaxed))
            .sum()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_frames_name_the_plumbing_and_not_the_thread_roots() {
        let pattern = regex_lite::Regex::new(&format!("^({ALLOCATOR_FRAMES})$")).unwrap();
        for plumbing in [
            "__rust_alloc",
            "__rg_realloc",
            "<pprofd::heap::allocator::Allocator<A> as core::alloc::global::GlobalAlloc>::alloc",
            "pprofd::heap::sampler::record",
            "alloc::raw_vec::RawVecInner<A>::try_allocate_in",
            "alloc::vec::Vec<T>::with_capacity",
            "alloc::raw_vec::finish_grow",
            "alloc::boxed::Box<T>::new",
            "<alloc::alloc::Global as core::alloc::Allocator>::allocate",
            "<alloc::vec::Vec<T,A> as core::clone::Clone>::clone",
            "<str as alloc::string::ToString>::to_string",
            "hashbrown::raw::RawTable<T,A>::reserve_rehash",
            "std::collections::hash::map::HashMap<K,V,S>::insert",
        ] {
            assert!(pattern.is_match(plumbing), "{plumbing}");
        }
        for program in [
            "<alloc::boxed::Box<F,A> as core::ops::function::FnOnce<Args>>::call_once",
            "<alloc::boxed::Box<dyn core::ops::function::FnOnce<",
            "core::ops::function::FnOnce::call_once",
            "std::sys::pal::unix::thread::Thread::new::thread_start",
            "heap_workload::leak_site",
            "my_allocator::pool::take",
            "_start",
        ] {
            assert!(!pattern.is_match(program), "{program}");
        }
    }
}
