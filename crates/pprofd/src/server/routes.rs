//! Request routing and Go's responses for each endpoint.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_DISPOSITION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::query::Query;
use crate::cpu::{self, CpuProfile, CpuProfileError};
use crate::heap::{self, HeapSnapshot, ProfileKind};
use crate::offcpu::{self, BlockProfile, BlockProfileError, OffCpuSamples, View};
use crate::threads::{self, ThreadCreations, ThreadDump};

/// Server-wide settings the handlers read.
pub(super) struct Settings {
    pub max_profile_seconds: u64,
    /// Bearer token every request must carry, when set.
    pub token: Option<String>,
    /// One permit per long-running request (see [`long_running`]).
    pub long_running: Arc<Semaphore>,
}

/// The endpoints served, for the start-up log line.
pub(super) const ENDPOINTS: &[&str] = &[
    "profile",
    "heap",
    "allocs",
    "goroutine",
    "threadcreate",
    "block",
    "mutex",
    "cmdline",
    "symbol",
    "trace",
];

/// Every name the index lists, with Go's descriptions.
const INDEX: &[(&str, &str)] = &[
    ("allocs", "A sampling of all past memory allocations"),
    (
        "block",
        "Stack traces that led to blocking on synchronization primitives",
    ),
    ("cmdline", "The command line invocation of the current program"),
    (
        "goroutine",
        "Stack traces of all current goroutines. Use debug=2 as a query parameter to export in the same format as an unrecovered panic.",
    ),
    (
        "heap",
        "A sampling of memory allocations of live objects. You can specify the gc GET parameter to run GC before taking the heap sample.",
    ),
    (
        "mutex",
        "Stack traces of threads waiting to acquire contended mutexes",
    ),
    (
        "profile",
        "CPU profile. You can specify the duration in the seconds GET parameter. After you get the profile file, use the go tool pprof command to investigate the profile.",
    ),
    ("symbol", "Maps given program counters to function names."),
    (
        "threadcreate",
        "Stack traces that led to the creation of new OS threads",
    ),
    ("trace", "Not available: Go's execution tracer has no Rust counterpart; the request answers 501."),
];

/// Largest `/symbol` POST body accepted.
const MAX_SYMBOL_BODY: usize = 1 << 20;
const PREFIX: &str = "/debug/pprof/";

type Body = Full<Bytes>;

pub(super) async fn handle(
    req: Request<Incoming>,
    settings: Arc<Settings>,
    read_deadline: Instant,
) -> Result<Response<Body>, Infallible> {
    if let Some(token) = &settings.token {
        if !authorized(&req, token) {
            let mut response = error(StatusCode::UNAUTHORIZED, "Unauthorized");
            response
                .headers_mut()
                .insert("WWW-Authenticate", HeaderValue::from_static("Bearer"));
            return Ok(response);
        }
    }
    let path = req.uri().path().to_string();
    let query = Query::parse(req.uri().query());
    let name = if path == "/debug/pprof" {
        ""
    } else if let Some(name) = path.strip_prefix(PREFIX) {
        name
    } else {
        return Ok(error(
            StatusCode::NOT_FOUND,
            "404 page not found: pprof endpoints live under /debug/pprof/",
        ));
    };
    let allowed: &[Method] = if name == "symbol" {
        &[Method::GET, Method::POST]
    } else {
        &[Method::GET]
    };
    if !allowed.contains(req.method()) {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("method {} not allowed on {path}", req.method()),
        );
        let allow = allowed
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        response.headers_mut().insert(
            ALLOW,
            HeaderValue::from_str(&allow).expect("method names are ASCII"),
        );
        return Ok(response);
    }
    Ok(match name {
        "" => index(&query),
        "cmdline" => cmdline(),
        "profile" => cpu_profile(&query, &settings).await,
        "symbol" => symbol(req, read_deadline).await,
        "heap" => heap_profile(ProfileKind::Heap, &query, &settings).await,
        "allocs" => heap_profile(ProfileKind::Allocs, &query, &settings).await,
        "goroutine" => goroutine(&query, &settings).await,
        "threadcreate" => threadcreate(&query, &settings).await,
        "block" => off_cpu(&query, &settings, View::Block).await,
        "mutex" => off_cpu(&query, &settings, View::Mutex).await,
        "trace" => error(
            StatusCode::NOT_IMPLEMENTED,
            "execution traces are a Go runtime feature with no Rust counterpart; use /debug/pprof/profile",
        ),
        _ => error(StatusCode::NOT_FOUND, "Unknown profile"),
    })
}

