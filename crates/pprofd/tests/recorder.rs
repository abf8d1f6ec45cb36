//! The flight recorder, end to end: `examples/record_workload.rs` runs with `PPROF_RECORD`
//! set, does two CPU phases of 6 s and leaks at a steady rate, and the test asks what
//! happened with `?past=N`, over HTTP and through `go tool pprof`.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use pprofd::profile::proto::Profile;
use support::{example_binary, go, go_tool_pprof, sample_index, Workload};

/// The workload's leak: 64 KiB every 100 ms.
const LEAK_BYTES_PER_SECOND: f64 = (64 << 10) as f64 * 10.0;

fn total(profile: &Profile, sample_type: &str) -> i64 {
    let index = sample_index(profile, sample_type);
    profile.sample.iter().map(|s| s.value[index]).sum()
}

/// The value of `sample_type` in samples whose stack holds a function ending in `suffix`.
fn at_site(profile: &Profile, sample_type: &str, suffix: &str) -> f64 {
    share_of_type(profile, sample_type, suffix) * total(profile, sample_type) as f64
}

fn share_of_type(profile: &Profile, sample_type: &str, suffix: &str) -> f64 {
    let index = sample_index(profile, sample_type);
    let mut with = 0i64;
    let mut all = 0i64;
    for sample in &profile.sample {
        let value = sample.value[index];
        all += value;
        if support::function_names(profile, sample)
            .iter()
            .any(|f| f.ends_with(suffix))
        {
            with += value;
        }
    }
    if all == 0 {
        0.0
    } else {
        with as f64 / all as f64
    }
}

fn comments(profile: &Profile) -> Vec<&str> {
    profile
        .comment
        .iter()
        .map(|&i| profile.string_table[i as usize].as_str())
        .collect()
}

fn recording_workload() -> Workload {
    Workload::start_with_env(
        "record_workload",
        &[],
        &[
            ("PPROF_ADDR", "127.0.0.1:0"),
            ("PPROF_RECORD", "1m"),
            // Every 64 KiB leak is sampled: the truth check is not at the mercy of sampling.
            ("PPROF_MEM_RATE", "4096"),
        ],
    )
}

#[test]
fn past_profiles_tell_what_already_happened_and_a_live_profile_runs_beside_the_recording() {
    let mut workload = recording_workload();
    let started = Instant::now();
    let addr = workload.addr();
    let index = workload.text("/debug/pprof/?debug=1");
    assert!(index.contains("Flight recorder: on, window 1m"), "{index}");

    // Recorded idle before the phases, so the last 14 s end up inside the recording.
    std::thread::sleep(Duration::from_secs(3));
    workload.send("phases");
    // A normal profile during the second phase, at its own rate, while the recorder records.
    let live = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(7));
        support::get(addr, "/debug/pprof/profile?seconds=4&hz=100").profile()
    });
    let done = workload.line();
    let truth: Vec<f64> = done
        .strip_prefix("phases done ")
        .unwrap_or_else(|| panic!("unexpected line {done:?}"))
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    let (alpha_truth, beta_truth) = (truth[0], truth[1]);

    let last3 = workload.profile("/debug/pprof/profile?past=3");
    let last14 = workload.profile("/debug/pprof/profile?past=14");
    let live = live.join().expect("the live profile");

    let (alpha3, beta3) = (
        share_of_type(&last3, "cpu", "phase_alpha"),
        share_of_type(&last3, "cpu", "phase_beta"),
    );
    println!("past=3: phase_alpha {alpha3:.3}, phase_beta {beta3:.3}");
    assert!(
        beta3 >= 0.85 && alpha3 <= 0.05,
        "the last 3 s hold only the second phase: alpha {alpha3:.3}, beta {beta3:.3}"
    );
    let (alpha14, beta14) = (
        at_site(&last14, "cpu", "phase_alpha"),
        at_site(&last14, "cpu", "phase_beta"),
    );
    println!(
        "past=14: phase_alpha {:.2} s (measured {:.2} s), phase_beta {:.2} s (measured {:.2} s)",
        alpha14 / 1e9,
        alpha_truth / 1e9,
        beta14 / 1e9,
        beta_truth / 1e9
    );
    let split = alpha14 / (alpha14 + beta14);
    assert!(
        (0.4..=0.6).contains(&split),
        "the last 14 s split the phases about evenly: alpha has {split:.3} of their CPU"
    );
    for (what, recorded, measured) in [
        ("phase_alpha", alpha14, alpha_truth),
        ("phase_beta", beta14, beta_truth),
    ] {
        let error = (recorded - measured).abs() / measured;
        assert!(
            error <= 0.15,
            "{what}: recorded {:.2} s of CPU, measured {:.2} s",
            recorded / 1e9,
            measured / 1e9
        );
    }
    assert!(
        (13_000_000_000..=14_500_000_000).contains(&last14.duration_nanos),
        "past=14 covers 14 s: {} ns",
        last14.duration_nanos
    );

    let live_cpu = total(&live, "cpu") as f64 / 1e9;
    let live_beta = share_of_type(&live, "cpu", "phase_beta");
    println!("live profile: {live_cpu:.2} s of CPU, phase_beta {live_beta:.3}");
    assert!(
        live_beta >= 0.85,
        "the live profile ran in the second phase: phase_beta {live_beta:.3}"
    );
    // Its 4 s lie inside the 6 s of phase_beta, whose thread's CPU time the workload measured
    // (less than 6 s on a busy machine: beside two busy loops it got 3.8 s, and the live
    // profile's correct 2.49 s failed a fixed floor of 2.8 s).
    let beta_in_window = beta_truth / 1e9 * 4.0 / 6.0;
    assert!(
        live_cpu >= 0.7 * beta_in_window,
        "the live profile holds its 4 s of samples: {live_cpu:.2} s of CPU, \
         where phase_beta's thread used {beta_in_window:.2} s in 4 s"
    );
    assert_eq!(
        live.period, 10_000_000,
        "the live profile keeps its own rate"
    );

    if let Some(go) = go() {
        let url = format!("http://{addr}/debug/pprof/profile?past=14");
        let top = go_tool_pprof(&go, &["-top", &url]);
        assert!(
            top.contains("phase_alpha") && top.contains("phase_beta"),
            "go tool pprof reads profile?past=14:\n{top}"
        );
    }

    // The leak: 30 s of recording, then its growth over the last 30 s.
    std::thread::sleep(Duration::from_secs(32).saturating_sub(started.elapsed()));
    let heap = workload.profile("/debug/pprof/heap?past=30");
    let seconds = heap.duration_nanos as f64 / 1e9;
    let grown = at_site(&heap, "inuse_space", "leak_site");
    let expected = LEAK_BYTES_PER_SECOND * seconds;
    println!(
        "heap?past=30 covers {seconds:.1} s: leak_site grew {:.2} MiB, the leak's rate says {:.2} MiB",
        grown / 1048576.0,
        expected / 1048576.0
    );
    assert!(
        (25.0..=35.0).contains(&seconds),
        "heap?past=30 covers about 30 s: {seconds:.1} s; {:?}",
        comments(&heap)
    );
    assert!(
        (grown - expected).abs() <= 0.2 * expected,
        "the leak's growth at its site is within 20% of the truth"
    );
    assert!(
        share_of_type(&heap, "inuse_space", "leak_site") >= 0.9,
        "the leak's site leads the growth"
    );
    assert!(
        comments(&heap)
            .iter()
            .any(|c| c.contains("flight recorder")),
        "{:?}",
        comments(&heap)
    );
    let allocs = workload.profile("/debug/pprof/allocs?past=30");
    let allocated = at_site(&allocs, "alloc_space", "leak_site");
    let expected = LEAK_BYTES_PER_SECOND * allocs.duration_nanos as f64 / 1e9;
    assert!(
        (allocated - expected).abs() <= 0.2 * expected,
        "allocs?past=30 at the leak's site: {allocated:.0} bytes, expected {expected:.0}"
    );

    let index = workload.text("/debug/pprof/?debug=1");
    println!("{}", index.lines().last().unwrap_or_default());
    assert!(index.contains("reaching back"), "{index}");
    workload.finish();
}

