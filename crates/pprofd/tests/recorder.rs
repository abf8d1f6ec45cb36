//! The flight recorder, end to end: `examples/record_workload.rs` runs with `PPROF_RECORD`
//! set, does two CPU phases of 6 s and leaks at a steady rate, and the test asks what
//! happened with `?past=N`, over HTTP and through `go tool pprof`.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use pprofd::profile::proto::Profile;
use support::{example_binary, go, go_tool_pprof_bytes, sample_index, Workload};

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

    // 8 s of idle recorded before the phases: past=20, asked as they end, lies inside the
    // recording.
    std::thread::sleep(Duration::from_secs(8));
    // A normal profile at its own rate, while the recorder records. It starts 6 s before
    // phase_beta and ends 8 s after it, so it holds all of phase_beta's CPU time, which the
    // workload measures, however much CPU a busy machine leaves the phase.
    let live = std::thread::spawn(move || {
        support::get(addr, "/debug/pprof/profile?seconds=20&hz=100").profile()
    });
    workload.send("phases");
    assert_eq!(workload.line(), "phase_beta");
    // 4 s into phase_beta, the last 3 s (whole seconds: 2 to 3 s) hold none of phase_alpha,
    // with a second to spare for samples handed to the recorder late.
    std::thread::sleep(Duration::from_secs(4));
    let last3 = workload.profile("/debug/pprof/profile?past=3");
    let done = workload.line();
    // Asked as the phases end, past=20 holds both unless it is answered 7 s late.
    let last20 = workload.get("/debug/pprof/profile?past=20");
    let truth: Vec<f64> = done
        .strip_prefix("phases done ")
        .unwrap_or_else(|| panic!("unexpected line {done:?}"))
        .split(' ')
        .map(|n| n.parse().unwrap())
        .collect();
    let (alpha_truth, beta_truth) = (truth[0], truth[1]);
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
    let past20 = last20.profile();
    let (alpha20, beta20) = (
        at_site(&past20, "cpu", "phase_alpha"),
        at_site(&past20, "cpu", "phase_beta"),
    );
    let live_beta = at_site(&live, "cpu", "phase_beta");
    println!(
        "past=20: phase_alpha {:.2} s (measured {:.2} s), phase_beta {:.2} s (measured {:.2} s); \
         live profile: phase_beta {:.2} s",
        alpha20 / 1e9,
        alpha_truth / 1e9,
        beta20 / 1e9,
        beta_truth / 1e9,
        live_beta / 1e9
    );
    for (what, recorded, measured) in [
        ("past=20: phase_alpha", alpha20, alpha_truth),
        ("past=20: phase_beta", beta20, beta_truth),
        ("the live profile: phase_beta", live_beta, beta_truth),
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
        (19_000_000_000..=20_500_000_000).contains(&past20.duration_nanos),
        "past=20 covers 20 s: {} ns",
        past20.duration_nanos
    );
    assert_eq!(
        live.period, 10_000_000,
        "the live profile keeps its own rate"
    );

    if let Some(go) = go() {
        // The answer already read: asked again now, the window would have moved on.
        let top = go_tool_pprof_bytes(&go, &["-top"], &last20.body);
        assert!(
            top.contains("phase_alpha") && top.contains("phase_beta"),
            "go tool pprof reads profile?past=20:\n{top}"
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
    // Well under the 60 s a sampling window would take, however loaded the machine.
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "past=60 took {:?}",
        asked.elapsed()
    );
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
