//! Handing data to signal handlers without locks.
//!
//! A [`Published<T>`] is a pointer that the profiler's own threads set and replace, and that
//! signal handlers read. Handlers announce themselves with [`enter`] (one atomic increment)
//! before loading any published pointer; a replaced value is dropped only once no handler is
//! inside, so a handler never sees freed memory and never waits for anything.
//!
//! Ordering argument: a handler increments `HANDLERS_INSIDE` and then loads the pointer; a
//! publisher swaps the pointer and then waits for `HANDLERS_INSIDE == 0`. All four accesses
//! are `SeqCst`, so either the handler's load comes after the swap (it sees the new value) or
//! its increment comes before the publisher's check (the publisher waits for it).

use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

static HANDLERS_INSIDE: AtomicUsize = AtomicUsize::new(0);

/// Proof that the current signal handler has announced itself; published values may be read
/// for as long as it lives.
pub(crate) struct HandlerGuard(PhantomData<*const ()>);

/// Announces a signal handler. Async-signal-safe: one atomic increment.
pub(crate) fn enter() -> HandlerGuard {
    HANDLERS_INSIDE.fetch_add(1, SeqCst);
    HandlerGuard(PhantomData)
}

/// In a forked child (`crate::fork`): no handler is inside, whatever the count said when the
/// process forked (the threads that were inside do not exist in the child).
pub(crate) fn after_fork_in_child() {
    HANDLERS_INSIDE.store(0, SeqCst);
}

impl Drop for HandlerGuard {
    fn drop(&mut self) {
        HANDLERS_INSIDE.fetch_sub(1, SeqCst);
    }
}

/// A value owned by the profiler and readable from signal handlers.
pub(crate) struct Published<T> {
    ptr: AtomicPtr<T>,
}

impl<T> Published<T> {
    /// An empty slot.
    pub const fn new() -> Self {
        Published {
            ptr: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// The current value, valid while `guard` lives. Async-signal-safe: one atomic load.
    pub fn get<'g>(&self, _guard: &'g HandlerGuard) -> Option<&'g T> {
        // SAFETY: a non-null pointer came from `Box::into_raw` in `replace`, and `replace`
        // frees a value only after every handler that could have loaded it has left (module doc).
        unsafe { self.ptr.load(SeqCst).as_ref() }
    }

    /// Replaces the value (`None` clears it) and returns the old one once no handler can
    /// still be reading it. Never call from a signal handler.
    pub fn replace(&self, value: Option<Box<T>>) -> Option<Box<T>> {
        let new = value.map_or(ptr::null_mut(), Box::into_raw);
        let old = self.ptr.swap(new, SeqCst);
        if old.is_null() {
            return None;
        }
        while HANDLERS_INSIDE.load(SeqCst) != 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
        // SAFETY: `old` came from `Box::into_raw`, is no longer reachable through `ptr`, and
        // no handler that loaded it is still running.
        Some(unsafe { Box::from_raw(old) })
    }

    /// Runs `f` on the current value, outside a signal handler.
    ///
    /// # Safety
    /// No other thread may call [`Published::replace`] on this value until `f` returns: the
    /// caller is its only publisher (the collector that owns it) or holds the lock that every
    /// publisher of it takes. Otherwise the value could be freed while `f` reads it.
    pub unsafe fn with_owner<R>(&self, f: impl FnOnce(Option<&T>) -> R) -> R {
        // SAFETY: per the contract, nothing frees the value during `f`.
        f(unsafe { self.ptr.load(SeqCst).as_ref() })
    }

    /// In a forked child (`crate::fork`): empties the slot without freeing the value, which
    /// a thread of the parent may have been reading when the process forked.
    pub fn forget_in_child(&self) {
        self.ptr.store(ptr::null_mut(), SeqCst);
    }
}

// SAFETY: the pointer is only ever shared as `&T` across threads.
unsafe impl<T: Sync + Send> Sync for Published<T> {}
