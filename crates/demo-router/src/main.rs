//! demo-router: a small GraphQL-style router, profiled by pprofd, with three switchable incidents.
//!
//! `POST /graphql` runs a query against in-process subgraphs, `GET /subscribe?topic=T`
//! registers a subscription handler and returns its first event, `GET /healthz` reports
//! subscriptions and cache statistics. With no incident switched on it is a clean, fast
//! service; `pprofd demo` switches each incident on in turn and finds it with the profiles.

mod cache;
mod graphql;
mod incidents;
mod serialize;
mod subscriptions;

use std::collections::HashMap;
use std::io::Read;
use std::process::ExitCode;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Parser;
use serde_json::{json, Value};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use incidents::Incidents;

/// Heap and allocation profiles: every allocation goes through pprofd's sampling wrapper.
#[global_allocator]
static ALLOCATOR: pprofd::Allocator<std::alloc::System> = pprofd::Allocator::system();

/// A GraphQL-style router with switchable incidents, for trying pprofd.
///
/// Set PPROF_ADDR (for example PPROF_ADDR=127.0.0.1:6060) to serve the /debug/pprof endpoints.
/// The router prints `router URL`, `pprof URL` and `incidents LIST` once it is listening.
#[derive(Parser)]
#[command(version)]
struct Options {
    /// Address the router listens on; port 0 picks a free port.
    #[arg(long, env = "DEMO_LISTEN", default_value = "127.0.0.1:4000")]
    listen: String,
    /// Switch on an incident: hotspot, leak, contention or deadlock. Repeat for several.
    #[arg(long = "incident", value_name = "NAME")]
    incidents: Vec<String>,
    /// Exit when standard input reaches its end (for a parent process that owns the router).
    #[arg(long)]
    exit_on_stdin_close: bool,
}

#[derive(Clone)]
struct AppState {
    incidents: Incidents,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("demo-router: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let options = Options::parse();
    let mut incidents = Incidents::default();
    let from_env = std::env::var(incidents::INCIDENTS_ENV).unwrap_or_default();
    for name in options
        .incidents
        .iter()
        .map(String::as_str)
        .chain(from_env.split(','))
    {
        incidents.enable(name)?;
    }
    // Span fields named `operation` label profiles (pprofd feature `tracing`).
    tracing_subscriber::registry()
        .with(pprofd::TracingLabels::new(["operation"]))
        .init();
    let pprof = pprofd::init_from_env().map_err(|e| e.to_string())?;
    if options.exit_on_stdin_close {
        std::thread::spawn(|| {
            let _ = std::io::copy(
                &mut std::io::stdin().lock().take(u64::MAX),
                &mut std::io::sink(),
            );
            std::process::exit(0);
        });
    }
    cache::spawn_janitor(incidents).map_err(|e| format!("cannot start the cache janitor: {e}"))?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // CPU samples name the tokio task being polled (label `task`).
    let runtime = pprofd::labels::tokio_task_ids(&mut builder)
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    // Goroutine dumps list the router's async tasks too (pprofd feature `tokio-tasks`) when
    // PPROF_TOKIO_TASKS=all accepts tokio's stalls of a multi-thread runtime's workers.
    pprofd::watch_tokio_runtime(runtime.handle());
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&options.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!("router http://{addr}");
        match &pprof {
            Some(server) => println!("pprof http://{}/debug/pprof/", server.local_addr()),
            None => println!("pprof off (set PPROF_ADDR=127.0.0.1:6060 to serve /debug/pprof)"),
        }
        println!("incidents {}", incidents.describe());
        let app = Router::new()
            .route("/graphql", post(graphql))
            .route("/subscribe", get(subscribe))
            .route("/healthz", get(healthz))
            .with_state(AppState { incidents });
        axum::serve(listener, app).await.map_err(|e| e.to_string())
    })
}

async fn graphql(State(state): State<AppState>, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"errors": [{"message": format!("body is not JSON: {e}")}]}),
            )
        }
    };
    let Some(query) = request.get("query").and_then(Value::as_str) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"errors": [{"message": "body has no \"query\" string"}]}),
        );
    };
    // Each request runs in a span named after its operation, as routers instrument; pprofd's
    // TracingLabels layer makes `operation` a label of the CPU samples and allocations in it.
    let operation = graphql::operation_name(&request, query);
    let span = tracing::info_span!("graphql", operation = operation.as_str());
    async {
        let result = graphql::execute(query, state.incidents);
        let body = if state.incidents.hotspot {
            serialize::to_json_by_reformatting(&result)
        } else {
            serialize::to_json(&result)
        };
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
    .instrument(span)
    .await
}

async fn subscribe(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let topic = params.get("topic").map(String::as_str).unwrap_or("prices");
    let (id, first_event) = tracing::info_span!("subscribe", operation = "Subscribe")
        .in_scope(|| subscriptions::register(topic));
    // This handler answers with the first event and the client leaves. The handler must then be
    // unregistered; the leak incident is the version of this code that forgot.
    if !state.incidents.leak {
        subscriptions::unregister(id);
    }
    ([(header::CONTENT_TYPE, "application/json")], first_event).into_response()
}

async fn healthz() -> Response {
    let (subscriptions, backlog_bytes) = subscriptions::usage();
    json_response(
        StatusCode::OK,
        &json!({
            "status": "ok",
            "subscriptions": subscriptions,
            "subscription_backlog_bytes": backlog_bytes,
            "cache": cache::stats(),
        }),
    )
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serialize::to_json(body),
    )
        .into_response()
}
