//! The router keeps serving its own traffic while it is profiled: steady GraphQL load from
//! this process, CPU, heap, goroutine and block profiles in a loop for about 60 s.
//!
//! The test fails on a failed router request or a bad profile. The throughput ratio
//! (profiled over unprofiled) is printed, never asserted: on a shared 2-core CI machine a
//! timing ratio is noise-bound, and the issue puts it in the benchmark output
//! (`cargo bench -p demo-router --bench profiling_under_load` runs a longer version).

mod support;

use support::steady_load::{self, TEST_SCHEDULE};

#[test]
fn router_serves_every_request_while_profiled_in_a_loop() {
    let report = steady_load::run(&TEST_SCHEDULE);
    for line in report.lines() {
        support::report(&line);
    }
    assert!(
        report.profile_problems.is_empty(),
        "{} of {} profiles were wrong:\n{}",
        report.profile_problems.len(),
        report.profiles_fetched,
        report.profile_problems.join("\n")
    );
    assert_eq!(
        report.failed_requests,
        0,
        "router requests failed while profiled; first errors:\n{}",
        report.first_errors.join("\n")
    );
    // A run in which the load never got going would pass the checks above vacuously.
    assert!(
        report.profiled.requests > 0 && report.unprofiled.requests > 0,
        "the load clients got no answers: {} profiled, {} unprofiled",
        report.profiled.requests,
        report.unprofiled.requests
    );
}
