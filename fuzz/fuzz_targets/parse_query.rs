//! The server's query-string parsing and every endpoint's parameter checks: any query gives
//! each endpoint a value in its range or the message of a 400 naming the parameter, never a
//! panic. Runs with the default longest profile (600 s) and the smallest a server allows (1 s).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pprofd::fuzzing::check_query;
use pprofd::server::DEFAULT_MAX_PROFILE_SECONDS;

fuzz_target!(|data: &[u8]| {
    // hyper hands the routes a `&str`; lossy conversion keeps non-UTF-8 inputs useful.
    let raw = String::from_utf8_lossy(data);
    for max in [DEFAULT_MAX_PROFILE_SECONDS, 1] {
        check_query(&raw, max).assert_valid(max);
    }
});
