//! One way to make every profile, outside HTTP: a [`Request`] parsed from an endpoint's name
//! and query parameters, and [`produce`], which answers it with the symbolized profile model
//! or its text form ([`Output`]), or a [`Failure`] carrying the message a client is shown.
//!
//! The HTTP server and the axum mount are adapters over this: they check the token, read the
//! `/symbol` body, map [`Output`] to a response (gzipping the model, or drawing it as a flame
//! graph) and [`Failure`] to Go's status codes. Every sampler hands back the same thing here:
//! a profile model, symbolized in this process (CPU and thread dumps through
//! [`crate::symbolize_profile`], heap and off-CPU by themselves, since they trim and classify with the
//! symbols).
//!
//! Each request kind is a struct of named parameters, so a new one is one more field and one
//! more line of parsing: the flight recorder's `past` joins [`CpuRequest`] and
//! [`HeapRequest`] that way.

mod query;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cpu::{self, CpuProfile, CpuProfileError};
use crate::endpoints::{self, Timing};
use crate::heap::{self, HeapSnapshot, ProfileKind};
use crate::offcpu::{self, BlockProfile, BlockProfileError, OffCpuSamples, View};
use crate::profile::proto::Profile;
use crate::threads::{self, ThreadCreations, ThreadDump};
pub(crate) use query::Query;

/// How long `/profile` samples when `seconds` is not given, as in Go.
const DEFAULT_CPU_SECONDS: u64 = 30;

/// What every request is produced under: the longest `seconds` accepted, the token, and the
/// cap on long-running requests. One per server (or mount), shared by its requests.
pub struct Settings {
    /// Longest `seconds` a request may ask for (at least 1).
    pub max_profile_seconds: u64,
    /// Bearer token every request must carry, when set.
    token: Option<String>,
    /// One permit per long-running request (see [`Settings::long_running`]).
    long_running: Arc<Semaphore>,
}

impl Settings {
    /// Settings allowing `seconds` up to `max_profile_seconds` (at least 1) and requiring
    /// `token` when it is set and not empty.
    pub fn new(max_profile_seconds: u64, token: Option<String>) -> Settings {
        Settings {
            max_profile_seconds: max_profile_seconds.max(1),
            token: token.filter(|t| !t.is_empty()),
            long_running: Arc::new(Semaphore::new(crate::server::MAX_LONG_RUNNING)),
        }
    }


