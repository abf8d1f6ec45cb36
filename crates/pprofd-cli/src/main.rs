//! `pprofd`: collect and read pprof profiles without a Go toolchain.

mod analysis;
mod collect;
mod demo;
mod diff;
mod dump;
mod flame;
mod symbolize;
mod top;

// Reading files and fetching URLs live in the library so the fuzz targets run the same code.
use pprofd_cli::{fetch, input};

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Collect and read pprof profiles from services that link pprofd (or any Go service).
///
/// A service exposes its profiles when started with PPROF_ADDR set, e.g.
/// PPROF_ADDR=127.0.0.1:6060. Then:
///
///   pprofd collect http://127.0.0.1:6060            # everything, in one .tar.gz for support
///   pprofd top 'http://127.0.0.1:6060/debug/pprof/profile?seconds=10'
///   pprofd flame ARCHIVE.tar.gz:heap -o heap.svg    # open the SVG in a browser
///   pprofd diff heap-01.pb.gz heap-06.pb.gz         # what grew between two heap profiles
///   pprofd symbolize cpu.pb.gz --debug-dir DIR -o cpu-symbolized.pb.gz   # stripped builds
///   pprofd demo                                     # see all of it on a demo service
///
/// Every file written is a standard pprof profile: `go tool pprof -http :8079 FILE` reads it too.
/// A service started with PPROF_TOKEN wants the same token: set it for pprofd too, or pass --token.
#[derive(Parser)]
#[command(name = "pprofd", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Bearer token for services started with PPROF_TOKEN, sent as `Authorization: Bearer
    /// TOKEN` on every request. Prefer the environment variable: a command-line argument is
    /// visible to other users in `ps`.
    // `hide_env_values` keeps `--help` from printing the token when PPROF_TOKEN is set.
    #[arg(long, global = true, env = fetch::TOKEN_ENV, hide_env_values = true, value_name = "TOKEN")]
    token: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Save every profile a service serves (CPU, heap, allocs, threads, block, mutex,
    /// command line) into one .tar.gz with a manifest, to read later or send to support.
    Collect(collect::CollectArgs),
    /// Print the functions with the highest values, like `go tool pprof -top`.
    Top(top::TopArgs),
    /// Draw a flame graph as an interactive SVG.
    Flame(flame::FlameArgs),
    /// Show which call sites grew from one profile to a later one (memory leaks).
    Diff(diff::DiffArgs),
    /// Name the addresses of a profile of a stripped build from the unstripped binaries or
    /// debug files in DIR (DIR/<build ID>, DIR/<build ID>/NAME, DIR/.build-id/ab/cdef….debug
    /// or DIR/NAME), and write the symbolized profile to OUT.
    Symbolize(symbolize::SymbolizeArgs),
    /// Run the demo router with each of its incidents and find them with profiles (under a minute).
    Demo(demo::DemoArgs),
    /// Send the demo's GraphQL load to a demo router started by hand, to profile it under load.
    Load(demo::LoadArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = fetch::Token::new(cli.token.as_deref().unwrap_or("")).and_then(|token| {
        let token = token.as_ref();
        match &cli.command {
            Command::Collect(args) => collect::run(args, token),
            Command::Top(args) => top::run(args, token),
            Command::Flame(args) => flame::run(args, token),
            Command::Diff(args) => diff::run(args, token),
            Command::Symbolize(args) => symbolize::run(args, token),
            Command::Demo(args) => demo::run(args, token),
            Command::Load(args) => demo::load(args),
        }
    });
    match result {
        Ok(text) => {
            print_stdout(&text);
            ExitCode::SUCCESS
        }
        Err(message) => {
            // One line, so scripts and people see the whole reason at once.
            let line = message.split_whitespace().collect::<Vec<_>>().join(" ");
            eprintln!("pprofd: {line}");
            ExitCode::FAILURE
        }
    }
}

/// Writes to stdout, treating a closed pipe (`pprofd top ... | head`) as the reader being done.
pub fn print_stdout(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}
