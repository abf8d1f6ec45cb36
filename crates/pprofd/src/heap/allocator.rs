//! [`Allocator`]: the `GlobalAlloc` wrapper that feeds the heap profiler.

use std::alloc::{GlobalAlloc, Layout, System};

use super::sampler;

/// A global allocator that samples allocations for `/debug/pprof/heap` and
/// `/debug/pprof/allocs`, forwarding every call to `A`.
///
/// ```
/// #[global_allocator]
/// static ALLOC: pprofd::Allocator<std::alloc::System> = pprofd::Allocator::system();
/// ```
///
/// Around another allocator: `pprofd::Allocator::new(mimalloc::MiMalloc)`.
///
/// Until [`crate::init_from_env`] starts the server (and whenever the rate is 0) it only
/// forwards: each allocation costs one thread-local subtraction and branch, each free one
/// load and branch.
pub struct Allocator<A = System> {
    inner: A,
}

impl Allocator<System> {
    /// Wraps the system allocator.
    pub const fn system() -> Self {
        Allocator { inner: System }
    }
}

impl<A> Allocator<A> {
    /// Wraps `inner`.
    pub const fn new(inner: A) -> Self {
        Allocator { inner }
    }
}

impl<A: GlobalAlloc> Allocator<A> {
    /// The slow path of an allocation whose size ran the thread's countdown out.
    #[cold]
    #[inline(never)]
    fn countdown_expired(&self, ptr: *mut u8, size: usize) {
        if let Some(rate) = sampler::countdown_expired(size) {
            if !ptr.is_null() {
                sampler::record_allocation(&self.inner, ptr, size, rate);
            }
        }
    }

    /// Records the free of `ptr` if it was sampled.
    #[inline(always)]
    fn before_free(&self, ptr: *mut u8, size: usize) {
        if sampler::may_be_live(ptr) {
            if let Some(block) = sampler::take_live(ptr) {
                sampler::record_free(block, size);
            }
        }
    }
}

// SAFETY: every method forwards to `inner` with the caller's arguments unchanged and returns
// its result; the sampler only reads the pointer value and never touches the memory.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Allocator<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which is `inner`'s.
        let ptr = unsafe { self.inner.alloc(layout) };
        if sampler::countdown(layout.size()) {
            self.countdown_expired(ptr, layout.size());
        }
        ptr
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { self.inner.alloc_zeroed(layout) };
        if sampler::countdown(layout.size()) {
            self.countdown_expired(ptr, layout.size());
        }
        ptr
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // The block leaves the live set before `inner` frees it: afterwards its address may
        // be handed to another thread and sampled again.
        self.before_free(ptr, layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract, which is `inner`'s.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A free of the old block plus an allocation of the new one. The old block leaves the
        // live set first (its address may be reused as soon as `inner` returns) and is put
        // back if `inner` fails and keeps it.
        let old = if sampler::may_be_live(ptr) {
            sampler::take_live(ptr)
        } else {
            None
        };
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract, which is `inner`'s.
        let new = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if let Some(block) = old {
            if new.is_null() {
                sampler::restore_live(ptr, block, layout.size());
            } else {
                sampler::record_free(block, layout.size());
            }
        }
        if sampler::countdown(new_size) {
            self.countdown_expired(new, new_size);
        }
        new
    }
}