#[test]
fn past_without_recording_or_beyond_the_window_is_a_400_that_says_why() {
    let workload = Workload::start("record_workload", &[]);
    for path in [
        "/debug/pprof/profile?past=3",
        "/debug/pprof/heap?past=3",
        "/debug/pprof/allocs?past=3",
    ] {
        let response = workload.get(path);
        let text = response.text();
        assert_eq!(response.status, 400, "{path}: {text}");
        assert!(text.contains("PPROF_RECORD=10m"), "{path}: {text}");
    }
    let index = workload.text("/debug/pprof/?debug=1");
    assert!(index.contains("Flight recorder: off"), "{index}");
    drop(workload);

    let workload = recording_workload();
    for (path, says) in [
        (
            "/debug/pprof/profile?past=61",
            "longer than the flight recorder's window",
        ),
        (
            "/debug/pprof/heap?past=3600",
            "longer than the flight recorder's window",
        ),
        ("/debug/pprof/profile?past=3&seconds=3", "incompatible"),
        ("/debug/pprof/heap?past=3&debug=1", "incompatible"),
        ("/debug/pprof/profile?past=0", "past"),
        ("/debug/pprof/profile?past=abc", "past"),
    ] {
        let response = workload.get(path);
        let text = response.text();
        assert_eq!(response.status, 400, "{path}: {text}");
        assert!(text.contains(says), "{path}: {text}");
    }
    // A window of the whole recording answers at once, even right after the start.
    let asked = Instant::now();
    let profile = workload.profile("/debug/pprof/profile?past=60");
    assert!(asked.elapsed() < Duration::from_secs(5));
    assert!(comments(&profile)
        .iter()
        .any(|c| c.contains("reaches back only")));
    workload.finish();

    for (variable, value) in [("PPROF_RECORD", "10x"), ("PPROF_RECORD_HZ", "5000")] {
        let mut command = Command::new(example_binary("record_workload"));
        command
            .env("PPROF_ADDR", "127.0.0.1:0")
            .env("PPROF_RECORD", "1m")
            .env(variable, value);
        let output = command.output().expect("the workload runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(
            stderr.contains(&format!("{variable}=\"{value}\" is not understood")),
            "{stderr}"
        );
    }
}