    /// Whether `given` (the bearer token a request carried, if any) lets it in: always when no
    /// token is required. Compared in constant time, so response timing does not reveal how
    /// much of a guess was right.
    pub fn admits(&self, given: Option<&[u8]>) -> bool {
        match (&self.token, given) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(token), Some(given)) => constant_time_eq(given, token.as_bytes()),
        }
    }

    /// A permit to run a long-running request (one that samples or waits `seconds`), or the
    /// 503 when [`crate::server::MAX_LONG_RUNNING`] already run: they would otherwise hold
    /// every connection slot for minutes.
    fn long_running(&self) -> Result<OwnedSemaphorePermit, Failure> {
        self.long_running.clone().try_acquire_owned().map_err(|_| {
            Failure::new(
                FailureKind::Busy,
                format!(
                    "{} long-running profile requests (profile, block, mutex, or seconds=N) are already running, the \
                     most this server runs at once; retry when one finishes, or ask for a snapshot without seconds=N",
                    crate::server::MAX_LONG_RUNNING
                ),
            )
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        difference |= (x ^ y) as usize;
    }
    difference == 0
}

/// What a request asks for: the endpoint and its checked parameters.
#[derive(Debug)]
pub enum Request {
    /// `/debug/pprof/`: HTML, or plain text when `text` (any `debug` but 0, as in Go).
    Index {
        /// Plain-text links instead of the HTML page.
        text: bool,
    },
    /// `/cmdline`.
    Cmdline,
    /// `/profile`.
    Cpu(CpuRequest),
    /// `/heap`.
    Heap(HeapRequest),
    /// `/allocs`: the heap's samples, `alloc_space` by default.
    Allocs(HeapRequest),
    /// `/goroutine`.
    Goroutine(SnapshotRequest),
    /// `/threadcreate`.
    ThreadCreate(SnapshotRequest),
    /// `/block`.
    Block(OffCpuRequest),
    /// `/mutex`.
    Mutex(OffCpuRequest),
    /// `/symbol`: the addresses to name (none for Go's `num_symbols` probe).
    Symbol {
        /// Addresses to look up, malformed words and 0 left out.
        addresses: Vec<u64>,
    },
    /// `/trace`: answered 501.
    Trace,
}

/// What `/profile` was asked for.
#[derive(Debug)]
pub struct CpuRequest {
    /// How long to sample: 1 to the maximum, default 30 (or the maximum if lower).
    pub seconds: u64,
    /// Samples a second: 1 to [`cpu::MAX_HZ`], default [`cpu::DEFAULT_HZ`].
    pub hz: u32,
    /// `past=N`: the flight recorder's last N seconds, at once, instead of sampling.
    pub past: Option<u64>,
}

/// What `/goroutine` and `/threadcreate` (and, inside [`HeapRequest`], `/heap` and `/allocs`)
/// were asked for.
#[derive(Debug)]
pub struct SnapshotRequest {
    /// Text (`debug` above 0) or protobuf (0, the default).
    pub debug: u64,
    /// `seconds=N` asks for the difference over N seconds instead of a snapshot (1 to the
    /// maximum); never with a `debug` above 0.
    pub seconds: Option<u64>,
}

/// What `/heap` and `/allocs` were asked for.
#[derive(Debug)]
pub struct HeapRequest {
    /// `debug` and `seconds`, as for the other snapshot endpoints (any `debug` above 0 is text).
    pub snapshot: SnapshotRequest,
    /// `allocator_frames=1` keeps the allocator's frames at the leaf of each stack (and writes
    /// no `drop_frames`); 0, the default, cuts them.
    pub allocator_frames: bool,
    /// `past=N`: the change over the last N seconds, from the flight recorder's snapshots.
    pub past: Option<u64>,
}

/// What `/block` and `/mutex` were asked for.
#[derive(Debug)]
pub struct OffCpuRequest {
    /// How long to sample: 1 to the maximum, default [`offcpu::DEFAULT_SECONDS`] (or the
    /// maximum if lower).
    pub seconds: u64,
    /// Whether `seconds` was given: with continuous sampling it asks for the difference over
    /// that time instead of everything since start.
    pub seconds_given: bool,
    /// Text (1 or 2) or protobuf (0, the default).
    pub debug: u64,
    /// `idle=1` adds idle, I/O and sleep waits.
    pub idle: bool,
}

impl Request {
    /// The request for endpoint `name` (the path after `/debug/pprof/`, empty for the index)
    /// with query string `query`, under `max_seconds`. An unknown name is a 404, a bad
    /// parameter a 400 naming it, with Go's messages.
    pub fn parse(name: &str, query: Option<&str>, max_seconds: u64) -> Result<Request, Failure> {
        let parsed = Query::parse(query);
        let bad = |message| Failure::new(FailureKind::BadRequest, message);
        Ok(match name {
            "" => Request::Index {
                text: parsed.get("debug").is_some_and(|d| d != "0"),
            },
            "cmdline" => Request::Cmdline,
            "profile" => Request::Cpu(cpu_request(&parsed, max_seconds).map_err(bad)?),
            "heap" => Request::Heap(heap_request(&parsed, max_seconds).map_err(bad)?),
            "allocs" => Request::Allocs(heap_request(&parsed, max_seconds).map_err(bad)?),
            "goroutine" => {
                Request::Goroutine(snapshot_request(&parsed, 2, max_seconds).map_err(bad)?)
            }
            "threadcreate" => {
                Request::ThreadCreate(snapshot_request(&parsed, 2, max_seconds).map_err(bad)?)
            }
            "block" => Request::Block(off_cpu_request(&parsed, max_seconds).map_err(bad)?),
            "mutex" => Request::Mutex(off_cpu_request(&parsed, max_seconds).map_err(bad)?),
            "symbol" => Request::symbol(query.unwrap_or("")),
            "trace" => Request::Trace,
            _ => return Err(Failure::new(FailureKind::NotFound, "Unknown profile")),
        })
    }

    /// A `/symbol` request for the addresses in `input` (a GET query or a POST body): words
    /// separated by `+`, parsed as Go's `strconv.ParseUint(s, 0, 64)`, malformed ones skipped.
    pub fn symbol(input: &str) -> Request {
        Request::Symbol {
            addresses: input.split('+').filter_map(parse_address).collect(),
        }
    }

    /// The endpoint's name, as in [`endpoints::ENDPOINTS`] (empty for the index).
    pub fn endpoint_name(&self) -> &'static str {
        match self {
            Request::Index { .. } => "",
            Request::Cmdline => "cmdline",
            Request::Cpu(_) => "profile",
            Request::Heap(_) => "heap",
            Request::Allocs(_) => "allocs",
            Request::Goroutine(_) => "goroutine",
            Request::ThreadCreate(_) => "threadcreate",
            Request::Block(_) => "block",
            Request::Mutex(_) => "mutex",
            Request::Symbol { .. } => "symbol",
            Request::Trace => "trace",
        }
    }

    /// Whether answering takes seconds by design, so it counts against the long-running cap:
    /// an endpoint that samples, or a delta (`seconds=N`) of one that can take one.
    pub fn is_long_running(&self) -> bool {
        let timing = endpoints::find(self.endpoint_name()).map(|e| e.timing);
        match (timing, self) {
            (_, Request::Cpu(cpu)) if cpu.past.is_some() => false,
            (Some(Timing::Samples), _) => true,
            (Some(Timing::DeltaWithSeconds), Request::Heap(h) | Request::Allocs(h)) => {
                h.snapshot.seconds.is_some()
            }
            (Some(Timing::DeltaWithSeconds), Request::Goroutine(s) | Request::ThreadCreate(s)) => {
                s.seconds.is_some()
            }
            _ => false,
        }
    }
}

