//! Labels tell the truth: each operation's share of CPU and of allocated bytes in the
//! profiles matches what the workload measured (`examples/label_workload.rs`), for
//! `Labels::instrument` and `TracingLabels` on a two-worker tokio runtime with tasks migrating
//! between workers, and for `Labels::scope` on plain threads; labels do not leak to other
//! work; dumps and waits show the labels of their thread.

mod support;

use std::collections::HashMap;

use pprofd::profile::proto::Profile;
use support::Workload;
use support::{function_names, label, sample_index};

const SECONDS: u64 = 6;

/// The workloads of these tests take both cores; one at a time keeps each one's samples
/// plentiful (the shares' statistical error is under 2 points at 500 Hz over 6 s).
static ONE_WORKLOAD_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_WORKLOAD_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Alpha's and Beta's true CPU nanoseconds and bytes while `take` ran.
fn truth_during(
    workload: &mut Workload,
    take: impl FnOnce(&Workload),
) -> HashMap<String, (f64, f64)> {
    workload.send("reset");
    assert_eq!(workload.line(), "reset");
    take(workload);
    workload.send("report");
    let mut truth = HashMap::new();
    loop {
        let line = workload.line();
        if line == "end" {
            return truth;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[0], "truth", "{line}");
        let (cpu, bytes) = (fields[2].parse().unwrap(), fields[3].parse().unwrap());
        truth.insert(fields[1].to_string(), (cpu, bytes));
    }
}

/// Of the samples through `function`, the sum of `value` by their `operation` label (`-` for
/// none).
fn by_operation(profile: &Profile, function: &str, value: usize) -> HashMap<String, i64> {
    let mut totals = HashMap::new();
    for sample in &profile.sample {
        if !function_names(profile, sample)
            .iter()
            .any(|f| f.ends_with(function))
        {
            continue;
        }
        let operation = label(profile, sample, "operation").unwrap_or("-");
        *totals.entry(operation.to_string()).or_insert(0) += sample.value[value];
    }
    totals
}

