//! 30 back-to-back one-second profiles at 1000 Hz while the workload allocates, spawns and
//! joins threads, formats backtraces and dlopens/dlcloses libraries: no crash, no hang, every
//! profile decodes, and the CPU sampling handler never allocates.

mod support;

use std::time::Instant;

use support::{function_names, get, Workload};

/// Profiles in a row: enough to cross thread churn and dlopen/dlclose many times (the churn
/// threads cycle several times a second), few enough to keep CI's run short.
const ROUNDS: usize = 30;

#[test]
fn back_to_back_profiles_under_churn_never_crash_hang_or_allocate_in_the_handler() {
    let workload = Workload::start("cpu_workload", &["--churn"]);
    let addr = workload.addr();
    let started = Instant::now();
    let mut total_samples = 0i64;
    let mut churn_seen = false;
    for round in 0..ROUNDS {
        let response = get(addr, "/debug/pprof/profile?seconds=1&hz=1000");
        assert_eq!(response.status, 200, "round {round}: {}", response.text());
        let profile = response.profile();
        total_samples += profile.sample.iter().map(|s| s.value[0]).sum::<i64>();
        churn_seen |= profile.sample.iter().any(|s| {
            function_names(&profile, s)
                .iter()
                .any(|f| f.contains("churn"))
        });
    }
    // No wall-clock limit here (its verdict would follow the machine's load): a hang is
    // caught by the test runner's timeout (.config/nextest.toml).
    eprintln!("{ROUNDS} profiles took {:?}", started.elapsed());
    assert!(
        total_samples > 50 * ROUNDS as i64,
        "{total_samples} samples in {ROUNDS} profiles at 1000 Hz"
    );
    assert!(churn_seen, "the churning threads were sampled too");
    let report = workload.finish();
    assert!(
        report.contains("allocations_in_sampling_handler 0"),
        "{report}"
    );
}
