//! The one list of `/debug/pprof/*` endpoints: what each is, the parameters it takes, whether
//! it runs for seconds, and which of its forms a support archive keeps.
//!
//! The HTTP server routes by it and writes its index page from it, the axum mount serves the
//! same list, the fuzz checks run every endpoint's parameter checks from it, and `pprofd
//! collect` fetches the archive files it names. It is plain data, defined on every platform,
//! so the CLI builds where pprofd does not profile.

/// Where every endpoint lives, with its trailing slash (the index's own path).
pub const PREFIX: &str = "/debug/pprof/";

/// How long an endpoint takes to answer, which decides whether it counts against the
/// long-running cap (`pprofd::server::MAX_LONG_RUNNING`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// Answers as soon as its data is read (index, dumps, symbols).
    AtOnce,
    /// Samples for `seconds` (default or given) before it answers: always long-running.
    Samples,
    /// A snapshot at once, or with `seconds=N` the difference over N seconds (long-running).
    DeltaWithSeconds,
}

/// One file of a support archive (`pprofd collect`) and the query that fills it.
#[derive(Clone, Copy, Debug)]
pub struct ArchiveFile {
    /// File name in the archive.
    pub file: &'static str,
    /// Query string after `?`, empty for none.
    pub query: &'static str,
    /// What the file is, for the archive's manifest and README.
    pub what: &'static str,
    /// Whether the collector's own duration (`pprofd collect --seconds`) is sent as `seconds`.
    pub takes_collect_seconds: bool,
}

/// One endpoint under [`PREFIX`].
#[derive(Clone, Copy, Debug)]
pub struct Endpoint {
    /// The path after [`PREFIX`] (`profile`, `heap`, ...).
    pub name: &'static str,
    /// The index page's description (Go's words where Go has the endpoint).
    pub description: &'static str,
    /// The query parameters it reads; others are ignored, as in Go.
    pub parameters: &'static [&'static str],
    /// The HTTP methods it answers; others get 405 naming these.
    pub methods: &'static [&'static str],
    /// Whether it can run for seconds.
    pub timing: Timing,
    /// What a support archive keeps of it (nothing for `symbol` and `trace`).
    pub archive: &'static [ArchiveFile],
    /// The archive file `pprofd collect --past DURATION` fills from the flight recorder
    /// (`?past=N`, with `PPROF_RECORD` set), for the endpoints that take `past`.
    pub past_archive: Option<ArchiveFile>,
}

impl Endpoint {
    /// The endpoint's path, `/debug/pprof/NAME`.
    pub fn path(&self) -> String {
        format!("{PREFIX}{}", self.name)
    }
}

/// A file of the archive that takes no duration.
const fn snapshot(file: &'static str, query: &'static str, what: &'static str) -> ArchiveFile {
    ArchiveFile {
        file,
        query,
        what,
        takes_collect_seconds: false,
    }
}

/// The archive file of an endpoint's `?past=N` answer.
const fn past(file: &'static str, what: &'static str) -> Option<ArchiveFile> {
    Some(snapshot(file, "", what))
}

const GET: &[&str] = &["GET"];

