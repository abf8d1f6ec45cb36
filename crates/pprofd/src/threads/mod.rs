//! Every thread's stack on demand: the OS-thread counterpart of Go's goroutine dump
//! (`/debug/pprof/goroutine`), and the stacks that created each thread
//! (`/debug/pprof/threadcreate`).
//!
//! [`ThreadDump::capture`] lists `/proc/self/task`, reads each thread's state, system call,
//! kernel wait channel and wait time from `/proc` *before* disturbing it (module `procinfo`), then
//! sends each thread a dedicated real-time signal whose handler unwinds the thread's own
//! stack into a slot prepared for it (module `signal`, which states the handler's invariants).
//! The requesting thread signals itself too and so appears in the dump. Threads that do not
//! answer before the deadline (default [`DEFAULT_DEADLINE`]) are listed with their `/proc`
//! state and no stack; nothing waits beyond the deadline.
//!
//! Threads that block the dump signal, wait for signals (`sigwaitinfo`, `sigtimedwait`, a
//! signalfd read) or already have one pending are not signalled at all (module `signal`), so a
//! host's own signal loop never receives pprofd's signal and none piles up queued. Every form
//! of the dump names them and why (`thread 1234 (signal-loop): waits in sigtimedwait`): the
//! `debug=2` text in the thread's block and in a closing `#` line, the `debug=1` text in a `#`
//! line, the profile in a comment.
//!
//! Side effect on the dumped process (docs/invariants.md, "Signals and system calls"): every thread
//! runs a short handler. The handler is installed with `SA_RESTART`, so `read`/`write` on
//! pipes and sockets and untimed `futex` waits resume unseen; `epoll_wait`, `poll`,
//! `nanosleep` and timed waits return `EINTR` as they would for any signal, and std
//! (`thread::sleep`, `Condvar`, `Mutex`, channels), tokio and mio retry them. Code that
//! treats `EINTR` from such calls as an error sees one per dump. The tests run pipe reads,
//! tokio's `epoll_wait`, `nanosleep` and a `Condvar` through 100 dumps.
//!
//! pprofd's own threads are listed like any other: a dump shows the whole process.

mod create;

pub(crate) use create::{after_fork_in_child, after_fork_in_parent, before_fork, start_recording};
pub(crate) mod procinfo;
mod render;
pub(crate) mod signal;
mod tasks;
pub(crate) use tasks::task_dump_scope_from_env;

#[cfg(feature = "tokio-tasks")]
pub use tasks::watch_tokio_runtime;

use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::procfs;
use crate::profile::{Frame, ProfileBuilder};
use procinfo::{Obstacle, ProcThread, WaitClock};
use signal::{Answer, Captured};
use tasks::TaskDump;

/// How long a dump waits for threads to answer.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);

/// Wait starts seen by earlier dumps (see [`procinfo`]).
static WAIT_CLOCK: LazyLock<Mutex<WaitClock>> = LazyLock::new(Default::default);

/// The stacks of every thread of the process at one moment.
pub struct ThreadDump {
    taken: SystemTime,
    deadline: Duration,
    threads: Vec<DumpedThread>,
    /// Async tasks, when they were asked for ([`Self::capture_with_tasks`]).
    tasks: Option<TaskDump>,
}

struct DumpedThread {
    proc: ProcThread,
    answer: Answer,
}

impl ThreadDump {
    /// Signals every thread and collects its stack, waiting at most `deadline` for answers.
    /// Fails only when the signal handler cannot be installed.
    pub fn capture(deadline: Duration) -> std::io::Result<ThreadDump> {
        let taken = SystemTime::now();
        let requester = procfs::gettid();
        let mut procs: Vec<ProcThread> = procfs::thread_ids()
            .into_iter()
            .filter_map(ProcThread::read)
            .collect();
        WAIT_CLOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(&mut procs);
        let tids: Vec<i32> = procs.iter().map(|p| p.tid).collect();
        let answers =
            signal::collect(&tids, Instant::now() + deadline, &signal::Unwinding::load())?;
        let mut threads: Vec<DumpedThread> = procs
            .into_iter()
            .zip(answers)
            .filter(|(_, answer)| !matches!(answer, Answer::Gone))
            .map(|(proc, answer)| DumpedThread { proc, answer })
            .collect();
        // The requester first, as Go lists the goroutine that asked; then by thread id.
        threads.sort_by_key(|t| (t.proc.tid != requester, t.proc.tid));
        Ok(ThreadDump {
            taken,
            deadline,
            threads,
            tasks: None,
        })
    }

