//! Subscriptions: `GET /subscribe?topic=T` registers a handler that buffers the topic's events.
//!
//! The registry is global, as such registries usually are, so that publishers can find every
//! handler. A handler must be removed when its client goes away; with the `leak` incident the
//! router forgets to, and every subscription's backlog stays allocated for good.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

/// Bytes each subscription reserves for events its client has not read yet.
pub const BACKLOG_BYTES: usize = 64 * 1024;

/// A registered subscription handler.
struct Subscription {
    /// Events waiting to be delivered, starting with the topic's snapshot.
    backlog: Vec<u8>,
}

static REGISTRY: LazyLock<Mutex<HashMap<u64, Subscription>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Registers a handler for `topic`; returns its id and the first event to send (the snapshot).
#[inline(never)]
pub fn register(topic: &str) -> (u64, String) {
    let snapshot = format!(
        r#"{{"topic":{},"event":"snapshot","seq":0}}"#,
        serde_json::Value::from(topic)
    );
    let mut backlog = Vec::with_capacity(BACKLOG_BYTES);
    backlog.extend_from_slice(snapshot.as_bytes());
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    lock_registry().insert(id, Subscription { backlog });
    (id, snapshot)
}

/// Removes the handler `id`, freeing its backlog.
pub fn unregister(id: u64) {
    lock_registry().remove(&id);
}

/// How many handlers are registered and how many bytes their backlogs reserve.
pub fn usage() -> (usize, usize) {
    let registry = lock_registry();
    let bytes = registry.values().map(|s| s.backlog.capacity()).sum();
    (registry.len(), bytes)
}

fn lock_registry() -> std::sync::MutexGuard<'static, HashMap<u64, Subscription>> {
    // A panic elsewhere while holding the lock leaves the map itself consistent.
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
