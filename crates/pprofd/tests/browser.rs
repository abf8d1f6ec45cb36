//! pprofd's pages as a person sees them, in a real browser: headless Chromium (Debian's
//! `chromium`) driven by playwright-core through `tests/browser/pages.mjs`, which reports what
//! the pages show as JSON for these tests to check. Screenshots are kept in
//! `$TMPDIR/pprofd-browser/<test>/` for a person to look at.
//!
//! Needs `node`, `/usr/bin/chromium` and `npm ci` run in `tests/browser` (`.ci/run` does all
//! three); without them each test says it skipped, and under `CI=true` fails.

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{example_binary, go, pprof_binary, Workload};

/// The hot trait method of `examples/symbol_workload.rs`, whole: its type's generic argument
/// and the trait's path must survive every view.
const HOT: &str = "<symbol_workload::Collatz<u64> as core::iter::traits::iterator::Iterator>::next";

/// `tests/browser`, where `pages.mjs` and its `node_modules` are.
fn driver_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Whether node, Chromium and playwright-core are here; a note (and under `CI=true` a
/// failure) when they are not.
fn browser_available() -> bool {
    let missing = [
        (
            Command::new("node").arg("--version").output().is_err(),
            "node",
        ),
        (
            !Path::new("/usr/bin/chromium").exists(),
            "/usr/bin/chromium",
        ),
        (
            !driver_dir().join("node_modules/playwright-core").is_dir(),
            "playwright-core (npm ci in crates/pprofd/tests/browser)",
        ),
    ];
    let missing: Vec<&str> = missing.iter().filter(|m| m.0).map(|m| m.1).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the browser tests need {missing:?} under CI=true (.ci/run installs them)"
    );
    eprintln!("SKIPPED the browser checks: missing {missing:?}");
    false
}

/// A directory for `test`'s screenshots, kept after the test.
fn screenshots(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("pprofd-browser").join(test);
    std::fs::create_dir_all(&dir).unwrap();
    eprintln!("screenshots: {}", dir.display());
    dir
}

/// Runs `node pages.mjs ARGS` and parses the report it prints.
fn browse(args: &[&str]) -> Value {
    let output = Command::new("node")
        .arg(driver_dir().join("pages.mjs"))
        .args(args)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "pages.mjs {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn string<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {value}"))
}

