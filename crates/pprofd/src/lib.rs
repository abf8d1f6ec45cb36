//! # pprofd
//!
//! Go's `/debug/pprof` endpoints for Rust services, readable by `go tool pprof`, speedscope
//! and Pyroscope as they are.
//!
//! ```no_run
//! // At the top of main. Does nothing unless PPROF_ADDR is set, e.g. PPROF_ADDR=127.0.0.1:6060.
//! let _pprof = pprofd::init_from_env().expect("PPROF_ADDR is valid");
//! ```
//!
//! Then `go tool pprof http://127.0.0.1:6060/debug/pprof/profile?seconds=5`.
//!
//! When the service hangs, `curl http://127.0.0.1:6060/debug/pprof/goroutine?debug=2` lists
//! every thread with its state, the system call it waits in and its stack. `/block` and
//! `/mutex` sample blocked threads for 5 s (or `seconds=N`) and charge the waits to their call
//! sites; `PPROF_BLOCK_RATE=10` keeps sampling for the life of the process instead.
//! `/threadcreate` shows the code that created each thread. Dumps and block sampling signal
//! sleeping threads; [`threads`] and [`offcpu`] say what that means for system calls.
//! With the `tokio-tasks` feature (and `--cfg tokio_unstable`), `watch_tokio_runtime` adds
//! a runtime's async tasks to the dumps, each with the stacks of its await points.
//!
//! [`Labels`] say which operation, route or tenant a sample belongs to: CPU samples,
//! allocations, dumps and waits taken inside `labels.scope(..)` or a future wrapped with
//! `labels.instrument(..)` carry them (`go tool pprof -tagfocus operation=GetUser`); with the
//! `tracing` feature, [`TracingLabels`] takes them from span fields.
//!
//! The crate is split by concern: [`endpoints`] lists the endpoints; a request layer makes
//! every profile from a request description, outside HTTP; [`server`] is the only module that
//! knows HTTP, and the `axum` mount (feature `axum`) a second adapter; [`cpu`]
//! samples; [`threads`] dumps every thread's stack and records thread creation; [`offcpu`]
//! samples blocked threads for the block and mutex profiles; `unwind` walks stacks inside
//! signal handlers; `symbolize` turns addresses into functions and lines; [`profile`] is the
//! pprof model every profiler produces.
//!
//! # Platforms
//!
//! pprofd profiles on Linux on x86_64 and aarch64 (glibc or musl, dynamic or static). On
//! every other target (macOS, Windows, the BSDs, Linux on other processors) it builds with the
//! API a service uses and does nothing: [`Allocator`] only forwards to its inner allocator,
//! [`init_from_env`] returns `Ok(None)` (with one logged warning when `PPROF_ADDR` is set),
//! [`Server::start`] returns [`Error::Unsupported`]; [`profile`] and
//! [`server::flame_graph_svg`] work everywhere. The `tokio-tasks` feature is Linux-only.
//! The one fence is below: Linux modules, or the small `unsupported` one; `arch` holds what
//! differs between x86_64 and aarch64.

/// Declares items that exist only where pprofd profiles: Linux on x86_64 and aarch64 (the
/// same condition as the Linux-only dependencies in Cargo.toml).
macro_rules! where_pprofd_profiles {
    ($($item:item)*) => {$(
        #[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
        $item
    )*};
}

pub mod endpoints;
mod error;
mod flame_graph;
pub mod labels;
pub mod profile;