/// Whether the request carries `Authorization: Bearer <token>`, compared in constant time so
/// response timing does not reveal how much of a guess was right.
fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    constant_time_eq(given, token.as_bytes())
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

/// A plain-text error with Go's headers; `X-Go-Pprof` makes `go tool pprof` print the message.
fn error(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{message}\n"))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("X-Go-Pprof", HeaderValue::from_static("1"));
    response
}

fn text(content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A gzipped protobuf profile with Go's download headers.
fn profile_bytes(name: &str, bytes: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        CONTENT_DISPOSITION,
        HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
            .expect("profile names are ASCII"),
    );
    headers.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Whether the index is asked for as plain text: any `debug` but `0`, as in Go.
pub(super) fn index_as_text(query: &Query) -> bool {
    query.get("debug").is_some_and(|d| d != "0")
}

fn index(query: &Query) -> Response<Body> {
    if index_as_text(query) {
        let mut body = String::from("/debug/pprof/\n\n");
        for (name, description) in INDEX {
            body.push_str(&format!("{PREFIX}{name}\t{description}\n"));
        }
        return text("text/plain; charset=utf-8", body);
    }
    let mut rows = String::new();
    let mut descriptions = String::new();
    for (name, description) in INDEX {
        rows.push_str(&format!(
            "<tr><td></td><td><a href='{name}?debug=1'>{name}</a></td></tr>\n"
        ));
        descriptions.push_str(&format!(
            "<li><div class=profile-name>{name}: </div> {description}</li>\n"
        ));
    }
    let body = format!(
        "<html>\n<head>\n<title>/debug/pprof/</title>\n<style>\n.profile-name{{\n\tdisplay:inline-block;\n\twidth:6rem;\n}}\n</style>\n</head>\n<body>\n/debug/pprof/\n<br>\n<p>Set debug=1 as a query parameter to export in legacy text format</p>\n<br>\nTypes of profiles available:\n<table>\n<thead><td>Count</td><td>Profile</td></thead>\n{rows}</table>\n<br>\n<p>\nProfile Descriptions:\n<ul>\n{descriptions}</ul>\n</p>\n</body>\n</html>\n"
    );
    text("text/html; charset=utf-8", body)
}

fn cmdline() -> Response<Body> {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    text("text/plain; charset=utf-8", args.join("\0"))
}

/// How long `/profile` samples when `seconds` is not given, as in Go.
const DEFAULT_CPU_SECONDS: u64 = 30;

/// What `/profile` was asked for.
#[derive(Debug)]
pub struct CpuParams {
    /// How long to sample: 1 to the server's maximum, default 30 (or the maximum if lower).
    pub seconds: u64,
    /// Samples a second: 1 to [`cpu::MAX_HZ`], default [`cpu::DEFAULT_HZ`].
    pub hz: u32,
}

/// Checks `/profile`'s `seconds` and `hz`; the error is the 400's message.
pub(super) fn cpu_params(query: &Query, max_seconds: u64) -> Result<CpuParams, String> {
    // The default obeys the maximum too: a server configured for at most 10 s must not
    // sample 30 s because the client left `seconds` out.
    let seconds = query.int_in(
        "seconds",
        DEFAULT_CPU_SECONDS.min(max_seconds),
        1..=max_seconds,
    )?;
    let hz = query.int_in("hz", cpu::DEFAULT_HZ as u64, 1..=cpu::MAX_HZ as u64)?;
    Ok(CpuParams {
        seconds,
        // In range, so it fits: MAX_HZ is a u32.
        hz: hz as u32,
    })
}

async fn cpu_profile(query: &Query, settings: &Settings) -> Response<Body> {
    let CpuParams { seconds, hz } = match cpu_params(query, settings.max_profile_seconds) {
        Ok(params) => params,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let profile = match CpuProfile::start(hz) {
        Ok(p) => p,
        Err(e @ CpuProfileError::InUse) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("Could not enable CPU profiling: {e}"),
            )
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    // After the start, so a second profile still gets Go's "in use" answer; dropping
    // `profile` on a 503 stops it.
    let Some(_running) = long_running(settings) else {
        return too_many_long_running();
    };
    // If the client goes away, hyper drops this future and `profile`'s Drop stops sampling.
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    match tokio::task::spawn_blocking(move || crate::symbolize_and_encode(profile.stop())).await {
        Ok(bytes) => profile_bytes("profile", bytes),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("building the profile failed: {e}"),
        ),
    }
}

/// What `/heap`, `/allocs`, `/goroutine` and `/threadcreate` were asked for.
#[derive(Debug)]
pub struct SnapshotParams {
    /// Text (`debug` above 0) or protobuf (0, the default).
    pub debug: u64,
    /// `seconds=N` asks for the difference over N seconds instead of a snapshot (1 to the
    /// server's maximum); never with a `debug` above 0.
    pub seconds: Option<u64>,
}

/// Checks `debug` (0 to `max_debug`) and `seconds` (absent or empty for a snapshot) of a
/// snapshot endpoint; the error is the 400's message.
pub(super) fn snapshot_params(
    query: &Query,
    max_debug: u64,
    max_seconds: u64,
) -> Result<SnapshotParams, String> {
    let debug = query.int_in("debug", 0, 0..=max_debug)?;
    let seconds = match query.get("seconds").filter(|s| !s.is_empty()) {
        None => None,
        Some(_) => Some(query.int_in("seconds", 0, 1..=max_seconds)?),
    };
    if seconds.is_some() && debug != 0 {
        return Err("seconds and debug params are incompatible".into());
    }
    Ok(SnapshotParams { debug, seconds })
}

/// What `/heap` and `/allocs` were asked for.
#[derive(Debug)]
pub struct HeapParams {
    /// `debug` and `seconds`, as for the other snapshot endpoints (any `debug` above 0 is text).
    pub snapshot: SnapshotParams,
    /// `allocator_frames=1` keeps the allocator's frames at the leaf of each stack (and writes
    /// no `drop_frames`); 0, the default, cuts them.
    pub allocator_frames: bool,
}

/// Checks `/heap`'s and `/allocs`' parameters; the error is the 400's message.
pub(super) fn heap_params(query: &Query, max_seconds: u64) -> Result<HeapParams, String> {
    Ok(HeapParams {
        snapshot: snapshot_params(query, u64::MAX, max_seconds)?,
        allocator_frames: query.int_in("allocator_frames", 0, 0..=1)? == 1,
    })
}

/// What `/block` and `/mutex` were asked for.
#[derive(Debug)]
pub struct OffCpuParams {
    /// How long to sample: 1 to the server's maximum, default [`offcpu::DEFAULT_SECONDS`] (or
    /// the maximum if lower).
    pub seconds: u64,
    /// Whether `seconds` was given: with continuous sampling it asks for the difference over
    /// that time instead of everything since start.
    pub seconds_given: bool,
    /// Text (1 or 2) or protobuf (0, the default).
    pub debug: u64,
    /// `idle=1` adds idle, I/O and sleep waits.
    pub idle: bool,
}

/// Checks `/block`'s and `/mutex`'s `seconds`, `debug` (0 to 2) and `idle` (0 or 1); the
/// error is the 400's message.
pub(super) fn off_cpu_params(query: &Query, max_seconds: u64) -> Result<OffCpuParams, String> {
    // As for `/profile`, the default obeys the maximum.
    let seconds = query.int_in(
        "seconds",
        offcpu::DEFAULT_SECONDS.min(max_seconds),
        1..=max_seconds,
    )?;
    let debug = query.int_in("debug", 0, 0..=2)?;
    let idle = query.int_in("idle", 0, 0..=1)? == 1;
    Ok(OffCpuParams {
        seconds,
        seconds_given: query.get("seconds").is_some_and(|s| !s.is_empty()),
        debug,
        idle,
    })
}

/// What `/heap` and `/allocs` answer when the service's global allocator is not pprofd's.
const HEAP_NOT_INSTALLED: &str = "heap profiling is not enabled: pprofd samples allocations through its allocator wrapper. Add this line to the program's main.rs and rebuild:\n\n#[global_allocator]\nstatic ALLOC: pprofd::Allocator<std::alloc::System> = pprofd::Allocator::system();\n\n(or pprofd::Allocator::new(YourAllocator) to keep another allocator)";

/// `/heap` and `/allocs`: the same samples, with Go's parameters (`debug`, `seconds` for a
/// delta profile, `gc` accepted and ignored since there is no collector to run) and
/// `allocator_frames`.
async fn heap_profile(kind: ProfileKind, query: &Query, settings: &Settings) -> Response<Body> {
    if !heap::is_installed() {
        return error(StatusCode::NOT_FOUND, HEAP_NOT_INSTALLED);
    }
    // Go accepts any `debug` for the heap and answers text for every value but 0.
    let HeapParams {
        snapshot: SnapshotParams { debug, seconds },
        allocator_frames,
    } = match heap_params(query, settings.max_profile_seconds) {
        Ok(params) => params,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let name = match kind {
        ProfileKind::Heap => "heap",
        ProfileKind::Allocs => "allocs",
    };
    let built = match seconds {
        None => {
            tokio::task::spawn_blocking(move || {
                heap::refresh_unwind_tables();
                let snapshot = HeapSnapshot::take();
                if debug == 0 {
                    profile_bytes(name, snapshot.encode(kind, allocator_frames))
                } else {
                    text("text/plain; charset=utf-8", snapshot.text())
                }
            })
            .await
        }
        Some(seconds) => {
            let Some(_running) = long_running(settings) else {
                return too_many_long_running();
            };
            let before = match tokio::task::spawn_blocking(HeapSnapshot::take).await {
                Ok(snapshot) => snapshot,
                Err(e) => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("building the profile failed: {e}"),
                    )
                }
            };
            // If the client goes away, hyper drops this future and nothing else is kept.
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            tokio::task::spawn_blocking(move || {
                let delta = HeapSnapshot::take().since(&before);
                profile_bytes(
                    &format!("{name}-delta"),
                    delta.encode(kind, allocator_frames),
                )
            })
            .await
        }
    };
    built.unwrap_or_else(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("building the profile failed: {e}"),
        )
    })
}

