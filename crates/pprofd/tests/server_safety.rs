//! The server never harms the host (issue 10): slow clients and long profiles cannot starve
//! the quick endpoints, and a failed start leaves nothing running.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

mod support;

/// How long a quick endpoint may take while the server is under attack.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// A request whose answer takes `seconds` by design (holds a long-running permit).
fn long_request(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    stream
}

/// GETs `path`, failing (instead of hanging) if no answer comes within [`ANSWER_WITHIN`];
/// returns the status, the response text and how long it took.
fn timed_get(addr: SocketAddr, path: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw) {
        panic!(
            "{path}: no answer within {ANSWER_WITHIN:?} ({e}); got {:?}",
            String::from_utf8_lossy(&raw)
        );
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{path}: not an HTTP response: {text:?}"));
    (status, text, started.elapsed())
}

/// Clients that announce a 1 MB `/symbol` body and send one byte a second until dropped.
struct Tricklers {
    streams: Arc<Vec<TcpStream>>,
    stop: Arc<AtomicBool>,
}

impl Tricklers {
    fn start(addr: SocketAddr, count: usize) -> Tricklers {
        let streams: Vec<TcpStream> = (0..count)
            .map(|_| {
                let mut stream = TcpStream::connect(addr).unwrap();
                write!(
                    stream,
                    "POST /debug/pprof/symbol HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1000000\r\n\r\n0"
                )
                .unwrap();
                stream
            })
            .collect();
        let streams = Arc::new(streams);
        let stop = Arc::new(AtomicBool::new(false));
        let (trickled, stopped) = (streams.clone(), stop.clone());
        thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                for mut stream in trickled.iter() {
                    // A closed connection is what the server should do; keep trickling the rest.
                    let _ = stream.write_all(b"+");
                }
                thread::sleep(Duration::from_secs(1));
            }
        });
        Tricklers { streams, stop }
    }
}

impl Drop for Tricklers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn trickling_clients_and_long_profiles_do_not_starve_the_index() {
    let server = pprofd::Server::start(pprofd::Config::new("127.0.0.1:0")).unwrap();
    let addr = server.local_addr();
    let _long: Vec<TcpStream> = (0..pprofd::server::MAX_LONG_RUNNING)
        .map(|_| long_request(addr, "/debug/pprof/goroutine?seconds=60"))
        .collect();
    let tricklers = Tricklers::start(addr, 130);

