//! Per-request labels: which operation, endpoint or tenant a sample, an allocation, a thread or
//! a wait belongs to.
//!
//! ```
//! let labels = pprofd::Labels::new([("operation", "GetUser")]);
//! let answer = labels.scope(|| 6 * 7); // CPU samples and allocations in here carry operation=GetUser
//! assert_eq!(answer, 42);
//!
//! # async fn handle() {}
//! # fn spawn(_: impl std::future::Future<Output = ()> + Send + 'static) {}
//! // Async: the labels are active during every poll of the future, on whichever thread polls it.
//! spawn(labels.instrument(handle()));
//! ```
//!
//! With the `tracing` feature, [`TracingLabels`] turns span fields into labels while the span
//! is entered, so `tracing`'s own `.instrument(span)` carries them from poll to poll.
//!
//! # How it works, and the rules it keeps (docs/invariants.md 16)
//! - A label set is interned once, when [`Labels::new`] is called, in a process-wide table
//!   that never frees it; a [`Labels`] value is its small id. Entering a scope stores that id
//!   in one thread-local word; leaving puts the previous id back. Nothing is allocated and no
//!   lock is taken on either side (nested scopes: see below).
//! - The CPU timer's signal handler, the dump signal's handler and the allocator's sampler
//!   read that word, and only that word (plus the task id word): a `const`-initialised
//!   thread-local without a destructor, so reading it never runs lazy initialisation or
//!   registers anything, even in a signal handler or during a thread's teardown. The id is
//!   stored with the sample; the profile turns it back into `key = value` strings when it is
//!   built, outside any handler.
//! - A signal can arrive between any two instructions of the thread it interrupts, so the
//!   word is an atomic with a compiler fence on each side: the handler sees either the old or
//!   the new id, never a torn one, and never one that the compiler moved across the scope's
//!   body.
//! - A nested scope's labels are the outer set with the inner one's pairs added (a key in
//!   both takes the inner value, as Go's `pprof.Do` does). The merged set is interned like any
//!   other: the first time a thread meets a pair of sets it takes the table's lock once;
//!   after that a small per-thread cache answers without a lock or an allocation.
//! - The table is bounded: [`MAX_LABEL_SETS`] distinct sets. Label values should be few, as
//!   they are for metrics (operations, routes, tenants; not request ids). Past the bound, new
//!   sets are recorded as the one set `pprofd_labels = "over limit"`, and a warning is
//!   logged once.

#[cfg(feature = "tracing")]
mod tracing_layer;

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{compiler_fence, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::task::{Context, Poll};

#[cfg(feature = "tracing")]
pub use tracing_layer::TracingLabels;

/// Most distinct label sets (nested scopes' merges included) a process keeps apart.
pub const MAX_LABEL_SETS: usize = 65_535;

/// The label key and value a set gets in place of its own once [`MAX_LABEL_SETS`] are taken.
const OVER_LIMIT: (&str, &str) = ("pprofd_labels", "over limit");

/// A set of `key = value` labels, for [`Labels::scope`] and [`Labels::instrument`].
///
/// Cheap to copy (an id into a process-wide table), `Send` and `Sync`. Keys are
/// `&'static str`; values are any strings.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Labels {
    id: LabelSetId,
}

/// A label set's id: 0 is "no labels", `n` the `n`-th interned set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct LabelSetId(pub(crate) u32);

impl LabelSetId {
    /// No labels.
    pub(crate) const NONE: LabelSetId = LabelSetId(0);
}

