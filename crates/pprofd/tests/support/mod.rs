//! Helpers shared by pprofd's integration tests: run an example workload as a separate
//! process ([`Workload`]), talk real HTTP to it ([`get`], [`request`]), read the profiles it
//! serves ([`function_names`], [`label`]) and check them with `go tool pprof` ([`go`],
//! [`go_tool_pprof`]).
//!
//! Each test binary includes it with `mod support;` and uses its own subset, hence the
//! `allow`s.
#![allow(dead_code)]

mod go;
mod http;
mod profile;
mod workload;

#[allow(unused_imports)]
pub use go::{go, go_tool_pprof, go_tool_pprof_bytes, pprof_binary, ScratchDir};
#[allow(unused_imports)]
pub use http::{get, request, request_with_headers, Response};
#[allow(unused_imports)]
pub use profile::{
    assert_seventy_thirty, function_names, label, reaches_root_through, sample_index, share_of,
    window,
};
#[allow(unused_imports)]
pub use workload::{
    binary_from_ci, example_binary, has_thread, profile_while_spawning_a_worker, Workload,
};