/// Every thread's stack: pprof (`debug=0`), grouped text (`debug=1`) or per-thread text
/// (`debug=2`); with `seconds=N`, Go's delta profile between a dump now and one N seconds
/// later. Dumps run on the blocking pool, so they answer while the service's own threads are
/// wedged.
async fn goroutine(query: &Query, settings: &Settings) -> Response<Body> {
    let SnapshotParams { debug, seconds } =
        match snapshot_params(query, 2, settings.max_profile_seconds) {
            Ok(params) => params,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
    let deadline = threads::DEFAULT_DEADLINE;
    let built = if let Some(seconds) = seconds {
        // Go's delta profile: the change between a dump now and one `seconds` later.
        let Some(_running) = long_running(settings) else {
            return too_many_long_running();
        };
        let earlier = match ThreadDump::capture_with_tasks(deadline, |dump| dump).await {
            Ok(dump) => dump,
            Err(e) => return dump_failed(e),
        };
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        ThreadDump::capture_with_tasks(deadline, move |later| {
            Rendered::Profile(crate::symbolize_and_encode(later.profile_since(&earlier)))
        })
        .await
    } else {
        ThreadDump::capture_with_tasks(deadline, move |dump| match debug {
            0 => Rendered::Profile(crate::symbolize_and_encode(dump.profile())),
            1 => Rendered::Text(dump.grouped_text()),
            _ => Rendered::Text(dump.full_text()),
        })
        .await
    };
    match built {
        Ok(rendered) => rendered.into_response("goroutine"),
        Err(e) => dump_failed(e),
    }
}

fn dump_failed(e: std::io::Error) -> Response<Body> {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        &format!("could not dump threads: {e}"),
    )
}

