//! The HTTP server: Go's `net/http/pprof` routes on a thread and runtime of their own.
//!
//! The server owns one OS thread running a single-threaded tokio runtime, so it keeps
//! answering while the service's own threads and runtime are busy or wedged (docs/invariants.md
//! invariant 7). Long work (symbolization, encoding) runs on the runtime's blocking pool.
//!
//! # Slow clients cannot starve the server
//!
//! At most [`MAX_CONNECTIONS`] connections are served at once; more wait in the listen
//! backlog. Two rules keep those slots turning over, so the index and thread dumps answer
//! within seconds whatever other clients do:
//! - The whole request, head and body, must arrive within the read deadline
//!   ([`Config::request_read_timeout`], default 5 s) counted from the accept; a client that is
//!   slower (one byte every few seconds, or nothing at all) is answered 408 or disconnected and
//!   gives its slot back. Trickling clients can therefore hold a slot for at most that long,
//!   and a request queued behind them is served within about one deadline.
//! - Requests that run for seconds by design (`/profile`, `/block`, `/mutex` while they sample,
//!   and the `seconds=N` deltas of `/heap`, `/allocs`, `/goroutine` and `/threadcreate`) are
//!   capped at [`MAX_LONG_RUNNING`] at once; one more is answered 503 at once with a message
//!   saying so. All other slots stay free for requests that answer at once.
//!
//! # A failed start leaves nothing on
//!
//! [`Server::start`] (and `init_from_env`) checks the address and every variable, binds and
//! starts the server thread before turning on heap sampling and thread-creation recording, so
//! an `Err` leaves no thread, no socket and nothing sampling. [`Config`]'s `Debug` never
//! prints the token.

mod flame;
/// Query parsing and every endpoint's parameter checks without HTTP, for the fuzz targets in
/// `fuzz/` (`cargo fuzz` builds with `--cfg fuzzing`) and this crate's tests; not an API.
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod routes;

pub use crate::flame_graph::flame_graph_svg;

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::endpoints::ENDPOINTS;
use crate::produce::Settings;
use crate::Error;

/// Longest CPU profile accepted by default, in seconds.
pub const DEFAULT_MAX_PROFILE_SECONDS: u64 = 600;
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 128;
/// Long-running requests (profiles that sample or wait `seconds`) served at once; past this
/// they are answered 503, so they never hold more than a few connection slots.
pub const MAX_LONG_RUNNING: usize = 8;
/// How long a client may take to send its whole request (head and body) by default, so idle
/// or slow clients give their connection slot back quickly.
pub const DEFAULT_REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How to run the server, for services that configure in code rather than by environment.
///
/// ```no_run
/// let server = pprofd::Server::start(pprofd::Config::new("127.0.0.1:6060"))?;
/// println!("pprof on {}", server.local_addr());
/// # Ok::<(), pprofd::Error>(())
/// ```
#[derive(Clone)]
pub struct Config {
    addr: String,
    addr_source: &'static str,
    max_profile_seconds: u64,
    request_read_timeout: Duration,
    token: Option<String>,
    record: Option<Duration>,
    record_hz: u32,
}

/// Prints every setting but the token, which is only said to be set: configurations end up
/// in logs.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("addr_source", &self.addr_source)
            .field("max_profile_seconds", &self.max_profile_seconds)
            .field("request_read_timeout", &self.request_read_timeout)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("record", &self.record)
            .field("record_hz", &self.record_hz)
            .finish()
    }
}

impl Config {
    /// Listen on `addr`, in Go's forms: `:6060` (all interfaces), `127.0.0.1:6060`,
    /// `[::1]:6060`, `localhost:6060`; port 0 picks a free port.
    pub fn new(addr: impl Into<String>) -> Self {
        Config {
            addr: addr.into(),
            addr_source: "Config::new",
            max_profile_seconds: DEFAULT_MAX_PROFILE_SECONDS,
            request_read_timeout: DEFAULT_REQUEST_READ_TIMEOUT,
            token: None,
            record: None,
            record_hz: crate::recorder::DEFAULT_HZ,
        }
    }

    /// Turns on the flight recorder (as `PPROF_RECORD` does): the last `window` (1 s to 24 h)
    /// of CPU and heap is kept in bounded memory, and `profile`, `heap` and `allocs` answer
    /// `?past=N` at once with the last N seconds (see [`crate::recorder`]).
    pub fn record(mut self, window: Duration) -> Self {
        self.record = Some(window);
        self
    }

    /// The flight recorder's CPU sampling rate, 1 to 1000 (default 19; `PPROF_RECORD_HZ`).
    pub fn record_hz(mut self, hz: u32) -> Self {
        self.record_hz = hz;
        self
    }

