//! Async tasks in goroutine dumps (feature `tokio-tasks`): a healthy runtime's tasks appear
//! with their await points; a wedged runtime does not hold the dump hostage; a multi-thread
//! runtime is dumped only when `PPROF_TOKIO_TASKS=all` accepts tokio's worker stalls.

mod support;

use std::time::{Duration, Instant};

use support::{function_names, go_tool_pprof_bytes, label, Workload};

/// The `task …:` block of `text` whose frames include `function`.
fn task_block<'a>(text: &'a str, function: &str) -> &'a str {
    text.split("\n\n")
        .map(|block| block.trim_start_matches('\n'))
        .find(|block| block.starts_with("task ") && block.contains(&format!("{function}\n\t")))
        .unwrap_or_else(|| panic!("no task block with {function}:\n{text}"))
}

#[test]
fn tasks_show_where_they_await() {
    let workload = Workload::start("task_workload", &[]);
    let text = workload.text("/debug/pprof/goroutine?debug=2");
    let waiter = task_block(&text, "task_workload::wait_for_orders_lock::{{closure}}");
    assert!(
        waiter.starts_with("task ") && waiter.contains("[tokio runtime "),
        "{waiter}"
    );
    assert!(
        waiter.contains("tokio::sync::mutex::Mutex<T>::lock"),
        "the waiter awaits the orders lock:\n{waiter}"
    );
    assert!(waiter.contains("task_workload.rs:"), "{waiter}");
    assert!(
        waiter.contains("\nlabels: {\"operation\":\"Checkout\"}\n"),
        "the waiter's Labels::instrument wrapper names its labels:\n{waiter}"
    );
    let holder = task_block(&text, "task_workload::hold_orders_lock::{{closure}}");
    assert!(
        holder.contains("tokio::time::sleep"),
        "the holder sleeps:\n{holder}"
    );
    assert!(
        !holder.contains("labels: "),
        "the holder has no labels:\n{holder}"
    );
    // Threads come first, as before.
    assert!(text.starts_with("thread "), "{text}");

    let grouped = workload.text("/debug/pprof/goroutine?debug=1");
    assert!(grouped.contains("# tasks: "), "{grouped}");
    assert!(grouped.contains("wait_for_orders_lock"), "{grouped}");

    let response = workload.get("/debug/pprof/goroutine");
    assert_eq!(response.status, 200);
    let profile = pprofd::profile::decode(&response.body).unwrap();
    let waiting = profile
        .sample
        .iter()
        .find(|s| {
            function_names(&profile, s)
                .iter()
                .any(|f| f.contains("wait_for_orders_lock"))
        })
        .expect("a sample for the waiting task");
    assert!(
        label(&profile, waiting, "task").is_some_and(|r| r.starts_with("tokio runtime ")),
        "task samples are labelled with their runtime"
    );
    if let Some(go) = support::go() {
        let top = go_tool_pprof_bytes(&go, &["-top", "-cum", "-nodecount=500"], &response.body);
        assert!(top.contains("wait_for_orders_lock"), "{top}");
    }
    workload.finish();
}

#[test]
fn a_wedged_runtime_times_out_and_the_threads_still_show() {
    let mut workload = Workload::start("task_workload", &[]);
    workload.send("wedge");
    assert_eq!(workload.line(), "wedged");

    let started = Instant::now();
    let text = workload.text("/debug/pprof/goroutine?debug=2");
    let took = started.elapsed();
    // The text below says the dump stopped waiting at its 1 s deadline; the bound catches
    // one that waits far beyond it, with room for a loaded machine.
    assert!(
        took < Duration::from_secs(30),
        "the dump waits for the runtime at most its deadline: {took:?}"
    );
    assert!(
        text.contains("timed out after 1000 ms") && text.contains("current-thread"),
        "{text}"
    );
    let blocked_workers = text
        .split("\n\n")
        .filter(|b| b.contains("task_workload::block_worker\n\t"))
        .count();
    assert_eq!(
        blocked_workers, 1,
        "the runtime's thread shown where it blocks:\n{text}"
    );

    // The first dump is still pending inside tokio: no second one is stacked on it.
    let text = workload.text("/debug/pprof/goroutine?debug=1");
    assert!(text.contains("the previous dump of this runtime"), "{text}");

    workload.send("unwedge");
    assert_eq!(workload.line(), "unwedged");
    // The pending dump completes once the workers are back; then dumps work again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = workload.text("/debug/pprof/goroutine?debug=2");
        if text.contains("wait_for_orders_lock") {
            break;
        }
        assert!(Instant::now() < deadline, "tasks never came back:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    workload.finish();
}

#[test]
fn a_multi_thread_runtime_is_not_dumped_by_default_and_the_dump_says_how() {
    let workload = Workload::start("task_workload", &["--multi-thread"]);
    let text = workload.text("/debug/pprof/goroutine?debug=2");
    assert!(
        !text.lines().any(|l| l.starts_with("task ")),
        "no task of the 2-worker runtime is traced:\n{text}"
    );
    assert!(
        text.contains("not dumped: tokio's task dump of a multi-thread runtime (2 workers)")
            && text.contains("tokio-rs/tokio#8370")
            && text.contains("PPROF_TOKIO_TASKS=all"),
        "{text}"
    );
    // The threads are dumped as always, the runtime's workers among them.
    assert!(text.contains("\"tokio-rt-worker\""), "{text}");
    workload.finish();
}

#[test]
fn a_bad_tokio_tasks_value_stops_the_program_with_a_clear_message() {
    let output = std::process::Command::new(support::example_binary("task_workload"))
        .env("PPROF_ADDR", "127.0.0.1:0")
        .env("PPROF_TOKIO_TASKS", "sometimes")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("PPROF_TOKIO_TASKS=\"sometimes\" is not understood: want `current-thread`"),
        "{stderr}"
    );
}