where_pprofd_profiles! {
    mod arch;
    pub mod cpu;
    mod fork;
    pub mod heap;
    mod objects;
    pub mod offcpu;
    mod procfs;
    mod produce;
    pub mod recorder;
    pub mod server;
    mod sighandler;
    mod symbolize;
    pub mod threads;
    mod unwind;

    /// The server's request parsing for the fuzz targets in `fuzz/`; only with `--cfg fuzzing`.
    #[cfg(fuzzing)]
    #[doc(hidden)]
    pub use server::fuzzing;
    #[cfg(feature = "tokio-tasks")]
    pub use threads::watch_tokio_runtime;
    #[cfg(feature = "axum")]
    pub mod axum;
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
mod unsupported;
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
pub use unsupported::{heap, init_from_env, server};

pub use error::Error;
pub use heap::Allocator;
#[cfg(feature = "tracing")]
pub use labels::TracingLabels;
pub use labels::{Instrumented, Labels};
pub use server::{Config, Server};

/// The environment variable holding the listen address (`127.0.0.1:6060`, `:6060`, ...).
pub const ADDR_ENV: &str = "PPROF_ADDR";
/// The environment variable holding a bearer token every request must carry.
pub const TOKEN_ENV: &str = "PPROF_TOKEN";

/// The environment variable that turns on continuous block/mutex sampling at that many
/// samples a second (off when unset; Go's `runtime.SetBlockProfileRate`).
pub const BLOCK_RATE_ENV: &str = "PPROF_BLOCK_RATE";

/// The environment variable that says which watched tokio runtimes goroutine dumps list the
/// tasks of: `current-thread` (the default) or `all`, which adds multi-thread runtimes and
/// with them tokio's worker stalls (see `watch_tokio_runtime`, feature `tokio-tasks`).
pub const TOKIO_TASKS_ENV: &str = "PPROF_TOKIO_TASKS";

/// The environment variable that turns on the flight recorder, holding its window (`300s`,
/// `10m`, `1h`, `1h30m`; up to 24 h): `profile`, `heap` and `allocs` then answer `?past=N` at
/// once with the last N seconds (see `recorder`).
pub const RECORD_ENV: &str = "PPROF_RECORD";
/// The environment variable holding the flight recorder's CPU sampling rate (1 to 1000;
/// default 19).
pub const RECORD_HZ_ENV: &str = "PPROF_RECORD_HZ";

/// Starts the pprof server if `PPROF_ADDR` is set.
///
/// Unset or empty, this returns `Ok(None)` and does nothing else: no thread, no socket, no
/// signal handler. Set, it binds the address (Go's forms: `:6060` for all interfaces,
/// `127.0.0.1:6060`, `[::1]:6060`, `localhost:6060`; port 0 picks a free port) and serves
/// from a dedicated thread. Keep the returned [`Server`] alive: dropping it stops serving.
/// With `PPROF_TOKEN` set, every request must carry `Authorization: Bearer <token>`.
/// With `PPROF_BLOCK_RATE` set too (1 to 1000), blocked threads are sampled at that rate for
/// the life of the process, and `/debug/pprof/block` and `/mutex` answer at once with the
/// profile since start (see [`offcpu::start_continuous`]). With `PPROF_RECORD=10m` (and
/// optionally `PPROF_RECORD_HZ`), the flight recorder keeps the last ten minutes of CPU and
/// heap for `?past=N` (see [`recorder`]).
///
/// Every variable is validated before anything starts: an `Err` (a bad variable, an address
/// in use) leaves no thread, no socket, heap sampling and thread-creation recording off.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub fn init_from_env() -> Result<Option<Server>, Error> {
    let addr = match std::env::var(ADDR_ENV) {
        Ok(addr) if !addr.trim().is_empty() => addr,
        Ok(_) | Err(std::env::VarError::NotPresent) => return Ok(None),
        Err(std::env::VarError::NotUnicode(value)) => {
            return Err(Error::InvalidAddress {
                source_name: ADDR_ENV,
                value: value.to_string_lossy().into_owned(),
                reason: "not valid UTF-8".into(),
            })
        }
    };
    let token = std::env::var(TOKEN_ENV).ok();
    let config = Config::new(addr.trim()).named_by(ADDR_ENV).token(token);
    // Every variable is checked before anything starts, so a bad one leaves nothing running.
    let block_rate = match std::env::var_os(BLOCK_RATE_ENV).filter(|v| !v.is_empty()) {
        None => None,
        Some(rate) => {
            let value = rate.to_string_lossy().into_owned();
            let hz = value
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|hz| (1..=1000).contains(hz))
                .ok_or(Error::InvalidBlockRate { value })?;
            Some(hz)
        }
    };
    threads::task_dump_scope_from_env()?;
    let mut config = config;
    if let Some(window) = env_value(RECORD_ENV)? {
        let window = recorder::parse_window(&window).map_err(|reason| Error::InvalidRecord {
            source_name: RECORD_ENV,
            value: window.clone(),
            reason,
        })?;
        config = config.record(window);
    }
    if let Some(hz) = env_value(RECORD_HZ_ENV)? {
        let parsed = hz.trim().parse::<u32>().map_err(|_| Error::InvalidRecord {
            source_name: RECORD_HZ_ENV,
            value: hz.clone(),
            reason: "not a whole number of samples a second".into(),
        })?;
        config = config.record_hz(parsed);
    }
    config.check_record()?;
    // Bound and serving, but recording nothing yet: on an error below, dropping `server`
    // closes the socket and joins its thread.
    let server = Server::launch(config)?;
    if let Some(hz) = block_rate {
        offcpu::start_continuous(hz).map_err(Error::BlockSampling)?;
    }
    server.start_recorder()?;
    server.turn_on_recording();
    Ok(Some(server))
}

/// The value of environment variable `name`, `None` when unset or empty.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn env_value(name: &'static str) -> Result<Option<String>, Error> {
    match std::env::var(name) {
        Ok(value) if value.trim().is_empty() => Ok(None),
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(value)) => Err(Error::InvalidRecord {
            source_name: name,
            value: value.to_string_lossy().into_owned(),
            reason: "not valid UTF-8".into(),
        }),
    }
}

/// Builds a finished profile builder into the profile model, symbolizing its addresses in
/// this process.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub fn symbolize_profile(builder: profile::ProfileBuilder) -> profile::proto::Profile {
    let symbols = symbolize::ProcessSymbols::resolve(builder.addresses());
    builder.build(&symbols)
}

/// Encodes a finished profile builder: symbolizes its addresses in this process and gzips it.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub fn symbolize_and_encode(builder: profile::ProfileBuilder) -> Vec<u8> {
    profile::encode_gzip(&symbolize_profile(builder))
}
