//! Steady GraphQL load on the router from this process while a profiler loop scrapes it, and
//! the same load with nobody profiling, in alternating windows.
//!
//! Closed-loop clients (each sends its next query when the last one is answered) measure what
//! the service can do; a slower router shows as fewer requests, and an error as a failed one.
//! Unprofiled windows come before and after every profiled window, so a change in the
//! machine's load (it is shared) moves both sides of each comparison.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{client, decode, get, sample_types, total_through, ProfiledRouter, QUERY};

/// How long each part of a run takes.
pub struct Schedule {
    /// Closed-loop client threads. The router runs on 2 cores in CI, shared with the clients:
    /// 4 keep it busy without the clients starving it.
    pub clients: usize,
    /// Load before the first window: connections open, code and caches warm.
    pub warm_up: Duration,
    pub profiled_windows: usize,
    /// Rounds of [`PROFILE_LOOP`] in each profiled window.
    pub rounds_per_window: usize,
    /// Each of the `profiled_windows + 1` unprofiled windows around the profiled ones.
    pub unprofiled_window: Duration,
}

/// The test's run: 4 windows of 2 rounds, ~58 s of profiling and 15 s without, ~75 s in all.
pub const TEST_SCHEDULE: Schedule = Schedule {
    clients: 4,
    warm_up: Duration::from_secs(2),
    profiled_windows: 4,
    rounds_per_window: 2,
    unprofiled_window: Duration::from_secs(3),
};

/// The bench's run: twice the windows, longer baselines, for a steadier figure (~2.8 min).
pub const BENCH_SCHEDULE: Schedule = Schedule {
    clients: 4,
    warm_up: Duration::from_secs(2),
    profiled_windows: 8,
    rounds_per_window: 2,
    unprofiled_window: Duration::from_secs(6),
};

/// One round of the profiler loop: what `pprofd collect` or a scraper fetches, one at a time.
pub const PROFILE_LOOP: &[(&str, &str)] = &[
    ("cpu", "/debug/pprof/profile?seconds=5"),
    ("heap", "/debug/pprof/heap"),
    ("goroutine", "/debug/pprof/goroutine?debug=2"),
    ("block", "/debug/pprof/block?seconds=2"),
];

/// Requests answered over some windows.
#[derive(Default, Clone, Copy)]
pub struct Tally {
    pub requests: u64,
    pub seconds: f64,
}

impl Tally {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
    fn add(&mut self, requests: u64, elapsed: Duration) {
        self.requests += requests;
        self.seconds += elapsed.as_secs_f64();
    }
}

/// What a run measured.
pub struct Report {
    pub clients: usize,
    pub profiled: Tally,
    pub unprofiled: Tally,
    /// Each profiled window's rate over the mean rate of the unprofiled windows either side.
    pub window_ratios: Vec<f64>,
    /// Router requests that got an I/O error, a timeout, a non-2xx status or a wrong body.
    pub failed_requests: u64,
    /// The first few of those, with when they happened.
    pub first_errors: Vec<String>,
    /// Profiles fetched, and what was wrong with any of them.
    pub profiles_fetched: usize,
    pub profile_problems: Vec<String>,
    /// Slowest answer per profile kind, for the log.
    pub slowest: Vec<(&'static str, Duration)>,
    /// Every router request's latency, sorted.
    pub latencies: Vec<Duration>,
    /// The slowest router requests: when each started, how long it took, and which profile
    /// the profiler loop was fetching when it started.
    pub slowest_requests: Vec<SlowRequest>,
}

/// One of the slowest router requests of a run.
#[derive(Clone, Copy)]
pub struct SlowRequest {
    pub started: Duration,
    pub took: Duration,
    pub during: &'static str,
}

/// Slow requests kept per client.
const SLOW_KEPT: usize = 5;

impl Report {
    /// Profiled throughput over unprofiled throughput (requests per second).
    pub fn ratio(&self) -> f64 {
        self.profiled.rate() / self.unprofiled.rate()
    }

