//! `pprofd collect`: every profile a service serves, in one `.tar.gz` for support.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::fetch::{self, Token};

/// Arguments of `pprofd collect`.
#[derive(Args)]
pub struct CollectArgs {
    /// The service's pprof address, e.g. http://127.0.0.1:6060 (what its PPROF_ADDR says).
    /// Give several to collect from several services at once, one archive each.
    #[arg(required = true, value_name = "URL")]
    pub targets: Vec<String>,
    /// Archive to write. With several URLs, a directory to write the archives into.
    /// Default: pprof-HOST-PORT-DATE-TIME.tar.gz in the current directory.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// How long the CPU profile records, in seconds.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Take a heap series for leak hunting instead: one heap profile every DURATION
    /// (e.g. 10m, 30s, 1h), COUNT times. Compare them with `pprofd diff`.
    #[arg(long, value_name = "DURATION", requires = "count")]
    pub every: Option<String>,
    /// Number of heap profiles in the series (with --every).
    #[arg(long, requires = "every")]
    pub count: Option<u32>,
    /// Also save what the service's flight recorder (PPROF_RECORD set on the service) kept
    /// of the last DURATION (e.g. 300s, 5m, 1h): the CPU profile of that window, what the
    /// heap gained in it and the allocations made in it, as *-past.pb.gz files. They answer
    /// at once and cover the time before the collection began. The normal collection, the
    /// --seconds CPU profile included, still runs: --past adds the recorded window. A service
    /// that is not recording, or keeps less than DURATION, answers with an error, which is
    /// printed and recorded in manifest.json; the collection goes on.
    #[arg(long, value_name = "DURATION", conflicts_with = "every")]
    pub past: Option<String>,
}

/// One file of the archive and the endpoint that fills it.
pub struct Endpoint {
    /// File name in the archive.
    pub file: String,
    /// Path and query under the service's address.
    pub path: String,
    /// What the file is, for the manifest and README.
    pub what: &'static str,
    /// How long the request may take.
    pub timeout: Duration,
    /// The recorded window asked for (`?past=N`), for the files of `--past`.
    pub past_seconds: Option<u64>,
}

/// Time allowed for endpoints that answer at once (goroutine dumps, heap) or sample a few
/// seconds (block, mutex).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// The endpoints of a full collection, from pprofd's endpoint table: every archive file it
/// names, the CPU profile (the one that records for `--seconds`) first.
pub fn endpoints(cpu_seconds: u64) -> Vec<Endpoint> {
    let mut list: Vec<(bool, Endpoint)> = pprofd::endpoints::ENDPOINTS
        .iter()
        .flat_map(|endpoint| {
            endpoint.archive.iter().map(move |file| {
                let timed = file.takes_collect_seconds;
                let seconds = timed.then(|| format!("seconds={cpu_seconds}"));
                let endpoint = Endpoint {
                    file: file.file.into(),
                    path: path_with_query(endpoint, file.query, seconds.as_deref()),
                    what: file.what,
                    timeout: match timed {
                        true => Duration::from_secs(cpu_seconds + 60),
                        false => SNAPSHOT_TIMEOUT,
                    },
                    past_seconds: None,
                };
                (timed, endpoint)
            })
        })
        .collect();
    // Stable: the timed one first, the rest in the table's order.
    list.sort_by_key(|(timed, _)| !timed);
    list.into_iter().map(|(_, endpoint)| endpoint).collect()
}

/// The files of `--past`: every `past_archive` of pprofd's endpoint table, asked for the
/// last `seconds` with `?past=SECONDS`, in the table's order. The flight recorder answers
/// from memory at once, so they get the snapshot timeout.
pub fn past_endpoints(seconds: u64) -> Vec<Endpoint> {
    let past = format!("past={seconds}");
    pprofd::endpoints::ENDPOINTS
        .iter()
        .filter_map(|endpoint| {
            let file = endpoint.past_archive?;
            Some(Endpoint {
                file: file.file.into(),
                path: path_with_query(endpoint, file.query, Some(&past)),
                what: file.what,
                timeout: SNAPSHOT_TIMEOUT,
                past_seconds: Some(seconds),
            })
        })
        .collect()
}

