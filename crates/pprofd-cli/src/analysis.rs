//! Reading a decoded profile: stacks as source frames, sample types, and values with units.

use std::collections::{HashMap, HashSet};

use pprofd::profile::proto::{Function, Location, Profile, Sample};

/// One source-level frame of a stack: a function and the line executing in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceLine<'a> {
    /// Demangled function name, or the address when the profile has no symbol for it.
    pub function: &'a str,
    /// Source file, empty when unknown.
    pub file: &'a str,
    /// Line number, 0 when unknown.
    pub line: i64,
}

impl SourceLine<'_> {
    /// `file:line`, or what of it is known (empty when no file is).
    pub fn position(&self) -> String {
        match (self.file.is_empty(), self.line) {
            (true, _) => String::new(),
            (false, 0) => self.file.to_string(),
            (false, line) => format!("{}:{line}", self.file),
        }
    }

    /// Whether the frame is the profiled program's own Rust code rather than the Rust standard
    /// library, a dependency from a registry or git checkout, the C library or pprofd itself.
    pub fn is_own_code(&self) -> bool {
        let file = self.file;
        let foreign_file = !file.ends_with(".rs")
            || file.starts_with("/rustc/")
            || ["/library/std/", "/library/core/", "/library/alloc/"]
                .iter()
                .any(|std| file.contains(std))
            || file.contains("/registry/src/")
            || file.contains("/git/checkouts/");
        let profiler = self
            .function
            .trim_start_matches('<')
            .starts_with("pprofd::");
        !foreign_file && !profiler
    }
}

/// A profile with its tables indexed for reading.
pub struct View<'a> {
    profile: &'a Profile,
    functions: HashMap<u64, &'a Function>,
    locations: HashMap<u64, &'a Location>,
    /// Names for locations without symbols, kept so frames can borrow them.
    addresses: HashMap<u64, String>,
}

impl<'a> View<'a> {
    /// Indexes `profile`, which [`pprofd::profile::decode`] has validated.
    pub fn new(profile: &'a Profile) -> Self {
        let addresses = profile
            .location
            .iter()
            .filter(|l| l.line.is_empty())
            .map(|l| (l.id, format!("{:#x}", l.address)))
            .collect();
        View {
            profile,
            functions: profile.function.iter().map(|f| (f.id, f)).collect(),
            locations: profile.location.iter().map(|l| (l.id, l)).collect(),
            addresses,
        }
    }

    /// The profile being read.
    pub fn profile(&self) -> &'a Profile {
        self.profile
    }

    fn string(&self, index: i64) -> &'a str {
        self.profile
            .string_table
            .get(index as usize)
            .map(String::as_str)
            .unwrap_or("")
    }

    /// The sample types, as `(type, unit)`.
    pub fn sample_types(&self) -> Vec<(&'a str, &'a str)> {
        self.profile
            .sample_type
            .iter()
            .map(|t| (self.string(t.r#type), self.string(t.unit)))
            .collect()
    }

    /// The index of the sample type called `name`; without a name, the profile's default
    /// sample type, or the last one as `go tool pprof` picks.
    pub fn sample_index(&self, name: Option<&str>) -> Result<usize, String> {
        let types = self.sample_types();
        if types.is_empty() {
            return Err("profile has no sample types".into());
        }
        let wanted = match name {
            Some(name) => name,
            None if self.profile.default_sample_type != 0 => {
                self.string(self.profile.default_sample_type)
            }
            None => return Ok(types.len() - 1),
        };
        types.iter().position(|(t, _)| *t == wanted).ok_or_else(|| {
            let names: Vec<&str> = types.iter().map(|(t, _)| *t).collect();
            format!(
                "profile has no sample type {wanted:?}; it has {}",
                names.join(", ")
            )
        })
    }

    /// The frames of `sample`, innermost (leaf) first, inline chains expanded.
    pub fn frames(&self, sample: &Sample) -> Vec<SourceLine<'_>> {
        let mut frames = Vec::new();
        for id in &sample.location_id {
            let Some(location) = self.locations.get(id) else {
                continue;
            };
            if location.line.is_empty() {
                frames.push(SourceLine {
                    function: self.addresses.get(id).map(String::as_str).unwrap_or("?"),
                    file: "",
                    line: 0,
                });
            }
            for line in &location.line {
                let (function, file) = match self.functions.get(&line.function_id) {
                    Some(f) => (self.string(f.name), self.string(f.filename)),
                    None => ("?", ""),
                };
                frames.push(SourceLine {
                    function,
                    file,
                    line: line.line,
                });
            }
        }
        frames
    }

    /// Sum of sample type `index` over all samples.
    pub fn total(&self, index: usize) -> i64 {
        self.profile.sample.iter().map(|s| s.value[index]).sum()
    }

    /// The value of `sample`'s label `key`: its string, or its number (with its unit).
    pub fn label(&self, sample: &Sample, key: &str) -> Option<String> {
        let label = sample.label.iter().find(|l| self.string(l.key) == key)?;
        Some(match (label.str, self.string(label.num_unit)) {
            (0, "") => label.num.to_string(),
            (0, unit) => format!("{}{unit}", label.num),
            (value, _) => self.string(value).to_string(),
        })
    }
}

/// `--tag-focus KEY=VALUE`: keep only the samples whose label KEY is VALUE.
#[derive(Clone, Debug)]
pub struct TagFocus {
    /// The label key.
    pub key: String,
    /// The label value a sample must have, exactly.
    pub value: String,
}

impl std::str::FromStr for TagFocus {
    type Err = String;

    fn from_str(spec: &str) -> Result<TagFocus, String> {
        match spec.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok(TagFocus {
                key: key.to_string(),
                value: value.to_string(),
            }),
            _ => Err(format!(
                "{spec:?} is not KEY=VALUE (e.g. operation=GetUser)"
            )),
        }
    }
}

