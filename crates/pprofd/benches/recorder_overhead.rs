//! The flight recorder's cost, measured on `examples/record_workload.rs` run as services, as
//! issue 14 asks; every figure comes from one run.
//!
//! 1. Idle service, recording at 100 Hz: CPU time of pprofd's own threads (`pprofd-*`, read
//!    from `/proc/PID/task/TID/schedstat`) over 28 s. Target: at most 150 ms.
//! 2. Busy two-thread service, recording at the default 19 Hz: pprofd's threads' CPU time
//!    plus the samples taken (from `profile?past=N`) times the cost of one sample (measured in
//!    this process with `pprofd::cpu::measure_sample_cost`), over the CPU time of the whole
//!    process. Target: at most 0.2%.
//! 3. Memory: the same busy service (stacks of some 200 shapes, allocating at each) run twice
//!    side by side, recorded (`PPROF_RECORD=1h`, defaults otherwise) and not; the difference
//!    of their resident memory (VmRSS, less the workload's leak at that moment) after
//!    `RECORDER_BENCH_MEMORY_SECONDS` (default 120; 3600 for the hour), and the
//!    recorder's own account from the index page. Target: at most 16 MiB.
//!
//! Measured (2-core VM, 2026-12-07, the run niced beside builds): one sample 3.58 µs; idle
//! at 100 Hz 22.4 ms per 28 s; busy at 19 Hz 0.099%; after an hour (3600 s) +11.2 MiB, the
//! recorder's account 5.5 MiB, the difference +4.0, +5.2, +7.6, +8.7, +8.9, +9.5, +9.9, +10.1
//! and +10.7 MiB at each tenth of the hour.
//!
//! Run: `cargo build --release -p pprofd --example record_workload && cargo bench -p pprofd --bench recorder_overhead`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The size of one of the workload's leaked blocks (`LEAK_BYTES` in `record_workload.rs`).
const LEAK_KIB: u64 = 64;

struct Service {
    child: Child,
    stdin: ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    addr: Option<String>,
}