    /// Like [`Self::capture`], plus the tasks of the tokio runtimes registered with
    /// `watch_tokio_runtime` (feature `tokio-tasks`), dumped at the same time (each runtime's
    /// task dump is bounded by `deadline` too), then handed to `render`. The thread dump and
    /// `render` run in one call on tokio's blocking pool: a second call right after the first
    /// would race the pool's bookkeeping and could start an extra thread per dump.
    pub async fn capture_with_tasks<R: Send + 'static>(
        deadline: Duration,
        render: impl FnOnce(ThreadDump) -> R + Send + 'static,
    ) -> std::io::Result<R> {
        let (tasks_sent, tasks) = tokio::sync::oneshot::channel();
        let threads = tokio::task::spawn_blocking(move || {
            let mut dump = ThreadDump::capture(deadline)?;
            dump.tasks = tasks.blocking_recv().ok();
            Ok(render(dump))
        });
        let _ = tasks_sent.send(TaskDump::capture(deadline).await);
        threads.await.map_err(std::io::Error::other)?
    }

    /// Number of threads listed.
    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }

    /// Number of threads listed without a stack (no answer in time, or signal blocked).
    pub fn unanswered(&self) -> usize {
        self.threads
            .iter()
            .filter(|t| !matches!(t.answer, Answer::Stack(_)))
            .count()
    }

    /// Go's `debug=2` form: one block per thread, `thread TID "name" [state, N s]:` then
    /// `function` / `\tfile:line` pairs, innermost first.
    pub fn full_text(&self) -> String {
        render::full_text(self)
    }

    /// Go's `debug=1` form: identical stacks grouped, with their count and threads.
    pub fn grouped_text(&self) -> String {
        let mut text = render::grouped_text("goroutine", &self.entries());
        if let Some(note) = self.skipped_note() {
            text.push_str(&format!("# {note}\n"));
        }
        for note in self.task_notes() {
            text.push_str(&format!("# {note}\n"));
        }
        text
    }

    /// The dump as a `goroutine/count` profile: one sample per distinct stack, thread name
    /// and state, labelled `thread` and `state`. Symbolize with [`crate::symbolize_and_encode`].
    pub fn profile(&self) -> ProfileBuilder {
        let mut builder = render::count_profile("goroutine", &self.entries());
        builder.set_time(self.taken, Duration::ZERO);
        builder.add_comment(format!(
            "stacks of {} OS threads: in pprofd each goroutine of this profile is a thread",
            self.thread_count()
        ));
        if self.unanswered() > 0 {
            builder.add_comment(format!(
                "{} threads have no stack: {}",
                self.unanswered(),
                self.no_stack_reason()
            ));
        }
        if let Some(note) = self.skipped_note() {
            builder.add_comment(note);
        }
        for note in self.task_notes() {
            builder.add_comment(note);
        }
        builder
    }

    /// The change from `earlier` to this dump, as Go's `goroutine?seconds=N` delta profile:
    /// per stack, thread name and state, how many more (or fewer) threads there are.
    pub fn profile_since(&self, earlier: &ThreadDump) -> ProfileBuilder {
        let mut builder =
            render::count_delta_profile("goroutine", &earlier.entries(), &self.entries());
        let elapsed = self
            .taken
            .duration_since(earlier.taken)
            .unwrap_or(Duration::ZERO);
        builder.set_time(earlier.taken, elapsed);
        builder.add_comment(format!(
            "change in OS thread stacks over {:.1} s: {} threads then, {} now",
            elapsed.as_secs_f64(),
            earlier.thread_count(),
            self.thread_count()
        ));
        builder
    }

    /// Threads, then tasks.
    fn entries(&self) -> Vec<render::Entry<'_>> {
        let mut entries: Vec<render::Entry<'_>> = self
            .threads
            .iter()
            .map(|t| render::Entry {
                member: "thread",
                id: t.proc.tid.to_string(),
                name: &t.proc.name,
                state: Some(t.proc.activity()),
                stack: self.frames(t),
                labels: self.labels(t).unwrap_or_default(),
            })
            .collect();
        entries.extend(self.tasks.iter().flat_map(TaskDump::entries));
        entries
    }

    /// What the dump says about tasks it does not list.
    fn task_notes(&self) -> Vec<String> {
        self.tasks.as_ref().map(TaskDump::notes).unwrap_or_default()
    }

    /// The labels active on `thread` when its handler ran, if it answered.
    fn labels(&self, thread: &DumpedThread) -> Option<crate::labels::LabelSetId> {
        match &thread.answer {
            Answer::Stack(captured) => Some(captured.labels),
            _ => None,
        }
    }

    fn frames(&self, thread: &DumpedThread) -> Vec<Frame> {
        match &thread.answer {
            Answer::Stack(captured) => captured_frames(captured),
            Answer::Silent => vec![Frame::Synthetic(format!(
                "[no answer within {} ms]",
                self.deadline.as_millis()
            ))],
            Answer::Skipped(obstacle) => vec![Frame::Synthetic(format!(
                "[no stack: not signalled, it {obstacle}]"
            ))],
            Answer::Gone => Vec::new(),
        }
    }

    fn no_stack_reason(&self) -> String {
        format!(
            "they did not answer {} within {} ms, or were not signalled (below)",
            procinfo::signal_name(signal::dump_signal()),
            self.deadline.as_millis(),
        )
    }

    /// The threads not signalled and why (`thread 1234 (signal-loop): waits in sigtimedwait`).
    fn skipped_note(&self) -> Option<String> {
        let skipped: Vec<(i32, &str, Obstacle)> = self
            .threads
            .iter()
            .filter_map(|t| match t.answer {
                Answer::Skipped(obstacle) => Some((t.proc.tid, t.proc.name.as_str(), obstacle)),
                _ => None,
            })
            .collect();
        skipped_threads_note(&skipped)
    }
}