impl TagFocus {
    /// A copy of `profile` with only the samples labelled `key=value`; an error that lists the
    /// values there are when none is.
    pub fn apply(&self, profile: &Profile) -> Result<Profile, String> {
        let view = View::new(profile);
        let mut kept = profile.clone();
        kept.sample
            .retain(|s| view.label(s, &self.key).as_deref() == Some(self.value.as_str()));
        if kept.sample.is_empty() {
            let values: Vec<String> = by_label(&view, 0, &self.key)
                .into_iter()
                .filter_map(|(value, _)| value)
                .collect();
            return Err(match values.is_empty() {
                true => format!("no sample has the label {:?}", self.key),
                false => format!(
                    "no sample has {}={:?}; its values are: {}",
                    self.key,
                    self.value,
                    values.join(", ")
                ),
            });
        }
        Ok(kept)
    }

    /// Among the samples this focus keeps, the function with the largest flat value of sample
    /// type `index` (of equal ones, the first by name); `None` when no sample is kept.
    pub fn hottest_function(&self, profile: &Profile, index: usize) -> Option<String> {
        let kept = self.apply(profile).ok()?;
        by_function(&View::new(&kept), index)
            .into_iter()
            .max_by(|a, b| {
                a.flat
                    .cmp(&b.flat)
                    .then_with(|| b.function.cmp(&a.function))
            })
            .map(|row| row.function)
    }

    /// Among the samples this focus keeps, the function of the call site (see [`call_site`])
    /// with the largest value of sample type `index`: the program's own code that waited or
    /// spent, where the hottest function may be the C library's `syscall`.
    pub fn hottest_call_site(&self, profile: &Profile, index: usize) -> Option<String> {
        let kept = self.apply(profile).ok()?;
        let mut by_function: HashMap<String, i64> = HashMap::new();
        for ((function, _), value) in by_call_site(&View::new(&kept), index) {
            *by_function.entry(function).or_default() += value;
        }
        by_function
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
            .map(|(function, _)| function)
    }
}

/// Sums of sample type `index` by the value of label `key` (`None`: samples without it),
/// largest first.
pub fn by_label(view: &View, index: usize, key: &str) -> Vec<(Option<String>, i64)> {
    let mut totals: HashMap<Option<String>, i64> = HashMap::new();
    for sample in &view.profile().sample {
        *totals.entry(view.label(sample, key)).or_default() += sample.value[index];
    }
    let mut totals: Vec<(Option<String>, i64)> = totals.into_iter().collect();
    totals.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    totals
}

/// Flat and cumulative value of one function, with the line that carries most of it.
#[derive(Debug)]
pub struct FunctionRow {
    /// The function's name.
    pub function: String,
    /// Where most of its value is: the line executing in it, `file:line`.
    pub hottest_line: String,
    /// Value of samples where this function is the leaf.
    pub flat: i64,
    /// Value of samples where this function is anywhere on the stack.
    pub cum: i64,
}

