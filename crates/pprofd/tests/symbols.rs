//! In-process symbolization as users meet it: whole, distinct trait-method names in
//! `go tool pprof`, file:line from a separate debug file (`.gnu_debuglink`), and profiles (CPU
//! and heap) of a fully stripped binary that say how to symbolize it later.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pprofd::profile::proto::Profile;
use support::{example_binary, go, go_tool_pprof_bytes, ScratchDir, Workload};

const SQUARES: &str = "<symbol_workload::Squares as core::iter::traits::iterator::Iterator>::next";
const COLLATZ: &str =
    "<symbol_workload::Collatz<u64> as core::iter::traits::iterator::Iterator>::next";
const PROFILE: &str = "/debug/pprof/profile?seconds=2";

/// The profile's functions as `(name, system_name, file)`, and the lines of each location's
/// frames as `(name, file, line)`.
fn functions(profile: &Profile) -> Vec<(String, String, String)> {
    let s = |i: i64| profile.string_table[i as usize].clone();
    profile
        .function
        .iter()
        .map(|f| (s(f.name), s(f.system_name), s(f.filename)))
        .collect()
}

fn lines_of(profile: &Profile, function: &str) -> Vec<(String, i64)> {
    let s = |i: i64| profile.string_table[i as usize].as_str();
    profile
        .location
        .iter()
        .flat_map(|l| l.line.iter())
        .filter_map(|line| {
            let f = profile.function.iter().find(|f| f.id == line.function_id)?;
            (s(f.name) == function).then(|| (s(f.filename).to_string(), line.line))
        })
        .collect()
}

fn comments(profile: &Profile) -> String {
    profile
        .comment
        .iter()
        .map(|&c| profile.string_table[c as usize].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

fn run(tool: &str, args: &[&str]) {
    let status = Command::new(tool)
        .args(args)
        .status()
        .expect("binutils are installed");
    assert!(status.success(), "{tool} {args:?}");
}

/// A copy of the workload in `dir`, changed by `prepare` before it runs.
fn profile_of_copy(dir: &Path, prepare: impl FnOnce(&Path)) -> Profile {
    let copy = dir.join("symbol_workload");
    std::fs::copy(example_binary("symbol_workload"), &copy).unwrap();
    prepare(&copy);
    let workload = Workload::start_binary(&copy, &[], &[("PPROF_ADDR", "127.0.0.1:0")]);
    let profile = workload.profile(PROFILE);
    workload.finish();
    profile
}

#[test]
fn trait_methods_keep_whole_distinct_names_in_go_tool_pprof() {
    let workload = Workload::start("symbol_workload", &[]);
    let response = workload.get(PROFILE);
    assert_eq!(response.status, 200);
    let profile = response.profile();
    workload.finish();
    let functions = functions(&profile);
    for wanted in [SQUARES, COLLATZ] {
        let (_, system_name, file) = functions
            .iter()
            .find(|(name, ..)| name == wanted)
            .unwrap_or_else(|| panic!("{wanted} in {functions:#?}"));
        assert!(
            system_name.starts_with("_ZN") || system_name.starts_with("_R"),
            "{wanted}: system_name is the mangled symbol, not {system_name:?}"
        );
        assert!(file.ends_with("examples/symbol_workload.rs"), "{file}");
    }
    for (name, system_name, _) in functions.iter().filter(|(n, ..)| n.contains("::")) {
        let hash = name.rsplit_once("::h").map(|(_, h)| h).unwrap_or("");
        assert!(
            !(hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit())),
            "{name}: the legacy hash is dropped"
        );
        // pprof treats a name equal to its system name as not demangled and cuts it down.
        assert_ne!(name, system_name, "{name}");
    }
    let Some(go) = go() else { return };
    for view in ["-top", "-traces"] {
        let text = go_tool_pprof_bytes(&go, &[view, "-nodecount=1000"], &response.body);
        for wanted in [SQUARES, COLLATZ] {
            assert!(
                text.contains(wanted),
                "go tool pprof {view} lacks {wanted}:\n{text}"
            );
        }
        assert!(
            !text.lines().any(|l| l.trim_end().ends_with(" ::next")),
            "go tool pprof {view} cut a trait method down:\n{text}"
        );
    }
}

#[test]
fn a_binary_stripped_of_debug_info_reads_it_from_its_debuglink_file() {
    for subdir in ["", ".debug"] {
        let dir = ScratchDir::create();
        let profile = profile_of_copy(dir.path(), |copy| {
            let debug_dir = dir.path().join(subdir);
            std::fs::create_dir_all(&debug_dir).unwrap();
            let debug = debug_dir.join("symbol_workload.debug");
            let (copy, debug) = (copy.to_str().unwrap(), debug.to_str().unwrap());
            run("objcopy", &["--only-keep-debug", copy, debug]);
            run("strip", &["--strip-debug", copy]);
            // objcopy records the base name; the reader looks beside the binary and in .debug/.
            run("objcopy", &[&format!("--add-gnu-debuglink={debug}"), copy]);
        });
        let lines = lines_of(&profile, SQUARES);
        assert!(
            lines
                .iter()
                .any(|(file, line)| file.ends_with("examples/symbol_workload.rs") && *line > 0),
            "debug file in {subdir:?}: {SQUARES} has file:line from the debug file: {lines:?}"
        );
    }
}

#[test]
fn a_fully_stripped_binary_says_how_to_symbolize_it_later() {
    let dir = ScratchDir::create();
    let profile = profile_of_copy(dir.path(), |copy| {
        run("strip", &["--strip-all", copy.to_str().unwrap()])
    });
    assert_says_how_to_symbolize(&profile, "symbol_workload");
    assert!(
        lines_of(&profile, SQUARES).is_empty(),
        "nothing could name it"
    );
}

/// A heap profile says it too: its sites are addresses in the stripped binary as well.
#[test]
fn a_heap_profile_of_a_fully_stripped_binary_says_how_to_symbolize_it_later() {
    let dir = ScratchDir::create();
    let copy = dir.path().join("record_workload");
    std::fs::copy(example_binary("record_workload"), &copy).unwrap();
    run("strip", &["--strip-all", copy.to_str().unwrap()]);
    let workload = Workload::start_binary(
        &copy,
        &[],
        &[
            ("PPROF_ADDR", "127.0.0.1:0"),
            // Every 64 KiB leak is sampled: the first leak is a sample, not a chance of one.
            ("PPROF_MEM_RATE", "4096"),
        ],
    );
    // Asked until the leaker has leaked, however late a busy machine runs it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let profile = loop {
        let profile = workload.profile("/debug/pprof/heap");
        if !profile.sample.is_empty() || Instant::now() > deadline {
            break profile;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    workload.finish();
    assert!(!profile.sample.is_empty(), "the leak was sampled");
    assert_says_how_to_symbolize(&profile, "record_workload");
}

/// A comment of `profile` names the stripped binary `name`, its build ID and both ways to
/// symbolize it later.
fn assert_says_how_to_symbolize(profile: &Profile, name: &str) {
    let comments = comments(profile);
    let line = comments
        .lines()
        .find(|l| l.contains(name) && l.contains("not symbolized"))
        .unwrap_or_else(|| panic!("a comment names the stripped binary:\n{comments}"));
    assert!(line.contains("build ID "), "{line}");
    assert!(
        line.contains("PPROF_BINARY_PATH=DIR pprof PROFILE"),
        "{line}"
    );
    assert!(
        line.contains("pprofd symbolize PROFILE --debug-dir DIR"),
        "{line}"
    );
}