/// The stack that created each live thread: pprof (`debug=0`) or grouped text (`debug=1`);
/// with `seconds=N`, Go's delta profile of the threads that appeared or ended in that time.
async fn threadcreate(query: &Query, settings: &Settings) -> Response<Body> {
    let SnapshotParams { debug, seconds } =
        match snapshot_params(query, 2, settings.max_profile_seconds) {
            Ok(params) => params,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
    let built = if let Some(seconds) = seconds {
        let Some(_running) = long_running(settings) else {
            return too_many_long_running();
        };
        let earlier = ThreadCreations::capture();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        tokio::task::spawn_blocking(move || {
            let later = ThreadCreations::capture();
            Rendered::Profile(crate::symbolize_and_encode(later.profile_since(&earlier)))
        })
        .await
    } else {
        tokio::task::spawn_blocking(move || {
            let creations = ThreadCreations::capture();
            if debug == 0 {
                Rendered::Profile(crate::symbolize_and_encode(creations.profile()))
            } else {
                Rendered::Text(creations.text())
            }
        })
        .await
    };
    match built {
        Ok(rendered) => rendered.into_response("threadcreate"),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("building the threadcreate profile failed: {e}"),
        ),
    }
}

/// Block or mutex profile: samples blocked threads for `seconds` (default 5 s, below
/// scrapers' 10 s timeout), then answers in pprof (`debug=0`) or Go's text (`debug=1`).
/// `idle=1` adds idle, I/O and sleep waits, labelled. With continuous sampling
/// (`PPROF_BLOCK_RATE`), answers at once with the profile since start, or with `seconds=N`
/// the difference over the next N seconds; requests then never conflict.
async fn off_cpu(query: &Query, settings: &Settings, view: View) -> Response<Body> {
    let OffCpuParams {
        seconds,
        seconds_given,
        debug,
        idle,
    } = match off_cpu_params(query, settings.max_profile_seconds) {
        Ok(params) => params,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let samples = if let Some(continuous) = offcpu::continuous() {
        // Continuous sampling runs: everything since start, or the difference over `seconds`.
        let earlier = continuous.snapshot();
        if seconds_given {
            let Some(_running) = long_running(settings) else {
                return too_many_long_running();
            };
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            Sampled::Since(earlier)
        } else {
            Sampled::Cumulative(earlier)
        }
    } else {
        let profile = match BlockProfile::start(offcpu::DEFAULT_HZ) {
            Ok(p) => p,
            Err(e @ BlockProfileError::InUse) => {
                return error(StatusCode::CONFLICT, &e.to_string())
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
        // After the start, so a second window still gets the 409 saying the sampler is busy.
        let Some(_running) = long_running(settings) else {
            return too_many_long_running();
        };
        // If the client goes away, hyper drops this future and `profile`'s Drop stops sampling.
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
            Rendered::Profile(samples.encode(view, idle))
        } else {
            Rendered::Text(samples.text(view, idle))
        })
    })
    .await;
    match built {
        Ok(Ok(rendered)) => rendered.into_response(name),
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("off-CPU sampling failed: {e}"),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("building the {name} profile failed: {e}"),
        ),
    }
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