/// One label: its key and value.
type Pair = (&'static str, Box<str>);

impl Labels {
    /// Interns the set of `pairs` (allocating once for a set not seen before). A key given
    /// twice keeps its last value.
    ///
    /// ```
    /// let op = String::from("ProductsWithReviews");
    /// let labels = pprofd::Labels::new([("operation", op), ("tenant", "acme".to_string())]);
    /// # let _ = labels;
    /// ```
    pub fn new<V: Into<String>>(pairs: impl IntoIterator<Item = (&'static str, V)>) -> Labels {
        let mut pairs: Vec<Pair> = pairs
            .into_iter()
            .map(|(key, value)| (key, value.into().into_boxed_str()))
            .collect();
        canonicalize(&mut pairs);
        Labels {
            id: registry().intern(pairs),
        }
    }

    /// Runs `f` with these labels active on this thread, then restores what was active before
    /// (also when `f` panics). Nested scopes add their pairs to the outer ones.
    pub fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let _entered = self.enter();
        f()
    }

    /// Wraps `future` so these labels are active during each of its polls, wherever it is
    /// polled, and inactive between polls: they follow a task across worker threads and never
    /// stay behind for the next task a worker polls. Under tokio, samples taken while it is
    /// polled also carry the task's id as the label `task`.
    ///
    /// Takes `self` by value (`Labels` is `Copy`) so that this method, not
    /// `tracing::Instrument::instrument`, is the one called where that trait is in scope.
    pub fn instrument<F: Future>(self, future: F) -> Instrumented<F> {
        Instrumented {
            labels: self,
            future,
        }
    }

    /// Whether these are no labels at all (`Labels::new` of nothing).
    pub fn is_empty(&self) -> bool {
        self.id == LabelSetId::NONE
    }

    /// The `key = value` pairs, sorted by key.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        pairs_of(self.id)
            .iter()
            .map(|(key, value)| (*key, value.to_string()))
            .collect()
    }

    /// Makes these labels the thread's current ones until the guard drops.
    fn enter(&self) -> Entered {
        Entered {
            previous: self.activate(),
            _same_thread: PhantomData,
        }
    }

    /// Makes these labels, inside whatever is active, the thread's current ones; returns the
    /// id that was active, for the caller to put back. The one nesting rule of scopes,
    /// instrumented futures and labelled spans.
    pub(crate) fn activate(&self) -> u32 {
        let previous = CURRENT.with(|current| current.load(Ordering::Relaxed));
        let outer = LabelSetId(previous);
        let active = if outer == LabelSetId::NONE || outer == self.id {
            self.id
        } else {
            merged(outer, self.id)
        };
        set_current(active.0);
        previous
    }
}

impl std::fmt::Debug for Labels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(pairs_of(self.id).iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

/// Sorts by key and keeps the last value of a key given twice.
fn canonicalize(pairs: &mut Vec<Pair>) {
    // A stable sort keeps equal keys in the order given; the last of each run wins.
    pairs.sort_by_key(|(key, _)| *key);
    let mut kept: Vec<Pair> = Vec::with_capacity(pairs.len());
    for pair in pairs.drain(..) {
        match kept.last_mut() {
            Some(last) if last.0 == pair.0 => *last = pair,
            _ => kept.push(pair),
        }
    }
    *pairs = kept;
}

thread_local! {
    /// The id of the labels active on this thread. Read in signal handlers and the allocator:
    /// `const`, without a destructor (module doc).
    static CURRENT: AtomicU32 = const { AtomicU32::new(0) };
    /// The tokio task being polled inside an instrumented future or entered span, 0 for none.
    static CURRENT_TASK: AtomicU64 = const { AtomicU64::new(0) };
    /// Recently merged pairs of sets on this thread: `(outer << 32 | inner, merged)`.
    static MERGES: [(std::cell::Cell<u64>, std::cell::Cell<u32>); MERGE_CACHE] =
        const { [const { (std::cell::Cell::new(0), std::cell::Cell::new(0)) }; MERGE_CACHE] };
}

const MERGE_CACHE: usize = 8;

fn set_current(id: u32) {
    // The fences keep the store where the program puts it relative to the scope's body, as
    // seen by a signal handler on this thread (module doc).
    compiler_fence(Ordering::SeqCst);
    CURRENT.with(|current| current.store(id, Ordering::Relaxed));
    compiler_fence(Ordering::SeqCst);
}

fn set_current_task(task: u64) -> u64 {
    compiler_fence(Ordering::SeqCst);
    let previous = CURRENT_TASK.with(|current| current.swap(task, Ordering::Relaxed));
    compiler_fence(Ordering::SeqCst);
    previous
}

where_pprofd_profiles! {
    /// The calling thread's active labels and tokio task id (0: none). Async-signal-safe: two
    /// loads of `const` thread-locals without destructors; no lock, no allocation.
    #[inline(always)]
    pub(crate) fn current() -> (LabelSetId, u64) {
        let task = CURRENT_TASK.with(|current| current.load(Ordering::Relaxed));
        (current_labels(), task)
    }

    /// The calling thread's active labels: one load of a `const` thread-local without a
    /// destructor. Async-signal-safe, and usable in the allocator at any point of a thread's
    /// life.
    #[inline(always)]
    pub(crate) fn current_labels() -> LabelSetId {
        LabelSetId(CURRENT.with(|current| current.load(Ordering::Relaxed)))
    }
}

/// Restores the labels active before [`Labels::enter`]. Not `Send`: scopes are entered and
/// left on one thread, innermost first.
struct Entered {
    previous: u32,
    _same_thread: PhantomData<*const ()>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        set_current(self.previous);
    }
}

