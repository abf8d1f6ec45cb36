//! Shared helpers for pprofd's integration tests: run an example workload as a separate
//! process, talk HTTP to it, read profiles, and run `go tool pprof`.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use pprofd::profile::proto::Profile;

/// Path of an example built alongside this test binary (`cargo test` builds examples).
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} missing: run through `cargo test`, which builds examples",
        path.display()
    );
    path
}

/// A workload process serving pprof on a free loopback port; it exits when dropped.
pub struct Workload {
    pub child: Child,
    pub addr: Option<SocketAddr>,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Workload {
    /// Starts example `name` with `args` and `PPROF_ADDR=127.0.0.1:0` (or unset when `serve` is false).
    pub fn start(name: &str, args: &[&str], serve: bool) -> Workload {
        let env: &[(&str, &str)] = if serve {
            &[("PPROF_ADDR", "127.0.0.1:0")]
        } else {
            &[]
        };
        Workload::start_with_env(name, args, env)
    }

    /// Starts example `name` with exactly the pprofd variables in `env`.
    pub fn start_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Workload {
        let mut command = Command::new(example(name));
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env_remove("PPROF_ADDR")
            .env_remove("PPROF_TOKEN")
            .envs(env.iter().copied());
        let mut child = command.spawn().expect("workload starts");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .expect("workload announces its address");
        let addr = (addr != "none").then(|| addr.parse().unwrap());
        Workload {
            child,
            addr,
            stdin,
            stdout,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("workload serves pprof")
    }

    /// Closes stdin (the workload's stop signal), waits for exit and returns what it printed.
    pub fn finish(mut self) -> String {
        drop(self.stdin.take());
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "workload exited with {status}; output: {rest}"
        );
        rest
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn profile(&self) -> Profile {
        assert_eq!(self.status, 200, "{}", self.text());
        pprofd::profile::decode(&self.body).expect("body is a pprof profile")
    }
}

/// Sends one HTTP/1.1 request (`Connection: close`) and reads the whole response.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Response {
    request_with_headers(addr, method, path, &[], body)
}

/// [`request`] with extra `(name, value)` headers.
pub fn request_with_headers(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    parse_response(&raw)
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, b"")
}

fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("complete response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 2 + size + 2..];
    }
}

/// Names of the functions at a sample's locations, leaf first, innermost inline frame first.
pub fn stack_functions(profile: &Profile, sample: &pprofd::profile::proto::Sample) -> Vec<String> {
    let mut names = Vec::new();
    for &id in &sample.location_id {
        let location = &profile.location[id as usize - 1];
        for line in &location.line {
            let function = &profile.function[line.function_id as usize - 1];
            names.push(profile.string_table[function.name as usize].clone());
        }
    }
    names
}

/// The `go` binary, or `None` (with a note) outside CI; under `CI=true` a missing `go` fails.
pub fn go() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("go"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "`go` is required under CI=true (apt-get install golang-go)"
        );
        eprintln!("SKIPPED: `go` not found; install golang-go to run the go tool pprof checks");
    }
    found
}

/// Runs `go tool pprof ARGS` and returns stdout; fails the test on a non-zero exit.
pub fn go_tool_pprof(go: &PathBuf, args: &[&str]) -> String {
    let tmp = std::env::temp_dir().join(format!("pprofd-test-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let output = Command::new(go)
        .args(["tool", "pprof"])
        .args(args)
        .env("PPROF_TMPDIR", &tmp)
        .env("HOME", &tmp)
        .env("GOCACHE", tmp.join("gocache"))
        .output()
        .expect("go runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "go tool pprof {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
