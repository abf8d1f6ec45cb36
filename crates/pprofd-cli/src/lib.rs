//! The parts of the `pprofd` command that take input from outside: reading a profile or
//! support archive given on the command line ([`input`]) and fetching pprof endpoints over HTTP
//! ([`fetch`]). They are a library so that the fuzz targets in `fuzz/` drive the very code the
//! command runs; the command itself (`src/main.rs`) adds the subcommands on top.

pub mod fetch;
pub mod input;
