//! Reading a `goroutine?debug=2` thread dump: one block per thread, `function` / `\tfile:line`.

use crate::analysis::SourceLine;

/// One thread of a dump.
#[derive(Debug)]
pub struct ThreadStack {
    /// The block's first line, e.g. `thread 4242 "tokio-runtime-w" [futex wait, 12 s]:`.
    pub header: String,
    /// `(function, file, line)` frames, innermost first.
    pub frames: Vec<(String, String, i64)>,
}

impl ThreadStack {
    /// The frames as [`SourceLine`]s, innermost first.
    pub fn source_lines(&self) -> Vec<SourceLine<'_>> {
        self.frames
            .iter()
            .map(|(function, file, line)| SourceLine {
                function,
                file,
                line: *line,
            })
            .collect()
    }

    /// Whether the thread is waiting to acquire a lock (a contended mutex or rwlock lock call).
    pub fn waits_for_lock(&self) -> bool {
        self.frames.iter().any(|(function, _, _)| {
            function.contains("lock_contended")
                || ((function.contains("Mutex") || function.contains("RwLock"))
                    && (function.ends_with("::lock")
                        || function.contains("::lock<")
                        || function.contains("::read")
                        || function.contains("::write")))
        })
    }
}

/// Splits a Go-style full dump into threads. Lines it does not understand are skipped.
pub fn parse(text: &str) -> Vec<ThreadStack> {
    let mut threads = Vec::new();
    for block in text.split("\n\n") {
        let mut lines = block.lines().filter(|l| !l.trim().is_empty());
        let Some(header) = lines.next() else { continue };
        if !(header.starts_with("thread ")
            || header.starts_with("goroutine ")
            || header.starts_with("task "))
        {
            continue;
        }
        let mut frames: Vec<(String, String, i64)> = Vec::new();
        for line in lines {
            if let Some(position) = line.strip_prefix('\t') {
                // `file:line`, possibly followed by ` +0x1f` as Go writes it.
                let position = position.split(" +0x").next().unwrap_or(position).trim();
                if let Some(frame) = frames.last_mut() {
                    match position.rsplit_once(':') {
                        Some((file, number)) if number.parse::<i64>().is_ok() => {
                            frame.1 = file.to_string();
                            frame.2 = number.parse().unwrap_or(0);
                        }
                        _ => frame.1 = position.to_string(),
                    }
                }
            } else {
                // Go writes `function(args)`; keep the name only.
                let function = line.trim().trim_end_matches("(...)").to_string();
                frames.push((function, String::new(), 0));
            }
        }
        threads.push(ThreadStack {
            header: header.trim_end_matches(':').to_string(),
            frames,
        });
    }
    threads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_threads_frames_and_lock_waits() {
        let text = "thread 10 \"cache-janitor\" [futex wait, 3 s]:\n\
                    syscall\n\
                    std::sys::sync::mutex::futex::Mutex::lock_contended\n\
                    \t/rustc/x/library/std/src/sys/sync/mutex/futex.rs:62\n\
                    demo_router::cache::sweep_stats_first\n\
                    \tcrates/demo-router/src/cache.rs:170 +0x1f\n\
                    \n\
                    thread 11 \"worker\" [sleeping]:\n\
                    std::thread::sleep\n\
                    \t/rustc/x/library/std/src/thread/mod.rs:10\n";
        let threads = parse(text);
        assert_eq!(threads.len(), 2);
        assert!(threads[0].waits_for_lock());
        assert!(!threads[1].waits_for_lock());
        let own = threads[0]
            .source_lines()
            .into_iter()
            .find(|f| f.is_own_code())
            .unwrap();
        assert_eq!(own.position(), "crates/demo-router/src/cache.rs:170");
        assert_eq!(
            threads[0].header,
            "thread 10 \"cache-janitor\" [futex wait, 3 s]"
        );
    }
}