    /// Checks the recorder's window and rate.
    pub(crate) fn check_record(&self) -> Result<(), Error> {
        let invalid = |source_name, value: String, reason: &str| Error::InvalidRecord {
            source_name,
            value,
            reason: reason.into(),
        };
        let from_env = self.addr_source == crate::ADDR_ENV;
        if let Some(window) = self.record {
            if window < Duration::from_secs(1) || window > crate::recorder::MAX_WINDOW {
                return Err(invalid(
                    if from_env { crate::RECORD_ENV } else { "Config::record" },
                    format!("{}s", window.as_secs_f64()),
                    "the window must be from 1s to 24h",
                ));
            }
        }
        if !(1..=crate::cpu::MAX_HZ).contains(&self.record_hz) {
            return Err(invalid(
                if from_env { crate::RECORD_HZ_ENV } else { "Config::record_hz" },
                self.record_hz.to_string(),
                "the rate must be from 1 to 1000 samples a second",
            ));
        }
        Ok(())
    }

    /// How long a client may take to send its whole request, head and body, counted from
    /// the accept (default [`DEFAULT_REQUEST_READ_TIMEOUT`], at least 100 ms). A slower client
    /// is answered 408 or disconnected, so slow clients give their slot back this soon.
    pub fn request_read_timeout(mut self, timeout: Duration) -> Self {
        self.request_read_timeout = timeout.max(Duration::from_millis(100));
        self
    }

    /// Longest `seconds` a profile request may ask for (default 600).
    pub fn max_profile_seconds(mut self, seconds: u64) -> Self {
        self.max_profile_seconds = seconds.max(1);
        self
    }

    /// Requires `Authorization: Bearer <token>` on every request (`None` or empty: no check).
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// Names where the address came from, for error messages.
    pub(crate) fn named_by(mut self, variable: &'static str) -> Self {
        self.addr_source = variable;
        self
    }
}

/// A running pprof server. Dropping it (or calling [`Server::shutdown`]) stops it.
pub struct Server {
    local_addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    record: Option<crate::recorder::RecordSettings>,
}

impl Server {
    /// Binds the configured address and starts serving from a dedicated thread.
    ///
    /// Everything that can fail (the address, the bind, the thread) happens before anything
    /// is turned on: on `Err` no thread or socket is left, heap sampling and thread-creation
    /// recording stay off.
    pub fn start(config: Config) -> Result<Server, Error> {
        config.check_record()?;
        let server = Server::launch(config)?;
        server.start_recorder()?;
        server.turn_on_recording();
        Ok(server)
    }

    /// Binds and starts the server thread, without turning on heap sampling or thread-creation
    /// recording; dropping the result on a later error leaves nothing running.
    pub(crate) fn launch(config: Config) -> Result<Server, Error> {
        let addrs = resolve(&config)?;
        let bind_error = |source| Error::Bind {
            value: config.addr.clone(),
            source,
        };
        let listener = bind(&addrs).map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel();
        let protected = config.token.is_some();
        let read_timeout = config.request_read_timeout;
        let settings = Arc::new(Settings::new(config.max_profile_seconds, config.token));
        let runtime = build_runtime().map_err(Error::Spawn)?;
        let handle = runtime.handle().clone();
        // The server of PPROF_ADDR lends its runtime to the axum mount.
        let lends_runtime = config.addr_source == crate::ADDR_ENV;
        let thread = std::thread::Builder::new()
            .name("pprofd-http".into())
            .spawn(move || {
                serve(
                    runtime,
                    listener,
                    settings,
                    read_timeout,
                    shutdown_rx,
                    lends_runtime,
                )
            })
            .map_err(Error::Spawn)?;
        if lends_runtime {
            *lock_lent_runtime() = Some(handle);
        }
        log::info!(
            "pprofd: serving http://{local_addr}/debug/pprof/ ({})",
            ENDPOINTS
                .iter()
                .map(|e| e.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
        if !local_addr.ip().is_loopback() && !protected {
            log::warn!(
                "pprofd: {local_addr} is reachable beyond this machine without a token; the endpoints expose stacks, \
                 symbols and the command line (set PPROF_TOKEN, or bind 127.0.0.1)"
            );
        }
        Ok(Server {
            local_addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
            record: config.record.map(|window| crate::recorder::RecordSettings {
                window,
                hz: config.record_hz,
            }),
        })
    }

    /// Starts the flight recorder when the configuration asks for it. It records for the life
    /// of the process, past this server's.
    pub(crate) fn start_recorder(&self) -> Result<(), Error> {
        match self.record {
            Some(settings) => crate::recorder::start(settings).map_err(Error::Recording),
            None => Ok(()),
        }
    }

    /// Turns on what the profiles record from the server's start on; last, once nothing can
    /// fail any more.
    pub(crate) fn turn_on_recording(&self) {
        crate::threads::start_recording();
        crate::heap::start_with_server();
    }

    /// The address the server listens on (with the port chosen when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, ends open connections and joins the server thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Resolves Go's address forms; `:port` means every interface.
fn resolve(config: &Config) -> Result<Vec<SocketAddr>, Error> {
    let invalid = |reason: String| Error::InvalidAddress {
        source_name: config.addr_source,
        value: config.addr.clone(),
        reason,
    };
    let addr = config.addr.trim();
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(invalid("missing :port".into()));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| invalid(format!("port {port:?} is not a number from 0 to 65535")))?;
    if host.is_empty() {
        // Go listens on every IPv6 and IPv4 interface; fall back to IPv4 where IPv6 is off.
        return Ok(vec![
            SocketAddr::from(([0u16; 8], port)),
            SocketAddr::from(([0u8; 4], port)),
        ]);
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| invalid(format!("cannot resolve host {host:?}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(invalid(format!("host {host:?} has no address")));
    }
    Ok(addrs)
}

fn bind(addrs: &[SocketAddr]) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in addrs {
        match TcpListener::bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to bind")))
}

/// pprofd's own runtime: single-threaded, with a small blocking pool for symbolization and
/// encoding whose threads are left out of profiles.
pub(crate) fn build_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("pprofd-work")
        .max_blocking_threads(4)
        .on_thread_start(crate::procfs::register_internal_for_life)
        .build()
}

/// The server thread: `runtime` accepting connections until shutdown.
fn serve(
    runtime: tokio::runtime::Runtime,
    listener: TcpListener,
    settings: Arc<Settings>,
    read_timeout: Duration,
    shutdown: tokio::sync::oneshot::Receiver<()>,
    lends_runtime: bool,
) {
    let _internal = crate::procfs::register_internal_thread();
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                log::error!("pprofd: cannot use the listening socket: {e}");
                return;
            }
        };
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut shutdown = shutdown;
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                permit = permits.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            };
            let stream = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        log::debug!("pprofd: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let settings = settings.clone();
            tokio::spawn(async move {
                let _permit = permit;
                serve_connection(stream, settings, read_timeout).await;
            });
        }
    });
    if lends_runtime {
        *lock_lent_runtime() = None;
    }
    // Dropping the runtime cancels open connections, which stops any profile they ran.
    runtime.shutdown_timeout(Duration::from_secs(2));
}