fn number(value: &Value, key: &str) -> f64 {
    value[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no {key} in {value}"))
}

/// The index page loads, lists every profile, and each of its links answers in the browser
/// with what it is: a page of text, or for the CPU profile (asked for 1 s) a flame graph.
#[test]
fn the_index_page_and_each_of_its_links_answer() {
    if !browser_available() {
        return;
    }
    let shots = screenshots("index");
    let workload = Workload::start("symbol_workload", &[]);
    let index = format!("http://{}/debug/pprof/", workload.addr());
    let report = browse(&["index", &index, shots.to_str().unwrap()]);
    workload.finish();

    assert_eq!(report["page"]["status"], 200, "{report}");
    let links = report["links"].as_array().expect("links");
    let named: Vec<&str> = links.iter().map(|l| string(l, "name")).collect();
    for profile in [
        "allocs",
        "block",
        "cmdline",
        "goroutine",
        "heap",
        "mutex",
        "profile",
        "symbol",
        "threadcreate",
        "trace",
    ] {
        assert!(named.contains(&profile), "no {profile} link in {named:?}");
    }
    for link in links {
        let (name, status, text) = (
            string(link, "name"),
            number(link, "status"),
            string(link, "text"),
        );
        if name == "trace" {
            // No Rust counterpart of Go's execution trace: a 501 that says so.
            assert_eq!(status, 501.0, "{link}");
            assert!(text.contains("/debug/pprof/profile"), "{link}");
            continue;
        }
        assert_eq!(status, 200.0, "{name}: {link}");
        let content_type = string(link, "contentType");
        if name == "profile" {
            assert!(content_type.starts_with("image/svg+xml"), "{link}");
        } else {
            assert!(content_type.starts_with("text/plain"), "{link}");
            assert!(!text.is_empty(), "{name} shows nothing: {link}");
        }
    }
}

/// A CPU profile opened the way a browser opens it is a flame graph in which a click on the
/// hot trait method's frame zooms to it, drawn with its whole name.
#[test]
fn a_cpu_profile_in_the_browser_is_a_flame_graph_that_zooms_to_the_hot_function() {
    if !browser_available() {
        return;
    }
    let shots = screenshots("flame");
    let workload = Workload::start("symbol_workload", &[]);
    let url = format!("http://{}/debug/pprof/profile?seconds=2", workload.addr());
    let report = browse(&["flame", &url, HOT, shots.to_str().unwrap()]);
    workload.finish();

    assert_eq!(report["page"]["status"], 200, "{report}");
    assert!(
        string(&report["page"], "contentType").starts_with("image/svg+xml"),
        "{report}"
    );
    let before = &report["before"];
    assert!(
        before.is_object(),
        "no frame of {HOT} in the flame graph: {report}"
    );
    assert_eq!(before["reset"], false, "{report}");
    let after = &report["after"];
    // inferno cuts a name to its frame's width ("..its::iterator::Iterator>::next" when a
    // loaded machine gave the function 16% of the samples): zoomed, it is drawn whole.
    assert_eq!(string(after, "drawn"), HOT, "the name is cut: {report}");
    // Zoomed: the frame spans the graph (inferno leaves a 10 px margin on each side) and
    // the reset control shows.
    assert!(
        number(after, "width") > number(before, "width") * 1.3,
        "the click did not zoom: {report}"
    );
    assert!(
        number(after, "width") >= number(after, "svgWidth") - 30.0,
        "the zoomed frame does not span the graph: {report}"
    );
    assert_eq!(after["reset"], true, "{report}");
}

/// `go tool pprof -http` on a pprofd CPU profile: its flame graph and top views show the hot
/// trait method with its whole name, and its source view its file and lines.
#[test]
fn go_tool_pprof_web_ui_shows_the_hot_function_whole_and_its_source() {
    if !browser_available() {
        return;
    }
    let Some(go) = go() else { return };
    let shots = screenshots("pprof-ui");
    // The profile is read where its binary is not, as one taken from a service on another
    // machine is: Go's pprof finds a binary at the mapping's path and then builds its source
    // view by disassembling it, which it can only do for Go binaries (the view stays empty);
    // without it, the view comes from the profile's own lines.
    let dir = support::ScratchDir::create();
    let binary = dir.path().join("symbol_workload");
    std::fs::copy(example_binary("symbol_workload"), &binary).unwrap();
    let workload = Workload::start_binary(&binary, &[], &[("PPROF_ADDR", "127.0.0.1:0")]);
    let profile = workload.get("/debug/pprof/profile?seconds=2");
    workload.finish();
    std::fs::remove_file(&binary).unwrap();
    assert_eq!(profile.status, 200);
    let file = dir.write("cpu.pb.gz", &profile.body);

    let ui = PprofWebUi::start(&go, &file, dir.path());
    let base = format!("http://{}/", ui.addr);
    let report = browse(&["pprof", &base, HOT, "Collatz", shots.to_str().unwrap()]);
    drop(ui);

    let flame = &report["flameGraph"];
    assert_eq!(flame["status"], 200, "{report}");
    // pprof draws the longest form of a name that fits the box: at the share the function
    // gets on a loaded machine that may lack its first path segment until a click zooms.
    let whole = |key: &str| {
        flame[key]
            .as_array()
            .expect("boxes")
            .iter()
            .any(|b| string(b, "text") == HOT)
    };
    assert!(
        whole("drawn") || whole("zoomed"),
        "no flame graph box drawn as {HOT}, before or after a click on it: {flame}"
    );
    let rows = report["top"]["rows"].as_array().expect("rows");
    assert!(
        rows.iter()
            .any(|row| row.as_array().unwrap().iter().any(|cell| cell == HOT)),
        "no top row named {HOT}: {rows:?}"
    );
    let listing = string(&report["source"], "listing");
    assert!(
        listing.contains("examples/symbol_workload.rs"),
        "the source view names no file: {listing}"
    );
    assert!(
        listing.contains("fn next(&mut self) -> Option<u64>"),
        "the source view shows no lines of the function: {listing}"
    );
}

/// `go tool pprof -http=127.0.0.1:PORT -no_browser FILE`, serving until dropped.
struct PprofWebUi {
    child: Child,
    addr: SocketAddr,
}

impl PprofWebUi {
    /// Starts the web UI on a free loopback port and waits until it accepts connections.
    /// (`-http=127.0.0.1:0` would pick a port, but Go's pprof then prints port 0.)
    fn start(go: &Path, file: &Path, home: &Path) -> PprofWebUi {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let mut child = Command::new(pprof_binary(go))
            .arg("-no_browser")
            .arg(format!("-http={addr}"))
            .arg(file)
            .env("HOME", home)
            .env("PPROF_TMPDIR", home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pprof runs");
        // Readiness, not a sleep: building or loading pprof takes what it takes.
        let deadline = Instant::now() + Duration::from_secs(120);
        while TcpStream::connect(addr).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("go tool pprof -http exited with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "go tool pprof -http never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        PprofWebUi { child, addr }
    }
}

impl Drop for PprofWebUi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
