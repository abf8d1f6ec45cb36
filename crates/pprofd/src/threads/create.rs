//! Which code created each live thread: the data behind `/debug/pprof/threadcreate`.
//!
//! With the `threadcreate` cargo feature (on by default, Linux), pprofd defines
//! `pthread_create` itself. Linking the executable resolves the calls made by its own code
//! (std's `thread::spawn`, tokio, rayon, ...) to this definition, which
//! - unwinds the creator's stack from its own frame with the same unwinder the signal
//!   handlers use (not in a signal context: it may allocate and lock, and it does),
//! - wraps the start routine so the new thread files that stack under its kernel thread id,
//!   and a thread-local guard removes the entry when the thread exits,
//! - and calls the C library's `pthread_create`, found with `dlsym(RTLD_NEXT, ...)`.
//!
//! Until the pprof server starts, the definition only forwards (an application that links
//! pprofd without enabling it pays one branch per thread created). Threads created before
//! that (start pprofd first thing in `main`), by shared libraries calling their own C
//! library directly, or without pthreads, have no recorded stack and are listed as such. Turn the feature off (`default-features = false`) when another
//! component of the program must own the `pthread_create` symbol; threads are then listed
//! by name only and the profile says so.
//!
//! The first thread created loads the unwind tables (a few milliseconds); they are reloaded
//! when libraries are loaded or unloaded. Each creation then costs one stack walk.

use crate::procfs;
use crate::profile::Frame;

use super::render::Entry;

/// Live threads with their creation stacks, owned.
pub(super) struct Creations {
    threads: Vec<(i32, String, Vec<Frame>)>,
}

impl Creations {
    pub fn borrowed(&self) -> Vec<Entry<'_>> {
        self.threads
            .iter()
            .map(|(tid, name, stack)| Entry {
                member: "thread",
                id: tid.to_string(),
                name,
                state: None,
                stack: stack.clone(),
                labels: crate::labels::LabelSetId::NONE,
            })
            .collect()
    }

    pub fn comment(&self) -> String {
        if cfg!(feature = "threadcreate") {
            "creation stacks recorded by pprofd's pthread_create (threadcreate feature) from the \
             pprof server's start on; threads created before it or outside pthread_create are \
             rooted at [creation not recorded]"
                .into()
        } else {
            "creation stacks are not recorded: pprofd was built without its threadcreate \
             feature; threads are listed by name only"
                .into()
        }
    }
}

/// Every live thread with the stack that created it, where known.
pub(super) fn entries() -> Creations {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let threads = procfs::thread_ids()
        .into_iter()
        .map(|tid| {
            let stack = if tid == pid {
                vec![Frame::Synthetic("[process main thread]".into())]
            } else {
                recorded(tid)
                    .unwrap_or_else(|| vec![Frame::Synthetic("[creation not recorded]".into())])
            };
            (tid, procfs::thread_name(tid), stack)
        })
        .collect();
    Creations { threads }
}

#[cfg(not(feature = "threadcreate"))]
fn recorded(_tid: i32) -> Option<Vec<Frame>> {
    None
}

#[cfg(feature = "threadcreate")]
use hook::recorded;
#[cfg(feature = "threadcreate")]
pub(crate) use hook::{after_fork_in_child, after_fork_in_parent, before_fork, start_recording};

/// Without the feature there is nothing to record.
#[cfg(not(feature = "threadcreate"))]
pub(crate) fn start_recording() {}
/// Without the feature nothing is held across fork.
#[cfg(not(feature = "threadcreate"))]
pub(crate) fn before_fork() {}
/// Without the feature nothing is held across fork.
#[cfg(not(feature = "threadcreate"))]
pub(crate) fn after_fork_in_parent() {}
/// Without the feature nothing is held across fork.
#[cfg(not(feature = "threadcreate"))]
pub(crate) fn after_fork_in_child() {}

