//! Async tasks in goroutine dumps: tokio's task dumps for the runtimes the service registered
//! with [`watch_tokio_runtime`].
//!
//! tokio traces a task by re-polling it in a tracing mode, on the runtime's own workers, and
//! records one backtrace per tokio leaf future the task is awaiting (its await points). The
//! tracing runs outside any signal handler and unwinds with the `backtrace` crate, which is
//! fine there; pprofd only turns the frames' addresses into its own stacks.
//!
//! tokio hands the frames out only symbolized by the `backtrace` crate (tens of MiB of parsed
//! debug info); pprofd reads the unresolved instruction pointers from the trace instead and
//! symbolizes them itself, unit by unit ([`crate::symbolize`]). Should a tokio version not
//! show them, it falls back to tokio's resolution and then clears the `backtrace` crate's
//! global cache, which would otherwise stay resident (docs/invariants.md invariant 5).
//!
//! Multi-thread runtimes are dumped only with `PPROF_TOKIO_TASKS=all`. tokio (1.54 and
//! before) makes the workers of a multi-thread runtime meet at a barrier that gives up after
//! 250 ms, and its timed wait forgets to take its arrival back (tokio-rs/tokio#8370). A dump
//! in which one worker is late (busy, blocked, or descheduled on a loaded machine) leaves the
//! barrier one arrival ahead for the life of the runtime; from then on a worker waits the full
//! 250 ms at every dump, one worker is elected leader alone and traces tasks while the others
//! still run them (tokio's `next.is_notified()` assertion can then panic it), and the leader
//! stays parked until the next dump, with the task in its LIFO slot: router requests stalled
//! 300 ms at every dump and one waited past a 5 s client timeout. A worker that checks for a
//! trace between the leader's result and the end of the request starts a second, lone round:
//! a healthy service is enough. Current-thread runtimes trace without a barrier.
//!
//! A runtime's dump completes only when every one of its workers comes back to the
//! scheduler, so it never completes while a worker is blocked: the very hang a goroutine dump
//! is asked for. Each runtime's dump is bounded by the dump deadline and a runtime that did
//! not answer is reported as timed out, with why. The pending dump is left to finish on its
//! own (tokio gives no way to cancel it), and no second one is started for that runtime until
//! it has, so a wedged runtime costs one parked dump, not one per request.

use std::fmt::Write;
use std::time::Duration;

use crate::error::Error;

use super::render::Entry;
use crate::profile::Frame;

#[cfg(feature = "tokio-tasks")]
pub use watch::watch_tokio_runtime;

#[cfg(all(feature = "tokio-tasks", not(tokio_unstable)))]
compile_error!(
    "pprofd's `tokio-tasks` feature uses tokio's unstable task dumps: build with \
     RUSTFLAGS=\"--cfg tokio_unstable\" (or `rustflags` in .cargo/config.toml)"
);

/// Which watched runtimes goroutine dumps list the tasks of (`PPROF_TOKIO_TASKS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TaskDumpScope {
    /// Current-thread runtimes only: the default, since dumping a multi-thread runtime stalls
    /// its workers (module doc).
    CurrentThread,
    /// Multi-thread runtimes too, accepting tokio's stalls.
    All,
}

/// Reads `PPROF_TOKIO_TASKS`: unset or empty is [`TaskDumpScope::CurrentThread`].
pub(crate) fn task_dump_scope_from_env() -> Result<TaskDumpScope, Error> {
    let value = std::env::var_os(crate::TOKIO_TASKS_ENV).unwrap_or_default();
    match value.to_string_lossy().trim() {
        "" | "current-thread" => Ok(TaskDumpScope::CurrentThread),
        "all" => Ok(TaskDumpScope::All),
        other => Err(Error::InvalidTokioTasks {
            value: other.to_string(),
        }),
    }
}

/// The tasks of every watched runtime at one moment.
pub(crate) struct TaskDump {
    runtimes: Vec<RuntimeTasks>,
}

struct RuntimeTasks {
    /// `tokio runtime N`, N being tokio's runtime id.
    description: String,
    /// `2 workers` or `current-thread`.
    flavor: String,
    outcome: Outcome,
}

// Only the `tokio-tasks` feature dumps runtimes; without it every dump has none.
#[cfg_attr(not(feature = "tokio-tasks"), allow(dead_code))]
enum Outcome {
    Tasks(Vec<DumpedTask>),
    /// No dump: the reason, as a sentence.
    Missing(String),
}

struct DumpedTask {
    id: String,
    /// The labels of the task's `Labels::instrument` wrapper (or labelled span) as it was
    /// traced.
    labels: crate::labels::LabelSetId,
    /// One stack per await point, innermost frame first; a task tokio could not trace has
    /// one stack saying so.
    await_points: Vec<Vec<Frame>>,
}

