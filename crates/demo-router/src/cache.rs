//! The inventory cache shared by every request, and its janitor thread.
//!
//! Stock levels come from an inventory upstream that takes a few milliseconds to answer, so the
//! router caches them briefly. Two locks guard the cache: `entries` (the cached stock) and
//! `stats` (hit and miss counters). The correct code holds each lock only to read or write
//! memory, and takes `stats` only when it holds no other lock. The `contention` incident holds
//! `entries` across the upstream call, so requests queue behind whichever one is refreshing; the
//! `deadlock` incident also updates `stats` while holding `entries`, while the janitor takes
//! `stats` first and then `entries`: two lock orders, and the router stops answering.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::incidents::Incidents;

/// How long the inventory upstream takes to answer one lookup.
pub const UPSTREAM_LATENCY: Duration = Duration::from_millis(2);
/// How long a cached stock level is served before it is fetched again.
const FRESH_FOR: Duration = Duration::from_millis(100);
/// How often the janitor drops stale entries and refreshes the statistics.
const SWEEP_EVERY: Duration = Duration::from_millis(20);

struct CachedStock {
    stock: Value,
    fetched: Instant,
}

#[derive(Default)]
struct CacheStats {
    hits: u64,
    misses: u64,
    entries: usize,
}

impl CacheStats {
    fn record(&mut self, hit: bool) {
        if hit {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
    }
}

static ENTRIES: LazyLock<Mutex<HashMap<String, CachedStock>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
static STATS: LazyLock<Mutex<CacheStats>> = LazyLock::new(|| Mutex::new(CacheStats::default()));
// Every lock call is written out where it happens (no helper), so that stacks in profiles and
// thread dumps show the function and line that takes the lock. A poisoned lock is used as is:
// the cache holds plain data that a panicking request cannot leave half-updated.

/// The stock of `product_id`, from the cache or the inventory upstream.
pub fn stock(product_id: &str, incidents: Incidents) -> Value {
    if incidents.holds_cache_lock_across_upstream() {
        stock_holding_lock(product_id, incidents.deadlock)
    } else {
        stock_fetching_outside_lock(product_id)
    }
}

/// The correct lookup: the upstream is called with no lock held.
fn stock_fetching_outside_lock(product_id: &str) -> Value {
    let cached = ENTRIES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(product_id)
        .filter(|c| c.fetched.elapsed() < FRESH_FOR)
        .map(|c| c.stock.clone());
    let hit = cached.is_some();
    let stock = cached.unwrap_or_else(|| {
        let stock = inventory_upstream(product_id);
        ENTRIES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                product_id.to_string(),
                CachedStock {
                    stock: stock.clone(),
                    fetched: Instant::now(),
                },
            );
        stock
    });
    STATS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .record(hit);
    stock
}

/// The incident: `entries` stays locked while the upstream answers, and with `stats_under_entries`
/// the statistics are updated before `entries` is released (lock order entries → stats).
#[inline(never)]
fn stock_holding_lock(product_id: &str, stats_under_entries: bool) -> Value {
    let mut entries = ENTRIES.lock().unwrap_or_else(PoisonError::into_inner); // lock order A, first lock: entries
    let cached = entries
        .get(product_id)
        .filter(|c| c.fetched.elapsed() < FRESH_FOR)
        .map(|c| c.stock.clone());
    let hit = cached.is_some();
    let stock = cached.unwrap_or_else(|| {
        let stock = inventory_upstream(product_id);
        entries.insert(
            product_id.to_string(),
            CachedStock {
                stock: stock.clone(),
                fetched: Instant::now(),
            },
        );
        stock
    });
    if stats_under_entries {
        let mut stats = STATS.lock().unwrap_or_else(PoisonError::into_inner); // lock order A, second lock: stats while holding entries
        stats.record(hit);
    } else {
        drop(entries);
        STATS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(hit);
    }
    stock
}

/// The inventory service: a blocking call that answers after [`UPSTREAM_LATENCY`].
fn inventory_upstream(product_id: &str) -> Value {
    std::thread::sleep(UPSTREAM_LATENCY);
    let seed = product_id
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    json!({"warehouse": format!("wh-{}", seed % 5), "available": seed % 97})
}

/// Starts the janitor thread, which runs for the life of the process.
pub fn spawn_janitor(incidents: Incidents) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("cache-janitor".into())
        .spawn(move || loop {
            std::thread::sleep(SWEEP_EVERY);
            if incidents.deadlock {
                sweep_stats_first();
            } else {
                sweep();
            }
        })
        .map(|_| ())
}

/// The correct sweep: one lock at a time.
fn sweep() {
    let remaining = {
        let mut entries = ENTRIES.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|_, c| c.fetched.elapsed() < FRESH_FOR);
        entries.len()
    };
    STATS.lock().unwrap_or_else(PoisonError::into_inner).entries = remaining;
}

/// The incident's sweep: takes `stats`, then `entries` (lock order B, the opposite of A).
#[inline(never)]
fn sweep_stats_first() {
    let mut stats = STATS.lock().unwrap_or_else(PoisonError::into_inner); // lock order B, first lock: stats
    let mut entries = ENTRIES.lock().unwrap_or_else(PoisonError::into_inner); // lock order B, second lock: entries while holding stats
    entries.retain(|_, c| c.fetched.elapsed() < FRESH_FOR);
    stats.entries = entries.len();
}

/// Hits, misses and entries as last counted, for `/healthz`.
pub fn stats() -> Value {
    let stats = STATS.lock().unwrap_or_else(PoisonError::into_inner);
    json!({"hits": stats.hits, "misses": stats.misses, "entries": stats.entries})
}