/// Checks one profile: the work of each operation carries its label (at least 95% of its
/// samples), Alpha's share of the labelled work is within 5 points of the truth (or, for CPU,
/// four standard errors of its samples), and the unlabelled work carries no operation.
fn check_shares(profile: &Profile, value: usize, truth_alpha_share: f64, what: &str) {
    let alpha = by_operation(profile, "alpha_work", value);
    let beta = by_operation(profile, "beta_work", value);
    let unlabelled = by_operation(profile, "unlabelled_work", value);
    println!("{what}: alpha_work {alpha:?}, beta_work {beta:?}, unlabelled_work {unlabelled:?}");
    let total = |m: &HashMap<String, i64>| m.values().sum::<i64>() as f64;
    let labelled_right = alpha.get("Alpha").copied().unwrap_or(0) as f64
        + beta.get("Beta").copied().unwrap_or(0) as f64;
    let work = total(&alpha) + total(&beta);
    assert!(work > 0.0, "{what}: no samples in the work");
    assert!(
        labelled_right / work >= 0.95,
        "{what}: only {:.1}% of the work's samples carry their operation",
        100.0 * labelled_right / work
    );
    let alpha_share = alpha.get("Alpha").copied().unwrap_or(0) as f64 / labelled_right;
    // CPU shares are binomial in the samples the work got: beside other busy processes that
    // is a few hundred, and a correct profile then misses by more than 5 points one run in
    // ten. So 5 points, or four standard errors of that many samples when that is more.
    let tolerance = match profile
        .sample_type
        .iter()
        .position(|t| profile.string_table[t.r#type as usize] == "samples")
    {
        Some(count) => {
            let samples = (by_operation(profile, "alpha_work", count)
                .values()
                .sum::<i64>()
                + by_operation(profile, "beta_work", count)
                    .values()
                    .sum::<i64>()) as f64;
            let p = truth_alpha_share;
            0.05f64.max(4.0 * (p * (1.0 - p) / samples).sqrt())
        }
        None => 0.05,
    };
    println!(
        "{what}: Alpha's share {:.1}% in the profile, {:.1}% measured (within {:.1} points)",
        100.0 * alpha_share,
        100.0 * truth_alpha_share,
        100.0 * tolerance
    );
    assert!(
        (alpha_share - truth_alpha_share).abs() <= tolerance,
        "{what}: Alpha's share {alpha_share:.3} vs {truth_alpha_share:.3} measured (within {tolerance:.3})"
    );
    assert!(
        total(&unlabelled) > 0.0,
        "{what}: the unlabelled work was sampled"
    );
    assert_eq!(
        unlabelled.keys().collect::<Vec<_>>(),
        ["-"],
        "{what}: labels leaked into unlabelled work"
    );
}

/// A CPU profile and an allocs delta taken over the same seconds, checked against the truth.
fn check_cpu_and_allocs(form: &str) {
    let _alone = one_at_a_time();
    let mut workload = Workload::start("label_workload", &["--form", form]);
    // Let the runtime and the label sets settle first.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut cpu = None;
    let mut allocs = None;
    let truth = truth_during(&mut workload, |w| {
        std::thread::scope(|s| {
            let heap = s.spawn(|| w.profile(&format!("/debug/pprof/allocs?seconds={SECONDS}")));
            cpu = Some(w.profile(&format!("/debug/pprof/profile?seconds={SECONDS}&hz=500")));
            allocs = Some(heap.join().expect("the allocs request"));
        })
    });
    let (cpu, allocs) = (cpu.unwrap(), allocs.unwrap());
    let (alpha, beta) = (truth["Alpha"], truth["Beta"]);
    check_shares(
        &cpu,
        sample_index(&cpu, "cpu"),
        alpha.0 / (alpha.0 + beta.0),
        &format!("{form} cpu"),
    );
    check_shares(
        &allocs,
        sample_index(&allocs, "alloc_space"),
        alpha.1 / (alpha.1 + beta.1),
        &format!("{form} alloc_space"),
    );
    // In-use memory keeps the labels of the allocation until the free: Alpha's retained buffers.
    let heap = workload.profile("/debug/pprof/heap");
    let in_use = by_operation(&heap, "alpha_work", sample_index(&heap, "inuse_space"));
    println!("{form} inuse_space of alpha_work: {in_use:?}");
    assert!(
        in_use.get("Alpha").copied().unwrap_or(0) > 4 << 20,
        "{form}: Alpha's retained buffers (12.5 MiB) are in use under its label: {in_use:?}"
    );
    assert_eq!(in_use.len(), 1, "{form}: {in_use:?}");
    if form != "scope" {
        // Samples in a polled, instrumented task name the task.
        let with_task = cpu
            .sample
            .iter()
            .filter(|s| label(&cpu, s, "operation").is_some())
            .filter(|s| label(&cpu, s, "task").is_some_and(|t| t.parse::<u64>().is_ok()))
            .count();
        let labelled = cpu
            .sample
            .iter()
            .filter(|s| label(&cpu, s, "operation").is_some())
            .count();
        assert!(
            with_task * 100 >= labelled * 95,
            "{form}: {with_task} of {labelled} labelled samples carry the task id"
        );
        // So do the unlabelled task's, through the runtime's poll hooks.
        let unlabelled: Vec<_> = cpu
            .sample
            .iter()
            .filter(|s| {
                function_names(&cpu, s)
                    .iter()
                    .any(|f| f.ends_with("unlabelled_work"))
            })
            .collect();
        let named = unlabelled
            .iter()
            .filter(|s| label(&cpu, s, "task").is_some())
            .count();
        assert!(
            !unlabelled.is_empty() && named * 100 >= unlabelled.len() * 95,
            "{form}: {named} of {} unlabelled samples carry their task id",
            unlabelled.len()
        );
    }
    workload.finish();
}

#[test]
fn instrumented_tasks_get_their_share_of_cpu_and_allocations() {
    check_cpu_and_allocs("instrument");
}

#[test]
fn tracing_spans_label_their_tasks_truthfully() {
    check_cpu_and_allocs("tracing");
}

#[test]
fn a_sync_scope_labels_a_plain_thread_and_its_waits() {
    check_cpu_and_allocs("scope");
    let _alone = one_at_a_time();
    let workload = Workload::start("label_workload", &["--form", "scope"]);
    // The waiting thread shows its labels in both text dumps, as Go writes them in debug=1,
    // once it has entered its scope and waits (asked again until then, not slept for).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let grouped = workload.text("/debug/pprof/goroutine?debug=1");
        if grouped.contains("# labels: {\"operation\":\"Waiting\"}") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{grouped}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let full = workload.text("/debug/pprof/goroutine?debug=2");
    let waiter = full
        .split("\n\n")
        .find(|block| block.contains("\"lock-waiter\""))
        .unwrap_or_else(|| panic!("no lock-waiter thread in {full}"));
    assert!(
        waiter.contains("labels: {\"operation\":\"Waiting\"}"),
        "{waiter}"
    );
    let counted = workload.profile("/debug/pprof/goroutine");
    assert!(
        counted
            .sample
            .iter()
            .any(|s| label(&counted, s, "thread") == Some("lock-waiter")
                && label(&counted, s, "operation") == Some("Waiting")),
        "the goroutine profile labels the waiter's sample"
    );
    // Its waits for the lock carry them in the mutex profile.
    let mutex = workload.profile("/debug/pprof/mutex?seconds=2");
    let labelled_waits: i64 = mutex
        .sample
        .iter()
        .filter(|s| label(&mutex, s, "thread") == Some("lock-waiter"))
        .map(|s| {
            assert_eq!(label(&mutex, s, "operation"), Some("Waiting"));
            s.value[1]
        })
        .sum();
    assert!(labelled_waits > 0, "the waiter's waits were sampled");
    let holder_labelled = mutex
        .sample
        .iter()
        .filter(|s| label(&mutex, s, "thread") == Some("lock-holder"))
        .any(|s| label(&mutex, s, "operation").is_some());
    assert!(!holder_labelled, "the holder has no labels");
}

#[test]
fn go_tool_pprof_filters_and_lists_by_label() {
    let Some(go) = support::go() else {
        return;
    };
    let _alone = one_at_a_time();
    let workload = Workload::start("label_workload", &["--form", "instrument"]);
    let response = workload.get("/debug/pprof/profile?seconds=2");
    assert_eq!(response.status, 200);
    let tags = support::go_tool_pprof_bytes(&go, &["-tags"], &response.body);
    assert!(
        tags.contains("operation: Total") && tags.contains("Alpha") && tags.contains("Beta"),
        "{tags}"
    );
    let focused = support::go_tool_pprof_bytes(
        &go,
        &["-top", "-tagfocus", "operation=Beta"],
        &response.body,
    );
    assert!(focused.contains("beta_work"), "{focused}");
    assert!(!focused.contains("alpha_work"), "{focused}");
}