/// Parses an address as Go's `strconv.ParseUint(s, 0, 64)` does; 0 and malformed words are
/// `None`.
fn parse_address(word: &str) -> Option<u64> {
    let word = word.trim();
    let parsed = if let Some(hex) = word.strip_prefix("0x").or_else(|| word.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16)
    } else if word.len() > 1 && word.starts_with('0') {
        u64::from_str_radix(&word[1..], 8)
    } else {
        word.parse()
    };
    parsed.ok().filter(|&a| a != 0)
}

/// Checks `/profile`'s `seconds` and `hz`; the error is the 400's message.
fn cpu_request(query: &Query, max_seconds: u64) -> Result<CpuRequest, String> {
    // The default obeys the maximum too: a server configured for at most 10 s must not
    // sample 30 s because the client left `seconds` out.
    let seconds = query.int_in(
        "seconds",
        DEFAULT_CPU_SECONDS.min(max_seconds),
        1..=max_seconds,
    )?;
    let hz = query.int_in("hz", cpu::DEFAULT_HZ as u64, 1..=cpu::MAX_HZ as u64)?;
    Ok(CpuRequest {
        seconds,
        // In range, so it fits: MAX_HZ is a u32.
        hz: hz as u32,
        past: past(query)?,
    })
}

/// Checks `past` (1 s up to the longest window; the recorder checks it against its own), and
/// that `seconds` is not given with it.
fn past(query: &Query) -> Result<Option<u64>, String> {
    if query.get("past").is_none_or(|p| p.is_empty()) {
        return Ok(None);
    }
    let past = query.int_in("past", 0, 1..=crate::recorder::MAX_WINDOW.as_secs())?;
    if query.get("seconds").is_some_and(|s| !s.is_empty()) {
        return Err("past and seconds params are incompatible: past=N answers at once with the last N seconds, seconds=N profiles the next N".into());
    }
    Ok(Some(past))
}

