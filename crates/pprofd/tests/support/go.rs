//! `go tool pprof`, the reference reader of what pprofd serves, and the scratch files it reads.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The `go` binary, on PATH or in /usr/local/go/bin. When it is missing the test prints that
/// it skipped its go check and gets `None`; under `CI=true` a missing `go` fails the test.
pub fn go() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("go"))
            .find(|p| p.is_file())
    });
    let found =
        on_path.or_else(|| Some(PathBuf::from("/usr/local/go/bin/go")).filter(|p| p.is_file()));
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "`go` is required under CI=true (apt-get install golang-go)"
        );
        eprintln!("SKIPPED the go tool pprof check: `go` not found (apt-get install golang-go)");
    }
    found
}

/// Runs `go tool pprof ARGS` and returns its standard output; fails the test on a non-zero
/// exit. pprof's home (where it saves fetched profiles) is a scratch directory.
pub fn go_tool_pprof(go: &Path, args: &[&str]) -> String {
    let home = ScratchDir::create();
    // pprof gives a fetch 1.5 times the profile's seconds plus 5 s (8 s for a 2 s profile),
    // tight for a first symbolization on a loaded machine.
    let fetches = args.iter().any(|a| a.starts_with("http://"));
    let output = Command::new(go)
        .args(["tool", "pprof"])
        .args(fetches.then_some("-timeout=120"))
        .args(args)
        .env("HOME", home.path())
        .env("PPROF_TMPDIR", home.path())
        .env("GOCACHE", gocache())
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

/// The path of `go tool pprof`'s own binary, built first if this Go builds its tools on first
/// use. Tests that keep pprof running (its web UI) run it directly: `go tool pprof` runs it as
/// a child process that outlives a kill of `go`.
pub fn pprof_binary(go: &Path) -> PathBuf {
    let path = || {
        let output = Command::new(go)
            .args(["tool", "-n", "pprof"])
            .env("GOCACHE", gocache())
            .output()
            .expect("go runs");
        assert!(output.status.success(), "go tool -n pprof: {output:?}");
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    };
    let binary = path();
    if binary.is_file() {
        return binary;
    }
    // `-help` builds it and exits (with status 2: the outcome is the file).
    let _ = Command::new(go)
        .args(["tool", "pprof", "-help"])
        .env("GOCACHE", gocache())
        .output();
    let binary = path();
    assert!(
        binary.is_file(),
        "go tool pprof is not at {}",
        binary.display()
    );
    binary
}

/// Outside HOME, so that a Go that builds `pprof` on first use builds it once.
fn gocache() -> PathBuf {
    std::env::temp_dir().join("pprofd-test-gocache")
}

/// [`go_tool_pprof`] on a profile in memory: writes `profile` to a scratch file and runs
/// `go tool pprof ARGS FILE`.
pub fn go_tool_pprof_bytes(go: &Path, args: &[&str], profile: &[u8]) -> String {
    let dir = ScratchDir::create();
    let file = dir.write("profile.pb.gz", profile);
    let mut args = args.to_vec();
    args.push(file.to_str().unwrap());
    go_tool_pprof(go, &args)
}

/// A fresh directory under the system's temp directory, removed with its files when dropped.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn create() -> ScratchDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "pprofd-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        ScratchDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `bytes` to file `name` in the directory and returns the file's path.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