#[cfg(feature = "threadcreate")]
mod hook {
    //! Invariants, which every change here must keep:
    //! - With recording off (before the server starts, and in a forked child) the hook takes
    //!   no lock and allocates nothing: one atomic load of the resolved C library function,
    //!   one of the recording flag, then the call.
    //! - The hook always creates the thread when the C library can: the real
    //!   `pthread_create` is found with `dlsym(RTLD_NEXT)` in dynamic executables and by its
    //!   internal name (glibc's `__pthread_create_2_1`, musl's `__pthread_create`, linked
    //!   directly) in static ones, where `dlsym` finds nothing.
    //! - Fork: the two locks of the recording path are taken by a `pthread_atfork` prepare
    //!   handler and released after the fork in parent and child, so a child forked while
    //!   another thread records never finds them held; the child starts with recording off
    //!   and an empty table (its parent's threads are not its own).

    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, MutexGuard};

    use crate::procfs;
    use crate::profile::Frame;
    use crate::unwind::ring::MAX_DEPTH;
    use crate::unwind::{self, StackRange, UnwindTables};

    type StartRoutine = extern "C" fn(*mut libc::c_void) -> *mut libc::c_void;
    type PthreadCreate = unsafe extern "C" fn(
        *mut libc::pthread_t,
        *const libc::pthread_attr_t,
        StartRoutine,
        *mut libc::c_void,
    ) -> libc::c_int;

    /// Frames of pprofd's own making at the leaf of a recorded stack: the capture function
    /// and `pthread_create` itself.
    const OWN_FRAMES: usize = 2;

    /// A creator's stack, leaf first, and whether the unwinder stopped before its root.
    type CreatorStack = (Vec<u64>, bool);
    type Stacks = Option<HashMap<i32, CreatorStack>>;
    type Tables = Option<Arc<UnwindTables>>;

    /// Set once the pprof server starts; until then the hook only forwards.
    static RECORDING: AtomicBool = AtomicBool::new(false);

    /// Starts recording creation stacks (from the server's start on).
    pub(crate) fn start_recording() {
        crate::fork::register_handlers();
        RECORDING.store(true, Ordering::Relaxed);
    }

    /// Creation stacks of live threads by thread id.
    static STACKS: Mutex<Stacks> = Mutex::new(None);
    static TABLES: Mutex<Tables> = Mutex::new(None);

    thread_local! {
        /// Set on threads whose stack is in `STACKS`; its drop at thread exit removes it.
        static FORGET_AT_EXIT: Cell<Option<Forget>> = const { Cell::new(None) };
        /// The recording path's locks, held by the forking thread across `fork`.
        static HELD_ACROSS_FORK: RefCell<Option<(MutexGuard<'static, Tables>, MutexGuard<'static, Stacks>)>> =
            const { RefCell::new(None) };
    }

    /// `pthread_atfork` prepare: takes both locks (neither is held for long, and no thread
    /// holding one waits for anything the forking thread holds).
    pub(crate) fn before_fork() {
        let tables = TABLES.lock().unwrap_or_else(|e| e.into_inner());
        let stacks = STACKS.lock().unwrap_or_else(|e| e.into_inner());
        let _ = HELD_ACROSS_FORK.try_with(|held| *held.borrow_mut() = Some((tables, stacks)));
    }

    /// `pthread_atfork` parent: releases the locks.
    pub(crate) fn after_fork_in_parent() {
        let _ = HELD_ACROSS_FORK.try_with(|held| held.borrow_mut().take());
    }

    /// `pthread_atfork` child: recording off, the parent's threads forgotten (their map is
    /// leaked rather than freed in the child), the locks released.
    pub(crate) fn after_fork_in_child() {
        RECORDING.store(false, Ordering::Relaxed);
        let _ = HELD_ACROSS_FORK.try_with(|held| {
            if let Some((_tables, mut stacks)) = held.borrow_mut().take() {
                std::mem::forget(stacks.take());
            }
        });
        let _ = FORGET_AT_EXIT.try_with(|forget| std::mem::forget(forget.take()));
    }

    struct Forget(i32);

    impl Drop for Forget {
        fn drop(&mut self) {
            if let Some(map) = STACKS.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                map.remove(&self.0);
            }
        }
    }

    /// The creation stack of `tid`, leaf first, if this hook recorded it.
    pub(super) fn recorded(tid: i32) -> Option<Vec<Frame>> {
        let stacks = STACKS.lock().unwrap_or_else(|e| e.into_inner());
        let (stack, truncated) = stacks.as_ref()?.get(&tid)?;
        let mut frames: Vec<Frame> = stack.iter().map(|&a| Frame::Address(a)).collect();
        if *truncated {
            frames.push(Frame::Synthetic("[truncated]".into()));
        }
        Some(frames)
    }

    /// The C library's `pthread_create`. Lock-free: racing first calls resolve the same
    /// address and store it twice.
    fn real_pthread_create() -> Option<PthreadCreate> {
        static REAL: AtomicUsize = AtomicUsize::new(0);
        let mut address = REAL.load(Ordering::Relaxed);
        if address == 0 {
            address = resolve_real_pthread_create();
            REAL.store(address, Ordering::Relaxed);
        }
        // SAFETY: a non-null address of the C library's `pthread_create` has its signature.
        (address != 0).then(|| unsafe { std::mem::transmute::<usize, PthreadCreate>(address) })
    }

    #[cfg(not(target_feature = "crt-static"))]
    fn resolve_real_pthread_create() -> usize {
        // SAFETY: RTLD_NEXT with a NUL-terminated name is a valid lookup.
        unsafe { libc::dlsym(libc::RTLD_NEXT, c"pthread_create".as_ptr()) as usize }
    }

    /// In a static executable the C library is linked in and `dlsym` finds nothing; its
    /// `pthread_create` is a weak alias that pprofd's definition overrides, of a global
    /// function under an internal name, which is named here directly.
    #[cfg(target_feature = "crt-static")]
    fn resolve_real_pthread_create() -> usize {
        extern "C" {
            #[cfg_attr(target_env = "gnu", link_name = "__pthread_create_2_1")]
            #[cfg_attr(target_env = "musl", link_name = "__pthread_create")]
            fn c_library_pthread_create(
                thread: *mut libc::pthread_t,
                attr: *const libc::pthread_attr_t,
                routine: StartRoutine,
                arg: *mut libc::c_void,
            ) -> libc::c_int;
        }
        c_library_pthread_create as PthreadCreate as usize
    }

    struct Start {
        routine: StartRoutine,
        arg: *mut libc::c_void,
        stack: CreatorStack,
    }

    /// pprofd's `pthread_create` (module doc): records the creator's stack, then creates the
    /// thread with the C library's `pthread_create`.
    ///
    /// # Safety
    /// The contract of POSIX `pthread_create`.
    #[no_mangle]
    pub unsafe extern "C" fn pthread_create(
        thread: *mut libc::pthread_t,
        attr: *const libc::pthread_attr_t,
        routine: StartRoutine,
        arg: *mut libc::c_void,
    ) -> libc::c_int {
        let Some(real) = real_pthread_create() else {
            return libc::EAGAIN;
        };
        if !RECORDING.load(Ordering::Relaxed) {
            // SAFETY: the caller's arguments pass through unchanged.
            return unsafe { real(thread, attr, routine, arg) };
        }
        let start = Box::into_raw(Box::new(Start {
            routine,
            arg,
            stack: creator_stack(),
        }));
        // SAFETY: the caller's arguments pass through; `trampoline` takes back `start`.
        let rc = unsafe { real(thread, attr, trampoline, start as *mut libc::c_void) };
        if rc != 0 {
            // SAFETY: the thread was not created, so `start` is still ours.
            drop(unsafe { Box::from_raw(start) });
        }
        rc
    }

    extern "C" fn trampoline(start: *mut libc::c_void) -> *mut libc::c_void {
        // SAFETY: `start` is the box `pthread_create` leaked for this thread.
        let Start {
            routine,
            arg,
            stack,
        } = *unsafe { Box::from_raw(start as *mut Start) };
        let tid = procfs::gettid();
        // The heap sampler bounds this thread's stack walks by its stack, known from here on
        // without a lookup inside the allocator.
        if let Some(range) = own_stack_range() {
            crate::heap::set_thread_stack(range);
        }
        STACKS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(HashMap::new)
            .insert(tid, stack);
        FORGET_AT_EXIT.set(Some(Forget(tid)));
        routine(arg)
    }

    /// The calling thread's stack, leaf first, without pprofd's own frames.
    #[inline(never)]
    fn creator_stack() -> CreatorStack {
        let regs = unwind::current_regs();
        let Some(tables) = current_tables() else {
            return (Vec::new(), true);
        };
        let mut frames = vec![0; MAX_DEPTH];
        let unwound = unwind::unwind_from(regs, &tables, own_stack_range(), &mut frames);
        frames.truncate(unwound.depth);
        frames.drain(..OWN_FRAMES.min(frames.len()));
        (frames, unwound.truncated)
    }

    /// Unwind tables for the loaded objects, reloaded after `dlopen`/`dlclose`.
    fn current_tables() -> Option<Arc<UnwindTables>> {
        let mut tables = TABLES.lock().unwrap_or_else(|e| e.into_inner());
        if tables.as_ref().is_none_or(|t| t.is_stale()) {
            *tables = Some(Arc::new(UnwindTables::load()));
        }
        tables.clone()
    }

    /// The calling thread's stack mapping, from its pthread attributes. Not for the main
    /// thread (glibc reads `/proc/self/maps` for it) or the allocator (it takes the thread
    /// descriptor's lock): call it from thread creation only.
    fn own_stack_range() -> Option<StackRange> {
        // SAFETY: a zeroed attr is filled by pthread_getattr_np and destroyed below.
        let mut attr: libc::pthread_attr_t = unsafe { std::mem::zeroed() };
        // SAFETY: `attr` is valid for writing; pthread_self is always valid.
        if unsafe { libc::pthread_getattr_np(libc::pthread_self(), &mut attr) } != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        // SAFETY: `attr` was initialised above; the out pointers are valid.
        let rc = unsafe { libc::pthread_attr_getstack(&attr, &mut addr, &mut size) };
        // SAFETY: `attr` was initialised by pthread_getattr_np.
        unsafe { libc::pthread_attr_destroy(&mut attr) };
        (rc == 0).then(|| StackRange {
            floor: addr as u64,
            end: addr as u64 + size as u64,
        })
    }
}

#[cfg(all(test, feature = "threadcreate"))]
mod tests {
    use super::*;

    #[inline(never)]
    fn spawn_and_report() -> Vec<Frame> {
        start_recording();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            tx.send(procfs::gettid()).unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        let stack = recorded(tid).expect("the hook recorded the thread");
        done_tx.send(()).unwrap();
        handle.join().unwrap();
        assert!(recorded(tid).is_none(), "an exited thread is forgotten");
        stack
    }

    #[test]
    fn records_the_creators_stack() {
        let stack = spawn_and_report();
        let addresses: Vec<u64> = stack.iter().filter_map(Frame::address).collect();
        let symbols = crate::symbolize::ProcessSymbols::resolve(addresses.iter().copied());
        use crate::profile::Resolver;
        let names: Vec<String> = addresses
            .iter()
            .flat_map(|&a| symbols.frames(a).iter().map(|f| f.function.clone()))
            .collect();
        assert!(
            names.iter().any(|n| n.ends_with("spawn_and_report")),
            "{names:#?}"
        );
        assert!(
            !names.iter().any(|n| n.ends_with("creator_stack")),
            "pprofd's own frames are cut: {names:#?}"
        );
    }
}
