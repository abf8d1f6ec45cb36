//! The axum mount (feature `axum`), over real HTTP: an axum 0.8 app on a multi-thread tokio
//! runtime merges `pprofd::axum::router()` beside its own routes and state, and serves a CPU
//! profile that the real `go tool pprof -top` reads, a `goroutine?debug=2` dump showing the
//! app's threads, the standalone server's errors word for word, and the token check; first on
//! the runtime of the `PPROF_ADDR` server, then, once that server is gone, on its own.
//!
//! Run with `cargo test --release -p pprofd --features axum --test axum_mount` (`.ci/run` does).

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use support::{go, go_tool_pprof, request, request_with_headers, Response};

/// The app's own state, so the merge is checked with a state type that is not `()`.
#[derive(Clone)]
struct AppState {
    greeting: &'static str,
}

/// The app's CPU work, which the profile must find.
#[inline(never)]
fn spin_in_the_app(rounds: u64) -> u64 {
    let mut x = rounds;
    for i in 0..rounds {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
    }
    x
}

/// Serves `pprof` merged into an app with its own route and state; returns the address.
fn serve(runtime: &tokio::runtime::Runtime, pprof: Router<AppState>) -> SocketAddr {
    let app = Router::new()
        .route(
            "/hello",
            get(|State(state): State<AppState>| async move { state.greeting }),
        )
        .merge(pprof)
        .with_state(AppState { greeting: "hello" });
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn same_answer(what: &str, mounted: &Response, standalone: &Response) {
    assert_eq!(
        (mounted.status, mounted.text()),
        (standalone.status, standalone.text()),
        "{what}: the mount and the standalone server differ"
    );
    assert_eq!(
        mounted.header("X-Go-Pprof"),
        standalone.header("X-Go-Pprof"),
        "{what}"
    );
}

#[test]
fn an_axum_app_that_merges_the_router_serves_profiles_dumps_and_the_servers_errors() {
    // Both routers read PPROF_TOKEN when made; made first, before any other thread runs.
    std::env::set_var(pprofd::ADDR_ENV, "127.0.0.1:0");
    std::env::set_var(pprofd::TOKEN_ENV, "s3cret");
    let guarded = pprofd::axum::router::<AppState>();
    std::env::remove_var(pprofd::TOKEN_ENV);
    let open = pprofd::axum::router::<AppState>();
    let standalone = pprofd::init_from_env().unwrap().expect("PPROF_ADDR is set");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("app-worker")
        .enable_all()
        .build()
        .unwrap();
    let addr = serve(&runtime, open);
    let guarded_addr = serve(&runtime, guarded);

    // The app's own route still answers, with its state.
    let hello = request(addr, "GET", "/hello", b"");
    assert_eq!((hello.status, hello.text().as_str()), (200, "hello"));

    // One app worker busy with CPU work for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let busy = stop.clone();
    runtime.spawn(async move {
        while !busy.load(Ordering::Relaxed) {
            std::hint::black_box(spin_in_the_app(200_000));
            tokio::task::yield_now().await;
        }
    });

    // A goroutine dump lists the app's runtime workers with their stacks.
    let dump = request(addr, "GET", "/debug/pprof/goroutine?debug=2", b"");
    assert_eq!(dump.status, 200, "{}", dump.text());
    let dump = dump.text();
    assert!(
        dump.lines()
            .filter(|l| l.starts_with("thread ") && l.contains("\"app-worker\""))
            .count()
            >= 2,
        "both app workers are listed:\n{dump}"
    );

    // Bad input gets the standalone server's answer, word for word.
    for (method, path) in [
        ("GET", "/debug/pprof/profile?seconds=abc"),
        ("GET", "/debug/pprof/profile?hz=0"),
        ("GET", "/debug/pprof/goroutine?debug=1&seconds=2"),
        ("GET", "/debug/pprof/nope"),
        ("POST", "/debug/pprof/heap"),
        ("GET", "/debug/pprof/trace"),
        ("POST", "/debug/pprof/symbol"),
        ("GET", "/debug/pprof/?debug=1"),
    ] {
        let mounted = request(addr, method, path, b"0x0+junk");
        let served = request(standalone.local_addr(), method, path, b"0x0+junk");
        same_answer(&format!("{method} {path}"), &mounted, &served);
    }
    let bad = request(addr, "GET", "/debug/pprof/profile?seconds=abc", b"");
    assert_eq!(bad.status, 400);
    assert!(
        bad.text().starts_with("seconds=\"abc\" is not a number"),
        "{}",
        bad.text()
    );

    // The real `go tool pprof` fetches a CPU profile through the mount and finds the app's work.
    let started = Instant::now();
    let url = format!("http://{addr}/debug/pprof/profile?seconds=2");
    if let Some(go) = go() {
        let top = go_tool_pprof(&go, &["-top", &url]);
        assert!(top.contains("Type: cpu"), "{top}");
        assert!(top.contains("spin_in_the_app"), "{top}");
    } else {
        let profile = request(addr, "GET", "/debug/pprof/profile?seconds=2", b"").profile();
        assert!(support::share_of(&profile, "spin_in_the_app") > 0.0);
    }
    assert!(started.elapsed() >= Duration::from_secs(2));

    // The token router: nothing without the token, everything with it.
    for auth in [
        None,
        Some("Bearer guess"),
        Some("Bearer s3cre"),
        Some("s3cret"),
    ] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
        for path in [
            "/debug/pprof/",
            "/debug/pprof/cmdline",
            "/debug/pprof/goroutine?debug=2",
        ] {
            let refused = request_with_headers(guarded_addr, "GET", path, &headers, b"");
            assert_eq!(
                refused.status,
                401,
                "{path} with {auth:?}: {}",
                refused.text()
            );
            assert_eq!(refused.text(), "Unauthorized\n");
        }
    }
    let let_in = request_with_headers(
        guarded_addr,
        "GET",
        "/debug/pprof/goroutine?debug=2",
        &[("Authorization", "Bearer s3cret")],
        b"",
    );
    assert_eq!(let_in.status, 200, "{}", let_in.text());
    assert!(let_in.text().contains("\"app-worker\""));
    // The token guards only pprofd's routes, not the app's.
    assert_eq!(request(guarded_addr, "GET", "/hello", b"").status, 200);

    // With PPROF_ADDR set, all of that ran on its server's runtime: no second one was started.
    assert!(!thread_names().contains(&"pprofd-axum".to_string()));
    standalone.shutdown();
    // Without it, the mount starts its own thread and runtime and answers the same.
    let dump = request(addr, "GET", "/debug/pprof/goroutine?debug=2", b"");
    assert_eq!(dump.status, 200, "{}", dump.text());
    assert!(dump.text().contains("\"app-worker\""));
    assert!(thread_names().contains(&"pprofd-axum".to_string()));
    let bad = request(addr, "GET", "/debug/pprof/profile?seconds=abc", b"");
    assert_eq!(bad.status, 400, "{}", bad.text());
    stop.store(true, Ordering::Relaxed);
}

/// The names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_string())
        .collect()
}
