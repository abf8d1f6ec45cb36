//! The router as a service, started as a separate process: clean and fast with the incidents
//! off, and the leak incident keeps what the clean router frees.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Router {
    child: Child,
    url: String,
}

impl Router {
    fn start(incidents: &[&str]) -> Router {
        let mut command = Command::new(env!("CARGO_BIN_EXE_demo-router"));
        command.args(["--listen", "127.0.0.1:0", "--exit-on-stdin-close"]);
        for incident in incidents {
            command.args(["--incident", incident]);
        }
        let mut child = command
            .env_remove("PPROF_ADDR")
            .env_remove("DEMO_INCIDENTS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (url, _pprof_off) = support::read_addresses(&mut child);
        Router { child, url }
    }

    fn get_json(&self, path: &str) -> serde_json::Value {
        let body = agent()
            .get(&format!("{}{path}", self.url))
            .call()
            .unwrap()
            .body_mut()
            .read_to_vec()
            .unwrap();
        serde_json::from_slice(&body).unwrap()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into()
}

const QUERY: &str = r#"{"query":"{ products(first: 20) { id name price description reviews { author rating body } stock { warehouse available } } }"}"#;

#[test]
fn clean_router_answers_quickly_and_frees_subscriptions() {
    let router = Router::start(&[]);
    let agent = agent();
    let started = Instant::now();
    for _ in 0..50 {
        let body = agent
            .post(&format!("{}/graphql", router.url))
            .header("content-type", "application/json")
            .send(QUERY)
            .unwrap()
            .body_mut()
            .read_to_vec()
            .unwrap();
        let response: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(response["data"]["products"].as_array().unwrap().len(), 20);
    }
    // About a millisecond on a quiet machine; the bound only catches a hotspot left switched
    // on, with room for a loaded machine's scheduling.
    let mean = started.elapsed() / 50;
    assert!(
        mean < Duration::from_millis(250),
        "a query took {mean:?} on average"
    );
    for _ in 0..20 {
        router.get_json("/subscribe?topic=prices");
    }
    let health = router.get_json("/healthz");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["subscriptions"], 0, "{health}");
}

#[test]
fn leak_incident_keeps_every_subscription_backlog() {
    let router = Router::start(&["leak"]);
    for _ in 0..20 {
        let event = router.get_json("/subscribe?topic=prices");
        assert_eq!(event["event"], "snapshot");
    }
    let health = router.get_json("/healthz");
    assert_eq!(health["subscriptions"], 20);
    assert_eq!(health["subscription_backlog_bytes"], 20 * 64 * 1024);
}

#[test]
fn bad_requests_get_graphql_errors_not_hangs() {
    let router = Router::start(&[]);
    let response = agent()
        .post(&format!("{}/graphql", router.url))
        .config()
        .http_status_as_error(false)
        .build()
        .send("not json")
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
}