/// The runtime of the server `init_from_env` started, while it serves: the axum mount
/// forwards its requests there rather than starting a second thread and runtime.
static LENT_RUNTIME: std::sync::Mutex<Option<tokio::runtime::Handle>> =
    std::sync::Mutex::new(None);

fn lock_lent_runtime() -> std::sync::MutexGuard<'static, Option<tokio::runtime::Handle>> {
    LENT_RUNTIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `PPROF_ADDR` server's runtime, if one serves.
#[cfg(feature = "axum")]
pub(crate) fn lent_runtime() -> Option<tokio::runtime::Handle> {
    lock_lent_runtime().clone()
}

/// Serves one request, closing the connection if the request's head has not arrived by the
/// read deadline (the body's deadline is the handler's, which answers 408).
async fn serve_connection(
    stream: tokio::net::TcpStream,
    settings: Arc<Settings>,
    read_timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + read_timeout;
    let head_arrived = Arc::new(AtomicBool::new(false));
    let arrived = head_arrived.clone();
    let service = hyper::service::service_fn(move |req| {
        arrived.store(true, Ordering::Relaxed);
        let settings = settings.clone();
        async move {
            Ok::<_, std::convert::Infallible>(routes::answer(req, &settings, deadline).await)
        }
    });
    // One request per connection: profiles are long and scrapes are 15 s apart, so
    // keep-alive would only let idle clients hold slots.
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(read_timeout)
        .keep_alive(false)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    // hyper's header timeout starts at the first byte; this one counts from the accept, so a
    // client that connects and sends nothing, or trickles its head, is dropped too.
    let head_deadline = async {
        tokio::time::sleep_until(deadline).await;
        if head_arrived.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        ended = connection => if let Err(e) = ended {
            log::debug!("pprofd: connection ended: {e}");
        },
        _ = head_deadline => log::debug!("pprofd: request head not sent within {read_timeout:?}; closing"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(addr: &str) -> Result<Vec<SocketAddr>, Error> {
        resolve(&Config::new(addr))
    }

    #[test]
    fn understands_gos_address_forms() {
        assert_eq!(
            resolved(":6060").unwrap()[1],
            "0.0.0.0:6060".parse().unwrap()
        );
        assert_eq!(
            resolved("127.0.0.1:0").unwrap(),
            vec!["127.0.0.1:0".parse().unwrap()]
        );
        assert_eq!(
            resolved("[::1]:6060").unwrap(),
            vec!["[::1]:6060".parse().unwrap()]
        );
        assert!(resolved("localhost:6060")
            .unwrap()
            .iter()
            .all(|a| a.ip().is_loopback()));
    }

    #[test]
    fn bad_addresses_name_the_value() {
        for bad in ["6060", "127.0.0.1:http", "127.0.0.1:70000"] {
            let message = resolved(bad).unwrap_err().to_string();
            assert!(message.contains(bad), "{message}");
        }
    }
}