    pub fn median_window_ratio(&self) -> f64 {
        let mut ratios = self.window_ratios.clone();
        ratios.sort_by(f64::total_cmp);
        let middle = ratios.len() / 2;
        if ratios.len().is_multiple_of(2) {
            (ratios[middle - 1] + ratios[middle]) / 2.0
        } else {
            ratios[middle]
        }
    }

    fn latency_at(&self, quantile: f64) -> String {
        if self.latencies.is_empty() {
            return "-".into();
        }
        let i = ((self.latencies.len() - 1) as f64 * quantile).round() as usize;
        format!("{:.2} ms", self.latencies[i].as_secs_f64() * 1e3)
    }

    /// The figures, one per line.
    pub fn lines(&self) -> Vec<String> {
        let p = &self.profiled;
        let u = &self.unprofiled;
        let slowest: Vec<String> = self
            .slowest
            .iter()
            .map(|(name, d)| format!("{name} {:.2} s", d.as_secs_f64()))
            .collect();
        vec![
            format!(
                "steady load: {} closed-loop clients; profiled {} req in {:.1} s ({:.0} req/s, {} profiles, slowest: {}); unprofiled {} req in {:.1} s ({:.0} req/s)",
                self.clients,
                p.requests,
                p.seconds,
                p.rate(),
                self.profiles_fetched,
                slowest.join(", "),
                u.requests,
                u.seconds,
                u.rate()
            ),
            format!(
                "throughput ratio profiled/unprofiled: {:.4} ({} req in {:.1} s / {} req in {:.1} s)",
                self.ratio(),
                p.requests,
                p.seconds,
                u.requests,
                u.seconds
            ),
            format!(
                "per-window ratios: {} (median {:.4})",
                self.window_ratios
                    .iter()
                    .map(|r| format!("{r:.4}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                self.median_window_ratio()
            ),
            format!(
                "router request latency: p50 {} p99 {} p99.9 {} max {}; slowest: {}",
                self.latency_at(0.5),
                self.latency_at(0.99),
                self.latency_at(0.999),
                self.latency_at(1.0),
                self.slowest_requests
                    .iter()
                    .map(|r| format!(
                        "{:.1} ms from {:.2} s during {}",
                        r.took.as_secs_f64() * 1e3,
                        r.started.as_secs_f64(),
                        r.during
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!(
                "failed router requests: {}{}",
                self.failed_requests,
                if self.first_errors.is_empty() {
                    String::new()
                } else {
                    format!("; first: {}", self.first_errors.join(" | "))
                }
            ),
        ]
    }
}

/// Runs `schedule` against a freshly started router.
pub fn run(schedule: &Schedule) -> Report {
    let router = ProfiledRouter::start();
    let load = Load::start(&router, schedule.clients);
    std::thread::sleep(schedule.warm_up);

    let profiler = client(Duration::from_secs(30));
    let mut unprofiled = Tally::default();
    let mut profiled = Tally::default();
    let mut unprofiled_rates = Vec::new();
    let mut profiled_rates = Vec::new();
    let mut profiles_fetched = 0;
    let mut profile_problems = Vec::new();
    let mut slowest: Vec<(&'static str, Duration)> = PROFILE_LOOP
        .iter()
        .map(|(n, _)| (*n, Duration::ZERO))
        .collect();

    for window in 0..=schedule.profiled_windows {
        let (before, started) = (load.answered(), Instant::now());
        std::thread::sleep(schedule.unprofiled_window);
        let (requests, elapsed) = (load.answered() - before, started.elapsed());
        unprofiled.add(requests, elapsed);
        unprofiled_rates.push(requests as f64 / elapsed.as_secs_f64());
        if window == schedule.profiled_windows {
            break;
        }

        let (before, started) = (load.answered(), Instant::now());
        for _ in 0..schedule.rounds_per_window {
            for (i, (name, path)) in PROFILE_LOOP.iter().enumerate() {
                let fetch_started = Instant::now();
                load.running.store(i + 1, Ordering::Relaxed);
                let fetched = get(&profiler, &format!("{}{path}", router.pprof));
                load.running.store(0, Ordering::Relaxed);
                slowest[i].1 = slowest[i].1.max(fetch_started.elapsed());
                profiles_fetched += 1;
                if let Err(problem) = check_profile(name, fetched) {
                    profile_problems.push(format!("window {window}, {path}: {problem}"));
                }
            }
        }
        let (requests, elapsed) = (load.answered() - before, started.elapsed());
        profiled.add(requests, elapsed);
        profiled_rates.push(requests as f64 / elapsed.as_secs_f64());
    }

    let (failed_requests, first_errors, latencies, slowest_requests) = load.stop();
    let window_ratios = profiled_rates
        .iter()
        .enumerate()
        .map(|(i, rate)| rate / ((unprofiled_rates[i] + unprofiled_rates[i + 1]) / 2.0))
        .collect();
    Report {
        clients: schedule.clients,
        profiled,
        unprofiled,
        window_ratios,
        failed_requests,
        first_errors,
        profiles_fetched,
        profile_problems,
        slowest,
        latencies,
        slowest_requests,
    }
}

/// Whether a profile answered 200 with what a user would look for in it.
fn check_profile(name: &str, fetched: Result<(u16, Vec<u8>), ureq::Error>) -> Result<(), String> {
    let (status, body) = fetched.map_err(|e| format!("request failed: {e}"))?;
    if status != 200 {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)]).trim()
        ));
    }
    let expect_types = |profile: &pprofd::profile::proto::Profile, expected: &[(&str, &str)]| {
        let found = sample_types(profile);
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(t, u)| (t.to_string(), u.to_string()))
            .collect();
        if found == expected {
            Ok(())
        } else {
            Err(format!("sample types {found:?}, expected {expected:?}"))
        }
    };
    match name {
        "cpu" => {
            let profile = decode(name, &body);
            expect_types(&profile, &[("samples", "count"), ("cpu", "nanoseconds")])?;
            // The router is busy answering queries the whole time: its query executor must
            // show up, or the profile missed the work a user profiles it to find.
            let in_router = total_through(&profile, 0, "demo_router::graphql::execute");
            if in_router == 0 {
                let all: i64 = profile.sample.iter().map(|s| s.value[0]).sum();
                return Err(format!(
                    "no sample in demo_router::graphql::execute ({all} samples in all)"
                ));
            }
        }
        "heap" => {
            let profile = decode(name, &body);
            expect_types(
                &profile,
                &[
                    ("alloc_objects", "count"),
                    ("alloc_space", "bytes"),
                    ("inuse_objects", "count"),
                    ("inuse_space", "bytes"),
                ],
            )?;
            // Every query allocates its response: after seconds of load, some allocation
            // in the router's own code has been sampled.
            if total_through(&profile, 1, "demo_router::") == 0 {
                return Err("no sampled allocation in the router's code".into());
            }
        }
        "goroutine" => {
            let dump = String::from_utf8_lossy(&body);
            for thread in [
                "\"demo-router\"",
                "\"tokio-rt-worker\"",
                "\"cache-janitor\"",
            ] {
                if !dump
                    .lines()
                    .any(|l| l.starts_with("thread ") && l.contains(thread))
                {
                    return Err(format!(
                        "no {thread} thread in the dump: {}",
                        &dump[..dump.len().min(500)]
                    ));
                }
            }
        }
        "block" => {
            let profile = decode(name, &body);
            expect_types(
                &profile,
                &[("contentions", "count"), ("delay", "nanoseconds")],
            )?;
        }
        _ => unreachable!("{name} is not in PROFILE_LOOP"),
    }
    Ok(())
}

/// Closed-loop GraphQL clients posting [`QUERY`] until stopped.
struct Load {
    /// 1 + the index in [`PROFILE_LOOP`] of the profile being fetched; 0 between fetches.
    running: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    first_errors: Arc<Mutex<Vec<String>>>,
    clients: Vec<JoinHandle<ClientTimes>>,
}

/// What one load client measured.
#[derive(Default)]
struct ClientTimes {
    latencies: Vec<Duration>,
    slowest: Vec<SlowRequest>,
}

/// Errors kept verbatim; the rest are only counted.
const ERRORS_KEPT: usize = 5;

impl Load {
    fn start(router: &ProfiledRouter, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let first_errors = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let clients = (0..clients)
            .map(|_| {
                let (stop, answered, failed, first_errors, running) = (
                    stop.clone(),
                    answered.clone(),
                    failed.clone(),
                    first_errors.clone(),
                    running.clone(),
                );
                let url = format!("{}/graphql", router.url);
                std::thread::spawn(move || {
                    // A query takes about a millisecond; 30 s without an answer is a hang,
                    // not a loaded machine's scheduling.
                    let agent = client(Duration::from_secs(30));
                    let mut times = ClientTimes::default();
                    while !stop.load(Ordering::Relaxed) {
                        let during = match running.load(Ordering::Relaxed) {
                            0 => "no profile",
                            i => PROFILE_LOOP[i - 1].0,
                        };
                        let sent = started.elapsed();
                        let result = query(&agent, &url);
                        let took = started.elapsed() - sent;
                        times.latencies.push(took);
                        times.slowest.push(SlowRequest {
                            started: sent,
                            took,
                            during,
                        });
                        if times.slowest.len() > 4 * SLOW_KEPT {
                            keep_slowest(&mut times.slowest);
                        }
                        match result {
                            Ok(()) => {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                let mut kept = first_errors.lock().unwrap();
                                if kept.len() < ERRORS_KEPT {
                                    kept.push(format!(
                                        "sent at {:.2} s during {during}, failed at {:.2} s: {e}",
                                        sent.as_secs_f64(),
                                        started.elapsed().as_secs_f64()
                                    ));
                                }
                            }
                        }
                    }
                    keep_slowest(&mut times.slowest);
                    times
                })
            })
            .collect();
        Load {
            running,
            stop,
            answered,
            failed,
            first_errors,
            clients,
        }
    }

