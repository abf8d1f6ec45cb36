//! `pprofd symbolize`: a CPU profile of a stripped demo router, symbolized from the
//! unstripped binary or its split debug file, found by build ID.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{demo_router_binary, get, pprofd, Load, RouterProcess};

/// Runs `tool ARGS` (binutils) and fails the test unless it succeeds.
fn run(tool: &str, args: &[&std::ffi::OsStr]) -> String {
    let output = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} runs (binutils): {e}"));
    assert!(
        output.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn build_id(path: &Path) -> String {
    run("readelf", &["-n".as_ref(), path.as_os_str()])
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_string))
        .expect("rustc links with a GNU build ID")
}

/// The names of the functions of every location in `profile`.
fn function_names(profile: &pprofd::profile::proto::Profile) -> Vec<String> {
    profile
        .function
        .iter()
        .map(|f| profile.string_table[f.name as usize].clone())
        .collect()
}

#[test]
fn a_stripped_builds_profile_is_symbolized_from_its_debug_file_by_build_id() {
    let dir = tempfile::tempdir().unwrap();
    let stripped = dir.path().join("demo-router");
    let debug = dir.path().join("demo-router.debug");
    let unstripped = demo_router_binary();
    run(
        "objcopy",
        &[
            "--only-keep-debug".as_ref(),
            unstripped.as_os_str(),
            debug.as_os_str(),
        ],
    );
    run(
        "objcopy",
        &[
            "--strip-all".as_ref(),
            unstripped.as_os_str(),
            stripped.as_os_str(),
        ],
    );
    let id = build_id(&stripped);

    let router = RouterProcess::start_binary(&stripped, &["hotspot"], None);
    let load = Load::start(&router, 2);
    let url = format!("{}/debug/pprof/profile?seconds=3", router.pprof);
    let (status, body) = get(&url, Duration::from_secs(60));
    drop(load);
    drop(router);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let profile_path = dir.path().join("cpu.pb.gz");
    std::fs::write(&profile_path, &body).unwrap();
    let served = pprofd::profile::decode(&body).unwrap();
    assert!(
        !function_names(&served)
            .iter()
            .any(|f| f.contains("write_json_rechecking")),
        "the stripped build cannot name its own code in process"
    );

    // DIR/.build-id/ab/cdef….debug, the layout of debug-info packages.
    let debug_dir = dir.path().join("debug");
    let by_id = debug_dir.join(".build-id").join(&id[..2]);
    std::fs::create_dir_all(&by_id).unwrap();
    std::fs::rename(&debug, by_id.join(format!("{}.debug", &id[2..]))).unwrap();
    let out = dir.path().join("symbolized.pb.gz");
    let output = pprofd(&[
        "symbolize",
        profile_path.to_str().unwrap(),
        "--debug-dir",
        debug_dir.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&id),
        "the report names the mapping: {stdout}"
    );
    let symbolized = pprofd::profile::decode(&std::fs::read(&out).unwrap()).unwrap();
    let names = function_names(&symbolized);
    assert!(
        names.iter().any(|f| f.contains("write_json_rechecking")),
        "{names:?}"
    );
    let main = &symbolized.mapping[0];
    assert!(main.has_functions && main.has_line_numbers && main.has_inline_frames);

    // pprofd's own reading and go tool pprof's agree on the hotspot.
    let top = pprofd(&["top", out.to_str().unwrap(), "-n", "1000"]);
    let top = String::from_utf8_lossy(&top.stdout);
    assert!(top.contains("write_json_rechecking"), "{top}");
    if common::go_available() {
        let go = Command::new("go")
            .args(["tool", "pprof", "-top"])
            .arg(&out)
            .env("HOME", dir.path())
            .output()
            .unwrap();
        let go_top = String::from_utf8_lossy(&go.stdout);
        assert!(
            go.status.success(),
            "{}",
            String::from_utf8_lossy(&go.stderr)
        );
        assert!(go_top.contains("write_json_rechecking"), "{go_top}");
    }

    // A directory without the file: nothing is written, the mapping is named.
    let empty = tempfile::tempdir().unwrap();
    let missing_out = dir.path().join("missing.pb.gz");
    let output = pprofd(&[
        "symbolize",
        profile_path.to_str().unwrap(),
        "--debug-dir",
        empty.path().to_str().unwrap(),
        "-o",
        missing_out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&id) && stderr.contains("no file found"),
        "{stderr}"
    );
    assert!(!missing_out.exists());
}

#[test]
fn a_file_with_another_build_id_is_refused_and_a_corrupt_profile_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // A profile naming a mapping of this test binary with a build ID it does not have.
    let mut profile = pprofd::profile::proto::Profile {
        string_table: vec![
            String::new(),
            "/somewhere/demo-router".into(),
            "00112233445566778899aabbccddeeff00112233".into(),
        ],
        mapping: vec![pprofd::profile::proto::Mapping {
            id: 1,
            memory_start: 0x1000,
            memory_limit: 0x2000,
            filename: 1,
            build_id: 2,
            ..Default::default()
        }],
        location: vec![pprofd::profile::proto::Location {
            id: 1,
            mapping_id: 1,
            address: 0x1100,
            ..Default::default()
        }],
        ..Default::default()
    };
    profile.sample.push(pprofd::profile::proto::Sample {
        location_id: vec![1],
        ..Default::default()
    });
    let input = dir.path().join("in.pb.gz");
    std::fs::write(&input, pprofd::profile::encode_gzip(&profile)).unwrap();
    std::fs::copy(demo_router_binary(), dir.path().join("demo-router")).unwrap();
    let out = dir.path().join("out.pb.gz");
    let args = |input: &Path| {
        pprofd(&[
            "symbolize",
            input.to_str().unwrap(),
            "--debug-dir",
            dir.path().to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
    };
    let output = args(&input);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("has build ID"), "{stderr}");

    let corrupt = dir.path().join("corrupt.pb.gz");
    std::fs::write(&corrupt, b"\x1f\x8b\x08\x00 not really gzip").unwrap();
    let output = args(&corrupt);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("corrupt.pb.gz") && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert!(!out.exists());

    let output = pprofd(&[
        "symbolize",
        input.to_str().unwrap(),
        "--debug-dir",
        dir.path().join("absent").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not a directory"), "{stderr}");
}
