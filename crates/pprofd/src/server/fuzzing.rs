//! The request parsing the fuzz targets in `fuzz/` drive, outside HTTP: a raw query string
//! through every endpoint of the table ([`crate::endpoints::ENDPOINTS`], and the index) as the
//! request layer parses it. Compiled only for `cargo fuzz` (which passes `--cfg fuzzing`) and
//! for this crate's unit tests; not an API.

use crate::cpu;
use crate::endpoints::{self, ENDPOINTS};
pub use crate::produce::{
    CpuRequest, Failure, FailureKind, HeapRequest, OffCpuRequest, Request, SnapshotRequest,
};

/// What each endpoint makes of one query string: its request, or the failure (a 400 and its
/// message) it would answer with.
#[derive(Debug)]
pub struct QueryOutcomes {
    /// By endpoint name, the index (`""`) first, then the table's order.
    pub outcomes: Vec<(&'static str, Result<Request, Failure>)>,
}

/// Parses `raw` (a URI's query, without `?`) for the index and every endpoint of the table,
/// for a server whose longest profile is `max_profile_seconds` (at least 1, as
/// [`super::Config::max_profile_seconds`] ensures).
pub fn check_query(raw: &str, max_profile_seconds: u64) -> QueryOutcomes {
    let names = std::iter::once("").chain(ENDPOINTS.iter().map(|e| e.name));
    QueryOutcomes {
        outcomes: names
            .map(|name| (name, Request::parse(name, Some(raw), max_profile_seconds)))
            .collect(),
    }
}

impl QueryOutcomes {
    /// The outcome for endpoint `name` (`""` for the index).
    pub fn get(&self, name: &str) -> &Result<Request, Failure> {
        &self
            .outcomes
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no endpoint {name:?}"))
            .1
    }

