//! Access control and hostile input: tokens, malformed parameters, oversized requests and
//! clients that hold connections open.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{get, request, request_with_headers, Workload};

#[test]
fn a_token_guards_every_endpoint_without_leaking_it() {
    let env = [
        ("PPROF_ADDR", "127.0.0.1:0"),
        ("PPROF_TOKEN", "s3cret-token"),
    ];
    let workload = Workload::start_with_env("cpu_workload", &[], &env);
    let addr = workload.addr();
    for path in [
        "/debug/pprof/",
        "/debug/pprof/cmdline",
        "/debug/pprof/symbol",
        "/debug/pprof/profile?seconds=1",
        "/debug/pprof/nonesuch",
    ] {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer s3cret-toke"),
            Some("s3cret-token"),
            Some("Bearer s3cret-token2"),
        ] {
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
            let response = request_with_headers(addr, "GET", path, &headers, b"");
            assert_eq!(response.status, 401, "{path} with {auth:?}");
            assert!(
                !response.text().contains("s3cret"),
                "the answer says nothing about the token"
            );
        }
    }
    let ok = request_with_headers(
        addr,
        "GET",
        "/debug/pprof/cmdline",
        &[("Authorization", "Bearer s3cret-token")],
        b"",
    );
    assert_eq!(ok.status, 200);
    let cmdline = ok.text();
    assert!(
        !cmdline.contains("s3cret"),
        "cmdline shows argv only, not the environment"
    );
}

#[test]
fn malformed_parameters_are_4xx_with_a_reason_never_5xx() {
    let workload = Workload::start("cpu_workload", &[]);
    let addr = workload.addr();
    let long = "9".repeat(5000);
    let cases = [
        format!("seconds={long}"),
        "seconds=1e3".into(),
        "seconds=%00".into(),
        "seconds=%FF%FE".into(),
        "seconds=+5".into(),
        "seconds=5.5".into(),
        "hz=-1".into(),
        "hz=18446744073709551617".into(),
    ];
    for case in &cases {
        let response = get(addr, &format!("/debug/pprof/profile?{case}"));
        assert_eq!(response.status, 400, "{case}: {}", response.text());
        assert!(!response.text().trim().is_empty());
    }
    // Unknown keys are ignored and the first of repeated keys wins, as in Go.
    let ok = get(
        addr,
        "/debug/pprof/profile?seconds=1&seconds=abc&color=blue",
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    // An overlong request line is refused by the HTTP layer, not answered with a crash.
    let huge = get(addr, &format!("/debug/pprof/?x={}", "a".repeat(200_000)));
    assert!((400..500).contains(&huge.status), "{}", huge.status);
    // Odd paths.
    for path in [
        "/",
        "/debug",
        "/debug/pprof/../pprof/",
        "/debug/pprof//profile",
        "/debug/pprof/%2e%2e",
    ] {
        let response = get(addr, path);
        assert!(response.status < 500, "{path}: {}", response.status);
    }
    assert_eq!(get(addr, "/debug/pprof/").status, 200, "still serving");
}

#[test]
fn idle_and_slow_clients_do_not_starve_the_endpoints() {
    let workload = Workload::start("cpu_workload", &[]);
    let addr = workload.addr();
    // More idle connections than the server serves at once, some sending half a request.
    let mut idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    for stream in idle.iter_mut().step_by(2) {
        let _ = stream.write_all(b"GET /debug/pprof/ HTTP/1.1\r\nHost: x\r\n");
    }
    let started = Instant::now();
    let response = get(addr, "/debug/pprof/cmdline");
    assert_eq!(response.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "answered after {:?}",
        started.elapsed()
    );

    // A CPU profile in progress does not hold up other endpoints: an index that waited for
    // the profile's 15 s window would take more than the 10 s allowed.
    let profile = std::thread::spawn(move || get(addr, "/debug/pprof/profile?seconds=15"));
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(get(addr, "/debug/pprof/").status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered after {:?}",
        started.elapsed()
    );
    profile.join().unwrap().profile();
    drop(idle);
}

#[test]
fn fifty_concurrent_clients_all_get_answers() {
    let workload = Workload::start("cpu_workload", &[]);
    let addr = workload.addr();
    let clients: Vec<_> = (0..50)
        .map(|i| {
            std::thread::spawn(move || {
                let path = match i % 4 {
                    0 => "/debug/pprof/",
                    1 => "/debug/pprof/cmdline",
                    2 => "/debug/pprof/symbol",
                    _ => "/debug/pprof/profile?seconds=1",
                };
                let response = request(addr, "GET", path, b"");
                (path, response.status)
            })
        })
        .collect();
    let mut profiles_served = 0;
    for client in clients {
        let (path, status) = client.join().unwrap();
        if path.contains("profile?") {
            // One CPU profile at a time: the others get Go's 500 "already in use".
            assert!(status == 200 || status == 500, "{path}: {status}");
            profiles_served += (status == 200) as u32;
        } else {
            assert_eq!(status, 200, "{path}");
        }
    }
    assert!(profiles_served >= 1);
}