impl TaskDump {
    /// Dumps every watched runtime, waiting at most `deadline` for each (they run at once).
    pub async fn capture(deadline: Duration) -> TaskDump {
        TaskDump {
            #[cfg(feature = "tokio-tasks")]
            runtimes: watch::dump_all(deadline).await,
            #[cfg(not(feature = "tokio-tasks"))]
            runtimes: {
                let _ = deadline;
                Vec::new()
            },
        }
    }

    /// Every await point's stack, for symbolization.
    pub fn stacks(&self) -> impl Iterator<Item = &[Frame]> {
        self.runtimes
            .iter()
            .filter_map(|runtime| match &runtime.outcome {
                Outcome::Tasks(tasks) => Some(tasks),
                Outcome::Missing(_) => None,
            })
            .flatten()
            .flat_map(|task| task.await_points.iter().map(Vec::as_slice))
    }

    /// The tasks as entries of the grouped forms and the count profile: the task id as the
    /// id, `tokio runtime N` as the name, one entry per await point.
    pub fn entries(&self) -> Vec<Entry<'_>> {
        let mut entries = Vec::new();
        for runtime in &self.runtimes {
            let Outcome::Tasks(tasks) = &runtime.outcome else {
                continue;
            };
            for task in tasks {
                for stack in &task.await_points {
                    entries.push(Entry {
                        member: "task",
                        id: task.id.clone(),
                        name: &runtime.description,
                        state: None,
                        stack: stack.clone(),
                        labels: task.labels,
                    });
                }
            }
        }
        entries
    }

    /// `#` lines for what is not in [`Self::entries`]: runtimes that did not answer, or how to
    /// get tasks at all.
    pub fn notes(&self) -> Vec<String> {
        if !cfg!(feature = "tokio-tasks") {
            return vec![
                "async tasks: not listed; build pprofd with its `tokio-tasks` feature and \
                 RUSTFLAGS=\"--cfg tokio_unstable\", then call \
                 pprofd::watch_tokio_runtime(&tokio::runtime::Handle::current())"
                    .into(),
            ];
        }
        if self.runtimes.is_empty() {
            return vec!["async tasks: no tokio runtime is watched; call \
                 pprofd::watch_tokio_runtime(&tokio::runtime::Handle::current()) in the service"
                .into()];
        }
        self.runtimes
            .iter()
            .filter_map(|r| match &r.outcome {
                Outcome::Tasks(_) => None,
                Outcome::Missing(why) => Some(format!("async tasks of {}: {why}", r.description)),
            })
            .collect()
    }

    /// Go's `debug=2` blocks for the tasks: `task 42 [tokio runtime 1, await point 1 of 2]:`
    /// then the frames (`render` turns them into `function` / `\tfile:line` lines), then the
    /// [`Self::notes`].
    pub fn full_text(&self, render: &dyn Fn(&mut String, &[Frame])) -> String {
        let mut out = String::new();
        for runtime in &self.runtimes {
            let Outcome::Tasks(tasks) = &runtime.outcome else {
                continue;
            };
            let _ = writeln!(
                out,
                "# {} tasks of {} ({})\n",
                tasks.len(),
                runtime.description,
                runtime.flavor
            );
            for task in tasks {
                let count = task.await_points.len();
                for (i, stack) in task.await_points.iter().enumerate() {
                    let place = if count > 1 {
                        format!(", await point {} of {count}", i + 1)
                    } else {
                        String::new()
                    };
                    let _ = writeln!(out, "task {} [{}{place}]:", task.id, runtime.description);
                    if task.labels != crate::labels::LabelSetId::NONE {
                        let _ = writeln!(out, "labels: {}", crate::labels::go_text(task.labels));
                    }
                    render(&mut out, stack);
                    out.push('\n');
                }
            }
        }
        for note in self.notes() {
            let _ = writeln!(out, "# {note}");
        }
        out
    }
}

/// The tokio side: registered runtimes and their dumps.
#[cfg(feature = "tokio-tasks")]
mod watch {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::runtime::{Handle, RuntimeFlavor};

    use super::{task_dump_scope_from_env, DumpedTask, Outcome, RuntimeTasks, TaskDumpScope};
    use crate::profile::Frame;

    /// A runtime whose tasks go into dumps.
    struct Watched {
        handle: Handle,
        /// Set while a dump of this runtime is pending, including one left behind by a timeout.
        dumping: Arc<AtomicBool>,
    }

    /// Runtimes registered with [`watch_tokio_runtime`]. Handles keep a dropped runtime's shared
    /// state alive; services register their long-lived runtimes, so this stays a handful.
    static WATCHED: Mutex<Vec<Watched>> = Mutex::new(Vec::new());