/// `/debug/pprof/NAME`, with `?` and the non-empty parts of the query joined by `&`.
fn path_with_query(
    endpoint: &pprofd::endpoints::Endpoint,
    query: &str,
    extra: Option<&str>,
) -> String {
    let parts: Vec<&str> = [Some(query), extra]
        .into_iter()
        .flatten()
        .filter(|q| !q.is_empty())
        .collect();
    match parts.is_empty() {
        true => endpoint.path(),
        false => format!("{}?{}", endpoint.path(), parts.join("&")),
    }
}

/// The window of `--past` in whole seconds, the unit of `?past=N`.
fn past_seconds(text: &str) -> Result<u64, String> {
    let window = parse_duration(text).map_err(|e| format!("--past: {e}"))?;
    // Refused rather than rounded: the server would be asked for a window other than the
    // one typed, and the manifest would record that other window.
    if window.subsec_nanos() != 0 {
        return Err(format!(
            "--past {text}: the window is whole seconds (e.g. 90s, 5m)"
        ));
    }
    match window.as_secs() {
        0 => Err("--past must be at least 1s".into()),
        seconds => Ok(seconds),
    }
}

/// The outcome of one endpoint.
pub struct Outcome {
    endpoint: Endpoint,
    started: SystemTime,
    elapsed: Duration,
    result: Result<Vec<u8>, String>,
    server: Option<String>,
}

/// Fetches one endpoint (sending `token` when there is one) and checks that a `.pb.gz` answer
/// is a profile.
pub fn fetch_endpoint(base: &str, endpoint: Endpoint, token: Option<&Token>) -> Outcome {
    let started = SystemTime::now();
    let clock = Instant::now();
    let url = format!("{base}{}", endpoint.path);
    let (result, server) = match fetch::get(&url, endpoint.timeout, token) {
        Ok(fetched) => {
            let checked = if endpoint.file.ends_with(".pb.gz") {
                pprofd::profile::decode(&fetched.body)
                    .map(|_| fetched.body)
                    .map_err(|e| format!("GET {url}: the answer is not a profile: {e}"))
            } else {
                Ok(fetched.body)
            };
            (checked, fetched.server)
        }
        Err(e) => (Err(e.message), None),
    };
    Outcome {
        endpoint,
        started,
        elapsed: clock.elapsed(),
        result,
        server,
    }
}

impl Outcome {
    /// The bytes served, or why there are none.
    pub fn result(&self) -> &Result<Vec<u8>, String> {
        &self.result
    }
}

/// Runs `pprofd collect`, sending `token` with every request, and returns what to print.
/// The token is never written into the archive.
pub fn run(args: &CollectArgs, token: Option<&Token>) -> Result<String, String> {
    let bases = args
        .targets
        .iter()
        .map(|t| base_url(t))
        .collect::<Result<Vec<_>, _>>()?;
    let series = match (&args.every, args.count) {
        (Some(every), Some(count)) if count > 0 => Some((parse_duration(every)?, count)),
        (Some(_), Some(_)) => return Err("--count must be at least 1".into()),
        _ => None,
    };
    if args.seconds == 0 {
        return Err("--seconds must be at least 1".into());
    }
    let past = args.past.as_deref().map(past_seconds).transpose()?;
    let outputs: Vec<PathBuf> = match (&args.output, bases.len()) {
        (Some(path), 1) => vec![path.clone()],
        (dir, _) => {
            let dir = dir.clone().unwrap_or_else(|| PathBuf::from("."));
            if bases.len() > 1 {
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            bases
                .iter()
                .map(|b| dir.join(default_archive_name(b)))
                .collect()
        }
    };
    let bars = MultiProgress::new();
    let results: Vec<Result<String, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = bases
            .iter()
            .zip(&outputs)
            .map(|(base, output)| {
                let bars = &bars;
                scope.spawn(move || match series {
                    Some((every, count)) => {
                        collect_heap_series(base, output, every, count, bars, token)
                    }
                    None => collect_all(base, output, args.seconds, past, bars, token),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a collector thread failed".into()))
            })
            .collect()
    });
    let mut report = String::new();
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(line) => report.push_str(&line),
            Err(e) => failures.push(e),
        }
    }
    if failures.is_empty() {
        Ok(report)
    } else {
        crate::print_stdout(&report);
        Err(failures.join("; "))
    }
}