/// A profile in one of its served forms.
enum Rendered {
    Profile(Vec<u8>),
    Text(String),
}

impl Rendered {
    fn into_response(self, name: &str) -> Response<Body> {
        match self {
            Rendered::Profile(bytes) => profile_bytes(name, bytes),
            Rendered::Text(body) => text("text/plain; charset=utf-8", body),
        }
    }
}

/// A permit to run a long-running request (one that samples or waits `seconds`), or `None`
/// when [`super::MAX_LONG_RUNNING`] already run: they would otherwise hold every connection
/// slot for minutes.
fn long_running(settings: &Settings) -> Option<OwnedSemaphorePermit> {
    settings.long_running.clone().try_acquire_owned().ok()
}

/// The 503 for a long-running request past the cap.
fn too_many_long_running() -> Response<Body> {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!(
            "{} long-running profile requests (profile, block, mutex, or seconds=N) are already running, the most \
             this server runs at once; retry when one finishes, or ask for a snapshot without seconds=N",
            super::MAX_LONG_RUNNING
        ),
    )
}

/// Go's symbolz protocol: addresses separated by `+` (POST body or query string), answered
/// with `num_symbols: 1` and one `0xADDR name` line per known address. A POST body must
/// arrive by the connection's read deadline, or the answer is 408.
async fn symbol(req: Request<Incoming>, read_deadline: Instant) -> Response<Body> {
    let input = if req.method() == Method::POST {
        let body = Limited::new(req.into_body(), MAX_SYMBOL_BODY).collect();
        match tokio::time::timeout_at(read_deadline, body).await {
            Ok(Ok(body)) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            Ok(Err(_)) => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("symbol request body larger than {MAX_SYMBOL_BODY} bytes"),
                )
            }
            Err(_) => {
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive in time; send the whole request at once",
                )
            }
        }
    } else {
        req.uri().query().unwrap_or("").to_string()
    };
    let addresses = symbol_addresses(&input);
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
    text("text/plain; charset=utf-8", body)
}

/// The addresses in a `/symbol` request: words separated by `+`, malformed ones skipped.
pub(super) fn symbol_addresses(input: &str) -> Vec<u64> {
    input.split('+').filter_map(parse_address).collect()
}

/// Parses an address as Go's `strconv.ParseUint(s, 0, 64)` does; malformed words are skipped.
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
}