/// Checks `debug` (0 to `max_debug`) and `seconds` (absent or empty for a snapshot) of a
/// snapshot endpoint; the error is the 400's message.
fn snapshot_request(
    query: &Query,
    max_debug: u64,
    max_seconds: u64,
) -> Result<SnapshotRequest, String> {
    let debug = query.int_in("debug", 0, 0..=max_debug)?;
    let seconds = match query.get("seconds").filter(|s| !s.is_empty()) {
        None => None,
        Some(_) => Some(query.int_in("seconds", 0, 1..=max_seconds)?),
    };
    if seconds.is_some() && debug != 0 {
        return Err("seconds and debug params are incompatible".into());
    }
    Ok(SnapshotRequest { debug, seconds })
}

/// Checks `/heap`'s and `/allocs`' parameters (Go accepts any `debug` for the heap and answers
/// text for every value but 0; `gc` is accepted and ignored: there is no collector to run).
fn heap_request(query: &Query, max_seconds: u64) -> Result<HeapRequest, String> {
    let request = HeapRequest {
        snapshot: snapshot_request(query, u64::MAX, max_seconds)?,
        allocator_frames: query.int_in("allocator_frames", 0, 0..=1)? == 1,
        past: past(query)?,
    };
    if request.past.is_some() && request.snapshot.debug != 0 {
        return Err("past and debug params are incompatible: past=N answers in the protobuf format".into());
    }
    Ok(request)
}

/// Checks `/block`'s and `/mutex`'s `seconds`, `debug` (0 to 2) and `idle` (0 or 1).
fn off_cpu_request(query: &Query, max_seconds: u64) -> Result<OffCpuRequest, String> {
    // As for `/profile`, the default obeys the maximum.
    let seconds = query.int_in(
        "seconds",
        offcpu::DEFAULT_SECONDS.min(max_seconds),
        1..=max_seconds,
    )?;
    let debug = query.int_in("debug", 0, 0..=2)?;
    let idle = query.int_in("idle", 0, 0..=1)? == 1;
    Ok(OffCpuRequest {
        seconds,
        seconds_given: query.get("seconds").is_some_and(|s| !s.is_empty()),
        debug,
        idle,
    })
}

/// A produced answer.
pub enum Output {
    /// A symbolized profile; served gzipped as `file_name` (Go's `Content-Disposition`).
    Profile {
        /// The download's name: the endpoint's, `-delta` for a `seconds=N` difference.
        file_name: String,
        /// The profile model (boxed: it is large beside the other forms).
        profile: Box<Profile>,
    },
    /// Plain text (`debug=1/2`, the command line, symbolz answers, the plain index).
    Text(String),
    /// The HTML index page.
    Html(String),
}

/// Why a request got no profile, by the status Go's `net/http/pprof` answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// 400: a parameter is malformed or out of range.
    BadRequest,
    /// 404: no such profile, or the heap profiler is not linked in.
    NotFound,
    /// 409: the off-CPU sampler is busy with another window.
    Conflict,
    /// 500: the profiler could not run (including Go's "cpu profiling already in use").
    Internal,
    /// 503: the long-running cap is full.
    Busy,
    /// 501: `/trace`.
    NotImplemented,
}

impl FailureKind {
    /// The HTTP status code.
    pub fn status(self) -> u16 {
        match self {
            FailureKind::BadRequest => 400,
            FailureKind::NotFound => 404,
            FailureKind::Conflict => 409,
            FailureKind::Internal => 500,
            FailureKind::NotImplemented => 501,
            FailureKind::Busy => 503,
        }
    }
}

