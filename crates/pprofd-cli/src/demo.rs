//! `pprofd demo`: runs the demo router with each incident and finds the culprit with profiles.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use clap::Args;

use crate::analysis::{by_function, by_label, format_value, percent, TagFocus, View};
use crate::collect::{fetch_endpoint, write_archive, Endpoint, Outcome};
use crate::fetch::{Token, TOKEN_ENV};
use crate::{diff, dump, flame};

/// Arguments of `pprofd demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Directory for the archive and the flame graphs.
    #[arg(short, long, default_value = "pprofd-demo")]
    pub output: PathBuf,
    /// Seconds of load and CPU profiling for the hotspot (the other incidents take about half).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

/// The operation most load clients send: products with reviews and stock, about 20 KB of JSON.
const QUERY: &str = r#"{"operationName":"ProductsWithReviews","query":"query ProductsWithReviews { products(first: 20) { id name price description reviews { author rating body } stock { warehouse available } } }"}"#;
/// The operation every fourth request is: a short product list.
const LIGHT_QUERY: &str = r#"{"operationName":"ProductNames","query":"query ProductNames { products(first: 20) { id name } }"}"#;
/// Subscriptions opened (and abandoned) during the leak incident.
const SUBSCRIPTIONS: usize = 1000;
/// Heap sampling rate asked of the router: finer than Go's 512 KiB so a short demo leaks
/// enough samples to measure within a few percent.
const DEMO_MEM_RATE: &str = "65536";
/// How long a request may take before the demo calls the router unresponsive: a healthy
/// router answers in milliseconds, and a loaded machine (a build beside the demo) can stall
/// one for a second or two.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the demo and returns the summary to print. With a `token`, each demo router requires
/// it (as a service started with `PPROF_TOKEN` does) and the demo sends it.
pub fn run(args: &DemoArgs, token: Option<&Token>) -> Result<String, String> {
    let router = router_binary()?;
    std::fs::create_dir_all(&args.output).map_err(|e| format!("{}: {e}", args.output.display()))?;
    let started = SystemTime::now();
    let clock = Instant::now();
    let seconds = args.seconds.max(2);
    let mut outcomes = Vec::new();
    let incidents: [(&str, FindCulprit); 4] = [
        ("hotspot", hotspot),
        ("leak", leak),
        ("contention", contention),
        ("deadlock", deadlock),
    ];
    for (i, (incident, find)) in incidents.iter().enumerate() {
        crate::print_stdout(&format!(
            "[{}/4] demo-router --incident {incident}: driving load and profiling...\n",
            i + 1
        ));
        let process = Router::start(&router, incident, token)?;
        let found = find(&process, seconds, &args.output, &mut outcomes)?;
        crate::print_stdout(&found);
    }
    let archive = args.output.join("demo-profiles.tar.gz");
    let written = write_archive(
        "demo-router (one process per incident)",
        &archive,
        started,
        "demo",
        &outcomes,
    )?;
    Ok(format!(
        "{written}Archive: {} (go tool pprof reads every .pb.gz in it; pprofd top {}:NAME too)\nDemo took {:.0} s.\n",
        archive.display(),
        archive.display(),
        clock.elapsed().as_secs_f64()
    ))
}

/// Drives one incident against a started router and reports what the profiles show.
type FindCulprit = fn(&Router, u64, &Path, &mut Vec<Outcome>) -> Result<String, String>;

/// The `demo-router` binary beside `pprofd`. When it is missing and this `pprofd` was built
/// by cargo in its own workspace (`cargo run --release -p pprofd-cli -- demo` on a fresh
/// clone builds only the CLI), builds it first with the same cargo, profile, target and
/// target directory, so the README's one command does the whole job.
fn router_binary() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find the pprofd binary: {e}"))?;
    let router = me.with_file_name(format!("demo-router{}", std::env::consts::EXE_SUFFIX));
    if router.is_file() {
        return Ok(router);
    }
    let Some(build) = RouterBuild::beside(&me) else {
        return Err(format!(
            "{} not found: build it beside pprofd with `cargo build --release --workspace`",
            router.display()
        ));
    };
    build.run()?;
    if router.is_file() {
        Ok(router)
    } else {
        Err(format!(
            "`{}` succeeded but {} is still missing",
            build.describe(),
            router.display()
        ))
    }
}

