//! Mappings and build IDs as offline tools need them: every loaded object's mapping carries the
//! build ID `readelf -n` reads from its file, and a profile of a stripped build is symbolized
//! by the real `go tool pprof` from the unstripped binary kept aside.

mod support;

use std::path::Path;
use std::process::Command;

use pprofd::profile::proto::Profile;
use support::{example_binary, go_tool_pprof, ScratchDir, Workload};

/// The GNU build ID of the ELF file at `path`, as `readelf -n` prints it (binutils, which the
/// Rust toolchain's linker setup installs); `None` when it has none.
fn readelf_build_id(path: &str) -> Option<String> {
    let output = Command::new("readelf")
        .args(["-n", path])
        .output()
        .expect("readelf runs (binutils)");
    assert!(output.status.success(), "readelf -n {path} failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_string))
}

fn string(profile: &Profile, index: i64) -> &str {
    &profile.string_table[index as usize]
}

#[test]
fn every_mapping_carries_the_build_id_of_its_file() {
    let workload = Workload::start("heap_workload", &["leak"]);
    let heap = workload.profile("/debug/pprof/heap");
    let mut checked = Vec::new();
    for m in &heap.mapping {
        let path = string(&heap, m.filename);
        if !Path::new(path).is_file() {
            continue;
        }
        let expected = readelf_build_id(path).unwrap_or_default();
        assert_eq!(string(&heap, m.build_id), expected, "build ID of {path}");
        checked.push(path.to_string());
    }
    for object in ["heap_workload", "/libc.so", "/ld-linux"] {
        assert!(
            checked.iter().any(|p| p.contains(object)),
            "no mapping of {object} in {checked:?}"
        );
    }
    assert!(
        checked
            .iter()
            .all(|p| !readelf_build_id(p).unwrap_or_default().is_empty()),
        "every object here has a GNU build ID: {checked:?}"
    );
    workload.finish();
}

/// A stripped copy of the CPU workload in a scratch directory, and the unstripped binary it
/// was made from.
struct StrippedBuild {
    dir: ScratchDir,
    build_id: String,
}

impl StrippedBuild {
    fn new() -> StrippedBuild {
        let dir = ScratchDir::create();
        let unstripped = example_binary("cpu_workload");
        std::fs::copy(&unstripped, dir.path().join("unstripped")).unwrap();
        let status = Command::new("objcopy")
            .arg("--strip-all")
            .arg(&unstripped)
            .arg(dir.path().join("cpu_workload"))
            .status()
            .expect("objcopy runs (binutils)");
        assert!(status.success(), "objcopy --strip-all failed");
        let build_id = readelf_build_id(dir.path().join("cpu_workload").to_str().unwrap())
            .expect("rustc links with a GNU build ID");
        StrippedBuild { dir, build_id }
    }

    fn stripped(&self) -> std::path::PathBuf {
        self.dir.path().join("cpu_workload")
    }

    fn unstripped(&self) -> std::path::PathBuf {
        self.dir.path().join("unstripped")
    }

    /// A 2 s CPU profile of the stripped build, as served.
    fn profile(&self) -> Vec<u8> {
        let workload =
            Workload::start_binary(&self.stripped(), &[], &[("PPROF_ADDR", "127.0.0.1:0")]);
        let response = workload.get("/debug/pprof/profile?seconds=2");
        assert_eq!(response.status, 200, "{}", response.text());
        workload.finish();
        response.body
    }
}

#[test]
fn go_tool_pprof_symbolizes_a_stripped_build_from_the_unstripped_binary() {
    let build = StrippedBuild::new();
    let bytes = build.profile();
    let profile = pprofd::profile::decode(&bytes).unwrap();
    let main = &profile.mapping[0];
    assert_eq!(string(&profile, main.build_id), build.build_id);
    assert!(
        string(&profile, main.filename).ends_with("/cpu_workload"),
        "the executable's mapping comes first"
    );
    // Nothing in process could name the stripped code, so the mapping must not claim
    // functions: pprof does not re-symbolize a mapping that has them.
    assert!(
        !(main.has_functions || main.has_filenames || main.has_line_numbers),
        "{main:?}"
    );
    let Some(go) = support::go() else { return };
    let file = build.dir.write("cpu.pb.gz", &bytes);
    let unstripped = build.unstripped();
    let top = go_tool_pprof(
        &go,
        &["-top", unstripped.to_str().unwrap(), file.to_str().unwrap()],
    );
    for function in ["hot_seventy", "hot_thirty"] {
        assert!(top.contains(function), "no {function} in\n{top}");
    }
}

#[test]
fn pprof_finds_the_unstripped_binary_by_build_id_in_pprof_binary_path() {
    // `go tool pprof` cannot do this (Go 1.26 as 1.19): its object reader reports no build
    // IDs, so it rejects every file in PPROF_BINARY_PATH for a mapping that has one
    // ("build-id mismatch (ID != )"). Upstream pprof reads them.
    let Some(pprof) = support::binary_from_ci(
        "PPROFD_UPSTREAM_PPROF",
        "upstream pprof from the Go module proxy",
        "a pprof built by `go install github.com/google/pprof@VERSION`",
    ) else {
        return;
    };
    let build = StrippedBuild::new();
    let bytes = build.profile();
    let file = build.dir.write("cpu.pb.gz", &bytes);
    // DIR/<build ID>/<any name>: the layout pprof searches first.
    let binaries = build.dir.path().join("binaries");
    std::fs::create_dir_all(binaries.join(&build.build_id)).unwrap();
    std::fs::copy(
        build.unstripped(),
        binaries.join(&build.build_id).join("cpu_workload.debug"),
    )
    .unwrap();
    let output = Command::new(&pprof)
        .args(["-top", file.to_str().unwrap()])
        .env("PPROF_BINARY_PATH", &binaries)
        .env("HOME", build.dir.path())
        .output()
        .expect("pprof runs");
    let top = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "pprof failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(top.contains("hot_seventy"), "no hot_seventy in\n{top}");
}