    /// Lists the tasks of the tokio runtime behind `handle` in `/debug/pprof/goroutine` dumps,
    /// after the threads, with the stack of every await point. Call it once per runtime, e.g.
    /// `pprofd::watch_tokio_runtime(&tokio::runtime::Handle::current())` at the top of an async
    /// `main`; registering the same runtime twice changes nothing.
    ///
    /// Needs the `tokio-tasks` feature and `RUSTFLAGS="--cfg tokio_unstable"`. A dump makes the
    /// runtime pause its workers and re-poll every task in tracing mode, so it costs the service
    /// a pause proportional to its task count; it is made only when a dump is requested.
    ///
    /// Multi-thread runtimes are listed with a note instead of their tasks unless
    /// `PPROF_TOKIO_TASKS=all` is set: tokio's dump of a multi-thread runtime stalls its
    /// workers, 250 ms at every dump and for seconds once a worker has been late to one
    /// (tokio-rs/tokio#8370). Current-thread runtimes are always dumped.
    ///
    /// tokio's traces end below its root poll of the task, so code the compiler inlined into
    /// that poll (typically the spawned `async` block itself) is not shown; what it awaits is.
    /// Futures spawned boxed (`Box::pin(fut) as Pin<Box<dyn Future + Send>>`, as servers such
    /// as hyper do per connection) keep their own frame.
    pub fn watch_tokio_runtime(handle: &Handle) {
        let mut watched = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
        if watched.iter().all(|w| w.handle.id() != handle.id()) {
            watched.push(Watched {
                handle: handle.clone(),
                dumping: Arc::new(AtomicBool::new(false)),
            });
        }
    }