/// Flat and cumulative values per function, in no particular order.
pub fn by_function(view: &View, index: usize) -> Vec<FunctionRow> {
    struct Totals {
        flat: i64,
        cum: i64,
        lines: HashMap<String, i64>,
    }
    let mut totals: HashMap<&str, Totals> = HashMap::new();
    for sample in &view.profile().sample {
        let value = sample.value[index];
        let frames = view.frames(sample);
        let mut seen = HashSet::new();
        for (depth, frame) in frames.iter().enumerate() {
            // A recursive function counts once per sample in `cum`, at its innermost frame.
            if !seen.insert(frame.function) {
                continue;
            }
            let entry = totals.entry(frame.function).or_insert_with(|| Totals {
                flat: 0,
                cum: 0,
                lines: HashMap::new(),
            });
            entry.cum += value;
            if depth == 0 {
                entry.flat += value;
            }
            *entry.lines.entry(frame.position()).or_default() += value;
        }
    }
    totals
        .into_iter()
        .map(|(function, t)| FunctionRow {
            function: function.to_string(),
            hottest_line: t
                .lines
                .into_iter()
                .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
                .map(|(line, _)| line)
                .unwrap_or_default(),
            flat: t.flat,
            cum: t.cum,
        })
        .collect()
}

/// The call site a sample is charged to: its innermost frame in the program's own code
/// (see [`SourceLine::is_own_code`]), or its leaf when no frame is.
pub fn call_site<'v>(frames: &[SourceLine<'v>]) -> Option<SourceLine<'v>> {
    frames
        .iter()
        .find(|f| f.is_own_code())
        .or(frames.first())
        .copied()
}

/// Values per call site (see [`call_site`]), keyed by `(function, file:line)`.
pub fn by_call_site(view: &View, index: usize) -> HashMap<(String, String), i64> {
    let mut sites: HashMap<(String, String), i64> = HashMap::new();
    for sample in &view.profile().sample {
        let frames = view.frames(sample);
        if let Some(site) = call_site(&frames) {
            *sites
                .entry((site.function.to_string(), site.position()))
                .or_default() += sample.value[index];
        }
    }
    sites
}

/// Formats `value` in `unit` the way people read it: seconds, bytes in binary multiples, counts.
pub fn format_value(value: i64, unit: &str) -> String {
    let magnitude = value.unsigned_abs() as f64;
    let sign = if value < 0 { "-" } else { "" };
    match unit {
        "nanoseconds" => {
            let (scaled, suffix) = if magnitude >= 1e9 {
                (magnitude / 1e9, "s")
            } else if magnitude >= 1e6 {
                (magnitude / 1e6, "ms")
            } else if magnitude >= 1e3 {
                (magnitude / 1e3, "us")
            } else {
                (magnitude, "ns")
            };
            format!("{sign}{}{suffix}", trim_number(scaled))
        }
        "bytes" => {
            let units = ["B", "KiB", "MiB", "GiB", "TiB"];
            let mut scaled = magnitude;
            let mut i = 0;
            while scaled >= 1024.0 && i + 1 < units.len() {
                scaled /= 1024.0;
                i += 1;
            }
            format!("{sign}{}{}", trim_number(scaled), units[i])
        }
        _ => value.to_string(),
    }
}

fn trim_number(x: f64) -> String {
    if x >= 100.0 || x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

/// `part` as a percentage of `whole`, `0.00%` when `whole` is zero.
pub fn percent(part: i64, whole: i64) -> String {
    if whole == 0 {
        "0.00%".into()
    } else {
        format!("{:.2}%", part as f64 * 100.0 / whole as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_in_their_units() {
        assert_eq!(format_value(2_500_000_000, "nanoseconds"), "2.50s");
        assert_eq!(format_value(1_500_000, "nanoseconds"), "1.50ms");
        assert_eq!(format_value(3 * 1024 * 1024, "bytes"), "3MiB");
        assert_eq!(format_value(-1536, "bytes"), "-1.50KiB");
        assert_eq!(format_value(42, "count"), "42");
        assert_eq!(percent(1, 3), "33.33%");
        assert_eq!(percent(1, 0), "0.00%");
    }

    #[test]
    fn own_code_excludes_std_dependencies_libc_and_the_profiler() {
        let frame = |function, file| SourceLine {
            function,
            file,
            line: 1,
        };
        assert!(frame(
            "demo_router::cache::stock",
            "crates/demo-router/src/cache.rs"
        )
        .is_own_code());
        assert!(!frame(
            "std::sys::sync::mutex::futex::Mutex::lock_contended",
            "/rustc/abc/library/std/src/sys/sync/mutex/futex.rs"
        )
        .is_own_code());
        assert!(!frame(
            "serde_json::ser::format_escaped_str",
            "/root/.cargo/registry/src/index.crates.io-1/serde_json-1.0.0/src/ser.rs"
        )
        .is_own_code());
        assert!(!frame("syscall", "").is_own_code());
        assert!(!frame(
            "syscall",
            "./misc/../sysdeps/unix/sysv/linux/x86_64/syscall.S"
        )
        .is_own_code());
        assert!(!frame(
            "<pprofd::Allocator<A> as core::alloc::global::GlobalAlloc>::alloc",
            "/work/crates/pprofd/src/heap.rs"
        )
        .is_own_code());
    }
}