/// How to build the demo router into the target directory this `pprofd` was built in.
struct RouterBuild {
    cargo: std::ffi::OsString,
    manifest: PathBuf,
    target_dir: PathBuf,
    /// cargo's profile name: `dev` for a `debug` directory, else the directory's name.
    profile: String,
    /// The `--target` triple, when the binary lies in `target/<triple>/<profile>/`.
    triple: Option<String>,
}

impl RouterBuild {
    /// The build for a `pprofd` at `exe`, when it lies in a cargo target directory
    /// (`<target>/<profile>/pprofd` or `<target>/<triple>/<profile>/pprofd`, cargo marks
    /// `<target>` with CACHEDIR.TAG) and the workspace it was built from is still there.
    fn beside(exe: &Path) -> Option<RouterBuild> {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.parent()?;
        let manifest = workspace.join("Cargo.toml");
        if !workspace.join("crates/demo-router/Cargo.toml").is_file() {
            return None;
        }
        let profile_dir = exe.parent()?;
        let profile = match profile_dir.file_name()?.to_str()? {
            "debug" => "dev".to_string(),
            name => name.to_string(),
        };
        let is_target_dir = |dir: &Path| dir.join("CACHEDIR.TAG").is_file();
        let above = profile_dir.parent()?;
        let (target_dir, triple) = if is_target_dir(above) {
            (above.to_path_buf(), None)
        } else if is_target_dir(above.parent()?) {
            let triple = above.file_name()?.to_str()?.to_string();
            (above.parent()?.to_path_buf(), Some(triple))
        } else {
            return None;
        };
        Some(RouterBuild {
            // `cargo run` tells its child which cargo it is.
            cargo: std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()),
            manifest,
            target_dir,
            profile,
            triple,
        })
    }

    fn args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec![
            "build".into(),
            "-p".into(),
            "demo-router".into(),
            "--profile".into(),
            self.profile.clone().into(),
            "--manifest-path".into(),
            self.manifest.clone().into(),
            "--target-dir".into(),
            self.target_dir.clone().into(),
        ];
        if let Some(triple) = &self.triple {
            args.extend(["--target".into(), triple.into()]);
        }
        args
    }

    /// The command line, for messages.
    fn describe(&self) -> String {
        let args: Vec<String> = self
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        format!("{} {}", self.cargo.to_string_lossy(), args.join(" "))
    }

    fn run(&self) -> Result<(), String> {
        crate::print_stdout(&format!(
            "demo-router is not built yet: {}\n(once: it compiles the router's own dependencies, \
             a few minutes on 2 cores; later demos start at once)\n",
            self.describe()
        ));
        let status = Command::new(&self.cargo)
            .args(self.args())
            .status()
            .map_err(|e| format!("cannot run `{}`: {e}", self.describe()))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("`{}` failed ({status})", self.describe()))
        }
    }
}

/// A demo router running as a child process, killed on drop.
struct Router {
    child: Child,
    /// `http://127.0.0.1:PORT` of the router itself.
    url: String,
    /// `http://127.0.0.1:PORT` of its pprof server.
    pprof: String,
    /// The token its pprof server requires, if any.
    token: Option<Token>,
}