    /// Queries answered correctly so far.
    fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Stops the clients: the failed count, the first errors, every latency (sorted) and the
    /// slowest requests.
    fn stop(self) -> (u64, Vec<String>, Vec<Duration>, Vec<SlowRequest>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut latencies, mut slowest) = (Vec::new(), Vec::new());
        for client in self.clients {
            let times = client.join().expect("load client panicked");
            latencies.extend(times.latencies);
            slowest.extend(times.slowest);
        }
        latencies.sort_unstable();
        keep_slowest(&mut slowest);
        let errors = self.first_errors.lock().unwrap().clone();
        (
            self.failed.load(Ordering::Relaxed),
            errors,
            latencies,
            slowest,
        )
    }
}

/// Keeps the [`SLOW_KEPT`] slowest, slowest first.
fn keep_slowest(requests: &mut Vec<SlowRequest>) {
    requests.sort_unstable_by_key(|r| std::cmp::Reverse(r.took));
    requests.truncate(SLOW_KEPT);
}

/// One query, answered with status 200 and the products asked for.
fn query(agent: &ureq::Agent, url: &str) -> Result<(), String> {
    let mut response = agent
        .post(url)
        .header("content-type", "application/json")
        .send(QUERY)
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_vec()
        .map_err(|e| format!("reading the body: {e}"))?;
    // A substring check, not a JSON parse: the clients share the router's two cores, and
    // their own CPU time would blur the comparison.
    let body = String::from_utf8_lossy(&body);
    if status != 200
        || !body.starts_with("{\"data\":{\"products\":[")
        || body.contains("\"errors\"")
    {
        return Err(format!(
            "status {status}, body {}",
            &body[..body.len().min(200)]
        ));
    }
    Ok(())
}