/// `http://host:port` from what the user typed (`host:port`, a URL with `/debug/pprof/...`).
pub fn base_url(target: &str) -> Result<String, String> {
    let url = fetch::normalize_url(target)?;
    let url = match url.find("/debug/pprof") {
        Some(i) => url[..i].to_string(),
        None => url.trim_end_matches('/').to_string(),
    };
    Ok(url)
}

fn default_archive_name(base: &str) -> String {
    let host: String = base
        .trim_start_matches("http://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!(
        "pprof-{host}-{}.tar.gz",
        compact_timestamp(SystemTime::now())
    )
}

/// Collects every endpoint from `base` into `output`, sending `token`; the CPU profile runs
/// beside the others. With `past` (seconds), the flight recorder's files of that window are
/// fetched first.
pub fn collect_all(
    base: &str,
    output: &Path,
    seconds: u64,
    past: Option<u64>,
    bars: &MultiProgress,
    token: Option<&Token>,
) -> Result<String, String> {
    let started = SystemTime::now();
    // A quick request first, so an unreachable service or a missing token fails now rather
    // than after the CPU profile.
    probe(base, token)?;
    // Before the live profiles: the window then ends when the collection was asked for (the
    // moment the user means by "the last 5 minutes"), and the recorder's answers do not
    // share the service with a CPU profile in progress. They answer at once, so the live
    // CPU profile starts only moments later. A failure (not recording, window too long) is
    // that file's error, like any endpoint's.
    let past_outcomes: Vec<Outcome> = past
        .map(past_endpoints)
        .unwrap_or_default()
        .into_iter()
        .map(|e| fetch_endpoint(base, e, token))
        .collect();
    let mut list = endpoints(seconds);
    let cpu = list.remove(0);
    let bar = bars.add(ProgressBar::new(seconds));
    bar.set_style(
        ProgressStyle::with_template("{prefix} CPU profile [{bar:30}] {pos}/{len} s {msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar.set_prefix(base.to_string());
    let done = AtomicBool::new(false);
    let mut outcomes = std::thread::scope(|scope| {
        let ticker = scope.spawn(|| {
            let clock = Instant::now();
            while !done.load(Ordering::Relaxed) {
                bar.set_position(clock.elapsed().as_secs().min(seconds));
                if clock.elapsed().as_secs() >= seconds {
                    bar.set_message("symbolizing");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let others = scope.spawn(|| {
            list.into_iter()
                .map(|e| fetch_endpoint(base, e, token))
                .collect::<Vec<_>>()
        });
        let cpu = fetch_endpoint(base, cpu, token);
        done.store(true, Ordering::Relaxed);
        let _ = ticker.join();
        let mut outcomes = vec![cpu];
        outcomes.extend(others.join().unwrap_or_default());
        outcomes
    });
    // Listed after the normal files, so the manifest keeps its order with or without --past.
    outcomes.extend(past_outcomes);
    bar.finish_and_clear();
    write_archive(base, output, started, "full", &outcomes)
}

/// Takes `count` heap profiles `every` apart into `output`, sending `token`.
pub fn collect_heap_series(
    base: &str,
    output: &Path,
    every: Duration,
    count: u32,
    bars: &MultiProgress,
    token: Option<&Token>,
) -> Result<String, String> {
    let started = SystemTime::now();
    probe(base, token)?;
    let bar = bars.add(ProgressBar::new(count as u64));
    bar.set_style(
        ProgressStyle::with_template("{prefix} heap series [{bar:30}] {pos}/{len} {msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar.set_prefix(base.to_string());
    let mut outcomes = Vec::new();
    // The table's heap and command-line files; the series numbers the heap profiles.
    let table = endpoints(1);
    let heap_path = table
        .iter()
        .find(|e| e.file == "heap.pb.gz")
        .map(|e| e.path.clone())
        .expect("the endpoint table has the heap profile");
    let cmdline = table
        .into_iter()
        .find(|e| e.file == "cmdline.txt")
        .expect("the endpoint table has the command line");
    for i in 1..=count {
        let taken = Instant::now();
        outcomes.push(fetch_endpoint(
            base,
            Endpoint {
                file: format!("heap-{i:02}.pb.gz"),
                path: heap_path.clone(),
                what: "heap profile of the series",
                timeout: SNAPSHOT_TIMEOUT,
                past_seconds: None,
            },
            token,
        ));
        bar.set_position(i as u64);
        if i < count {
            bar.set_message(format!("next in {}", describe_duration(every)));
            std::thread::sleep(every.saturating_sub(taken.elapsed()));
        }
    }
    outcomes.push(fetch_endpoint(base, cmdline, token));
    bar.finish_and_clear();
    if let Some(Err(reason)) = outcomes.iter().map(Outcome::result).find(|r| r.is_err()) {
        if outcomes
            .iter()
            .filter(|o| o.endpoint.file.starts_with("heap-"))
            .all(|o| o.result.is_err())
        {
            return Err(format!("{base}: no heap profile collected: {reason}"));
        }
    }
    write_archive(base, output, started, "heap series", &outcomes)
}

/// Fails when the service cannot be reached, refuses the token, or does not serve
/// `/debug/pprof/` at all (every endpoint would fail the same way, and nine 404s say less
/// than one line); other errors are left to the endpoints that have them.
fn probe(base: &str, token: Option<&Token>) -> Result<(), String> {
    match fetch::get(
        &format!("{base}/debug/pprof/cmdline"),
        Duration::from_secs(10),
        token,
    ) {
        Err(e) if matches!(e.status, None | Some(401)) => {
            Err(format!("{base}: nothing collected: {}", e.message))
        }
        // Every pprof server, Go's and pprofd's, answers cmdline.
        Err(e) if e.status == Some(404) => Err(format!(
            "{base}: nothing collected: this address does not serve /debug/pprof/ ({}). \
             Check that it is the service's PPROF_ADDR (pprofd's own port), not its application \
             port, and that the service calls pprofd::init_from_env()",
            e.message
        )),
        _ => Ok(()),
    }
}

/// Writes the archive: the profiles served, `manifest.json` and `README.txt`, under one folder.
pub fn write_archive(
    base: &str,
    output: &Path,
    started: SystemTime,
    mode: &str,
    outcomes: &[Outcome],
) -> Result<String, String> {
    let served: Vec<&Outcome> = outcomes.iter().filter(|o| o.result.is_ok()).collect();
    if served.is_empty() {
        let reasons: Vec<&str> = outcomes
            .iter()
            .filter_map(|o| o.result.as_ref().err().map(String::as_str))
            .collect();
        return Err(format!("{base}: nothing collected: {}", reasons.join("; ")));
    }
    let folder = output
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .trim_end_matches(".tar.gz")
                .trim_end_matches(".tgz")
                .to_string()
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "pprof".into());
    let manifest = manifest(base, started, mode, outcomes);
    let readme = readme(base, mode, outcomes);
    let file = std::fs::File::create(output).map_err(|e| format!("{}: {e}", output.display()))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let written = (|| -> std::io::Result<()> {
        for outcome in &served {
            if let Ok(bytes) = &outcome.result {
                append(&mut tar, &folder, &outcome.endpoint.file, bytes)?;
            }
        }
        append(&mut tar, &folder, "manifest.json", manifest.as_bytes())?;
        append(&mut tar, &folder, "README.txt", readme.as_bytes())?;
        tar.into_inner()?.finish()?.flush()
    })();
    written.map_err(|e| format!("{}: {e}", output.display()))?;
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            o.result
                .as_ref()
                .err()
                .map(|e| format!("  {}: {e}", o.endpoint.file))
        })
        .collect();
    let mut line = format!(
        "wrote {} ({} of {} endpoints answered, from {base})\n",
        output.display(),
        served.len(),
        outcomes.len()
    );
    if !failed.is_empty() {
        line.push_str(&format!(
            "not collected (see manifest.json):\n{}\n",
            failed.join("\n")
        ));
    }
    Ok(line)
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    folder: &str,
    name: &str,
    data: &[u8],
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(unix_seconds(SystemTime::now()));
    header.set_cksum();
    tar.append_data(&mut header, format!("{folder}/{name}"), data)
}

/// A manifest entry: `fields`, plus `past_seconds` (the window asked for) for a `--past`
/// file. Other files have no such key rather than a null, so older readers see them as before.
fn entry(endpoint: &Endpoint, mut fields: Value) -> Value {
    if let (Some(seconds), Some(map)) = (endpoint.past_seconds, fields.as_object_mut()) {
        map.insert("past_seconds".into(), seconds.into());
    }
    fields
}

fn manifest(base: &str, started: SystemTime, mode: &str, outcomes: &[Outcome]) -> String {
    let files: Vec<Value> = outcomes
        .iter()
        .filter_map(|o| {
            let bytes = o.result.as_ref().ok()?;
            Some(entry(
                &o.endpoint,
                json!({
                    "file": o.endpoint.file,
                    "endpoint": o.endpoint.path,
                    "what": o.endpoint.what,
                    "fetched_at": rfc3339(o.started),
                    "seconds_taken": (o.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
                    "bytes": bytes.len(),
                }),
            ))
        })
        .collect();
    let failed: Vec<Value> = outcomes
        .iter()
        .filter_map(|o| {
            let error = o.result.as_ref().err()?;
            Some(entry(
                &o.endpoint,
                json!({
                    "file": o.endpoint.file,
                    "endpoint": o.endpoint.path,
                    "what": o.endpoint.what,
                    "error": error,
                }),
            ))
        })
        .collect();
    let command_line: Option<Vec<String>> = outcomes
        .iter()
        .find(|o| o.endpoint.file == "cmdline.txt")
        .and_then(|o| o.result.as_ref().ok())
        .map(|b| {
            String::from_utf8_lossy(b)
                .split('\0')
                .map(str::to_string)
                .collect()
        });
    let server = outcomes.iter().find_map(|o| o.server.clone());
    let manifest = json!({
        "target": base,
        "mode": mode,
        "collected_by": format!("pprofd-cli {}", env!("CARGO_PKG_VERSION")),
        "server": server,
        "service_command_line": command_line,
        "started": rfc3339(started),
        "finished": rfc3339(SystemTime::now()),
        "files": files,
        "failed": failed,
    });
    serde_json::to_string_pretty(&manifest).expect("a json! value always serializes") + "\n"
}

fn readme(base: &str, mode: &str, outcomes: &[Outcome]) -> String {
    let mut text = format!(
        "Profiles collected from {base} by pprofd-cli {} ({mode}).\n\n\
         Files (manifest.json lists each with its endpoint and time, and what could not be collected and why):\n",
        env!("CARGO_PKG_VERSION")
    );
    for o in outcomes.iter().filter(|o| o.result.is_ok()) {
        text.push_str(&format!("  {:<22} {}", o.endpoint.file, o.endpoint.what));
        if let Some(seconds) = o.endpoint.past_seconds {
            // The table's text says "the --past window"; the reader needs where it lies.
            text.push_str(&format!(
                "; window: the {seconds} s up to {}",
                rfc3339(o.started)
            ));
        }
        text.push('\n');
    }
    text.push_str(
        "\nReading them:\n\
         - With Go installed: go tool pprof -http 127.0.0.1:8079 cpu.pb.gz   (or -top, or any .pb.gz here)\n\
         - Without Go: pprofd top cpu.pb.gz, pprofd flame heap.pb.gz -o heap.svg,\n\
           pprofd top THIS-ARCHIVE.tar.gz:heap (reads straight from the archive)\n\
         - Growth between two heap profiles: pprofd diff OLD.pb.gz NEW.pb.gz\n\
           (or go tool pprof -top -base OLD.pb.gz NEW.pb.gz)\n\
         - goroutine-debug2.txt is plain text: every thread, its state and its stack.\n",
    );
    if outcomes
        .iter()
        .any(|o| o.endpoint.past_seconds.is_some() && o.result.is_ok())
    {
        text.push_str(
            "- The *-past.pb.gz files come from the service's flight recorder (PPROF_RECORD) and\n\
             \x20 cover the window before the collection began: pprofd top THIS-ARCHIVE.tar.gz:cpu-past\n",
        );
    }
    text
}

/// Parses `500ms`, `30s`, `10m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 10m or 1h"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{text:?} is not a duration like 30s, 10m or 1h")),
    };
    Ok(Duration::from_secs(seconds))
}

fn describe_duration(d: Duration) -> String {
    match d.as_secs() {
        0 => format!("{} ms", d.as_millis()),
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Year, month, day, hour, minute, second (UTC) of `t`.
fn civil(t: SystemTime) -> (i64, u32, u32, u64, u64, u64) {
    let secs = unix_seconds(t);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `2026-11-27T00:15:32Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `20261127-001532`, for file names.
pub fn compact_timestamp(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(t);
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_timestamps() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("ten minutes").is_err());
        let t = UNIX_EPOCH + Duration::from_secs(1_795_739_732);
        assert_eq!(rfc3339(t), "2026-11-27T00:35:32Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(compact_timestamp(t), "20261127-003532");
    }

    #[test]
    fn a_collection_fetches_every_archive_file_of_the_table_cpu_first() {
        let list = endpoints(7);
        assert_eq!(list[0].file, "cpu.pb.gz");
        assert_eq!(list[0].path, "/debug/pprof/profile?seconds=7");
        assert_eq!(list[0].timeout, Duration::from_secs(67));
        let files: Vec<&str> = list.iter().map(|e| e.file.as_str()).collect();
        for file in [
            "heap.pb.gz",
            "goroutine.pb.gz",
            "goroutine-debug2.txt",
            "cmdline.txt",
        ] {
            assert!(files.contains(&file), "{files:?}");
        }
        let dump = list
            .iter()
            .find(|e| e.file == "goroutine-debug2.txt")
            .unwrap();
        assert_eq!(dump.path, "/debug/pprof/goroutine?debug=2");
        assert!(list[1..].iter().all(|e| e.timeout == SNAPSHOT_TIMEOUT));
    }

    #[test]
    fn past_fetches_every_past_archive_of_the_table_with_its_window() {
        let list = past_endpoints(300);
        let table: Vec<_> = pprofd::endpoints::ENDPOINTS
            .iter()
            .filter_map(|e| Some((e, e.past_archive?)))
            .collect();
        assert_eq!(list.len(), table.len());
        for (endpoint, (table_endpoint, file)) in list.iter().zip(&table) {
            assert_eq!(endpoint.file, file.file);
            assert_eq!(
                endpoint.path,
                format!("/debug/pprof/{}?past=300", table_endpoint.name)
            );
            assert_eq!(endpoint.timeout, SNAPSHOT_TIMEOUT);
            assert_eq!(endpoint.past_seconds, Some(300));
        }
        let paths: Vec<(&str, &str)> = list
            .iter()
            .map(|e| (e.file.as_str(), e.path.as_str()))
            .collect();
        for expected in [
            ("allocs-past.pb.gz", "/debug/pprof/allocs?past=300"),
            ("heap-past.pb.gz", "/debug/pprof/heap?past=300"),
            ("cpu-past.pb.gz", "/debug/pprof/profile?past=300"),
        ] {
            assert!(paths.contains(&expected), "{paths:?}");
        }
        // The recorded files must not overwrite the live ones in the archive.
        let normal = endpoints(30);
        assert!(list.iter().all(|p| normal
            .iter()
            .all(|n| n.file != p.file && n.past_seconds.is_none())));
    }

    #[test]
    fn past_takes_the_duration_syntax_of_every_in_whole_seconds() {
        assert_eq!(past_seconds("300s"), Ok(300));
        assert_eq!(past_seconds("5m"), Ok(300));
        assert_eq!(past_seconds("1h"), Ok(3600));
        assert_eq!(past_seconds("90"), Ok(90));
        assert_eq!(past_seconds("2000ms"), Ok(2));
        for bad in ["0s", "1500ms", "five minutes", ""] {
            let message = past_seconds(bad).unwrap_err();
            assert!(message.contains("--past"), "{bad}: {message}");
        }
    }

    #[test]
    fn past_is_an_option_of_the_full_collection_not_of_the_heap_series() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: CollectArgs,
        }
        let cli = Cli::try_parse_from(["collect", "h:1", "--past", "5m"]).unwrap();
        assert_eq!(cli.args.past.as_deref(), Some("5m"));
        assert!(Cli::try_parse_from([
            "collect", "h:1", "--past", "5m", "--every", "1m", "--count", "2"
        ])
        .is_err());
    }

    /// An outcome as `fetch_endpoint` makes it, without a server.
    fn outcome(endpoint: Endpoint, result: Result<Vec<u8>, String>) -> Outcome {
        Outcome {
            endpoint,
            started: UNIX_EPOCH + Duration::from_secs(1_795_739_732),
            elapsed: Duration::from_millis(3),
            result,
            server: None,
        }
    }

    #[test]
    fn past_files_carry_their_window_in_manifest_and_readme_and_a_refusal_is_their_error() {
        let past_file = |name: &str| {
            past_endpoints(60)
                .into_iter()
                .find(|e| e.file == name)
                .unwrap_or_else(|| panic!("the table has {name}"))
        };
        let refusal = "GET http://h:1/debug/pprof/profile?past=60: HTTP 400: \
                       past=60 needs the flight recorder: start the service with PPROF_RECORD=10m";
        let cmdline = endpoints(1)
            .into_iter()
            .find(|e| e.file == "cmdline.txt")
            .unwrap();
        let outcomes = vec![
            outcome(cmdline, Ok(b"svc\0--flag".to_vec())),
            outcome(past_file("cpu-past.pb.gz"), Err(refusal.into())),
            outcome(past_file("heap-past.pb.gz"), Ok(vec![1, 2, 3])),
        ];
        let manifest: Value =
            serde_json::from_str(&manifest("http://h:1", UNIX_EPOCH, "full", &outcomes)).unwrap();
        let failed = &manifest["failed"][0];
        assert_eq!(failed["file"], "cpu-past.pb.gz");
        assert_eq!(failed["endpoint"], "/debug/pprof/profile?past=60");
        assert_eq!(failed["error"], refusal);
        assert_eq!(failed["past_seconds"], 60);
        let files = manifest["files"].as_array().unwrap();
        assert_eq!(files[1]["file"], "heap-past.pb.gz");
        assert_eq!(files[1]["past_seconds"], 60);
        assert!(
            files[0].get("past_seconds").is_none(),
            "only --past files have a window: {}",
            files[0]
        );

        let readme = readme("http://h:1", "full", &outcomes);
        let heap_line = readme
            .lines()
            .find(|l| l.contains("heap-past.pb.gz"))
            .unwrap();
        assert!(
            heap_line.ends_with("; window: the 60 s up to 2026-11-27T00:35:32Z"),
            "{heap_line}"
        );
        assert!(readme.contains("PPROF_RECORD"), "{readme}");
        assert!(
            !readme.contains("cpu-past.pb.gz"),
            "a file not collected is not listed as one: {readme}"
        );
    }

    #[test]
    fn targets_become_base_urls() {
        assert_eq!(base_url("127.0.0.1:6060").unwrap(), "http://127.0.0.1:6060");
        assert_eq!(base_url("http://h:1/debug/pprof/").unwrap(), "http://h:1");
        assert!(base_url("https://h:1").is_err());
        let ftp = base_url("ftp://h:1").unwrap_err();
        assert!(ftp.contains("ftp://"), "{ftp}");
    }
}