/// Names the threads pprofd did not signal and why, for a profile comment or a `#` line: the
/// first [`NAMED_SKIPS`], then how many more.
pub(crate) fn skipped_threads_note(skipped: &[(i32, &str, Obstacle)]) -> Option<String> {
    if skipped.is_empty() {
        return None;
    }
    let mut named: Vec<String> = skipped
        .iter()
        .take(NAMED_SKIPS)
        .map(|(tid, name, obstacle)| format!("thread {tid} ({name}): {obstacle}"))
        .collect();
    if skipped.len() > NAMED_SKIPS {
        named.push(format!("and {} more", skipped.len() - NAMED_SKIPS));
    }
    Some(format!(
        "{} threads not signalled (pprofd never signals a thread that blocks its signal, \
         waits for signals or has one pending): {}",
        skipped.len(),
        named.join("; ")
    ))
}

/// Skipped threads a note names one by one.
const NAMED_SKIPS: usize = 32;

fn captured_frames(captured: &Captured) -> Vec<Frame> {
    let mut frames: Vec<Frame> = captured.frames[..captured.depth]
        .iter()
        .map(|&a| Frame::Address(a))
        .collect();
    if captured.truncated {
        frames.push(Frame::Synthetic("[truncated]".into()));
    }
    frames
}

/// The live threads and the stacks that created them, at one moment: the data of
/// `/debug/pprof/threadcreate`.
pub struct ThreadCreations {
    taken: SystemTime,
    creations: create::Creations,
}

impl ThreadCreations {
    /// Lists the live threads with their recorded creation stacks.
    pub fn capture() -> ThreadCreations {
        ThreadCreations {
            taken: SystemTime::now(),
            creations: create::entries(),
        }
    }

    /// A `threadcreate/count` profile: one sample per creation stack and thread name.
    /// Symbolize with [`crate::symbolize_and_encode`].
    pub fn profile(&self) -> ProfileBuilder {
        let mut builder = render::count_profile("threadcreate", &self.creations.borrowed());
        builder.set_time(self.taken, Duration::ZERO);
        builder.add_comment(self.creations.comment());
        builder
    }

    /// Go's `seconds=N` delta: per creation stack and thread name, how many more (or fewer)
    /// live threads there are than in `earlier`.
    pub fn profile_since(&self, earlier: &ThreadCreations) -> ProfileBuilder {
        let mut builder = render::count_delta_profile(
            "threadcreate",
            &earlier.creations.borrowed(),
            &self.creations.borrowed(),
        );
        let elapsed = self
            .taken
            .duration_since(earlier.taken)
            .unwrap_or(Duration::ZERO);
        builder.set_time(earlier.taken, elapsed);
        builder.add_comment(self.creations.comment());
        builder
    }

