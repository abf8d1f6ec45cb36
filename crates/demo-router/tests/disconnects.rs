//! Clients that disconnect mid-profile (a scraper that times out, an operator pressing
//! Ctrl-C) must not leave anything behind: the sampler they started stops and their
//! connection slot comes back at once, not when the profile they asked for would have ended.
//!
//! The CPU profile's case is in crates/pprofd/tests/cpu_profile.rs
//! (`a_client_that_disconnects_frees_the_profiler`); these cover the other windowed profiles.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{client, get, ProfiledRouter};

/// What each abandoned request asks for: far longer than the test, so only the disconnect
/// can end it.
const ABANDONED_SECONDS: u64 = 60;

/// Sends `GET path` on a new connection and returns the connection without reading.
fn start_request(router: &ProfiledRouter, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(router.pprof_addr()).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: pprof\r\n\r\n").unwrap();
    stream
}

/// Status of `GET path` on the pprof port.
fn status(router: &ProfiledRouter, path: &str, timeout: Duration) -> Result<u16, ureq::Error> {
    get(&client(timeout), &format!("{}{path}", router.pprof)).map(|(status, _)| status)
}

#[test]
fn abandoned_block_and_mutex_profiles_stop_sampling() {
    let router = ProfiledRouter::start();
    for view in ["block", "mutex"] {
        let abandoned = start_request(
            &router,
            &format!("/debug/pprof/{view}?seconds={ABANDONED_SECONDS}"),
        );
        // The block and mutex profiles share one sampler: while the abandoned request holds
        // it, another request is refused. Without this the check below could not fail.
        let started = Instant::now();
        loop {
            match status(
                &router,
                "/debug/pprof/block?seconds=1",
                Duration::from_secs(10),
            ) {
                Ok(409) => break,
                Ok(200) if started.elapsed() < Duration::from_secs(2) => {
                    // The abandoned request had not reached the server yet.
                }
                other => panic!("{view}: a second profile during the first answered {other:?}"),
            }
        }
        drop(abandoned);

        let left = Instant::now();
        loop {
            match status(
                &router,
                "/debug/pprof/block?seconds=1",
                Duration::from_secs(10),
            ) {
                Ok(200) => break,
                Ok(409) => assert!(
                    left.elapsed() < Duration::from_secs(5),
                    "{view}: the sampler was still busy {:?} after its client left",
                    left.elapsed()
                ),
                other => panic!("{view}: block profile after the disconnect: {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn abandoned_delta_profiles_give_back_their_slots() {
    let router = ProfiledRouter::start();
    // Delta profiles (heap, allocs, goroutine with seconds=N) hold a long-running slot while
    // they wait: take every slot with them.
    let deltas = ["heap", "allocs", "goroutine"];
    let abandoned: Vec<TcpStream> = (0..pprofd::server::MAX_LONG_RUNNING)
        .map(|i| {
            let path = format!(
                "/debug/pprof/{}?seconds={ABANDONED_SECONDS}",
                deltas[i % deltas.len()]
            );
            start_request(&router, &path)
        })
        .collect();
    // Every slot is taken: one more delta is refused. This is what the test would see after
    // the disconnects if the server kept serving the abandoned requests.
    let started = Instant::now();
    loop {
        match status(
            &router,
            "/debug/pprof/goroutine?seconds=1",
            Duration::from_secs(10),
        ) {
            Ok(503) => break,
            Ok(200) if started.elapsed() < Duration::from_secs(10) => {
                // The abandoned requests had not all reached the server yet.
            }
            other => panic!("a delta while every slot is taken answered {other:?}"),
        }
    }
    drop(abandoned);

    let left = Instant::now();
    loop {
        match status(
            &router,
            "/debug/pprof/goroutine?seconds=1",
            Duration::from_secs(10),
        ) {
            Ok(200) => break,
            Ok(503) => assert!(
                left.elapsed() < Duration::from_secs(5),
                "the long-running slots were still taken {:?} after their clients left",
                left.elapsed()
            ),
            other => panic!("a delta after the disconnects answered {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
