//! The request parsing the fuzz targets in `fuzz/` drive, outside HTTP: a raw query string
//! through every parameter check the routes make. Compiled only for `cargo fuzz` (which
//! passes `--cfg fuzzing`) and for this crate's unit tests; not an API.

use super::query::Query;
use super::routes;
pub use super::routes::{CpuParams, HeapParams, OffCpuParams, SnapshotParams};
use crate::cpu;

/// What each endpoint makes of one query string: its parameters, or the message of the 400 it
/// would answer with.
#[derive(Debug)]
pub struct QueryOutcomes {
    /// `/debug/pprof/`: whether it answers the plain-text index.
    pub index_as_text: bool,
    /// `/profile`.
    pub profile: Result<CpuParams, String>,
    /// `/heap` and `/allocs`.
    pub heap: Result<HeapParams, String>,
    /// `/goroutine`.
    pub goroutine: Result<SnapshotParams, String>,
    /// `/threadcreate`.
    pub threadcreate: Result<SnapshotParams, String>,
    /// `/block` and `/mutex`.
    pub off_cpu: Result<OffCpuParams, String>,
    /// `/symbol` asked with GET: the addresses to look up (the raw query, not decoded).
    pub symbol_addresses: Vec<u64>,
}

/// Parses `raw` (a URI's query, without `?`) as the server does and runs it through every
/// endpoint's checks, for a server whose longest profile is `max_profile_seconds` (at least 1,
/// as [`super::Config::max_profile_seconds`] ensures).
pub fn check_query(raw: &str, max_profile_seconds: u64) -> QueryOutcomes {
    let query = Query::parse(Some(raw));
    QueryOutcomes {
        index_as_text: routes::index_as_text(&query),
        profile: routes::cpu_params(&query, max_profile_seconds),
        heap: routes::heap_params(&query, max_profile_seconds),
        goroutine: routes::snapshot_params(&query, 2, max_profile_seconds),
        threadcreate: routes::snapshot_params(&query, 2, max_profile_seconds),
        off_cpu: routes::off_cpu_params(&query, max_profile_seconds),
        symbol_addresses: routes::symbol_addresses(raw),
    }
}

impl QueryOutcomes {
    /// Panics unless every outcome is a value in its endpoint's range or an error that names
    /// the parameter at fault (what a client gets back in the 400).
    pub fn assert_valid(&self, max_profile_seconds: u64) {
        let seconds = 1..=max_profile_seconds;
        check(&self.profile, |p| {
            seconds.contains(&p.seconds) && (1..=cpu::MAX_HZ).contains(&p.hz)
        });
        check(&self.heap, |p| {
            snapshot_ok(&p.snapshot, u64::MAX, max_profile_seconds)
        });
        check(&self.goroutine, |p| snapshot_ok(p, 2, max_profile_seconds));
        check(&self.threadcreate, |p| {
            snapshot_ok(p, 2, max_profile_seconds)
        });
        check(&self.off_cpu, |p| {
            seconds.contains(&p.seconds) && p.debug <= 2
        });
        assert!(
            !self.symbol_addresses.contains(&0),
            "address 0 is never looked up: {:?}",
            self.symbol_addresses
        );
    }
}

fn snapshot_ok(p: &SnapshotParams, max_debug: u64, max_seconds: u64) -> bool {
    p.debug <= max_debug
        && match p.seconds {
            Some(s) => (1..=max_seconds).contains(&s) && p.debug == 0,
            None => true,
        }
}

fn check<T: std::fmt::Debug>(outcome: &Result<T, String>, in_range: impl Fn(&T) -> bool) {
    match outcome {
        Ok(value) => assert!(in_range(value), "out of range: {value:?}"),
        Err(message) => {
            let names_parameter = ["seconds=", "hz=", "debug=", "idle="]
                .iter()
                .any(|p| message.starts_with(p));
            assert!(
                names_parameter || message == "seconds and debug params are incompatible",
                "the error does not name a parameter: {message:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_endpoint_takes_its_own_parameters() {
        let o = check_query("seconds=7&hz=250&debug=1&idle=1", 600);
        o.assert_valid(600);
        assert!(o.index_as_text);
        let profile = o.profile.unwrap();
        assert_eq!((profile.seconds, profile.hz), (7, 250));
        assert_eq!(
            o.heap.unwrap_err(),
            "seconds and debug params are incompatible"
        );
        assert_eq!(
            o.threadcreate.unwrap_err(),
            "seconds and debug params are incompatible"
        );
        let off_cpu = o.off_cpu.unwrap();
        assert!(off_cpu.seconds_given && off_cpu.idle && off_cpu.debug == 1);

        let o = check_query("debug=5&seconds=&symbol=1", 600);
        o.assert_valid(600);
        let heap = o.heap.unwrap();
        assert_eq!((heap.snapshot.debug, heap.snapshot.seconds), (5, None));
        assert!(!heap.allocator_frames);
        assert!(
            check_query("allocator_frames=1", 600)
                .heap
                .unwrap()
                .allocator_frames
        );
        assert!(check_query("allocator_frames=yes", 600)
            .heap
            .unwrap_err()
            .starts_with("allocator_frames=\"yes\" is not a number"));
        assert!(o
            .goroutine
            .unwrap_err()
            .starts_with("debug=5 is out of range"));
        assert!(o
            .off_cpu
            .unwrap_err()
            .starts_with("debug=5 is out of range"));

        let off_cpu = check_query("seconds=&debug=2", 600).off_cpu.unwrap();
        assert_eq!(off_cpu.seconds, crate::offcpu::DEFAULT_SECONDS);
        assert_eq!(off_cpu.debug, 2);
        assert!(!off_cpu.seconds_given);

        assert_eq!(
            check_query("0x10+020+0+junk", 600).symbol_addresses,
            [16, 16]
        );
    }

    /// Regression: the defaults (30 s for `/profile`, 5 s for `/block` and `/mutex`) were
    /// returned without the range check, so `Config::max_profile_seconds(2)` still sampled
    /// 30 s when `seconds` was left out. `assert_valid` caught it.
    #[test]
    fn defaults_obey_a_lower_maximum() {
        let o = check_query("", 2);
        o.assert_valid(2);
        assert_eq!(o.profile.unwrap().seconds, 2);
        assert_eq!(o.off_cpu.unwrap().seconds, 2);
        let o = check_query("", 600);
        assert_eq!(o.profile.unwrap().seconds, 30);
        assert_eq!(o.off_cpu.unwrap().seconds, crate::offcpu::DEFAULT_SECONDS);
    }

    #[test]
    fn a_small_maximum_is_enforced_everywhere() {
        let o = check_query("seconds=2", 1);
        o.assert_valid(1);
        for error in [
            o.profile.unwrap_err(),
            o.heap.unwrap_err(),
            o.goroutine.unwrap_err(),
            o.off_cpu.unwrap_err(),
        ] {
            assert!(error.starts_with("seconds=2 is out of range"), "{error}");
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