/// The set of `outer`'s pairs with `inner`'s added, from this thread's cache or interned.
fn merged(outer: LabelSetId, inner: LabelSetId) -> LabelSetId {
    let key = (outer.0 as u64) << 32 | inner.0 as u64;
    let slot = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 61) as usize % MERGE_CACHE;
    if let Some(hit) = MERGES.with(|cache| {
        let (k, v) = &cache[slot];
        (k.get() == key).then(|| LabelSetId(v.get()))
    }) {
        return hit;
    }
    let merged = registry().merge(outer, inner);
    MERGES.with(|cache| {
        cache[slot].0.set(key);
        cache[slot].1.set(merged.0);
    });
    merged
}

/// The interned sets. Locked only by `Labels::new`, a thread's first merge of two sets and
/// report building; never by a signal handler or the allocator.
struct Registry {
    /// Set `n` is `sets[n - 1]`.
    sets: Vec<Arc<[Pair]>>,
    ids: HashMap<Arc<[Pair]>, u32>,
    merges: HashMap<(u32, u32), u32>,
    over_limit: Option<u32>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| {
    Mutex::new(Registry {
        sets: Vec::new(),
        ids: HashMap::new(),
        merges: HashMap::new(),
        over_limit: None,
    })
});

fn registry() -> MutexGuard<'static, Registry> {
    // A child forked while another thread held the lock must not find it held (crate::fork).
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    crate::fork::register_handlers();
    // A panic while the lock was held left the table consistent (every change is one insert).
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

where_pprofd_profiles! {
    thread_local! {
        /// The registry's lock, held by the forking thread from `pthread_atfork`'s prepare
        /// handler to its parent and child handlers.
        static HELD_ACROSS_FORK: std::cell::RefCell<Option<MutexGuard<'static, Registry>>> =
            const { std::cell::RefCell::new(None) };
    }

    /// `pthread_atfork` prepare: takes the registry's lock, so no other thread holds it at the
    /// fork.
    pub(crate) fn before_fork() {
        let guard = REGISTRY
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = HELD_ACROSS_FORK.try_with(|held| *held.borrow_mut() = Some(guard));
    }

    /// `pthread_atfork` parent: releases the lock.
    pub(crate) fn after_fork() {
        let _ = HELD_ACROSS_FORK.try_with(|held| held.borrow_mut().take());
    }

    /// `pthread_atfork` child: releases the lock (the forking thread is the child's only
    /// thread, and the table is whole); a task dump in progress in the parent is not the
    /// child's, so its polls stop noting labels.
    pub(crate) fn after_fork_in_child() {
        #[cfg(feature = "tokio-tasks")]
        NOTING.store(0, Ordering::Relaxed);
        after_fork();
    }
}

impl Registry {
    fn intern(&mut self, pairs: Vec<Pair>) -> LabelSetId {
        if pairs.is_empty() {
            return LabelSetId::NONE;
        }
        if let Some(&id) = self.ids.get(pairs.as_slice()) {
            return LabelSetId(id);
        }
        if self.sets.len() >= MAX_LABEL_SETS - 1 {
            return self.over_limit();
        }
        let pairs: Arc<[Pair]> = pairs.into();
        self.sets.push(pairs.clone());
        let id = self.sets.len() as u32;
        self.ids.insert(pairs, id);
        LabelSetId(id)
    }

    /// The one set that stands for every set past the bound, interned in the last place.
    fn over_limit(&mut self) -> LabelSetId {
        if let Some(id) = self.over_limit {
            return LabelSetId(id);
        }
        log::warn!(
            "pprofd: more than {MAX_LABEL_SETS} distinct label sets; samples with new ones are labelled {}={:?}",
            OVER_LIMIT.0,
            OVER_LIMIT.1
        );
        let pairs: Arc<[Pair]> = vec![(OVER_LIMIT.0, Box::from(OVER_LIMIT.1))].into();
        self.sets.push(pairs.clone());
        let id = self.sets.len() as u32;
        self.ids.insert(pairs, id);
        self.over_limit = Some(id);
        LabelSetId(id)
    }

