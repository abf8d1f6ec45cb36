//! What a forked child inherits of pprofd.
//!
//! A process may fork at any moment, from any thread, while a CPU profile, heap sampling and
//! thread creation recording run. The child has one thread, the one that forked; every lock
//! another thread held at that moment stays held forever in the child, and every profile in
//! progress lost the threads that drove it. pprofd's `pthread_atfork` handlers, registered
//! when the server starts, make sure that:
//! - no lock on a path the child can take without starting pprofd (creating threads,
//!   allocating, receiving signals) is held: the thread-creation hook's locks, the label
//!   registry's and the CPU session's are taken before the fork and released after it in both
//!   processes; the allocator and the signal handlers take no lock at all;
//! - the child inherits no running profile: CPU sampling state is dropped (the child has no
//!   timers and no collector; a late timer signal finds nothing published), heap sampling and creation
//!   recording are off (the child has no server to read them; they start again if the child
//!   starts one), and the count of signal handlers inside pprofd is reset (the threads that
//!   were inside do not exist in the child).
//!
//! The child handler only stores to atomics and forgets (leaks) what its parent's threads
//! owned: freeing memory another thread was using at the fork is not safe.

use std::sync::atomic::{AtomicBool, Ordering};

/// Registers the handlers once per process. Called before anything that needs them runs.
pub(crate) fn register_handlers() {
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    if REGISTERED.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: the three handlers are plain functions that stay valid for the process's life.
    let rc = unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    if rc != 0 {
        log::warn!(
            "pprofd: pthread_atfork failed ({rc}); a forked child may inherit pprofd's locks"
        );
    }
}

extern "C" fn prepare() {
    // First: a thread holding the CPU session's lock may be creating a thread, which takes
    // the thread-creation hook's locks.
    crate::cpu::before_fork();
    crate::threads::before_fork();
    crate::labels::before_fork();
}

extern "C" fn parent() {
    crate::labels::after_fork();
    crate::threads::after_fork_in_parent();
    crate::cpu::after_fork_in_parent();
}

extern "C" fn child() {
    crate::labels::after_fork_in_child();
    crate::unwind::published::after_fork_in_child();
    crate::cpu::after_fork_in_child();
    crate::recorder::after_fork_in_child();
    crate::heap::after_fork_in_child();
    crate::threads::after_fork_in_child();
}