    /// Dumps every watched runtime at once, each bounded by `deadline`.
    pub(super) async fn dump_all(deadline: Duration) -> Vec<RuntimeTasks> {
        let watched: Vec<(Handle, Arc<AtomicBool>)> = WATCHED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|w| (w.handle.clone(), w.dumping.clone()))
            .collect();
        let pending: Vec<_> = watched
            .into_iter()
            .map(|(handle, dumping)| tokio::spawn(dump_runtime(handle, dumping, deadline)))
            .collect();
        let mut runtimes = Vec::with_capacity(pending.len());
        for runtime in pending {
            match runtime.await {
                Ok(runtime) => runtimes.push(runtime),
                Err(e) => log::warn!("pprofd: a tokio task dump failed: {e}"),
            }
        }
        runtimes
    }

    async fn dump_runtime(
        handle: Handle,
        dumping: Arc<AtomicBool>,
        deadline: Duration,
    ) -> RuntimeTasks {
        let flavor = match handle.runtime_flavor() {
            RuntimeFlavor::CurrentThread => "current-thread".to_string(),
            _ => format!("{} workers", handle.metrics().num_workers()),
        };
        let description = format!("tokio runtime {}", handle.id());
        let scope = task_dump_scope_from_env();
        let outcome = if let Err(e) = &scope {
            Outcome::Missing(format!("not dumped: {e}"))
        } else if handle.runtime_flavor() != RuntimeFlavor::CurrentThread
            && scope.ok() != Some(TaskDumpScope::All)
        {
            Outcome::Missing(format!(
                "not dumped: tokio's task dump of a multi-thread runtime ({flavor}) stalls its \
                 workers, 250 ms at every dump and for seconds after one worker is late \
                 (tokio-rs/tokio#8370); the threads above show each worker. Set {}=all to \
                 list its tasks anyway",
                crate::TOKIO_TASKS_ENV
            ))
        } else if dumping.swap(true, Ordering::AcqRel) {
            Outcome::Missing(format!(
                "not dumped: the previous dump of this runtime ({flavor}) is still waiting for a \
                 worker to come back to the scheduler, so one is blocked or busy in a long poll"
            ))
        } else {
            // Spawned on pprofd's runtime so that a dump still pending at the deadline can finish
            // later and clear the flag.
            let pending = tokio::spawn(request_dump(handle, dumping));
            match tokio::time::timeout(deadline, pending).await {
                Ok(Ok(Ok((dump, labels)))) => {
                    // Symbol resolution reads debug info: off the server's thread.
                    match tokio::task::spawn_blocking(move || tasks_of(&dump, &labels)).await {
                        Ok(tasks) => Outcome::Tasks(tasks),
                        Err(e) => Outcome::Missing(format!("reading the task traces failed: {e}")),
                    }
                }
                Ok(Ok(Err(why))) => Outcome::Missing(why),
                Ok(Err(e)) => Outcome::Missing(format!("the dump failed: {e}")),
                Err(_) => Outcome::Missing(format!(
                    "timed out after {} ms: tokio dumps tasks only when every worker of the \
                     runtime ({flavor}) comes back to the scheduler, so at least one is blocked or \
                     busy in a long poll; its thread above shows where",
                    deadline.as_millis()
                )),
            }
        };
        RuntimeTasks {
            description,
            flavor,
            outcome,
        }
    }

    /// Asks the runtime for a dump and clears `dumping` once it arrives.
    async fn request_dump(
        handle: Handle,
        dumping: Arc<AtomicBool>,
    ) -> Result<(tokio::runtime::Dump, TaskLabels), String> {
        // Tracing a task polls it: its `Labels::instrument` wrapper says what labels it has.
        let noting = crate::labels::TaskLabelNotes::start();
        let dump = if handle.runtime_flavor() == RuntimeFlavor::CurrentThread {
            // A current-thread runtime can only be dumped from within itself.
            handle
                .spawn(async { Handle::current().dump().await })
                .await
                .map_err(|e| format!("the runtime did not run the dump: {e}"))
        } else {
            Ok(handle.dump().await)
        };
        dumping.store(false, Ordering::Release);
        let labels = noting.finish();
        dump.map(|dump| (dump, labels))
    }

    /// Task id to the labels its wrapper had while tokio traced it.
    type TaskLabels = std::collections::HashMap<u64, crate::labels::LabelSetId>;

    fn tasks_of(dump: &tokio::runtime::Dump, labels: &TaskLabels) -> Vec<DumpedTask> {
        let mut resolved_with_backtrace = false;
        let tasks = dump
            .tasks()
            .iter()
            .map(|task| {
                let trace = task.trace();
                let instruction_pointers = instruction_pointers(trace).unwrap_or_else(|| {
                    resolved_with_backtrace = true;
                    trace
                        .resolve_backtraces()
                        .iter()
                        .map(|backtrace| backtrace.frames().map(|f| f.ip() as u64).collect())
                        .collect()
                });
                let mut await_points: Vec<Vec<Frame>> = instruction_pointers
                    .iter()
                    .map(|ips| {
                        // Every frame is a caller: its return address minus one points into
                        // the call, as pprofd's stacks expect.
                        ips.iter()
                            .map(|&ip| Frame::Address(ip.saturating_sub(1)))
                            .collect()
                    })
                    .collect();
                if await_points.is_empty() {
                    // Running, or waiting on a future outside tokio (which tokio cannot trace).
                    await_points.push(vec![Frame::Synthetic(
                        "[no tokio await point: running, or waiting on a non-tokio future]".into(),
                    )]);
                }
                let id = task.id().to_string();
                DumpedTask {
                    labels: id
                        .parse()
                        .ok()
                        .and_then(|id| labels.get(&id).copied())
                        .unwrap_or_default(),
                    id,
                    await_points,
                }
            })
            .collect();
        if resolved_with_backtrace {
            // tokio's resolution filled the backtrace crate's cache: release it (and let
            // glibc hand the freed pages back, as after pprofd's own symbolizer).
            backtrace::clear_symbol_cache();
            crate::symbolize::release_freed_memory();
        }
        tasks
    }

    /// The instruction pointers of each of `trace`'s backtraces, without symbolizing them.
    ///
    /// tokio offers the frames only through `resolve_backtraces`, which symbolizes every frame
    /// with the `backtrace` crate: 20 MiB of parsed debug info and 20 MiB of the binary's
    /// pages on the demo router, for addresses pprofd then symbolizes itself, unit by unit.
    /// The trace's `Debug` form lists the captured, unresolved frames
    /// (`backtraces: [[BacktraceFrame { ip: 0x…, symbol_address: 0x… }, …], …]`), so the
    /// addresses are read from it. `None` when the form is not that one (another tokio
    /// version): the caller then resolves as tokio does.
    fn instruction_pointers(trace: &tokio::runtime::dump::Trace) -> Option<Vec<Vec<u64>>> {
        let debug = format!("{trace:?}");
        let list = &debug[debug.find("backtraces: [")? + "backtraces: ".len()..];
        let mut backtraces = Vec::new();
        let mut depth = 0;
        let mut rest = list;
        while let Some(i) = rest.find(['[', ']', 'i']) {
            let tail = &rest[i..];
            match tail.as_bytes()[0] {
                b'[' => {
                    depth += 1;
                    if depth == 2 {
                        backtraces.push(Vec::new());
                    }
                    rest = &tail[1..];
                }
                b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(backtraces);
                    }
                    rest = &tail[1..];
                }
                _ => {
                    let Some(hex) = tail.strip_prefix("ip: 0x") else {
                        rest = &tail[1..];
                        continue;
                    };
                    let end = hex
                        .find(|c: char| !c.is_ascii_hexdigit())
                        .unwrap_or(hex.len());
                    let ip = u64::from_str_radix(&hex[..end], 16).ok()?;
                    if depth != 2 {
                        return None;
                    }
                    backtraces.last_mut()?.push(ip);
                    rest = &hex[end..];
                }
            }
        }
        None
    }
}