    /// Panics unless every outcome is a request of its endpoint with values in range, or a
    /// 400 whose message names one of the parameters the table says the endpoint takes (what
    /// a client gets back).
    pub fn assert_valid(&self, max_profile_seconds: u64) {
        let seconds = 1..=max_profile_seconds;
        for (name, outcome) in &self.outcomes {
            let request = match outcome {
                Ok(request) => request,
                Err(failure) => {
                    let parameters = endpoints::find(name).map_or(&[][..], |e| e.parameters);
                    let names_parameter = parameters
                        .iter()
                        .any(|p| failure.message.starts_with(&format!("{p}=")));
                    assert!(
                        failure.kind == FailureKind::BadRequest
                            && (names_parameter
                                || failure.message == "seconds and debug params are incompatible"),
                        "{name}: the error does not name one of {parameters:?}: {failure:?}"
                    );
                    continue;
                }
            };
            assert_eq!(request.endpoint_name(), *name, "{request:?}");
            let in_range = match request {
                Request::Cpu(p) => seconds.contains(&p.seconds) && (1..=cpu::MAX_HZ).contains(&p.hz),
                Request::Heap(p) | Request::Allocs(p) => {
                    snapshot_ok(&p.snapshot, u64::MAX, max_profile_seconds)
                }
                Request::Goroutine(p) | Request::ThreadCreate(p) => {
                    snapshot_ok(p, 2, max_profile_seconds)
                }
                Request::Block(p) | Request::Mutex(p) => {
                    seconds.contains(&p.seconds) && p.debug <= 2
                }
                Request::Symbol { addresses } => !addresses.contains(&0),
                Request::Index { .. } | Request::Cmdline | Request::Trace => true,
            };
            assert!(in_range, "out of range: {request:?}");
        }
    }
}

fn snapshot_ok(p: &SnapshotRequest, max_debug: u64, max_seconds: u64) -> bool {
    p.debug <= max_debug
        && match p.seconds {
            Some(s) => (1..=max_seconds).contains(&s) && p.debug == 0,
            None => true,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(o: &QueryOutcomes) -> Result<&CpuRequest, &Failure> {
        match o.get("profile") {
            Ok(Request::Cpu(p)) => Ok(p),
            Ok(other) => panic!("{other:?}"),
            Err(f) => Err(f),
        }
    }

    fn heap(o: &QueryOutcomes) -> Result<&HeapRequest, &Failure> {
        match o.get("heap") {
            Ok(Request::Heap(p)) => Ok(p),
            Ok(other) => panic!("{other:?}"),
            Err(f) => Err(f),
        }
    }

    fn snapshot<'o>(o: &'o QueryOutcomes, name: &str) -> Result<&'o SnapshotRequest, &'o Failure> {
        match o.get(name) {
            Ok(Request::Goroutine(p) | Request::ThreadCreate(p)) => Ok(p),
            Ok(other) => panic!("{other:?}"),
            Err(f) => Err(f),
        }
    }

    fn off_cpu(o: &QueryOutcomes) -> Result<&OffCpuRequest, &Failure> {
        match o.get("block") {
            Ok(Request::Block(p)) => Ok(p),
            Ok(other) => panic!("{other:?}"),
            Err(f) => Err(f),
        }
    }

    fn message(outcome: Result<impl std::fmt::Debug, &Failure>) -> String {
        outcome.unwrap_err().message.clone()
    }

    #[test]
    fn each_endpoint_takes_its_own_parameters() {
        let o = check_query("seconds=7&hz=250&debug=1&idle=1", 600);
        o.assert_valid(600);
        assert!(matches!(o.get(""), Ok(Request::Index { text: true })));
        let profile = cpu(&o).unwrap();
        assert_eq!((profile.seconds, profile.hz), (7, 250));
        assert_eq!(
            message(heap(&o)),
            "seconds and debug params are incompatible"
        );
        assert_eq!(
            message(snapshot(&o, "threadcreate")),
            "seconds and debug params are incompatible"
        );
        let block = off_cpu(&o).unwrap();
        assert!(block.seconds_given && block.idle && block.debug == 1);

        let o = check_query("debug=5&seconds=&symbol=1", 600);
        o.assert_valid(600);
        let h = heap(&o).unwrap();
        assert_eq!((h.snapshot.debug, h.snapshot.seconds), (5, None));
        assert!(!h.allocator_frames);
        assert!(heap(&check_query("allocator_frames=1", 600)).unwrap().allocator_frames);
        assert!(message(heap(&check_query("allocator_frames=yes", 600)))
            .starts_with("allocator_frames=\"yes\" is not a number"));
        assert!(message(snapshot(&o, "goroutine")).starts_with("debug=5 is out of range"));
        assert!(message(off_cpu(&o)).starts_with("debug=5 is out of range"));

        let o = check_query("seconds=&debug=2", 600);
        let block = off_cpu(&o).unwrap();
        assert_eq!(block.seconds, crate::offcpu::DEFAULT_SECONDS);
        assert_eq!(block.debug, 2);
        assert!(!block.seconds_given);

        match check_query("0x10+020+0+junk", 600).get("symbol") {
            Ok(Request::Symbol { addresses }) => assert_eq!(addresses, &[16, 16]),
            other => panic!("{other:?}"),
        }
    }

    /// Regression: the defaults (30 s for `/profile`, 5 s for `/block` and `/mutex`) were
    /// returned without the range check, so `Config::max_profile_seconds(2)` still sampled
    /// 30 s when `seconds` was left out. `assert_valid` caught it.
    #[test]
    fn defaults_obey_a_lower_maximum() {
        let o = check_query("", 2);
        o.assert_valid(2);
        assert_eq!(cpu(&o).unwrap().seconds, 2);
        assert_eq!(off_cpu(&o).unwrap().seconds, 2);
        let o = check_query("", 600);
        assert_eq!(cpu(&o).unwrap().seconds, 30);
        assert_eq!(off_cpu(&o).unwrap().seconds, crate::offcpu::DEFAULT_SECONDS);
    }

    #[test]
    fn a_small_maximum_is_enforced_everywhere() {
        let o = check_query("seconds=2", 1);
        o.assert_valid(1);
        for (name, outcome) in &o.outcomes {
            let takes_seconds = endpoints::find(name).is_some_and(|e| e.parameters.contains(&"seconds"));
            if takes_seconds {
                let error = &outcome.as_ref().unwrap_err().message;
                assert!(error.starts_with("seconds=2 is out of range"), "{name}: {error}");
            }
        }
    }

    #[test]
    fn edge_cases_are_values_in_range_or_named_errors() {
        for raw in [
            "",
            "&&;;==",
            "seconds",
            "seconds=%",
            "seconds=%2",
            "seconds=%31%30",
            "seconds=+5",
            "seconds=-0",
            "seconds=1e3",
            "seconds=18446744073709551616",
            "debug=18446744073709551615",
            "debug=18446744073709551616",
            "hz=0",
            "hz=1001",
            "idle=2",
            "debug=%ff%fe",
            "seconds=\u{0}",
            "0xffffffffffffffff+0x10000000000000000+-1",
        ] {
            check_query(raw, 600).assert_valid(600);
            check_query(raw, 1).assert_valid(1);
        }
    }
}