impl Service {
    fn start(env: &[(&str, &str)]) -> Service {
        let exe = std::env::current_exe().expect("bench path");
        let binary = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target/release")
            .join("examples/record_workload");
        assert!(
            binary.exists(),
            "build it first: cargo build --release -p pprofd --example record_workload"
        );
        let mut child = Command::new(binary)
            .env_remove("PPROF_RECORD")
            .env_remove("PPROF_RECORD_HZ")
            .env("PPROF_ADDR", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the workload starts");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let addr = first.strip_prefix("listening ").map(str::to_owned);
        Service {
            child,
            stdin,
            lines,
            addr,
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn wait_for(&mut self, expected: &str) {
        let line = self.lines.next().unwrap().unwrap();
        assert_eq!(line, expected);
    }

    /// How many blocks the workload's leaker has leaked.
    fn leaked(&mut self) -> u64 {
        self.send("leaked");
        let line = self.lines.next().unwrap().unwrap();
        line.strip_prefix("leaked ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a leak count: {line}"))
    }

    /// Resident memory (KiB) less the leak it holds at that moment: the leak grows by
    /// 640 KiB a second in both services, so a few blocks' difference in when each was read
    /// would otherwise swamp the recorder's few MiB. The leak count is read on both sides of
    /// the RSS reading, until the two agree.
    fn rss_less_leak_kib(&mut self) -> u64 {
        loop {
            let before = self.leaked();
            let rss = self.rss_kib();
            if self.leaked() == before {
                return rss - before * LEAK_KIB;
            }
        }
    }

    fn get(&self, path: &str) -> Vec<u8> {
        let addr = self.addr.as_ref().expect("serving");
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP response");
        let head = String::from_utf8_lossy(&response[..split]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        assert!(
            !head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        response[split + 4..].to_vec()
    }

    /// The index page's flight recorder line: what the recorder says it holds.
    fn account(&self) -> String {
        let index = String::from_utf8(self.get("/debug/pprof/?debug=1")).unwrap();
        index.lines().last().unwrap_or_default().to_string()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time of pprofd's threads (`pprofd-*`), and of the whole process (threads that
    /// exited included, from `/proc/PID/stat`, in clock ticks).
    fn cpu(&self) -> (Duration, Duration) {
        let mut own = Duration::ZERO;
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // After the command name's closing parenthesis: utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let process_ticks: f64 =
            fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        let process = Duration::from_secs_f64(process_ticks / ticks);
        let tasks = format!("/proc/{}/task", self.pid());
        for task in std::fs::read_dir(tasks).unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let schedstat =
                std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            let ns: u64 = schedstat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if comm.starts_with("pprofd-") {
                own += Duration::from_nanos(ns);
            }
        }
        (own, process)
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Samples (the `samples` value) in a gzipped profile.
fn samples_in(gzipped: &[u8]) -> i64 {
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gzipped)
        .read_to_end(&mut bytes)
        .unwrap();
    let profile = pprofd::profile::decode(&bytes).expect("a profile");
    profile.sample.iter().map(|s| s.value[0]).sum()
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let cost = pprofd::cpu::measure_sample_cost(20_000).expect("the sample cost");
    let per_sample = cost.handler + cost.delivery;
    println!(
        "one sample costs {:.2} µs (handler {:.2}, signal delivery {:.2})",
        per_sample.as_secs_f64() * 1e6,
        cost.handler.as_secs_f64() * 1e6,
        cost.delivery.as_secs_f64() * 1e6
    );

    // 1. Idle, 100 Hz.
    let idle = Service::start(&[("PPROF_RECORD", "10m"), ("PPROF_RECORD_HZ", "100")]);
    std::thread::sleep(Duration::from_secs(2));
    let (own_before, _) = idle.cpu();
    std::thread::sleep(Duration::from_secs(28));
    let (own_after, _) = idle.cpu();
    let own = own_after - own_before;
    println!(
        "idle service recording at 100 Hz: pprofd's threads used {:.1} ms of CPU in 28 s (target <= 150 ms)",
        own.as_secs_f64() * 1e3
    );
    drop(idle);

    // 2. Busy, 19 Hz.
    let mut busy = Service::start(&[("PPROF_RECORD", "10m")]);
    std::thread::sleep(Duration::from_secs(2));
    let (own_before, process_before) = busy.cpu();
    let started = Instant::now();
    busy.send("busy 28");
    busy.wait_for("busy done");
    let wall = started.elapsed();
    let (own_after, process_after) = busy.cpu();
    let samples =
        samples_in(&busy.get(&format!("/debug/pprof/profile?past={}", wall.as_secs() + 1)));
    let own = own_after - own_before;
    let process = process_after - process_before;
    let sampling = per_sample * samples as u32;
    let overhead = (own + sampling).as_secs_f64() / process.as_secs_f64();
    println!(
        "busy 2-thread service recording at 19 Hz for {:.1} s: pprofd's threads {:.1} ms, {samples} samples x {:.2} µs = {:.1} ms, of {:.1} s of process CPU: {:.3}% (target <= 0.2%)",
        wall.as_secs_f64(),
        own.as_secs_f64() * 1e3,
        per_sample.as_secs_f64() * 1e6,
        sampling.as_secs_f64() * 1e3,
        process.as_secs_f64(),
        overhead * 100.0
    );
    drop(busy);

    // 3. Memory, recorded and not, side by side.
    let seconds: u64 = std::env::var("RECORDER_BENCH_MEMORY_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let mut recorded = Service::start(&[("PPROF_RECORD", "1h")]);
    let mut plain = Service::start(&[]);
    recorded.send(&format!("busy {seconds}"));
    plain.send(&format!("busy {seconds}"));
    // Readings along the way (every tenth of a long run), for the trend.
    let started = Instant::now();
    if seconds >= 600 {
        for tenth in 1..10 {
            let at = Duration::from_secs(seconds * tenth / 10);
            std::thread::sleep(at.saturating_sub(started.elapsed()));
            let (recorded_kib, plain_kib) =
                (recorded.rss_less_leak_kib(), plain.rss_less_leak_kib());
            println!(
                "  at {:>5} s: +{:.1} MiB; {}",
                at.as_secs(),
                (recorded_kib as f64 - plain_kib as f64) / 1024.0,
                recorded.account()
            );
        }
    }
    recorded.wait_for("busy done");
    plain.wait_for("busy done");
    let (recorded_kib, plain_kib) = (recorded.rss_less_leak_kib(), plain.rss_less_leak_kib());
    println!(
        "after {seconds} s busy: recorded {:.1} MiB, unrecorded {:.1} MiB resident, less the leak each holds: +{:.1} MiB (target <= 16 MiB)",
        recorded_kib as f64 / 1024.0,
        plain_kib as f64 / 1024.0,
        (recorded_kib as f64 - plain_kib as f64) / 1024.0
    );
    println!("the recorder's account: {}", recorded.account());
}
