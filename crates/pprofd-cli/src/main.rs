//! `pprofd`: collect and read pprof profiles without a Go toolchain.

use clap::Parser;

/// Collect and read pprof profiles from services that link pprofd (or any Go service).
#[derive(Parser)]
#[command(name = "pprofd", version, about, long_about = None)]
struct Cli {}

fn main() {
    Cli::parse();
    println!("pprofd: no command yet; see --help");
}
