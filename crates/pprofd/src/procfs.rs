//! Facts about this process's threads from `/proc/self` and a few system calls.

use std::collections::HashSet;
use std::sync::Mutex;

/// The calling thread's kernel thread id. Async-signal-safe (one system call).
pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`): the difference between
/// two readings is what the work in between cost this thread, whatever else the machine does.
pub(crate) fn thread_cpu_time() -> std::time::Duration {
    clock_time(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time the whole process has used (`CLOCK_PROCESS_CPUTIME_ID`), every thread's.
pub(crate) fn process_cpu_time() -> std::time::Duration {
    clock_time(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// The reading of `clock`, one of the clocks every Linux has.
pub(crate) fn clock_time(clock: libc::clockid_t) -> std::time::Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the valid pointer it is given.
    unsafe { libc::clock_gettime(clock, &mut now) };
    std::time::Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// `duration` as the kernel takes it, for timers and timed waits.
pub(crate) fn timespec(duration: std::time::Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: duration.as_secs() as _, // the field's type: libc deprecates the name `time_t` on musl
        tv_nsec: duration.subsec_nanos() as libc::c_long,
    }
}

/// Kernel thread ids of every thread of the process, sorted.
pub(crate) fn thread_ids() -> Vec<i32> {
    let mut tids: Vec<i32> = std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    tids.sort_unstable();
    tids
}

/// A thread's name (`comm`), or its id when the thread is gone.
pub(crate) fn thread_name(tid: i32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| format!("thread-{tid}"))
}

static INTERNAL_THREADS: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

/// Marks the calling thread as pprofd's own, so profiles leave it out: CPU and off-CPU
/// profiles until the returned guard drops, heap profiles for the rest of its life.
pub(crate) fn register_internal_thread() -> InternalThread {
    crate::heap::exclude_current_thread();
    let tid = gettid();
    INTERNAL_THREADS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(tid);
    InternalThread(tid)
}

thread_local! {
    static INTERNAL_FOR_LIFE: std::cell::RefCell<Option<InternalThread>> =
        const { std::cell::RefCell::new(None) };
}

/// Marks the calling thread as pprofd's own until it exits: for pool threads that pprofd
/// does not spawn itself (the server runtime's blocking pool).
pub(crate) fn register_internal_for_life() {
    INTERNAL_FOR_LIFE.with(|slot| *slot.borrow_mut() = Some(register_internal_thread()));
}

/// Whether `tid` is one of pprofd's own threads.
pub(crate) fn is_internal_thread(tid: i32) -> bool {
    INTERNAL_THREADS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_some_and(|set| set.contains(&tid))
}

/// Keeps a thread registered as internal; see [`register_internal_thread`].
pub(crate) struct InternalThread(i32);

impl Drop for InternalThread {
    fn drop(&mut self) {
        if let Some(set) = INTERNAL_THREADS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            set.remove(&self.0);
        }
    }
}
