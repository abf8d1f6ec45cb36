//! The router's throughput while it is profiled in a loop, over its throughput unprofiled.
//!
//! The same measurement as `tests/profiling_under_load.rs` with twice the windows and longer
//! baselines (about 3 minutes): 4 closed-loop GraphQL clients in this process, the router a
//! child process with pprofd at its defaults, and alternately nobody profiling and a loop of
//! CPU (5 s), heap, goroutine (debug=2) and block (2 s) profiles. The target is a
//! ratio within 5% of 1 with no failed request; the ratio is printed, a failed request or a
//! bad profile makes the bench fail.
//!
//! Run: `cargo bench -p demo-router --bench profiling_under_load`

#[path = "../tests/support/mod.rs"]
mod support;

use support::steady_load::{self, BENCH_SCHEDULE};

fn main() {
    let report = steady_load::run(&BENCH_SCHEDULE);
    for line in report.lines() {
        println!("{line}");
    }
    assert!(
        report.profile_problems.is_empty(),
        "bad profiles:\n{}",
        report.profile_problems.join("\n")
    );
    assert_eq!(
        report.failed_requests,
        0,
        "router requests failed while profiled: {}",
        report.first_errors.join("\n")
    );
}