    /// Go's `debug=1` text.
    pub fn text(&self) -> String {
        let mut text = render::grouped_text("threadcreate", &self.creations.borrowed());
        text.push_str(&format!("# {}\n", self.creations.comment()));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `/proc` (at most 5 s) until thread `tid` sleeps in a futex wait.
    fn wait_until_sleeping_in_futex(tid: i32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let proc = ProcThread::read(tid).expect("the thread is alive");
            if proc.activity() == "futex wait" {
                return;
            }
            assert!(Instant::now() < deadline, "thread {tid}: {proc:?}");
            std::thread::yield_now();
        }
    }

    #[inline(never)]
    fn wait_for_the_test(rx: std::sync::mpsc::Receiver<()>) {
        let _ = rx.recv();
    }

    #[test]
    fn dumps_a_waiting_thread_with_its_stack_and_state() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let waiter = std::thread::Builder::new()
            .name("dump-me".into())
            .spawn(move || {
                tid_tx.send(procfs::gettid()).unwrap();
                wait_for_the_test(rx)
            })
            .unwrap();
        wait_until_sleeping_in_futex(tid_rx.recv().unwrap());
        let dump = ThreadDump::capture(DEFAULT_DEADLINE).unwrap();
        tx.send(()).unwrap();
        waiter.join().unwrap();
        let text = dump.full_text();
        let me = procfs::gettid();
        assert!(
            text.starts_with(&format!("thread {me} ")),
            "the requester comes first:\n{text}"
        );
        let block = text
            .split("\n\n")
            .find(|b| b.contains("\"dump-me\""))
            .unwrap_or_else(|| panic!("no dump-me block:\n{text}"));
        assert!(block.contains("[futex wait"), "{block}");
        assert!(block.contains("wait_for_the_test\n\t"), "{block}");
        assert!(block.contains("threads/mod.rs:"), "{block}");
    }

    #[test]
    fn a_thread_that_blocks_the_signal_is_listed_without_waiting_for_it() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let blocker = std::thread::Builder::new()
            .name("blocks-dumps".into())
            .spawn(move || {
                // SAFETY: plain sigset manipulation on this thread's own mask.
                unsafe {
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, signal::dump_signal());
                    libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                }
                ready_tx.send(()).unwrap();
                let _ = rx.recv();
            })
            .unwrap();
        ready_rx.recv().unwrap();
        let started = Instant::now();
        let dump = ThreadDump::capture(DEFAULT_DEADLINE).unwrap();
        // It gives up at its deadline rather than waiting for the blocked thread: well under
        // the blocker's lifetime (the test's), with room for a loaded machine.
        assert!(
            started.elapsed() < 5 * DEFAULT_DEADLINE,
            "{:?}",
            started.elapsed()
        );
        tx.send(()).unwrap();
        blocker.join().unwrap();
        assert!(dump.unanswered() >= 1);
        let text = dump.full_text();
        let block = text
            .split("\n\n")
            .find(|b| b.contains("\"blocks-dumps\""))
            .unwrap_or_else(|| panic!("no blocks-dumps block:\n{text}"));
        assert!(
            block.contains("[no stack: not signalled, it blocks SIGRTMIN+7]"),
            "{block}"
        );
    }

    #[test]
    fn a_thread_reading_a_signalfd_is_not_signalled() {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let reader = std::thread::Builder::new()
            .name("signalfd-loop".into())
            .spawn(move || {
                // SAFETY: blocks SIGUSR2 in this thread only and reads it from a signalfd, as
                // a host's signal loop does; `set` and `info` are valid for the calls.
                unsafe {
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, libc::SIGUSR2);
                    libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                    let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
                    assert!(fd >= 0);
                    tid_tx.send(procfs::gettid()).unwrap();
                    let mut info = [0u8; 128];
                    let n = libc::read(fd, info.as_mut_ptr().cast(), info.len());
                    libc::close(fd);
                    n
                }
            })
            .unwrap();
        let tid = tid_rx.recv().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while ProcThread::read(tid).map(|p| p.activity()) != Some("read".into()) {
            assert!(Instant::now() < deadline, "the reader never sat in read");
            std::thread::yield_now();
        }
        let dump = ThreadDump::capture(DEFAULT_DEADLINE).unwrap();
        // SAFETY: tgkill to a live thread of this process, which waits for SIGUSR2.
        unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR2) };
        assert_eq!(reader.join().unwrap(), 128, "the reader got its SIGUSR2");
        let text = dump.full_text();
        assert!(
            text.contains(&format!("thread {tid} (signalfd-loop): reads a signalfd")),
            "{text}"
        );
    }
}
