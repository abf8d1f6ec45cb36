//! `--token` / `PPROF_TOKEN` against a demo router whose pprof server requires a token: with
//! it every fetching command works, without it the error says how to pass one, and the token
//! shows up nowhere (output, `--help`, the archive).

mod common;

use std::io::Read;
use std::process::Output;

use common::{pprofd_with_token_env, RouterProcess};

/// A token no profile, path or message would contain by chance.
const TOKEN: &str = "tok-7Qx9vR2mZk4Lw8Pj";

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Asserts that the command succeeded and did not print the token.
fn assert_ok_without_echo(output: &Output, what: &str) {
    let all = text(output);
    assert!(output.status.success(), "{what} failed: {all}");
    assert!(!all.contains(TOKEN), "{what} printed the token: {all}");
}

/// Every file of the `.tar.gz` at `path`, decompressed, by path.
fn archive_members(path: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(path).unwrap(),
    ));
    let mut members = Vec::new();
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        members.push((name, data));
    }
    members
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn with_the_token_collect_top_flame_and_diff_work_and_the_archive_does_not_hold_it() {
    let router = RouterProcess::start_with_token(&[], Some(TOKEN));
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("support.tar.gz");

    // The token from the environment, as the server gets it.
    let collect = pprofd_with_token_env(
        &[
            "collect",
            &router.pprof,
            "--seconds",
            "1",
            "-o",
            archive.to_str().unwrap(),
        ],
        Some(TOKEN),
    );
    assert_ok_without_echo(&collect, "collect");
    let raw = std::fs::read(&archive).unwrap();
    assert!(
        !contains(&raw, TOKEN),
        "the compressed archive holds the token"
    );
    let members = archive_members(&archive);
    let (_, manifest) = members
        .iter()
        .find(|(n, _)| n.ends_with("/manifest.json"))
        .unwrap_or_else(|| {
            panic!(
                "no manifest in {:?}",
                members.iter().map(|(n, _)| n).collect::<Vec<_>>()
            )
        });
    let manifest: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    // An endpoint may fail for its own reasons on a busy machine, never for want of the token.
    for failure in manifest["failed"].as_array().unwrap() {
        assert!(
            !failure["error"].as_str().unwrap().contains("401"),
            "{failure}"
        );
    }
    assert!(
        members.iter().any(|(n, _)| n.ends_with("/heap.pb.gz")),
        "no heap profile collected with the token: {manifest}"
    );
    for (name, data) in &members {
        assert!(!contains(data, TOKEN), "{name} holds the token");
        // The profiles are gzipped inside the archive: look inside them too.
        if name.ends_with(".pb.gz") {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&data[..])
                .read_to_end(&mut plain)
                .unwrap();
            assert!(!contains(&plain, TOKEN), "{name} holds the token");
        }
    }

    // The token as an option, with nothing in the environment.
    let heap = format!("{}/debug/pprof/heap", router.pprof);
    let top = pprofd_with_token_env(&["top", &heap, "--token", TOKEN], None);
    assert_ok_without_echo(&top, "top --token");
    assert!(text(&top).contains("Type: inuse_space"), "{}", text(&top));

    let goroutine = format!("{}/debug/pprof/goroutine", router.pprof);
    let svg = dir.path().join("threads.svg");
    let flame = pprofd_with_token_env(
        &["flame", &goroutine, "-o", svg.to_str().unwrap()],
        Some(TOKEN),
    );
    assert_ok_without_echo(&flame, "flame");
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));

    let diff = pprofd_with_token_env(&["diff", &goroutine, &goroutine, "--token", TOKEN], None);
    assert_ok_without_echo(&diff, "diff");
}

/// Asserts a one-line failure with exit status 1 that names `expected` and not the token.
fn assert_token_error(output: &Output, expected: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for part in expected {
        assert!(stderr.contains(part), "expected {part:?} in: {stderr}");
    }
}

#[test]
fn without_the_right_token_the_error_says_how_to_pass_one() {
    let router = RouterProcess::start_with_token(&[], Some(TOKEN));
    let dir = tempfile::tempdir().unwrap();
    let heap = format!("{}/debug/pprof/heap", router.pprof);
    let missing = [
        "/debug/pprof/heap: HTTP 401 Unauthorized",
        "the server requires a token",
        "--token",
        "PPROF_TOKEN",
    ];
    assert_token_error(&pprofd_with_token_env(&["top", &heap], None), &missing);

    let archive = dir.path().join("never.tar.gz");
    let collect = pprofd_with_token_env(
        &[
            "collect",
            &router.pprof,
            "--seconds",
            "1",
            "-o",
            archive.to_str().unwrap(),
        ],
        None,
    );
    assert_token_error(
        &collect,
        &[
            "nothing collected",
            "401 Unauthorized",
            "the server requires a token",
        ],
    );
    assert!(!archive.exists(), "collect wrote an archive without access");

    // A wrong token is refused, and the message does not repeat it.
    let wrong = "wrong-Hn3Ld8Ke";
    let refused = pprofd_with_token_env(&["top", &heap, "--token", wrong], None);
    assert_token_error(&refused, &["401 Unauthorized", "refused the token"]);
    assert!(!text(&refused).contains(wrong), "{}", text(&refused));
}

#[test]
fn help_names_the_variable_but_never_its_value() {
    for command in ["collect", "top", "flame", "diff", "demo"] {
        let help = pprofd_with_token_env(&[command, "--help"], Some(TOKEN));
        let all = text(&help);
        assert!(help.status.success(), "{command} --help: {all}");
        assert!(all.contains("--token <TOKEN>"), "{command} --help: {all}");
        assert!(all.contains("PPROF_TOKEN"), "{command} --help: {all}");
        assert!(
            !all.contains(TOKEN),
            "{command} --help shows the token: {all}"
        );
    }
}

#[test]
fn a_token_that_cannot_be_a_header_is_refused_without_echoing_it() {
    let output = pprofd_with_token_env(
        &["top", "http://127.0.0.1:9/debug/pprof/heap"],
        Some("line1-Zq8\nline2"),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot be sent in an HTTP header"),
        "{stderr}"
    );
    assert!(!stderr.contains("line1-Zq8"), "{stderr}");
}