/// A request that got no profile, and the message the client is shown.
#[derive(Debug)]
pub struct Failure {
    /// Which kind of failure (the status).
    pub kind: FailureKind,
    /// What went wrong, in Go's words where Go has them.
    pub message: String,
}

impl Failure {
    fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }

    fn internal(message: impl Into<String>) -> Failure {
        Failure::new(FailureKind::Internal, message)
    }
}

/// A blocking step that failed to complete (the blocking pool refused it or it panicked).
fn building_failed(what: &str, e: tokio::task::JoinError) -> Failure {
    Failure::internal(format!("building the {what} profile failed: {e}"))
}

/// What `/heap` and `/allocs` answer when the service's global allocator is not pprofd's.
const HEAP_NOT_INSTALLED: &str = "heap profiling is not enabled: pprofd samples allocations through its allocator wrapper. Add this line to the program's main.rs and rebuild:\n\n#[global_allocator]\nstatic ALLOC: pprofd::Allocator<std::alloc::System> = pprofd::Allocator::system();\n\n(or pprofd::Allocator::new(YourAllocator) to keep another allocator)";

/// Answers `request`. Runs on pprofd's own runtime (the server's or the axum mount's):
/// long work goes to its blocking pool, and dropping the future (a client that went away)
/// stops a running profile at once.
pub async fn produce(request: Request, settings: &Settings) -> Result<Output, Failure> {
    // A delta takes its permit first; a sampler takes it once started (below), so a second
    // CPU profile still gets Go's "in use" and a second block window its 409.
    let timing = endpoints::find(request.endpoint_name()).map(|e| e.timing);
    let _running = match timing {
        Some(Timing::DeltaWithSeconds) if request.is_long_running() => {
            Some(settings.long_running()?)
        }
        _ => None,
    };
    match request {
        Request::Index { text } => Ok(index(text)),
        Request::Cmdline => Ok(Output::Text(cmdline())),
        Request::Cpu(cpu) => cpu_profile(cpu, settings).await,
        Request::Heap(heap) => heap_profile(ProfileKind::Heap, heap).await,
        Request::Allocs(heap) => heap_profile(ProfileKind::Allocs, heap).await,
        Request::Goroutine(snapshot) => goroutine(snapshot).await,
        Request::ThreadCreate(snapshot) => threadcreate(snapshot).await,
        Request::Block(off_cpu) => off_cpu_profile(off_cpu, View::Block, settings).await,
        Request::Mutex(off_cpu) => off_cpu_profile(off_cpu, View::Mutex, settings).await,
        Request::Symbol { addresses } => symbol(addresses).await,
        Request::Trace => Err(Failure::new(
            FailureKind::NotImplemented,
            "execution traces are a Go runtime feature with no Rust counterpart; use /debug/pprof/profile",
        )),
    }
}

fn index(text: bool) -> Output {
    let prefix = endpoints::PREFIX;
    if text {
        let mut body = format!("{prefix}\n\n");
        for e in endpoints::ENDPOINTS {
            body.push_str(&format!("{prefix}{}\t{}\n", e.name, e.description));
        }
        body.push_str(&format!("\n{}\n", crate::recorder::status()));
        return Output::Text(body);
    }
    let mut rows = String::new();
    let mut descriptions = String::new();
    for e in endpoints::ENDPOINTS {
        let (name, description) = (e.name, e.description);
        rows.push_str(&format!(
            "<tr><td></td><td><a href='{name}?debug=1'>{name}</a></td></tr>\n"
        ));
        descriptions.push_str(&format!(
            "<li><div class=profile-name>{name}: </div> {description}</li>\n"
        ));
    }
    Output::Html(format!(
        "<html>\n<head>\n<title>{prefix}</title>\n<style>\n.profile-name{{\n\tdisplay:inline-block;\n\twidth:6rem;\n}}\n</style>\n</head>\n<body>\n{prefix}\n<br>\n<p>Set debug=1 as a query parameter to export in legacy text format</p>\n<br>\nTypes of profiles available:\n<table>\n<thead><td>Count</td><td>Profile</td></thead>\n{rows}</table>\n<br>\n<p>\nProfile Descriptions:\n<ul>\n{descriptions}</ul>\n</p>\n<p>{}</p>\n</body>\n</html>\n",
        crate::recorder::status()
    ))
}