    let (status, text, took) = timed_get(addr, "/debug/pprof/");
    assert_eq!(status, 200, "{text}");
    assert!(took < ANSWER_WITHIN, "index took {took:?}");
    let (status, text, took) = timed_get(addr, "/debug/pprof/goroutine?debug=1");
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("goroutine profile:"), "{text}");
    assert!(took < ANSWER_WITHIN, "goroutine dump took {took:?}");

    // The first trickler was told its request was too slow (or just disconnected).
    let mut first = &tricklers.streams[0];
    first.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    let mut answer = Vec::new();
    match first.read_to_end(&mut answer) {
        Ok(_) => {
            let answer = String::from_utf8_lossy(&answer);
            assert!(
                answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
                "{answer}"
            );
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

#[test]
fn long_profiles_past_the_cap_get_a_503_saying_why() {
    let server = pprofd::Server::start(pprofd::Config::new("127.0.0.1:0")).unwrap();
    let addr = server.local_addr();
    let _long: Vec<TcpStream> = (0..pprofd::server::MAX_LONG_RUNNING)
        .map(|_| long_request(addr, "/debug/pprof/goroutine?seconds=60"))
        .collect();
    // The long requests are accepted in turn; once all run, one more is refused at once.
    let deadline = Instant::now() + ANSWER_WITHIN;
    let refused = loop {
        assert!(
            Instant::now() < deadline,
            "no 503 while {} long requests run",
            pprofd::server::MAX_LONG_RUNNING
        );
        let response = support::get(addr, "/debug/pprof/threadcreate?seconds=1");
        if response.status == 503 {
            break response;
        }
        assert_eq!(response.status, 200, "{}", response.text());
    };
    assert_eq!(refused.header("X-Go-Pprof"), Some("1"));
    assert!(refused
        .header("Content-Type")
        .is_some_and(|t| t.starts_with("text/plain")));
    let message = refused.text();
    assert!(
        message.contains(&format!(
            "{} long-running",
            pprofd::server::MAX_LONG_RUNNING
        )) && message.contains("retry"),
        "{message}"
    );
    let (status, text, took) = timed_get(addr, "/debug/pprof/");
    assert_eq!(status, 200, "{text}");
    assert!(took < ANSWER_WITHIN, "index took {took:?}");
}

#[test]
fn config_debug_does_not_print_the_token() {
    let config = pprofd::Config::new("127.0.0.1:0").token(Some("s3cret-token".into()));
    let printed = format!("{config:?}");
    assert!(!printed.contains("s3cret-token"), "{printed}");
    assert!(printed.contains("<redacted>"), "{printed}");
}

/// `examples/startup_host.rs` after its failed `init_from_env()`.
struct Host {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Host {
    fn start(env: &[(&str, &str)]) -> Host {
        let mut child = Command::new(support::example_binary("startup_host"))
            .env_remove("PPROF_ADDR")
            .env_remove("PPROF_TOKEN")
            .env_remove("PPROF_BLOCK_RATE")
            .env_remove("PPROF_MEM_RATE")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Host {
            child,
            stdin,
            lines,
        }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(ANSWER_WITHIN)
            .expect("the host prints its line in time")
    }

    /// The failure line: `(same threads, heap sample rate, allocations sampled, error)`.
    fn failed(&self) -> (bool, u64, u64, String) {
        let line = self.line();
        let mut words = line.splitn(5, ' ');
        assert_eq!(words.next(), Some("failed"), "{line}");
        let mut next = || {
            words
                .next()
                .unwrap_or_else(|| panic!("short line {line:?}"))
        };
        (
            next().parse().unwrap(),
            next().parse().unwrap(),
            next().parse().unwrap(),
            next().to_string(),
        )
    }

    /// Starts a valid server: `(allocations sampled, threadcreate lists the thread made
    /// after the failure, threadcreate lists the thread made after the valid start)`.
    fn start_valid_server(&mut self) -> (u64, bool, bool) {
        writeln!(self.stdin, "start").unwrap();
        let line = self.line();
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(words.len(), 4, "{line}");
        assert_eq!(words[0], "started", "{line}");
        (
            words[1].parse().unwrap(),
            words[2].parse().unwrap(),
            words[3].parse().unwrap(),
        )
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks what a failed start left: nothing, until a valid start turns sampling and
/// creation recording on (which shows the checks can see them). `while_failed` runs once the
/// failure is reported, before the valid start.
fn assert_nothing_was_left_on(host: &mut Host, error_names: &str, while_failed: impl FnOnce()) {
    let (same_threads, rate, sampled, error) = host.failed();
    while_failed();
    assert!(error.contains(error_names), "{error}");
    assert!(same_threads, "the failed start left a thread running");
    assert_eq!(rate, 0, "heap sampling is on after a failed start");
    assert_eq!(sampled, 0, "allocations were sampled after a failed start");
    let (sampled, failed_listed, valid_listed) = host.start_valid_server();
    assert!(sampled > 0, "a valid start samples the heap");
    assert!(valid_listed, "a valid start records thread creation");
    assert!(
        !failed_listed,
        "thread creation was recorded after a failed start"
    );
}

#[test]
fn a_bad_block_rate_leaves_nothing_running() {
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut host = Host::start(&[("PPROF_ADDR", &addr), ("PPROF_BLOCK_RATE", "fast")]);
    assert_nothing_was_left_on(&mut host, "PPROF_BLOCK_RATE", || {
        assert!(
            TcpStream::connect(&addr).is_err(),
            "{addr} still listens after the failed start"
        );
    });
}

#[test]
fn an_address_in_use_leaves_nothing_running() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut host = Host::start(&[("PPROF_ADDR", &addr)]);
    assert_nothing_was_left_on(&mut host, "cannot listen", || ());
}
