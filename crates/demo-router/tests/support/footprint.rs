//! What answering one profile request costs the router: the growth of its peak resident
//! memory while the request runs, and the CPU time it takes.
//!
//! The peak comes from the kernel: writing "5" to `/proc/PID/clear_refs` resets `VmHWM` to the
//! current RSS, so `VmHWM` read after the answer, less `VmRSS` read before the request, is the
//! highest the request took the process (heap, stacks and mapped file pages alike).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{client, get, ProfiledRouter, QUERY};

/// One request's cost.
pub struct Cost {
    pub status: u16,
    pub body: Vec<u8>,
    /// Peak RSS during the request above RSS just before it.
    pub peak_growth_kib: u64,
    /// RSS after the answer above RSS before the request (negative: lower).
    pub after_kib: i64,
    /// CPU time of the whole router process while the request ran.
    pub process_cpu: Duration,
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("the router is running")
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// CPU time of every thread of `pid` so far (`/proc/PID/task/*/schedstat`, nanoseconds).
pub fn process_cpu(pid: u32) -> Duration {
    let mut total = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let schedstat =
                std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            total += schedstat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(total)
}

/// GETs `path` (under the pprof server) from `router` and measures what it cost.
pub fn measure(router: &ProfiledRouter, path: &str) -> Cost {
    let pid = router.pid();
    let agent = client(Duration::from_secs(120));
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("clear_refs is writable");
    let before = status_kib(pid, "VmRSS:");
    let cpu_before = process_cpu(pid);
    let (status, body) =
        get(&agent, &format!("{}{path}", router.pprof)).expect("the request is answered");
    let process_cpu = process_cpu(pid) - cpu_before;
    let peak = status_kib(pid, "VmHWM:");
    let after = status_kib(pid, "VmRSS:");
    Cost {
        status,
        body,
        peak_growth_kib: peak.saturating_sub(before),
        after_kib: after as i64 - before as i64,
        process_cpu,
    }
}

/// The thread CPU time the profile's comment says symbolization took, in milliseconds.
pub fn symbolization_ms(profile: &pprofd::profile::proto::Profile) -> Option<f64> {
    profile.comment.iter().find_map(|&c| {
        let text = &profile.string_table[c as usize];
        let rest = text.strip_prefix("pprofd: symbolized ")?;
        let ms = rest.split(" in ").nth(1)?.split(" ms of CPU time").next()?;
        ms.parse().ok()
    })
}

/// Closed-loop GraphQL clients keeping the router busy (so CPU profiles have stacks) until
/// dropped.
pub struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(router: &ProfiledRouter, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..clients)
            .map(|_| {
                let (stop, url) = (stop.clone(), format!("{}/graphql", router.url));
                std::thread::spawn(move || {
                    let agent = client(Duration::from_secs(10));
                    while !stop.load(Ordering::Relaxed) {
                        let _ = agent.post(&url).send(QUERY);
                    }
                })
            })
            .collect();
        Load { stop, clients }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients.drain(..) {
            let _ = client.join();
        }
    }
}
