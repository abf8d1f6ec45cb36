//! Helpers shared by the CLI's integration tests: the binaries, a demo router child process,
//! GraphQL load, and the `go` toolchain check.

#![allow(dead_code)] // Each test file uses a different part of these helpers.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The `pprofd` binary under test.
pub fn pprofd_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pprofd"))
}

/// Runs `pprofd ARGS` to completion.
pub fn pprofd(args: &[&str]) -> Output {
    Command::new(pprofd_binary())
        .args(args)
        .output()
        .expect("pprofd runs")
}

/// Runs `pprofd ARGS` to completion with `PPROF_TOKEN` set to `token`, or unset for `None`
/// whatever the test's own environment holds.
pub fn pprofd_with_token_env(args: &[&str], token: Option<&str>) -> Output {
    let mut command = Command::new(pprofd_binary());
    match token {
        Some(token) => command.env("PPROF_TOKEN", token),
        None => command.env_remove("PPROF_TOKEN"),
    };
    command.args(args).output().expect("pprofd runs")
}

/// The `demo-router` binary, which `cargo test --workspace` builds beside `pprofd` (its own
/// integration tests make cargo build it).
pub fn demo_router_binary() -> PathBuf {
    let path = pprofd_binary().with_file_name("demo-router");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo test --workspace` or `cargo build -p demo-router` with the same profile first",
        path.display()
    );
    path
}

/// A demo router started as a separate process with profiling on; killed on drop.
pub struct RouterProcess {
    child: Child,
    /// `http://127.0.0.1:PORT` of the router.
    pub url: String,
    /// `http://127.0.0.1:PORT` of its pprof server.
    pub pprof: String,
}

impl RouterProcess {
    /// Starts `demo-router` with `--incident` for each of `incidents` and heap sampling every
    /// 64 KiB on average.
    pub fn start(incidents: &[&str]) -> RouterProcess {
        Self::start_with_token(incidents, None)
    }

    /// As [`RouterProcess::start`], with the pprof server requiring `token` (`PPROF_TOKEN`)
    /// when one is given, and open otherwise whatever the test's own environment holds.
    pub fn start_with_token(incidents: &[&str], token: Option<&str>) -> RouterProcess {
        Self::start_binary(&demo_router_binary(), incidents, token)
    }

    /// As [`RouterProcess::start_with_token`], running the demo router binary at `binary`
    /// (a stripped copy, say).
    pub fn start_binary(
        binary: &std::path::Path,
        incidents: &[&str],
        token: Option<&str>,
    ) -> RouterProcess {
        let mut command = Command::new(binary);
        match token {
            Some(token) => command.env("PPROF_TOKEN", token),
            None => command.env_remove("PPROF_TOKEN"),
        };
        command.args(["--listen", "127.0.0.1:0", "--exit-on-stdin-close"]);
        for incident in incidents {
            command.args(["--incident", incident]);
        }
        let mut child = command
            .env("PPROF_ADDR", "127.0.0.1:0")
            .env("PPROF_MEM_RATE", "65536")
            .env_remove("DEMO_INCIDENTS")
            // Not recording whatever the test's own environment holds: the tests that use
            // `?past=N` expect the refusal of a service without the flight recorder.
            .env_remove("PPROF_RECORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("demo-router starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut url = String::new();
        let mut pprof = String::new();
        while url.is_empty() || pprof.is_empty() {
            let line = lines
                .next()
                .expect("demo-router prints its addresses")
                .unwrap();
            if let Some(u) = line.strip_prefix("router ") {
                url = u.to_string();
            } else if let Some(u) = line.strip_prefix("pprof ") {
                pprof = u.trim_end_matches("/debug/pprof/").to_string();
            }
        }
        // Keep reading, so the router never writes into a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        assert!(pprof.starts_with("http://"), "profiling is on: {pprof}");
        RouterProcess { child, url, pprof }
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client with a per-request time limit that returns non-200 answers as responses.
pub fn client(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into()
}

/// GETs `url`: `(status, body)`, panicking when the server cannot be reached.
pub fn get(url: &str, timeout: Duration) -> (u16, Vec<u8>) {
    let mut response = client(timeout)
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap();
    (status, body)
}

/// The query the load clients send: the operation `ProductsWithReviews`, named in the document.
pub const QUERY: &str = r#"{"query":"query ProductsWithReviews { products(first: 20) { id name price description reviews { author rating body } stock { warehouse available } } }"}"#;

/// GraphQL clients posting [`QUERY`] until dropped.
pub struct Load {
    stop: Arc<AtomicBool>,
}

impl Load {
    /// Starts `clients` threads posting to `router`'s `/graphql`.
    pub fn start(router: &RouterProcess, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..clients {
            let stop = stop.clone();
            let url = format!("{}/graphql", router.url);
            std::thread::spawn(move || {
                let agent = client(Duration::from_secs(2));
                while !stop.load(Ordering::Relaxed) {
                    let _ = agent
                        .post(&url)
                        .header("content-type", "application/json")
                        .send(QUERY)
                        .and_then(|mut r| r.body_mut().read_to_vec());
                }
            });
        }
        Load { stop }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Whether `go` is installed. Without it the caller skips its `go tool pprof` checks, unless
/// `CI=true`, where a missing toolchain is a failure.
pub fn go_available() -> bool {
    let found = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "go is not installed, and CI=true requires the go tool pprof checks"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED go tool pprof checks: `go` is not installed"
        );
    }
    found
}

/// `true` (and a printed reason) when the endpoint answered 404: the profile has not landed in
/// this build of pprofd yet, so the test has nothing to check.
pub fn not_served_yet(test: &str, url: &str, status: u16, body: &[u8]) -> bool {
    if status == 404 {
        // Written to the stderr handle rather than with eprintln!, which the test harness hides
        // for passing tests: this line must show in every run until the endpoint lands.
        let _ = writeln!(
            std::io::stderr(),
            "{test}: SKIPPED because {url} answered 404 ({}): this pprofd build does not serve that profile yet",
            String::from_utf8_lossy(body).trim()
        );
        return true;
    }
    false
}
