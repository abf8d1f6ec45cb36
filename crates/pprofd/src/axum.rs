//! `/debug/pprof/*` as an axum 0.8 [`Router`] (feature `axum`), for a service that already has
//! an admin router:
//!
//! ```ignore
//! let app = admin_routes.merge(pprofd::axum::router());
//! ```
//!
//! It serves the same endpoints, parameters, errors and token check as the standalone server
//! (`PPROF_TOKEN`, read when [`router`] is called, compared in constant time; see
//! docs/security.md). The host's runtime only forwards: each request is handed to pprofd's own
//! thread and single-threaded runtime (started by the first [`router`] call, never at link
//! time), which samples, symbolizes and encodes, and the answer comes back over a oneshot. A
//! busy host runtime therefore only delays that small forwarding, and a client that goes away
//! still stops its profile at once. When `PPROF_ADDR` is set, the server
//! [`crate::init_from_env`] started lends its thread and runtime instead (while it serves), so
//! no second one is started.
//!
//! A wedged host runtime cannot accept connections or forward requests, though, and that is
//! when `goroutine?debug=2` is needed most. The standalone server (`PPROF_ADDR`, through
//! [`crate::init_from_env`]) accepts on pprofd's own thread and answers then too: keep it set
//! (on loopback) beside the mount where a wedge must be diagnosable.
//!
//! Starting its own runtime also turns on what the standalone server turns on at its start:
//! thread-creation recording and heap sampling (with pprofd's [`crate::Allocator`]).

use std::sync::{Arc, OnceLock};

// `::axum` is the crate; this module only shares its name.
use ::axum::body::Body;
use ::axum::extract::Request;
use ::axum::response::Response;
use ::axum::routing::any;
use ::axum::Router;
use hyper::StatusCode;
use tokio::runtime::Handle;

use crate::produce::Settings;
use crate::server::routes;
use crate::server::{DEFAULT_MAX_PROFILE_SECONDS, DEFAULT_REQUEST_READ_TIMEOUT};

/// The routes under `/debug/pprof`, for any application state `S`, so that
/// `app.merge(pprofd::axum::router())` works whatever state `app` carries.
///
/// Reads `PPROF_TOKEN` now: when set, every request must carry `Authorization: Bearer
/// <token>`. Unless `PPROF_ADDR` is set (its server's runtime is used then), starts pprofd's
/// thread and runtime on the first call; a service that cannot start a thread gets one logged
/// error and 503s naming it.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    // Started now rather than at the first request, so thread creations and allocations
    // from here on are recorded; a failure was logged and each request answers it. With
    // PPROF_ADDR set, `init_from_env`'s server lends its runtime (and turns recording on).
    if std::env::var_os(crate::ADDR_ENV).is_none_or(|addr| addr.is_empty()) {
        let _ = own_runtime();
    }
    // This router's token and long-running cap.
    let settings = Arc::new(Settings::new(
        DEFAULT_MAX_PROFILE_SECONDS,
        std::env::var(crate::TOKEN_ENV).ok(),
    ));
    let handler = move |req: Request| forward(req, settings.clone());
    Router::new()
        .route("/debug/pprof", any(handler.clone()))
        .route("/debug/pprof/", any(handler.clone()))
        .route("/debug/pprof/{*endpoint}", any(handler))
}

/// Hands `req` to pprofd's runtime and waits for the answer.
async fn forward(req: Request, settings: Arc<Settings>) -> Response {
    let runtime = match crate::server::lent_runtime() {
        Some(lent) => lent,
        None => match own_runtime() {
            Ok(own) => own.clone(),
            Err(reason) => return unavailable(reason),
        },
    };
    // The whole request has arrived (axum calls handlers once the head has); a `/symbol`
    // body gets the standalone server's default deadline.
    let deadline = tokio::time::Instant::now() + DEFAULT_REQUEST_READ_TIMEOUT;
    let (answered, answer) = tokio::sync::oneshot::channel();
    runtime.spawn(async move {
        let mut answered = answered;
        tokio::select! {
            response = routes::answer(req, &settings, deadline) => {
                let _ = answered.send(response);
            }
            // The client went away and axum dropped the waiting handler: dropping the
            // answer's future stops a running profile.
            () = answered.closed() => {}
        }
    });
    match answer.await {
        Ok(response) => response.map(Body::new),
        Err(_) => unavailable("pprofd's runtime dropped the request"),
    }
}

/// pprofd's runtime for the mount when no `PPROF_ADDR` server lends its own, started on first
/// use: an OS thread of pprofd's running a current-thread runtime whose blocking pool does the
/// profile work, as the standalone server's does (those threads are left out of profiles).
fn own_runtime() -> Result<&'static Handle, &'static str> {
    static RUNTIME: OnceLock<Result<Handle, &'static str>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let (started, handle) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("pprofd-axum".into())
                .spawn(move || {
                    let _internal = crate::procfs::register_internal_thread();
                    let runtime = crate::server::build_runtime();
                    match runtime {
                        Ok(runtime) => {
                            let _ = started.send(Some(runtime.handle().clone()));
                            // Serves the forwarded requests for the life of the process.
                            runtime.block_on(std::future::pending::<()>());
                        }
                        Err(e) => {
                            log::error!("pprofd: cannot start the axum mount's runtime: {e}");
                            let _ = started.send(None);
                        }
                    }
                });
            if let Err(e) = spawned {
                log::error!("pprofd: cannot start the axum mount's thread: {e}");
                return Err("pprofd could not start its thread");
            }
            let handle = handle
                .recv()
                .ok()
                .flatten()
                .ok_or("pprofd could not start its runtime")?;
            crate::threads::start_recording();
            crate::heap::start_with_server();
            Ok(handle)
        })
        .as_ref()
        .map_err(|e| *e)
}

/// A 503 saying why nothing could answer.
fn unavailable(reason: &str) -> Response {
    routes::error(StatusCode::SERVICE_UNAVAILABLE, reason).map(Body::new)
}
