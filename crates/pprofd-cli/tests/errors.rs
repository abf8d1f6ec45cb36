//! Every CLI error is one line on stderr and exit status 1, never a panic.

mod common;

use std::io::Write;
use std::net::TcpListener;

use common::pprofd;

/// Asserts that `pprofd args` failed with status 1 and one line mentioning `expected`.
fn assert_one_line_error(args: &[&str], expected: &str) {
    let output = pprofd(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?} printed more than one line: {stderr}"
    );
    assert!(stderr.starts_with("pprofd: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(expected),
        "{args:?}: expected {expected:?} in {stderr}"
    );
}

fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn small_profile_gz() -> Vec<u8> {
    let mut builder = pprofd::profile::ProfileBuilder::new(
        &[("samples", "count")],
        ("cpu", "nanoseconds"),
        10_000_000,
    );
    builder.add_sample(
        vec![pprofd::profile::Frame::Synthetic("main".into())],
        vec![3],
        vec![],
    );
    pprofd::profile::encode_gzip(&builder.build(&pprofd::profile::NoSymbols))
}

#[test]
fn unreachable_url_is_one_line_and_exit_1() {
    let base = closed_port_url();
    assert_one_line_error(
        &["top", &format!("{base}/debug/pprof/heap")],
        "connection refused",
    );
    assert_one_line_error(&["collect", &base, "--seconds", "1"], "nothing collected");
}

#[test]
fn non_profile_file_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "these are meeting notes, not a profile\n").unwrap();
    let path = path.to_str().unwrap();
    assert_one_line_error(&["top", path], "profile");
    assert_one_line_error(&["flame", path, "-o", "/dev/null"], "profile");
    assert_one_line_error(&["top", "/nonexistent/cpu.pb.gz"], "No such file");
}

#[test]
fn truncated_gzip_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let whole = small_profile_gz();
    let path = dir.path().join("cut.pb.gz");
    std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
    let path = path.to_str().unwrap();
    assert_one_line_error(&["top", path], "truncated gzip");
    let good = dir.path().join("good.pb.gz");
    std::fs::write(&good, &whole).unwrap();
    assert_one_line_error(&["diff", good.to_str().unwrap(), path], "truncated gzip");
    // The intact file reads, so the failure above is the truncation.
    assert!(pprofd(&["top", good.to_str().unwrap()]).status.success());
}

#[test]
fn empty_archive_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.tar.gz");
    let file = std::fs::File::create(&path).unwrap();
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::default(),
    ));
    tar.finish().unwrap();
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
    assert_one_line_error(
        &["top", path.to_str().unwrap()],
        "archive holds no profiles",
    );

    let only_readme = dir.path().join("readme-only.tar.gz");
    let file = std::fs::File::create(&only_readme).unwrap();
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::default(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(5);
    header.set_cksum();
    tar.append_data(&mut header, "x/README.txt", &b"hello"[..])
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
    assert_one_line_error(
        &["flame", only_readme.to_str().unwrap()],
        "archive holds no profiles",
    );
}

#[test]
fn a_profile_that_would_exhaust_memory_is_one_line_and_exit_1() {
    // 64 MiB of empty samples, gzipped to about 64 KiB: decoding them would take 2.4 GB.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.pb.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::default(),
    );
    gz.write_all(&[0x12u8, 0x00].repeat(32 << 20)).unwrap();
    gz.finish().unwrap();
    assert_one_line_error(
        &["top", path.to_str().unwrap()],
        "bytes of memory once decoded",
    );
}

/// An application port (every path a 404) is named once as not serving `/debug/pprof/`,
/// instead of one empty `HTTP 404` per endpoint; a scheme other than http is refused by name.
#[test]
fn an_address_that_does_not_serve_pprof_is_named_once() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut request);
            let _ = stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    assert_one_line_error(
        &["collect", &base, "--seconds", "1"],
        "does not serve /debug/pprof/",
    );
    assert_one_line_error(
        &["collect", "ftp://127.0.0.1:1", "--seconds", "1"],
        "ftp:// is not a scheme",
    );
}
