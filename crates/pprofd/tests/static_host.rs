//! A statically linked host (glibc, `-C target-feature=+crt-static`) creates threads, with
//! and without the pprof server, and its threads' creation stacks are recorded: pprofd's
//! `pthread_create` finds the C library's own without `dlsym`.
//!
//! `.ci/run` builds `examples/host_safety.rs` statically and passes its path in
//! `PPROFD_STATIC_HOST`; without it the test is skipped, except under `CI=true`.

mod support;

use support::{binary_from_ci, Workload};

#[test]
fn a_static_host_creates_threads_and_records_their_creators() {
    let Some(path) = binary_from_ci(
        "PPROFD_STATIC_HOST",
        "the static host",
        "a statically linked host_safety",
    ) else {
        return;
    };
    let mut unserved = Workload::start_binary(&path, &[], &[]);
    unserved.send("small-stack");
    assert_eq!(
        unserved.line(),
        "small-stack done",
        "a thread was created without PPROF_ADDR"
    );
    unserved.finish();

    let mut host = Workload::start_binary(&path, &[], &[("PPROF_ADDR", "127.0.0.1:0")]);
    host.send("small-stack");
    assert_eq!(host.line(), "small-stack done");
    let created = host.text("/debug/pprof/threadcreate?debug=1");
    assert!(created.contains("\"pprofd-http\""), "{created}");
    let spinner = created
        .split("\n\n")
        .find(|record| record.contains("\"spinner\""))
        .unwrap_or_else(|| panic!("a spinner thread is listed: {created}"));
    assert!(
        spinner.contains("host_safety.rs"),
        "the spinner's creator in main is recorded: {spinner}"
    );
    host.send("fork 20");
    assert_eq!(host.line(), "forked 20 hung 0 failed 0");
    host.finish();
}