fn cmdline() -> String {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    args.join("\0")
}

async fn cpu_profile(request: CpuRequest, settings: &Settings) -> Result<Output, Failure> {
    let CpuRequest { seconds, hz, past } = request;
    if let Some(past) = past {
        let past = Duration::from_secs(past);
        let built = tokio::task::spawn_blocking(move || {
            crate::recorder::cpu_profile(past).map(crate::symbolize_profile)
        })
        .await
        .map_err(|e| building_failed("CPU", e))?;
        let profile = built.map_err(|message| Failure::new(FailureKind::BadRequest, message))?;
        return Ok(Output::Profile {
            file_name: "profile-past".into(),
            profile: Box::new(profile),
        });
    }
    let profile = match CpuProfile::start(hz) {
        Ok(p) => p,
        Err(e @ CpuProfileError::InUse) => {
            return Err(Failure::internal(format!(
                "Could not enable CPU profiling: {e}"
            )))
        }
        Err(e) => return Err(Failure::internal(e.to_string())),
    };
    // After the start, so a second profile still gets Go's "in use" answer; dropping
    // `profile` on a 503 stops it.
    let _running = settings.long_running()?;
    // If the client goes away, the adapter drops this future and `profile`'s Drop stops
    // sampling.
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let profile = tokio::task::spawn_blocking(move || crate::symbolize_profile(profile.stop()))
        .await
        .map_err(|e| building_failed("CPU", e))?;
    Ok(Output::Profile {
        file_name: "profile".into(),
        profile: Box::new(profile),
    })
}

/// `/heap` and `/allocs`: the same samples, a snapshot or with `seconds` a delta.
async fn heap_profile(kind: ProfileKind, request: HeapRequest) -> Result<Output, Failure> {
    if !heap::is_installed() {
        return Err(Failure::new(FailureKind::NotFound, HEAP_NOT_INSTALLED));
    }
    let HeapRequest {
        snapshot: SnapshotRequest { debug, seconds },
        allocator_frames,
        past,
    } = request;
    let name = match kind {
        ProfileKind::Heap => "heap",
        ProfileKind::Allocs => "allocs",
    };
    let failed = |e| building_failed(name, e);
    if let Some(past) = past {
        let built = tokio::task::spawn_blocking(move || {
            let Some((baseline, note)) = crate::recorder::heap_baseline(Duration::from_secs(past))
                .map_err(|message| Failure::new(FailureKind::BadRequest, message))?
            else {
                return Err(Failure::new(FailureKind::NotFound, HEAP_NOT_INSTALLED));
            };
            heap::refresh_unwind_tables();
            let change = HeapSnapshot::take().since(&baseline).with_note(note);
            Ok(Output::Profile {
                file_name: format!("{name}-past"),
                profile: Box::new(change.profile(kind, allocator_frames)),
            })
        })
        .await
        .map_err(failed)?;
        return built;
    }
    match seconds {
        None => tokio::task::spawn_blocking(move || {
            heap::refresh_unwind_tables();
            let snapshot = HeapSnapshot::take();
            if debug == 0 {
                Output::Profile {
                    file_name: name.into(),
                    profile: Box::new(snapshot.profile(kind, allocator_frames)),
                }
            } else {
                Output::Text(snapshot.text())
            }
        })
        .await
        .map_err(failed),
        Some(seconds) => {
            let before = tokio::task::spawn_blocking(HeapSnapshot::take)
                .await
                .map_err(failed)?;
            // If the client goes away, the adapter drops this future and nothing is kept.
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            tokio::task::spawn_blocking(move || Output::Profile {
                file_name: format!("{name}-delta"),
                profile: Box::new(
                    HeapSnapshot::take()
                        .since(&before)
                        .profile(kind, allocator_frames),
                ),
            })
            .await
            .map_err(failed)
        }
    }
}