impl Router {
    fn start(binary: &Path, incident: &str, token: Option<&Token>) -> Result<Router, String> {
        let mut command = Command::new(binary);
        // The router gets the demo's token, or none: a PPROF_TOKEN it inherited and the
        // demo did not know of would make every profile request fail.
        match token {
            Some(token) => command.env(TOKEN_ENV, token.expose()),
            None => command.env_remove(TOKEN_ENV),
        };
        let mut child = command
            .args([
                "--listen",
                "127.0.0.1:0",
                "--exit-on-stdin-close",
                "--incident",
                incident,
            ])
            .env("PPROF_ADDR", "127.0.0.1:0")
            .env("PPROF_MEM_RATE", DEMO_MEM_RATE)
            .env_remove("DEMO_INCIDENTS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (lines_tx, lines_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut router = Router {
            child,
            url: String::new(),
            pprof: String::new(),
            token: token.cloned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while router.url.is_empty() || router.pprof.is_empty() {
            let wait = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(wait) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("router ") {
                        router.url = url.trim().to_string();
                    } else if let Some(url) = line.strip_prefix("pprof http://") {
                        router.pprof = format!("http://{}", url.trim().trim_end_matches("/debug/pprof/"));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("demo-router --incident {incident} exited before listening (its error is above)"))
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("demo-router --incident {incident} did not start: no `router` and `pprof` lines in 20 s"))
                }
            }
        }
        Ok(router)
    }

    fn endpoint(
        &self,
        file: &str,
        path: &str,
        what: &'static str,
        timeout: Duration,
    ) -> (String, Endpoint) {
        let endpoint = Endpoint {
            file: file.into(),
            path: path.into(),
            what,
            timeout,
            past_seconds: None,
        };
        (self.pprof.clone(), endpoint)
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Client threads sending requests until stopped; counts answers and failures.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(clients: usize, request: Arc<dyn Fn(&ureq::Agent) -> bool + Send + Sync>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, answered, failed, request) = (
                    stop.clone(),
                    answered.clone(),
                    failed.clone(),
                    request.clone(),
                );
                std::thread::spawn(move || {
                    let agent = agent(REQUEST_TIMEOUT);
                    while !stop.load(Ordering::Relaxed) {
                        let counter = if request(&agent) { &answered } else { &failed };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            answered,
            failed,
            threads,
        }
    }

    /// Stops the clients; returns (answered, failed).
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
        (
            self.answered.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// `pprofd load`: the demo's GraphQL load against a router someone started, to profile it
/// by hand.
#[derive(clap::Args)]
pub struct LoadArgs {
    /// The router's address (what it prints as `router http://...`), e.g. http://127.0.0.1:4000.
    pub router: String,
    /// Clients sending requests side by side.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// How long to send them.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
}

/// Sends the demo's GraphQL load to `args.router` for `args.seconds` and says how much was
/// answered.
pub fn load(args: &LoadArgs) -> Result<String, String> {
    if args.clients == 0 || args.seconds == 0 {
        return Err("--clients and --seconds must be at least 1".into());
    }
    let base = crate::fetch::normalize_url(&args.router)?;
    let base = base.trim_end_matches('/');
    // One request first, so a wrong address is one clear line rather than a minute of failures.
    agent(REQUEST_TIMEOUT)
        .post(&format!("{base}/graphql"))
        .header("content-type", "application/json")
        .send(LIGHT_QUERY)
        .map_err(|e| format!("POST {base}/graphql: {e} (is the demo router listening there?)"))?;
    eprintln!(
        "pprofd: {} clients send POST {base}/graphql for {} s",
        args.clients, args.seconds
    );
    let load = graphql_load(base, args.clients);
    std::thread::sleep(Duration::from_secs(args.seconds));
    let (answered, failed) = load.finish();
    Ok(format!(
        "{answered} requests answered ({:.0}/s), {failed} failed\n",
        answered as f64 / args.seconds as f64
    ))
}

fn graphql_load(router_url: &str, clients: usize) -> Load {
    let url = format!("{router_url}/graphql");
    let sent = AtomicU64::new(0);
    Load::start(
        clients,
        Arc::new(move |agent: &ureq::Agent| {
            let query = match sent.fetch_add(1, Ordering::Relaxed) % 4 {
                3 => LIGHT_QUERY,
                _ => QUERY,
            };
            agent
                .post(&url)
                .header("content-type", "application/json")
                .send(query)
                .and_then(|mut r| r.body_mut().read_to_vec())
                .is_ok()
        }),
    )
}

/// Fetches an endpoint, keeps the outcome for the archive and returns its bytes or the reason.
fn capture(
    router: &Router,
    file: &str,
    path: &str,
    what: &'static str,
    timeout: Duration,
    outcomes: &mut Vec<Outcome>,
) -> Result<Vec<u8>, String> {
    let (base, endpoint) = router.endpoint(file, path, what, timeout);
    let outcome = fetch_endpoint(&base, endpoint, router.token.as_ref());
    let result = outcome.result().clone();
    outcomes.push(outcome);
    result
}

fn write_flame(view: &View, index: usize, origin: &str, path: &Path) -> Result<String, String> {
    let svg = flame::render(view, index, origin)?;
    std::fs::write(path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path.display().to_string())
}

/// The source line at `position` (`file:line`), shown under a culprit when the sources are on
/// this machine (they are when the demo runs where it was built).
fn source_excerpt(position: &str) -> String {
    let Some((file, line)) = position.rsplit_once(':') else {
        return String::new();
    };
    let Ok(line) = line.parse::<usize>() else {
        return String::new();
    };
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| {
            text.lines()
                .nth(line.wrapping_sub(1))
                .map(|l| l.trim().to_string())
        })
        .map(|code| format!("            | {code}\n"))
        .unwrap_or_default()
}

fn unavailable(what: &str, reason: &str) -> String {
    format!("   {what} unavailable, so no culprit is claimed: {reason}\n")
}

/// Incident 1: CPU profile under GraphQL load; the top flat function is the culprit.
fn hotspot(
    router: &Router,
    seconds: u64,
    dir: &Path,
    outcomes: &mut Vec<Outcome>,
) -> Result<String, String> {
    let load = graphql_load(&router.url, 4);
    let profile = capture(
        router,
        "hotspot-cpu.pb.gz",
        &format!("/debug/pprof/profile?seconds={seconds}"),
        "CPU profile of demo-router --incident hotspot under GraphQL load",
        Duration::from_secs(seconds + 60),
        outcomes,
    );
    let (answered, _) = load.finish();
    let mut out = format!(
        "1. CPU hotspot: 4 clients sent POST /graphql for {seconds} s ({:.0} answers/s) while a CPU profile recorded.\n",
        answered as f64 / seconds as f64
    );
    let bytes = match profile {
        Ok(bytes) => bytes,
        Err(reason) => return Ok(out + &unavailable("CPU profile", &reason)),
    };
    let decoded = pprofd::profile::decode(&bytes).map_err(|e| e.to_string())?;
    let view = View::new(&decoded);
    let index = view.sample_index(Some("cpu"))?;
    let total = view.total(index);
    let mut rows = by_function(&view, index);
    rows.sort_by_key(|r| std::cmp::Reverse(r.flat));
    let Some(top) = rows.first() else {
        return Ok(out + "   the CPU profile holds no samples\n");
    };
    out.push_str(&format!(
        "   culprit: {} at {}\n            {} of CPU in the function itself (flat), {} with what it calls\n",
        top.function,
        top.hottest_line,
        percent(top.flat, total),
        percent(top.cum, total),
    ));
    out.push_str(&source_excerpt(&top.hottest_line));
    out.push_str(&by_operation(&view, index, "CPU"));
    let svg = write_flame(
        &view,
        index,
        "demo-router --incident hotspot",
        &dir.join("hotspot-cpu.svg"),
    )?;
    out.push_str(&format!("   flame graph: {svg}\n"));
    Ok(out)
}

/// The operations (label `operation`, from the router's request spans) with the largest
/// shares of sample type `index`, each with its hottest function: `operation
/// ProductsWithReviews: 78% of CPU, in write_json_rechecking`.
fn by_operation(view: &View, index: usize, what: &str) -> String {
    let total = view.total(index);
    let mut out = String::new();
    for (operation, value) in by_label(view, index, OPERATION).into_iter().take(3) {
        let Some(operation) = operation else {
            continue;
        };
        let focus = TagFocus {
            key: OPERATION.to_string(),
            value: operation.clone(),
        };
        let hottest = focus.hottest_call_site(view.profile(), index);
        out.push_str(&format!(
            "   operation `{operation}`: {} of {what}{}\n",
            percent(value, total),
            hottest.map(|f| format!(", in `{f}`")).unwrap_or_default()
        ));
    }
    out
}

/// The label the demo router puts each request's GraphQL operation name in.
const OPERATION: &str = "operation";

/// Which operation allocated the heap's growth between two heap profiles: in-use bytes by
/// `operation` label, after less before, largest first.
fn growth_by_operation(
    before: &pprofd::profile::proto::Profile,
    after: &pprofd::profile::proto::Profile,
) -> Result<String, String> {
    let in_use = |profile| -> Result<BTreeMap<Option<String>, i64>, String> {
        let view = View::new(profile);
        let index = view.sample_index(Some("inuse_space"))?;
        Ok(by_label(&view, index, OPERATION).into_iter().collect())
    };
    let (before, after) = (in_use(before)?, in_use(after)?);
    let growth: i64 = after.values().sum::<i64>() - before.values().sum::<i64>();
    let mut grown: Vec<(String, i64)> = after
        .iter()
        .filter_map(|(op, bytes)| {
            let delta = bytes - before.get(op).copied().unwrap_or(0);
            Some((op.clone()?, delta)).filter(|_| delta > 0)
        })
        .collect();
    grown.sort_by_key(|(_, delta)| std::cmp::Reverse(*delta));
    Ok(match grown.first() {
        Some((operation, delta)) if growth > 0 => format!(
            "   operation `{operation}` allocated +{} of it ({} of the growth)\n",
            format_value(*delta, "bytes"),
            percent(*delta, growth)
        ),
        _ => String::new(),
    })
}

/// Incident 2: heap before and after abandoned subscriptions; the call site that grew is the culprit.
fn leak(
    router: &Router,
    _seconds: u64,
    dir: &Path,
    outcomes: &mut Vec<Outcome>,
) -> Result<String, String> {
    let what = "heap profile of demo-router --incident leak";
    let before = capture(
        router,
        "leak-heap-before.pb.gz",
        "/debug/pprof/heap",
        what,
        Duration::from_secs(60),
        outcomes,
    );
    let client = agent(REQUEST_TIMEOUT);
    let url = format!("{}/subscribe?topic=prices", router.url);
    let opened = (0..SUBSCRIPTIONS)
        .filter(|_| {
            client
                .get(&url)
                .call()
                .and_then(|mut r| r.body_mut().read_to_vec())
                .is_ok()
        })
        .count();
    let after = capture(
        router,
        "leak-heap-after.pb.gz",
        "/debug/pprof/heap",
        what,
        Duration::from_secs(60),
        outcomes,
    );
    let registry = client
        .get(&format!("{}/healthz", router.url))
        .call()
        .and_then(|mut r| r.body_mut().read_to_vec())
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|h| h["subscription_backlog_bytes"].as_i64());
    let mut out = format!(
        "2. Memory leak: {opened} clients subscribed and left, between two heap profiles.\n"
    );
    let (before, after) = match (before, after) {
        (Ok(b), Ok(a)) => (b, a),
        (Err(reason), _) | (_, Err(reason)) => {
            return Ok(out + &unavailable("heap profile", &reason))
        }
    };
    let base = pprofd::profile::decode(&before).map_err(|e| e.to_string())?;
    let new = pprofd::profile::decode(&after).map_err(|e| e.to_string())?;
    let comparison = diff::compare(&base, &new, Some("inuse_space"))?;
    let growth = comparison.totals.1 - comparison.totals.0;
    let Some(site) = comparison.sites.first().filter(|s| s.delta() > 0) else {
        return Ok(out + "   the heap did not grow between the two profiles\n");
    };
    out.push_str(&format!(
        "   culprit: {} at {}\n            +{} in use ({} of the heap's growth)",
        site.function,
        site.position,
        format_value(site.delta(), "bytes"),
        percent(site.delta(), growth),
    ));
    if let Some(truth) = registry {
        out.push_str(&format!(
            "; the router's registry holds {}",
            format_value(truth, "bytes")
        ));
    }
    out.push('\n');
    out.push_str(&source_excerpt(&site.position));
    out.push_str(&growth_by_operation(&base, &new)?);
    let view = View::new(&new);
    let index = view.sample_index(Some("inuse_space"))?;
    let svg = write_flame(
        &view,
        index,
        "demo-router --incident leak",
        &dir.join("leak-heap.svg"),
    )?;
    out.push_str(&format!(
        "   flame graph: {svg}   (or: pprofd diff {}:leak-heap-before {}:leak-heap-after)\n",
        dir.join("demo-profiles.tar.gz").display(),
        dir.join("demo-profiles.tar.gz").display()
    ));
    Ok(out)
}

/// Incident 3: mutex profile under load; the call site with most lock delay is the culprit.
fn contention(
    router: &Router,
    seconds: u64,
    dir: &Path,
    outcomes: &mut Vec<Outcome>,
) -> Result<String, String> {
    let window = (seconds / 2).max(2);
    let load = graphql_load(&router.url, 8);
    let clock = Instant::now();
    let profile = capture(
        router,
        "contention-mutex.pb.gz",
        &format!("/debug/pprof/mutex?seconds={window}"),
        "mutex profile of demo-router --incident contention under GraphQL load",
        Duration::from_secs(window + 60),
        outcomes,
    );
    let (answered, failed) = load.finish();
    let bytes =
        match profile {
            Ok(bytes) => bytes,
            Err(reason) => return Ok(
                "3. Lock contention: 8 clients sent POST /graphql; a mutex profile was asked for.\n"
                    .to_string() + &unavailable("mutex profile", &reason),
            ),
        };
    let mut out = format!(
        "3. Lock contention: 8 clients sent POST /graphql for {:.1} s ({answered} answered, {failed} too slow) while a mutex profile recorded.\n",
        clock.elapsed().as_secs_f64()
    );
    let decoded = pprofd::profile::decode(&bytes).map_err(|e| e.to_string())?;
    let view = View::new(&decoded);
    let index = view.sample_index(Some("delay"))?;
    let total = view.total(index);
    let mut sites: Vec<((String, String), i64)> = crate::analysis::by_call_site(&view, index)
        .into_iter()
        .collect();
    sites.sort_by_key(|s| std::cmp::Reverse(s.1));
    let Some(((function, position), delay)) = sites.first() else {
        return Ok(out + "   the mutex profile holds no samples\n");
    };
    out.push_str(&format!(
        "   culprit: {function} at {position}\n            {} of lock wait ({})\n",
        percent(*delay, total),
        format_value(*delay, "nanoseconds"),
    ));
    out.push_str(&source_excerpt(position));
    out.push_str(&by_operation(&view, index, "lock wait"));
    let svg = write_flame(
        &view,
        index,
        "demo-router --incident contention",
        &dir.join("contention-mutex.svg"),
    )?;
    out.push_str(&format!("   flame graph: {svg}\n"));
    Ok(out)
}

/// Incident 4: the router stops answering; the thread dump shows who waits on which lock.
fn deadlock(
    router: &Router,
    _seconds: u64,
    _dir: &Path,
    outcomes: &mut Vec<Outcome>,
) -> Result<String, String> {
    let load = graphql_load(&router.url, 4);
    let healthz = format!("{}/healthz", router.url);
    let probe = agent(REQUEST_TIMEOUT);
    let stuck_after = Instant::now();
    let mut stuck = false;
    while stuck_after.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        if probe.get(&healthz).call().is_err() {
            stuck = true;
            break;
        }
    }
    let mut out = if stuck {
        format!(
            "4. Hang: under GraphQL load the router stopped answering after {:.1} s (GET /healthz timed out).\n",
            stuck_after.elapsed().as_secs_f64()
        )
    } else {
        "4. Hang: the router kept answering for 20 s; the dump below shows its threads anyway.\n"
            .to_string()
    };
    let dump = capture(
        router,
        "deadlock-goroutine-debug2.txt",
        "/debug/pprof/goroutine?debug=2",
        "thread dump of demo-router --incident deadlock after it stopped answering",
        Duration::from_secs(30),
        outcomes,
    );
    let _ = capture(
        router,
        "deadlock-goroutine.pb.gz",
        "/debug/pprof/goroutine",
        "thread profile of demo-router --incident deadlock after it stopped answering",
        Duration::from_secs(30),
        outcomes,
    );
    // The clients are stuck in requests that time out; stop them after the dump.
    drop(load);
    let text = match dump {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(reason) => return Ok(out + &unavailable("thread dump (goroutine?debug=2)", &reason)),
    };
    let threads = dump::parse(&text);
    let mut waiting: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for thread in threads.iter().filter(|t| t.waits_for_lock()) {
        let lines = thread.source_lines();
        if let Some(site) = lines.iter().find(|f| f.is_own_code()) {
            let name = thread
                .header
                .split('"')
                .nth(1)
                .unwrap_or(&thread.header)
                .to_string();
            waiting
                .entry((site.function.to_string(), site.position()))
                .or_default()
                .push(name);
        }
    }
    if waiting.is_empty() {
        out.push_str(&format!(
            "   {} threads in the dump, none waiting for a lock in the router's code\n",
            threads.len()
        ));
        return Ok(out);
    }
    out.push_str("   culprit: threads wait for locks at these call sites (two sites taking the same locks in opposite orders deadlock):\n");
    for ((function, position), names) in &waiting {
        out.push_str(&format!(
            "     {} thread(s) [{}] at {function} {position}\n",
            names.len(),
            names.join(", ")
        ));
        out.push_str(&source_excerpt(position));
    }
    Ok(out)
}

impl Drop for Load {
    fn drop(&mut self) {
        // Stuck clients end when their request times out; nothing waits for them here.
        self.stop.store(true, Ordering::Relaxed);
    }
}
