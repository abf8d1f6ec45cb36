//! Example workloads (`examples/*_workload.rs` and friends) as child processes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use pprofd::profile::proto::Profile;

use super::http::{self, Response};

/// The path of example `name`, built into target/<profile>/examples, next to the `deps`
/// directory that holds the test binary.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} missing: build the examples first (`cargo test` does)",
        path.display()
    );
    path
}

/// The binary `.ci/run` builds for a test and names in `variable` (`built`: what it is, for
/// the failure; `wanted`: what to set it to, for the note): `None`, and the test is skipped,
/// when the variable is unset outside CI; under `CI=true` that is a failure.
pub fn binary_from_ci(variable: &str, built: &str, wanted: &str) -> Option<PathBuf> {
    match std::env::var_os(variable) {
        Some(path) => Some(PathBuf::from(path)),
        None if std::env::var_os("CI").is_some() => {
            panic!("{variable} is not set: .ci/run builds {built}")
        }
        None => {
            eprintln!("skipped: set {variable} to {wanted}");
            None
        }
    }
}

/// A 4 s CPU profile of `.ci/platform-service` during which, a second in, the service starts
/// a third worker (`spawn`): a thread whose stack the profile's first reading of the stack
/// bounds lacks.
pub fn profile_while_spawning_a_worker(service: &mut Workload) -> Profile {
    let addr = service.addr();
    std::thread::scope(|scope| {
        let profiling =
            scope.spawn(move || http::get(addr, "/debug/pprof/profile?seconds=4").profile());
        std::thread::sleep(std::time::Duration::from_secs(1));
        service.send("spawn");
        assert_eq!(service.line(), "spawned worker-3");
        profiling.join().expect("the profile request")
    })
}

/// Whether process `pid` has a thread named `name` (its `comm`), such as pprofd's
/// `pprofd-cpu` collector or `pprofd-block` sampler while a profile runs.
pub fn has_thread(pid: u32, name: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .any(|comm| comm.trim_end() == name)
}

/// An example workload running as a child process. A workload prints `listening <addr>`
/// (`listening none` without a pprof server) as its first line, reads commands from stdin
/// and exits when stdin closes. Dropping a `Workload` kills the process.
pub struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    addr: Option<SocketAddr>,
}

impl Workload {
    /// Starts example `name` with `args`, serving pprof on a free loopback port.
    pub fn start(name: &str, args: &[&str]) -> Workload {
        Workload::start_with_env(name, args, &[("PPROF_ADDR", "127.0.0.1:0")])
    }

    /// Starts example `name` with `args` and the environment variables `env`. `PPROF_ADDR`
    /// and `PPROF_TOKEN` are not inherited: pass `("PPROF_ADDR", "127.0.0.1:0")` to serve.
    pub fn start_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Workload {
        Workload::start_binary(&example_binary(name), args, env)
    }

    /// Starts the workload binary at `path`, as [`Workload::start_with_env`] does.
    pub fn start_binary(path: &Path, args: &[&str], env: &[(&str, &str)]) -> Workload {
        Workload::start_under(&[], path, args, env)
    }

    /// Starts the workload binary at `path` through `runner` (a program and its arguments,
    /// such as `["qemu-aarch64", "-L", "/"]`; empty: directly), as [`Workload::start_with_env`]
    /// does.
    pub fn start_under(
        runner: &[&str],
        path: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Workload {
        let name = path.display();
        let mut command = match runner.split_first() {
            Some((program, runner_args)) => {
                let mut command = Command::new(program);
                command.args(runner_args).arg(path);
                command
            }
            None => Command::new(path),
        };
        let mut child = command
            .args(args)
            .env_remove("PPROF_ADDR")
            .env_remove("PPROF_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start example {name}: {e}"));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut workload = Workload {
            child,
            stdin,
            stdout,
            addr: None,
        };
        let first = workload.line();
        let addr = first
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("{name}: unexpected first line {first:?}"));
        workload.addr = (addr != "none").then(|| addr.parse().expect("a socket address"));
        workload
    }

    /// The address of the workload's pprof server.
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("the workload serves pprof")
    }

    /// The workload's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes `line` and a newline to the workload's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{line}").expect("workload stdin");
        stdin.flush().unwrap();
    }

    /// The next line the workload prints, without its newline; fails if it exited instead.
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("workload stdout");
        assert!(!line.is_empty(), "workload exited early");
        line.trim_end().to_string()
    }

    /// GETs `path` from the workload's pprof server.
    pub fn get(&self, path: &str) -> Response {
        http::get(self.addr(), path)
    }

    /// GETs `path` and returns the body, which must be UTF-8; fails unless the status is 200.
    pub fn text(&self, path: &str) -> String {
        let response = self.get(path);
        let text = String::from_utf8(response.body).expect("a UTF-8 body");
        assert_eq!(response.status, 200, "{path}: {text}");
        text
    }

    /// GETs `path` and decodes the body as a profile; fails unless the status is 200.
    pub fn profile(&self, path: &str) -> Profile {
        let response = self.get(path);
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        response.profile()
    }

    /// Closes stdin (the workload's signal to stop), waits for the process to exit, fails
    /// unless it exited successfully, and returns what it printed after the last line read.
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