fn dump_failed(e: std::io::Error) -> Failure {
    Failure::internal(format!("could not dump threads: {e}"))
}

/// Every thread's stack: pprof (`debug=0`), grouped text (`debug=1`) or per-thread text
/// (`debug=2`); with `seconds=N`, Go's delta profile between a dump now and one N seconds
/// later. Dumps run on the blocking pool, so they answer while the service's own threads are
/// wedged.
async fn goroutine(request: SnapshotRequest) -> Result<Output, Failure> {
    let deadline = threads::DEFAULT_DEADLINE;
    let SnapshotRequest { debug, seconds } = request;
    let profile = |profile| Output::Profile {
        file_name: "goroutine".into(),
        profile: Box::new(profile),
    };
    if let Some(seconds) = seconds {
        let earlier = ThreadDump::capture_with_tasks(deadline, |dump| dump)
            .await
            .map_err(dump_failed)?;
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        ThreadDump::capture_with_tasks(deadline, move |later| {
            profile(crate::symbolize_profile(later.profile_since(&earlier)))
        })
        .await
        .map_err(dump_failed)
    } else {
        ThreadDump::capture_with_tasks(deadline, move |dump| match debug {
            0 => profile(crate::symbolize_profile(dump.profile())),
            1 => Output::Text(dump.grouped_text()),
            _ => Output::Text(dump.full_text()),
        })
        .await
        .map_err(dump_failed)
    }
}

/// The stack that created each live thread: pprof (`debug=0`) or grouped text (`debug=1`);
/// with `seconds=N`, Go's delta profile of the threads that appeared or ended in that time.
async fn threadcreate(request: SnapshotRequest) -> Result<Output, Failure> {
    let SnapshotRequest { debug, seconds } = request;
    let profile = |profile| Output::Profile {
        file_name: "threadcreate".into(),
        profile: Box::new(profile),
    };
    let built = if let Some(seconds) = seconds {
        let earlier = ThreadCreations::capture();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        tokio::task::spawn_blocking(move || {
            profile(crate::symbolize_profile(
                ThreadCreations::capture().profile_since(&earlier),
            ))
        })
        .await
    } else {
        tokio::task::spawn_blocking(move || {
            let creations = ThreadCreations::capture();
            if debug == 0 {
                profile(crate::symbolize_profile(creations.profile()))
            } else {
                Output::Text(creations.text())
            }
        })
        .await
    };
    built.map_err(|e| building_failed("threadcreate", e))
}

/// Where a block or mutex profile's samples come from.
enum Sampled {
    /// A sampler started for this request.
    Window(BlockProfile),
    /// Continuous sampling, everything since it started.
    Cumulative(OffCpuSamples),
    /// Continuous sampling, since this snapshot.
    Since(OffCpuSamples),
}