/// Every endpoint, in the index page's order (Go's: by name).
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        name: "allocs",
        description: "A sampling of all past memory allocations",
        parameters: &["debug", "seconds", "gc", "allocator_frames", "past"],
        methods: GET,
        timing: Timing::DeltaWithSeconds,
        archive: &[snapshot(
            "allocs.pb.gz",
            "",
            "allocations since start by site (alloc_space)",
        )],
        past_archive: past("allocs-past.pb.gz", "allocations made in the last --past window, by site (from the flight recorder)"),
    },
    Endpoint {
        name: "block",
        description: "Stack traces that led to blocking on synchronization primitives",
        parameters: &["seconds", "debug", "idle"],
        methods: GET,
        timing: Timing::Samples,
        archive: &[snapshot(
            "block.pb.gz",
            "",
            "time threads spent blocked (locks, condvars, channels) by site",
        )],
        past_archive: None,
    },
    Endpoint {
        name: "cmdline",
        description: "The command line invocation of the current program",
        parameters: &[],
        methods: GET,
        timing: Timing::AtOnce,
        archive: &[snapshot(
            "cmdline.txt",
            "",
            "the service's command line, NUL-separated",
        )],
        past_archive: None,
    },
    Endpoint {
        name: "goroutine",
        description: "Stack traces of all current goroutines. Use debug=2 as a query parameter to export in the same format as an unrecovered panic.",
        parameters: &["debug", "seconds"],
        methods: GET,
        timing: Timing::DeltaWithSeconds,
        archive: &[
            snapshot(
                "goroutine.pb.gz",
                "debug=0",
                "every thread's stack, counted by distinct stack",
            ),
            snapshot(
                "goroutine-debug2.txt",
                "debug=2",
                "every thread's full stack as text, with its state: read it as is",
            ),
        ],
        past_archive: None,
    },
    Endpoint {
        name: "heap",
        description: "A sampling of memory allocations of live objects. You can specify the gc GET parameter to run GC before taking the heap sample.",
        parameters: &["debug", "seconds", "gc", "allocator_frames", "past"],
        methods: GET,
        timing: Timing::DeltaWithSeconds,
        archive: &[snapshot(
            "heap.pb.gz",
            "",
            "heap profile: live memory (inuse_space) and allocations by site",
        )],
        past_archive: past("heap-past.pb.gz", "what the heap gained and lost in the last --past window, by site (from the flight recorder)"),
    },
    Endpoint {
        name: "mutex",
        description: "Stack traces of threads waiting to acquire contended mutexes",
        parameters: &["seconds", "debug", "idle"],
        methods: GET,
        timing: Timing::Samples,
        archive: &[snapshot(
            "mutex.pb.gz",
            "",
            "time threads spent waiting for locks, by site",
        )],
        past_archive: None,
    },
    Endpoint {
        name: "profile",
        description: "CPU profile. You can specify the duration in the seconds GET parameter. After you get the profile file, use the go tool pprof command to investigate the profile.",
        parameters: &["seconds", "hz", "past"],
        methods: GET,
        timing: Timing::Samples,
        archive: &[ArchiveFile {
            file: "cpu.pb.gz",
            query: "",
            what: "CPU profile: where CPU time went, by stack",
            takes_collect_seconds: true,
        }],
        past_archive: past("cpu-past.pb.gz", "CPU profile of the last --past window (from the flight recorder)"),
    },
    Endpoint {
        name: "symbol",
        description: "Maps given program counters to function names.",
        parameters: &[],
        methods: &["GET", "POST"],
        timing: Timing::AtOnce,
        archive: &[],
        past_archive: None,
    },
    Endpoint {
        name: "threadcreate",
        description: "Stack traces that led to the creation of new OS threads",
        parameters: &["debug", "seconds"],
        methods: GET,
        timing: Timing::DeltaWithSeconds,
        archive: &[snapshot(
            "threadcreate.pb.gz",
            "",
            "the stacks that created the live threads",
        )],
        past_archive: None,
    },
    Endpoint {
        name: "trace",
        description: "Not available: Go's execution tracer has no Rust counterpart; the request answers 501.",
        parameters: &[],
        methods: GET,
        timing: Timing::AtOnce,
        archive: &[],
        past_archive: None,
    },
];

/// The endpoint called `name` (the path after [`PREFIX`]), if there is one.
pub fn find(name: &str) -> Option<&'static Endpoint> {
    ENDPOINTS.iter().find(|e| e.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sorted_unique_and_archive_files_distinct() {
        let names: Vec<&str> = ENDPOINTS.iter().map(|e| e.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            names, sorted,
            "the index lists endpoints by name, once each"
        );
        let mut files: Vec<&str> = ENDPOINTS
            .iter()
            .flat_map(|e| e.archive.iter().map(|f| f.file))
            .collect();
        let count = files.len();
        files.sort();
        files.dedup();
        assert_eq!(files.len(), count, "two endpoints would write one file");
        assert_eq!(
            find("symbol").map(|e| e.methods),
            Some(&["GET", "POST"][..])
        );
        assert!(find("nope").is_none());
    }
}
