//! The CPU profile as a user sees it: the right functions on top, whole stacks, Go's HTTP
//! behaviour, and `go tool pprof` reading what we serve.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use pprofd::profile::proto::Profile;
use support::{assert_seventy_thirty, function_names, get, request, Workload};

#[test]
fn hot_functions_get_their_share_and_stacks_reach_the_thread_entry() {
    let workload = Workload::start("cpu_workload", &[]);
    let profile = profile_with_samples(workload.addr(), 200);
    let samples: i64 = profile.sample.iter().map(|s| s.value[0]).sum();
    assert_seventy_thirty(&profile, "hot_seventy", "hot_thirty", 0.05);

    // Stacks are whole: the outermost frame is the thread's entry, not a cut-off frame.
    let entries = [
        "clone3",
        "clone",
        "start_thread",
        "_start",
        "__libc_start_main",
        "main",
    ];
    let rooted: i64 = profile
        .sample
        .iter()
        .filter(|s| {
            function_names(&profile, s)
                .last()
                .is_some_and(|root| entries.contains(&root.as_str()))
        })
        .map(|s| s.value[0])
        .sum();
    assert!(
        rooted as f64 > 0.95 * samples as f64,
        "only {rooted} of {samples} samples reach a thread entry"
    );

    // Go's sample types and labels.
    let s = |i: i64| profile.string_table[i as usize].as_str();
    let types: Vec<(&str, &str)> = profile
        .sample_type
        .iter()
        .map(|t| (s(t.r#type), s(t.unit)))
        .collect();
    assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
    assert_eq!(profile.period, 10_000_000);
    let threads: std::collections::HashSet<&str> = profile
        .sample
        .iter()
        .flat_map(|sample| {
            sample
                .label
                .iter()
                .filter(|l| s(l.key) == "thread")
                .map(|l| s(l.str))
        })
        .collect();
    assert!(
        threads.contains("worker-1") && threads.contains("worker-2"),
        "{threads:?}"
    );
    assert!(
        !threads.iter().any(|t| t.starts_with("pprofd")),
        "pprofd's own threads are not sampled: {threads:?}"
    );

    // Mappings carry the executable, its build ID and what is symbolized.
    let main = &profile.mapping[0];
    assert!(s(main.filename).ends_with("cpu_workload"));
    assert_eq!(s(main.build_id).len(), 40);
    assert!(
        main.has_functions && main.has_filenames && main.has_line_numbers && main.has_inline_frames
    );
    drop(workload);
}

#[test]
fn go_status_codes_and_headers() {
    let workload = Workload::start("cpu_workload", &[]);
    let addr = workload.addr();
    for bad in [
        "seconds=abc",
        "seconds=0",
        "seconds=-1",
        "seconds=601",
        "hz=0",
        "hz=1001",
        "hz=x",
    ] {
        let response = get(addr, &format!("/debug/pprof/profile?{bad}"));
        assert_eq!(response.status, 400, "{bad}: {}", response.text());
        assert_eq!(response.header("X-Go-Pprof"), Some("1"));
        assert!(
            response.text().contains(bad.split('=').next().unwrap()),
            "{bad}: message names the parameter"
        );
    }
    let response = request(addr, "POST", "/debug/pprof/profile", b"");
    assert_eq!(
        (response.status, response.header("Allow")),
        (405, Some("GET"))
    );
    assert_eq!(request(addr, "PUT", "/debug/pprof/symbol", b"").status, 405);
    let unknown = get(addr, "/debug/pprof/nonesuch");
    assert_eq!(
        (unknown.status, unknown.text().trim()),
        (404, "Unknown profile")
    );
    let trace = get(addr, "/debug/pprof/trace");
    assert_eq!(trace.status, 501);
    assert!(trace.text().contains("/debug/pprof/profile"));

    let index = get(addr, "/debug/pprof/");
    assert_eq!(index.status, 200);
    assert!(index
        .header("Content-Type")
        .unwrap()
        .starts_with("text/html"));
    assert!(index
        .text()
        .contains("<a href='profile?debug=1'>profile</a>"));
    let plain = get(addr, "/debug/pprof/?debug=1");
    assert!(plain
        .header("Content-Type")
        .unwrap()
        .starts_with("text/plain"));
    assert!(plain.text().contains("/debug/pprof/profile"));

    let cmdline = get(addr, "/debug/pprof/cmdline");
    assert!(
        cmdline.text().ends_with("cpu_workload"),
        "argv[0] only: {:?}",
        cmdline.text()
    );

    let ok = get(addr, "/debug/pprof/profile?seconds=1");
    assert_eq!(ok.header("Content-Type"), Some("application/octet-stream"));
    assert_eq!(
        ok.header("Content-Disposition"),
        Some("attachment; filename=\"profile\"")
    );
    assert_eq!(&ok.body[..2], &[0x1f, 0x8b], "gzipped");
    let profile = ok.profile();

    // symbolz: the addresses of our locations come back with their function names.
    let hot = profile
        .location
        .iter()
        .find(|l| {
            l.line.iter().any(|line| {
                let f = &profile.function[line.function_id as usize - 1];
                profile.string_table[f.name as usize].ends_with("hot_seventy")
            })
        })
        .expect("hot_seventy sampled");
    assert_eq!(get(addr, "/debug/pprof/symbol").text(), "num_symbols: 1\n");
    let body = format!("{:#x}+junk+0x0+{:#x}", hot.address, hot.address);
    let answer = request(addr, "POST", "/debug/pprof/symbol", body.as_bytes()).text();
    let expected = format!("{:#x} cpu_workload::hot_seventy", hot.address);
    assert!(answer.starts_with("num_symbols: 1\n"), "{answer}");
    assert_eq!(answer.matches(&expected).count(), 2, "{answer}");
    let too_big = request(
        addr,
        "POST",
        "/debug/pprof/symbol",
        &vec![b'1'; (1 << 20) + 1],
    );
    assert_eq!(too_big.status, 413);
}

#[test]
fn a_second_cpu_profile_is_refused_without_disturbing_the_first() {
    let workload = Workload::start("cpu_workload", &[]);
    let addr = workload.addr();
    let first = std::thread::spawn(move || get(addr, "/debug/pprof/profile?seconds=3"));
    wait_for_cpu_collector(workload.pid(), true);
    let second = get(addr, "/debug/pprof/profile?seconds=1");
    assert_eq!(second.status, 500);
    assert_eq!(
        second.text().trim(),
        "Could not enable CPU profiling: cpu profiling already in use"
    );
    let first = first.join().unwrap().profile();
    // Kept sampling after the refusal, which came as soon as its collector ran: stopped
    // there, it would hold a sample or two.
    let samples: i64 = first.sample.iter().map(|s| s.value[0]).sum();
    assert!(
        samples > 10,
        "the first profile kept sampling: {samples} samples"
    );
}

#[test]
fn a_client_that_disconnects_frees_the_profiler() {
    let workload = Workload::start("cpu_workload", &[]);
    let addr = workload.addr();
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /debug/pprof/profile?seconds=60 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    wait_for_cpu_collector(workload.pid(), true);
    drop(stream);
    let started = Instant::now();
    loop {
        let response = get(addr, "/debug/pprof/profile?seconds=1");
        if response.status == 200 {
            response.profile();
            break;
        }
        // Generous: noticing the closed connection takes a scheduling round on a loaded
        // machine; a profiler that waits the 60 s window out fails.
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "profiler still busy after the client left"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn go_tool_pprof_reads_the_profile_over_http() {
    let Some(go) = support::go() else { return };
    let workload = Workload::start("cpu_workload", &[]);
    let url = format!("http://{}/debug/pprof/profile?seconds=2", workload.addr());
    let top = support::go_tool_pprof(&go, &["-top", &url]);
    assert!(top.contains("Type: cpu"), "{top}");
    assert!(top.contains("Build ID: "), "{top}");
    assert!(!top.contains("Main binary filename not available"), "{top}");
    let cum = support::go_tool_pprof(&go, &["-top", "-cum", &url]);
    let line = |name: &str| {
        cum.lines()
            .find(|l| l.trim_end().ends_with(name))
            .map(str::to_owned)
    };
    assert!(line("cpu_workload::hot_seventy").is_some(), "{cum}");
    assert!(line("cpu_workload::hot_thirty").is_some(), "{cum}");

    let raw = support::go_tool_pprof(&go, &["-raw", &url]);
    assert!(raw.contains("cpu_workload::hot_seventy"), "{raw}");
    assert!(
        raw.contains("examples/cpu_workload.rs:"),
        "file:line present: {raw}"
    );
    let mappings = raw.split("Mappings").nth(1).expect("mappings section");
    assert!(mappings.contains("cpu_workload"), "{mappings}");
    assert!(mappings.contains("libc.so"), "{mappings}");
}

#[test]
fn unset_pprof_addr_starts_nothing() {
    let workload = Workload::start_with_env("cpu_workload", &[], &[]);
    let pid = workload.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap()
    };
    assert_eq!(field("Threads:"), "3", "main and the two workers only");
    let caught = u64::from_str_radix(&field("SigCgt:"), 16).unwrap();
    assert_eq!(caught & (1 << (libc::SIGPROF - 1)), 0, "no SIGPROF handler");
    let timer_signal = pprofd::cpu::timer_signal();
    assert_eq!(
        caught & (1 << (timer_signal - 1)),
        0,
        "no timer signal handler"
    );
    let sockets = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count();
    assert_eq!(sockets, 0, "no socket");
    workload.finish();
}

#[test]
fn a_library_loaded_during_the_profile_is_unwound() {
    let workload = Workload::start("cpu_workload", &["--late-zlib"]);
    // The profile starts before zlib is loaded (the workload loads it after one second).
    let profile = get(workload.addr(), "/debug/pprof/profile?seconds=4").profile();
    let in_zlib: Vec<Vec<String>> = profile
        .sample
        .iter()
        .map(|s| function_names(&profile, s))
        .filter(|stack| stack.iter().any(|f| f.contains("late_zlib")))
        .collect();
    assert!(
        in_zlib.len() > 5,
        "zlib-worker sampled: {} stacks",
        in_zlib.len()
    );
    let through_zlib = in_zlib
        .iter()
        .filter(|stack| {
            stack
                .iter()
                .any(|f| f.contains("deflate") || f == "compress" || f == "compress2")
        })
        .count();
    assert!(
        through_zlib * 2 > in_zlib.len(),
        "most zlib-worker stacks pass through zlib's functions and still reach late_zlib: {through_zlib} of {}",
        in_zlib.len()
    );
}

/// A CPU profile of the busy workload at `addr` with at least `min_samples` samples, which
/// the share checks need to tell 70/30 from 50/50: a 4 s profile (up to 800 samples on a
/// quiet machine), then, where a loaded machine gave the workers less CPU, one long enough at
/// the rate the first one got (at most 60 s). The load decides how long that takes, not the
/// verdict.
fn profile_with_samples(addr: std::net::SocketAddr, min_samples: i64) -> Profile {
    let mut seconds = 4;
    loop {
        let profile = get(addr, &format!("/debug/pprof/profile?seconds={seconds}")).profile();
        let samples: i64 = profile.sample.iter().map(|s| s.value[0]).sum();
        if samples >= min_samples {
            return profile;
        }
        assert!(
            seconds < 60,
            "two busy threads got {samples} samples in {seconds} s"
        );
        let rate = samples.max(1) as f64 / seconds as f64;
        seconds = ((1.5 * min_samples as f64 / rate).ceil() as u64).clamp(seconds + 1, 60);
    }
}

/// CPU time used so far by the threads of process `pid` that are not pprofd's own, from
/// each thread's `schedstat` (nanoseconds; `stat`'s 10 ms ticks would add a few percent of
/// rounding to a loaded run's second or two of CPU).
fn host_threads_cpu(pid: u32) -> Duration {
    let mut nanos = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let (Ok(comm), Ok(schedstat)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("schedstat")),
        ) else {
            continue; // the thread exited meanwhile
        };
        if comm.starts_with("pprofd-") {
            continue;
        }
        // The first field is the time the thread has run on a CPU.
        nanos += schedstat
            .split(' ')
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap();
    }
    Duration::from_nanos(nanos)
}

#[test]
fn above_the_kernel_tick_rate_cpu_time_still_adds_up() {
    // The kernel checks CPU-time timers once per tick (commonly 250 Hz), so at 1000 Hz it
    // delivers about one signal per four periods; the profile's cpu values must still add
    // up to the CPU time the workers used while it sampled. That window is the life of the
    // collector thread: the CPU used before it (the request) and after it (symbolization,
    // long on a loaded machine) is not the profile's to account for.
    let workload = Workload::start("cpu_workload", &[]);
    let (addr, pid) = (workload.addr(), workload.pid());
    let request =
        std::thread::spawn(move || get(addr, "/debug/pprof/profile?seconds=3&hz=1000").profile());
    wait_for_cpu_collector(pid, true);
    let before = host_threads_cpu(pid);
    wait_for_cpu_collector(pid, false);
    let used = host_threads_cpu(pid) - before;
    let profile = request.join().unwrap();
    let cpu_ns: i64 = profile.sample.iter().map(|s| s.value[1]).sum();
    let samples: i64 = profile.sample.iter().map(|s| s.value[0]).sum();
    let profiled = Duration::from_nanos(cpu_ns as u64);
    let ratio = profiled.as_secs_f64() / used.as_secs_f64();
    assert!(
        (0.85..=1.05).contains(&ratio),
        "the profile accounts for {profiled:?} of CPU in {samples} samples; the threads used {used:?} while it sampled"
    );
}

/// Waits until the CPU profile's collector thread (`pprofd-cpu`) runs in process `pid`
/// (`running`: the profile has started) or has ended (the profile has stopped sampling).
fn wait_for_cpu_collector(pid: u32, running: bool) {
    let started = Instant::now();
    loop {
        if support::has_thread(pid, "pprofd-cpu") == running {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the CPU profile did not {}",
            if running { "start" } else { "stop" }
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}