/// Block or mutex profile: samples blocked threads for `seconds` (default 5 s, below
/// scrapers' 10 s timeout), then answers in pprof (`debug=0`) or Go's text (`debug=1`).
/// `idle=1` adds idle, I/O and sleep waits, labelled. With continuous sampling
/// (`PPROF_BLOCK_RATE`), answers at once with the profile since start, or with `seconds=N`
/// the difference over the next N seconds; requests then never conflict.
async fn off_cpu_profile(
    request: OffCpuRequest,
    view: View,
    settings: &Settings,
) -> Result<Output, Failure> {
    let OffCpuRequest {
        seconds,
        seconds_given,
        debug,
        idle,
    } = request;
    let samples = if let Some(continuous) = offcpu::continuous() {
        // Continuous sampling runs: everything since start, or the difference over `seconds`.
        let earlier = continuous.snapshot();
        if seconds_given {
            let _running = settings.long_running()?;
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            Sampled::Since(earlier)
        } else {
            Sampled::Cumulative(earlier)
        }
    } else {
        let profile = match BlockProfile::start(offcpu::DEFAULT_HZ) {
            Ok(p) => p,
            Err(e @ BlockProfileError::InUse) => {
                return Err(Failure::new(FailureKind::Conflict, e.to_string()))
            }
            Err(e) => return Err(Failure::internal(e.to_string())),
        };
        // After the start, so a second window still gets the 409 saying the sampler is busy.
        let _running = settings.long_running()?;
        // If the client goes away, the adapter drops this future and `profile`'s Drop stops
        // sampling.
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        Sampled::Window(profile)
    };
    let name = match view {
        View::Block => "block",
        View::Mutex => "mutex",
    };
    let built = tokio::task::spawn_blocking(move || {
        let samples = match samples {
            Sampled::Window(profile) => profile.stop()?,
            Sampled::Cumulative(samples) => samples,
            Sampled::Since(earlier) => offcpu::continuous()
                .expect("continuous sampling never stops")
                .snapshot()
                .since(&earlier),
        };
        Ok::<_, std::io::Error>(if debug == 0 {
            Output::Profile {
                file_name: name.into(),
                profile: Box::new(samples.profile(view, idle)),
            }
        } else {
            Output::Text(samples.text(view, idle))
        })
    })
    .await
    .map_err(|e| building_failed(name, e))?;
    built.map_err(|e| Failure::internal(format!("off-CPU sampling failed: {e}")))
}

/// Go's symbolz protocol: `num_symbols: 1`, then one `0xADDR name` line per known address.
async fn symbol(addresses: Vec<u64>) -> Result<Output, Failure> {
    let names = if addresses.is_empty() {
        Vec::new()
    } else {
        tokio::task::spawn_blocking(move || crate::symbolize::function_names(&addresses))
            .await
            .unwrap_or_default()
    };
    let mut body = String::from("num_symbols: 1\n");
    for (address, name) in names {
        body.push_str(&format!("{address:#x} {name}\n"));
    }
    Ok(Output::Text(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_needs_every_byte() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cre", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret!", b"s3cret"));
        assert!(!constant_time_eq(b"s3creT", b"s3cret"));
        assert!(!constant_time_eq(b"", b"s3cret"));
        let settings = Settings::new(600, Some("s3cret".into()));
        assert!(settings.admits(Some(b"s3cret")) && !settings.admits(None));
        assert!(Settings::new(600, Some(String::new())).admits(None));
    }

    #[test]
    fn symbol_addresses_parse_as_go_does() {
        assert_eq!(parse_address("0x10"), Some(16));
        assert_eq!(parse_address("010"), Some(8));
        assert_eq!(parse_address("10"), Some(10));
        assert_eq!(parse_address("0"), None);
        assert_eq!(parse_address("0xzz"), None);
        assert_eq!(parse_address(""), None);
    }

    #[test]
    fn every_endpoint_of_the_table_is_a_request_and_long_running_follows_it() {
        for endpoint in endpoints::ENDPOINTS {
            let request = Request::parse(endpoint.name, None, 600)
                .unwrap_or_else(|f| panic!("{}: {f:?}", endpoint.name));
            assert_eq!(request.endpoint_name(), endpoint.name);
            assert_eq!(
                request.is_long_running(),
                endpoint.timing == Timing::Samples,
                "{}",
                endpoint.name
            );
            if endpoint.timing == Timing::DeltaWithSeconds {
                let delta = Request::parse(endpoint.name, Some("seconds=3"), 600).unwrap();
                assert!(delta.is_long_running(), "{}", endpoint.name);
            }
        }
        let unknown = Request::parse("nope", None, 600).unwrap_err();
        assert_eq!((unknown.kind.status(), unknown.message.as_str()), (404, "Unknown profile"));
    }
}
