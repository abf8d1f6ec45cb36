//! Helpers for the tests (and the bench) that profile the router as a separate process: start
//! it with pprofd serving, talk HTTP to both ports, read its memory from /proc.

#![allow(dead_code)] // Each test binary and the bench use a different part of these helpers.

pub mod footprint;
pub mod steady_load;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The query the load clients send: 20 products with reviews and stock, a typical page.
pub const QUERY: &str = r#"{"query":"{ products(first: 20) { id name price description reviews { author rating body } stock { warehouse available } } }"}"#;

/// The demo router started as a child process with pprofd on a free loopback port, as a
/// service would run in production: default sampling rates, no token, no incidents. Killed
/// on drop.
pub struct ProfiledRouter {
    child: Child,
    /// `http://127.0.0.1:PORT` of the router's own traffic.
    pub url: String,
    /// `http://127.0.0.1:PORT` of its pprof server (without `/debug/pprof/`).
    pub pprof: String,
}

/// Reads the router's two start-up lines from its piped stdout: its URL, and its pprof URL
/// without `/debug/pprof/` (or `off (...)`). Then keeps draining stdout, so the router never
/// writes into a closed pipe.
pub fn read_addresses(router: &mut Child) -> (String, String) {
    let mut lines = BufReader::new(router.stdout.take().expect("stdout is piped")).lines();
    let (mut url, mut pprof) = (String::new(), String::new());
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
    std::thread::spawn(move || lines.for_each(drop));
    (url, pprof)
}

impl ProfiledRouter {
    pub fn start() -> ProfiledRouter {
        Self::start_binary(env!("CARGO_BIN_EXE_demo-router"))
    }

    /// [`ProfiledRouter::start`] for another build of the router (another debug-info level,
    /// a stripped copy).
    pub fn start_binary(binary: &str) -> ProfiledRouter {
        let mut child = Command::new(binary)
            .args(["--listen", "127.0.0.1:0", "--exit-on-stdin-close"])
            .env("PPROF_ADDR", "127.0.0.1:0")
            // Whatever the caller's shell has set, measure pprofd's defaults.
            .env_remove("PPROF_TOKEN")
            .env_remove("PPROF_BLOCK_RATE")
            .env_remove("PPROF_MEM_RATE")
            .env_remove("DEMO_INCIDENTS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("demo-router starts");
        let (url, pprof) = read_addresses(&mut child);
        assert!(pprof.starts_with("http://"), "profiling is on: {pprof}");
        ProfiledRouter { child, url, pprof }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The pprof server's `host:port`, for raw TCP clients.
    pub fn pprof_addr(&self) -> &str {
        self.pprof.trim_start_matches("http://")
    }

    /// The router's resident memory now.
    pub fn memory(&self) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the router is running");
        let kib = |field: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
        };
        Memory {
            rss_kib: kib("VmRSS:"),
            anon_kib: kib("RssAnon:"),
            file_kib: kib("RssFile:"),
        }
    }

    /// Whether the router process is still running (it has not crashed).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("waitpid works").is_none()
    }
}

impl Drop for ProfiledRouter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory from /proc/PID/status: the total, and its anonymous part (heap, stacks)
/// and file-backed part (the mapped binary and libraries, which symbolization pages in).
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    pub rss_kib: u64,
    pub anon_kib: u64,
    pub file_kib: u64,
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VmRSS {:.1} MiB (anon {:.1} MiB, file {:.1} MiB)",
            self.rss_kib as f64 / 1024.0,
            self.anon_kib as f64 / 1024.0,
            self.file_kib as f64 / 1024.0
        )
    }
}

/// An HTTP client with a per-request time limit that returns non-2xx answers as responses
/// (the caller checks the status), and keeps connections alive between requests.
pub fn client(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into()
}

/// GETs `url`: `Ok((status, body))`, or the transport error (refused, reset, timed out).
pub fn get(agent: &ureq::Agent, url: &str) -> Result<(u16, Vec<u8>), ureq::Error> {
    let mut response = agent.get(url).call()?;
    let status = response.status().as_u16();
    // heap?debug=1 of a busy service runs to a few MiB; ureq's default cap is 10 MiB.
    let body = response
        .body_mut()
        .with_config()
        .limit(256 << 20)
        .read_to_vec()?;
    Ok((status, body))
}

/// Writes `line` to the terminal even when the test passes: the harness captures `println!`
/// and `eprintln!` of passing tests, not the stderr handle itself.
pub fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The pprof profile in `body`, with its sample types as `(type, unit)` pairs.
pub fn decode(what: &str, body: &[u8]) -> pprofd::profile::proto::Profile {
    pprofd::profile::decode(body)
        .unwrap_or_else(|e| panic!("{what}: the body is not a pprof profile: {e}"))
}

pub fn sample_types(profile: &pprofd::profile::proto::Profile) -> Vec<(String, String)> {
    profile
        .sample_type
        .iter()
        .map(|t| {
            (
                profile.string_table[t.r#type as usize].clone(),
                profile.string_table[t.unit as usize].clone(),
            )
        })
        .collect()
}

/// The sum of sample value `index` over the samples whose stack has a function whose name
/// contains `function`.
pub fn total_through(
    profile: &pprofd::profile::proto::Profile,
    index: usize,
    function: &str,
) -> i64 {
    use std::collections::HashMap;
    let names: HashMap<u64, &str> = profile
        .function
        .iter()
        .map(|f| (f.id, profile.string_table[f.name as usize].as_str()))
        .collect();
    let locations: HashMap<u64, &pprofd::profile::proto::Location> =
        profile.location.iter().map(|l| (l.id, l)).collect();
    profile
        .sample
        .iter()
        .filter(|s| {
            s.location_id.iter().any(|id| {
                locations[id]
                    .line
                    .iter()
                    .any(|line| names[&line.function_id].contains(function))
            })
        })
        .map(|s| s.value[index])
        .sum()
}
