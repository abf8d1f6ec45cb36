//! Thread roots that the C library's unwind tables do not describe.
//!
//! glibc's CFI ends every stack itself: `_start` and `clone3` mark their caller undefined. musl
//! (libc.a as Debian ships it, and musl's default build) has no CFI at all, so a walk stops at
//! the first of its frames (see `walk`), marked truncated. Where that frame is the function a
//! thread's stack starts in, the stack is whole: these are their names, found in the symbol
//! tables when the unwind tables are loaded.

/// musl's thread roots: the first C library frame above Rust's own on each stack.
#[cfg(target_env = "musl")]
pub(crate) const UNDESCRIBED_ROOTS: &[&str] = &[
    // pthread_create's entry, which `__clone`'s child calls (a `call` from assembly whose
    // caller is no function) and which never returns.
    "start",
    // The same for C11's `thrd_create`.
    "start_c11",
    // The main thread: `_start` -> `_start_c` -> `__libc_start_main` calls it and it calls `main`.
    "libc_start_main_stage2",
];

/// Other C libraries' CFI ends their stacks.
#[cfg(not(target_env = "musl"))]
pub(crate) const UNDESCRIBED_ROOTS: &[&str] = &[];