    fn merge(&mut self, outer: LabelSetId, inner: LabelSetId) -> LabelSetId {
        if let Some(&id) = self.merges.get(&(outer.0, inner.0)) {
            return LabelSetId(id);
        }
        let mut pairs: Vec<Pair> = self.pairs(outer).to_vec();
        pairs.extend(self.pairs(inner).iter().cloned());
        canonicalize(&mut pairs);
        let id = self.intern(pairs);
        self.merges.insert((outer.0, inner.0), id.0);
        id
    }

    fn pairs(&self, id: LabelSetId) -> &[Pair] {
        match id.0 {
            0 => &[],
            n => self.sets.get(n as usize - 1).map_or(&[], |set| set),
        }
    }
}

/// The pairs of set `id`, sorted by key.
pub(crate) fn pairs_of(id: LabelSetId) -> Arc<[Pair]> {
    if id == LabelSetId::NONE {
        return Arc::from(Vec::new());
    }
    let registry = registry();
    match registry.sets.get(id.0 as usize - 1) {
        Some(set) => set.clone(),
        None => Arc::from(Vec::new()),
    }
}

where_pprofd_profiles! {
    /// The labels a profile sample of set `id` and tokio task `task` (0: none) carries.
    pub(crate) fn profile_labels(id: LabelSetId, task: u64) -> Vec<crate::profile::Label> {
        let mut labels: Vec<crate::profile::Label> = pairs_of(id)
            .iter()
            .map(|(key, value)| crate::profile::Label::str(key, value.to_string()))
            .collect();
        if task != 0 {
            labels.push(crate::profile::Label::str(TASK_LABEL, task.to_string()));
        }
        labels
    }
}

/// The label key of a sample's tokio task id.
pub const TASK_LABEL: &str = "task";

where_pprofd_profiles! {
    /// Go's rendering of a label set in `goroutine?debug=1`: `{"key":"value", ...}`.
    pub(crate) fn go_text(id: LabelSetId) -> String {
        let pairs = pairs_of(id);
        let inner: Vec<String> = pairs
            .iter()
            .map(|(key, value)| format!("{key:?}:{:?}", value.as_ref()))
            .collect();
        format!("{{{}}}", inner.join(", "))
    }
}

pin_project_lite::pin_project! {
    /// What [`Labels::instrument`] returns: the future, polled with the labels active.
    #[must_use = "futures do nothing unless polled"]
    pub struct Instrumented<F> {
        labels: Labels,
        #[pin]
        future: F,
    }
}

impl<F> Instrumented<F> {
    /// The future inside.
    pub fn into_inner(self) -> F {
        self.future
    }
}

impl<F: Future> Future for Instrumented<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let task = tokio_task_id();
        let _task = TaskScope::enter(task);
        let _labels = this.labels.enter();
        #[cfg(feature = "tokio-tasks")]
        TaskLabelNotes::note(task, *this.labels);
        this.future.poll(cx)
    }
}

/// While a tokio task dump runs, the labels of each task polled (tracing a task polls it), by
/// task id: what the dump shows beside each task.
#[cfg(feature = "tokio-tasks")]
pub(crate) struct TaskLabelNotes(());

#[cfg(feature = "tokio-tasks")]
static NOTING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
#[cfg(feature = "tokio-tasks")]
static NOTES: Mutex<Vec<(u64, LabelSetId)>> = Mutex::new(Vec::new());

#[cfg(feature = "tokio-tasks")]
impl TaskLabelNotes {
    /// Starts noting; overlapping dumps share the notes.
    pub(crate) fn start() -> TaskLabelNotes {
        NOTING.fetch_add(1, Ordering::AcqRel);
        TaskLabelNotes(())
    }

    /// The labels of every task polled since `start`.
    pub(crate) fn finish(self) -> HashMap<u64, LabelSetId> {
        let mut notes = NOTES.lock().unwrap_or_else(|e| e.into_inner());
        let noted = notes.iter().copied().collect();
        if NOTING.fetch_sub(1, Ordering::AcqRel) == 1 {
            notes.clear();
        }
        noted
    }

    /// Called on each poll of a labelled future: one relaxed load unless a dump runs.
    fn note(task: Option<u64>, labels: Labels) {
        if NOTING.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(task) = task {
            NOTES
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((task, labels.id));
        }
    }
}

