//! Helpers shared by the integration tests: workload processes and real HTTP.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use pprofd::profile::{decode, proto};

/// An example binary, built by `cargo test` next to the test binary's directory.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    profile_dir.join("examples").join(name)
}

/// A workload example running as a child process with its pprof server on a free port.
pub struct Workload {
    child: Child,
    stdout: BufReader<ChildStdout>,
    addr: String,
}

impl Workload {
    pub fn start(example: &str, args: &[&str]) -> Workload {
        Workload::start_with_env(example, args, &[])
    }

    /// Starts `example` with extra environment variables.
    pub fn start_with_env(example: &str, args: &[&str], env: &[(&str, &str)]) -> Workload {
        let mut child = Command::new(example_binary(example))
            .args(args)
            .envs(env.iter().copied())
            .env("PPROF_ADDR", "127.0.0.1:0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{example} (built by cargo test): {e}"));
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Workload {
            child,
            stdout,
            addr,
        }
    }

    /// The workload's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// GETs `path`, returning the status and body.
    pub fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete response");
        let head = String::from_utf8_lossy(&response[..split]).into_owned();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, response[split + 4..].to_vec())
    }

    pub fn text(&self, path: &str) -> String {
        let (status, body) = self.get(path);
        let body = String::from_utf8(body).unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    pub fn profile(&self, path: &str) -> proto::Profile {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        decode(&body).expect("a valid pprof profile")
    }

    /// Writes `command` and a newline to the workload's stdin.
    pub fn send(&mut self, command: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
    }

    /// The next line the workload prints, without its newline.
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }

    /// Closes stdin and returns what the workload printed until it exited.
    pub fn finish(mut self) -> String {
        drop(self.child.stdin.take());
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        assert!(self.child.wait().unwrap().success(), "{rest}");
        rest
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn label<'a>(
    profile: &'a proto::Profile,
    sample: &proto::Sample,
    key: &str,
) -> Option<&'a str> {
    let strings = &profile.string_table;
    sample
        .label
        .iter()
        .find(|l| strings[l.key as usize] == key)
        .map(|l| strings[l.str as usize].as_str())
}

pub fn function_names(profile: &proto::Profile, sample: &proto::Sample) -> Vec<String> {
    let locations: HashMap<u64, &proto::Location> =
        profile.location.iter().map(|l| (l.id, l)).collect();
    let functions: HashMap<u64, &proto::Function> =
        profile.function.iter().map(|f| (f.id, f)).collect();
    sample
        .location_id
        .iter()
        .flat_map(|id| locations[id].line.iter())
        .map(|line| profile.string_table[functions[&line.function_id].name as usize].clone())
        .collect()
}

/// The `go` binary, or `None` (with a message) where it is missing outside CI; in CI
/// (`CI=true`) a missing `go` fails the test.
pub fn go_binary() -> Option<PathBuf> {
    let go = ["/usr/bin/go", "/usr/local/go/bin/go"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if go.is_none() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "go is required in CI for the compatibility tests"
        );
        eprintln!("skipped: go is not installed (apt-get install golang-go)");
    }
    go
}

/// Runs `go tool pprof ARGS FILE` on `bytes` and returns its standard output; fails the test
/// when pprof cannot read the profile.
pub fn go_pprof(go: &std::path::Path, name: &str, bytes: &[u8], args: &[&str]) -> String {
    let dir = std::env::temp_dir().join(format!("pprofd-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{name}.pb.gz"));
    std::fs::write(&file, bytes).unwrap();
    let output = Command::new(go)
        .args(["tool", "pprof"])
        .args(args)
        .arg(&file)
        .env("HOME", &dir)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