/// Makes `task` (when known) the thread's current task id until dropped.
pub(crate) struct TaskScope {
    previous: Option<u64>,
    _same_thread: PhantomData<*const ()>,
}

impl TaskScope {
    pub(crate) fn enter(task: Option<u64>) -> TaskScope {
        TaskScope {
            previous: task.map(set_current_task),
            _same_thread: PhantomData,
        }
    }
}

impl Drop for TaskScope {
    fn drop(&mut self) {
        if let Some(previous) = self.previous {
            set_current_task(previous);
        }
    }
}

/// Makes every task a tokio runtime polls carry its id as the label `task` in CPU samples,
/// labelled or not (feature `tokio-tasks`, `--cfg tokio_unstable`): sets the runtime's
/// before- and after-poll hooks, which replace any hooks set on `builder` before.
///
/// ```
/// # #[cfg(tokio_unstable)] {
/// let mut builder = tokio::runtime::Builder::new_multi_thread();
/// let runtime = pprofd::labels::tokio_task_ids(&mut builder).build().unwrap();
/// # drop(runtime); }
/// ```
#[cfg(all(
    feature = "tokio-tasks",
    tokio_unstable,
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub fn tokio_task_ids(builder: &mut tokio::runtime::Builder) -> &mut tokio::runtime::Builder {
    builder
        .on_before_task_poll(|task| {
            set_current_task(task_number(&task.id()));
        })
        .on_after_task_poll(|_| {
            set_current_task(0);
        })
}

/// The id of the tokio task the caller runs in, if any. tokio's `task::Id` shows its number
/// through `Display` and `Hash` only; hashing it into a hasher that keeps the one `u64`
/// written is exact and costs no formatting (checked against `Display` by a test).
pub(crate) fn tokio_task_id() -> Option<u64> {
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    {
        tokio::task::try_id().map(|id| task_number(&id))
    }
    #[cfg(not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    None
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn task_number(id: &tokio::task::Id) -> u64 {
    use std::hash::{Hash, Hasher};
    #[derive(Default)]
    struct Number(u64);
    impl Hasher for Number {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.0 = self.0 << 8 | b as u64;
            }
        }
        fn write_u64(&mut self, n: u64) {
            self.0 = n;
        }
    }
    let mut number = Number::default();
    id.hash(&mut number);
    number.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_restore() {
        let operation = Labels::new([("operation", "GetUser")]);
        let tenant = Labels::new([("tenant", "acme"), ("operation", "ignored-by-inner")]);
        assert_eq!(current().0, LabelSetId::NONE);
        operation.scope(|| {
            assert_eq!(current().0, operation.id);
            tenant.scope(|| {
                let active = pairs_of(current().0);
                let active: Vec<(&str, &str)> = active.iter().map(|(k, v)| (*k, &**v)).collect();
                assert_eq!(
                    active,
                    [("operation", "ignored-by-inner"), ("tenant", "acme")]
                );
            });
            assert_eq!(current().0, operation.id);
        });
        assert_eq!(current().0, LabelSetId::NONE);
    }

    #[test]
    fn a_panic_inside_a_scope_restores_the_outer_labels() {
        let labels = Labels::new([("operation", "Panics")]);
        let caught = std::panic::catch_unwind(|| labels.scope(|| panic!("inside")));
        assert!(caught.is_err());
        assert_eq!(current().0, LabelSetId::NONE);
    }

    #[test]
    fn equal_sets_are_one_set_and_the_last_value_of_a_key_wins() {
        let a = Labels::new([("b", "2"), ("a", "1")]);
        let b = Labels::new([("a", "0"), ("b", "2"), ("a", "1")]);
        assert_eq!(a, b);
        assert_eq!(a.pairs(), [("a", "1".to_string()), ("b", "2".to_string())]);
        assert!(Labels::new(Vec::<(&str, String)>::new()).is_empty());
        assert_eq!(go_text(a.id), r#"{"a":"1", "b":"2"}"#);
    }

    #[test]
    fn a_tokio_task_id_is_read_as_tokio_prints_it() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let (read, printed) = runtime.block_on(async {
            tokio::spawn(async { (tokio_task_id(), tokio::task::id().to_string()) })
                .await
                .expect("the task ran")
        });
        assert_eq!(read.map(|n| n.to_string()), Some(printed));
        assert_eq!(tokio_task_id(), None, "outside a task");
    }
}
