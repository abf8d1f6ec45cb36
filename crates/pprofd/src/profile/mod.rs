//! The pprof profile model: what every profiler produces and every endpoint encodes.
//!
//! A profiler records stacks of [`Frame`]s with values and labels into a [`ProfileBuilder`];
//! [`ProfileBuilder::build`] then interns strings, creates one `Location` per address (its
//! inline chain as several `Line`s) and one `Mapping` per loaded object, asking a
//! [`Resolver`] for symbols. The result is the [`proto::Profile`] message, which
//! [`encode_gzip`] turns into the bytes `go tool pprof` reads and [`decode`] reads back.

mod budget;
where_pprofd_profiles! {
    pub(crate) mod legacy_text;
}
pub mod proto;
mod prune;

pub use prune::remove_uninteresting_frames;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;

/// One frame of a recorded stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Frame {
    /// An instruction address, already normalised for symbolization: the interrupted PC for
    /// the leaf, the return address minus one for every caller (so it points into the call).
    Address(u64),
    /// A frame without an address, such as the `[truncated]` marker at the root of a stack
    /// the unwinder could not finish.
    Synthetic(String),
}

impl Frame {
    /// The address of an [`Frame::Address`] frame.
    pub fn address(&self) -> Option<u64> {
        match self {
            Frame::Address(a) => Some(*a),
            Frame::Synthetic(_) => None,
        }
    }
}

/// The value of a sample label.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LabelValue {
    /// A string label, such as a thread name.
    Str(String),
    /// A numeric label with an optional unit, such as an allocation size in bytes.
    Num(i64, Option<&'static str>),
}

/// A `key = value` label attached to a sample.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Label {
    /// The label's key, such as `thread`.
    pub key: &'static str,
    /// The label's value.
    pub value: LabelValue,
}

impl Label {
    /// A string label.
    pub fn str(key: &'static str, value: impl Into<String>) -> Self {
        Label {
            key,
            value: LabelValue::Str(value.into()),
        }
    }

    /// A numeric label.
    pub fn num(key: &'static str, value: i64, unit: Option<&'static str>) -> Self {
        Label {
            key,
            value: LabelValue::Num(value, unit),
        }
    }
}

/// A loaded object as the profile's `Mapping` table describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MappingInfo {
    /// First address of the executable mapping.
    pub start: u64,
    /// One past its last address.
    pub limit: u64,
    /// Offset in the file that `start` maps.
    pub file_offset: u64,
    /// Path of the object (or a pseudo-name such as `[vdso]`).
    pub path: String,
    /// GNU build ID in lowercase hex, empty when the object has none.
    pub build_id: String,
}

/// A source-level frame: one entry of a location's inline chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceFrame {
    /// Demangled function name.
    pub function: String,
    /// Symbol name as in the object (mangled), the same as `function` for C symbols, or
    /// empty when only the source name is known (so pprof keeps `function` as it is).
    pub system_name: String,
    /// Source file, empty when unknown.
    pub file: String,
    /// Source line, 0 when unknown.
    pub line: i64,
}

/// What a profile needs to know about addresses: which object each belongs to and which
/// functions, files and lines it stands for.
pub trait Resolver {
    /// The process's executable mappings, main executable first.
    fn mappings(&self) -> &[MappingInfo];
    /// The inline chain at `address`, innermost function first; empty when unknown.
    fn frames(&self, address: u64) -> &[SourceFrame];
    /// What the profile should say about symbolization, such as objects left unsymbolized.
    fn comments(&self) -> &[String] {
        &[]
    }
}

/// A resolver that knows nothing: locations keep their addresses only.
pub struct NoSymbols;

impl Resolver for NoSymbols {
    fn mappings(&self) -> &[MappingInfo] {
        &[]
    }
    fn frames(&self, _address: u64) -> &[SourceFrame] {
        &[]
    }
}

struct RawSample {
    stack: Vec<Frame>,
    values: Vec<i64>,
    labels: Vec<Label>,
}

/// Collects samples and metadata, then builds a [`proto::Profile`].
pub struct ProfileBuilder {
    sample_types: Vec<(String, String)>,
    period_type: (String, String),
    period: i64,
    default_sample_type: Option<String>,
    time_nanos: i64,
    duration_nanos: i64,
    comments: Vec<String>,
    drop_frames: String,
    samples: Vec<RawSample>,
}

impl ProfileBuilder {
    /// A builder for samples carrying one value per `(type, unit)` in `sample_types`.
    pub fn new(sample_types: &[(&str, &str)], period_type: (&str, &str), period: i64) -> Self {
        ProfileBuilder {
            sample_types: sample_types
                .iter()
                .map(|(t, u)| (t.to_string(), u.to_string()))
                .collect(),
            period_type: (period_type.0.to_string(), period_type.1.to_string()),
            period,
            default_sample_type: None,
            time_nanos: 0,
            duration_nanos: 0,
            comments: Vec::new(),
            drop_frames: String::new(),
            samples: Vec::new(),
        }
    }

    /// Records when the profile started and how long it covers.
    pub fn set_time(&mut self, start: SystemTime, duration: Duration) {
        self.time_nanos = start
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        self.duration_nanos = duration.as_nanos() as i64;
    }

    /// Names the sample type viewers show by default.
    pub fn set_default_sample_type(&mut self, sample_type: &str) {
        self.default_sample_type = Some(sample_type.to_string());
    }

    /// Adds a free-text comment (`go tool pprof` shows comments in its header).
    pub fn add_comment(&mut self, comment: impl Into<String>) {
        self.comments.push(comment.into());
    }

    /// Sets the profile's `drop_frames`: a regular expression (RE2 syntax, matched whole) for
    /// the functions readers cut from stacks with everything they call, see
    /// [`remove_uninteresting_frames`].
    pub fn set_drop_frames(&mut self, pattern: &str) {
        self.drop_frames = pattern.to_string();
    }

    /// Adds a sample: `stack` leaf first, one value per sample type.
    pub fn add_sample(&mut self, stack: Vec<Frame>, values: Vec<i64>, labels: Vec<Label>) {
        debug_assert_eq!(values.len(), self.sample_types.len());
        self.samples.push(RawSample {
            stack,
            values,
            labels,
        });
    }

    /// Number of samples added so far.
    pub fn sample_count(&self) -> usize {
        self.samples.len()
    }

    /// Every distinct address in the recorded stacks, sorted: what a [`Resolver`] must cover.
    pub fn addresses(&self) -> Vec<u64> {
        let mut addresses: Vec<u64> = self
            .samples
            .iter()
            .flat_map(|s| s.stack.iter())
            .filter_map(Frame::address)
            .collect();
        addresses.sort_unstable();
        addresses.dedup();
        addresses
    }

    /// Builds the profile, symbolizing addresses through `resolver`.
    pub fn build(self, resolver: &dyn Resolver) -> proto::Profile {
        let mut tables = Tables::default();
        tables.intern("");
        let mut profile = proto::Profile {
            sample_type: self
                .sample_types
                .iter()
                .map(|(t, u)| tables.value_type(t, u))
                .collect(),
            period_type: Some(tables.value_type(&self.period_type.0, &self.period_type.1)),
            period: self.period,
            time_nanos: self.time_nanos,
            duration_nanos: self.duration_nanos,
            ..Default::default()
        };
        if let Some(default) = &self.default_sample_type {
            profile.default_sample_type = tables.intern(default);
        }
        tables.add_mappings(resolver.mappings());
        for sample in &self.samples {
            let location_id = sample
                .stack
                .iter()
                .map(|frame| tables.location(frame, resolver))
                .collect();
            let label = sample.labels.iter().map(|l| tables.label(l)).collect();
            profile.sample.push(proto::Sample {
                location_id,
                value: sample.values.clone(),
                label,
            });
        }
        profile.comment = self
            .comments
            .iter()
            .chain(resolver.comments())
            .map(|c| tables.intern(c))
            .collect();
        if !self.drop_frames.is_empty() {
            profile.drop_frames = tables.intern(&self.drop_frames);
        }
        tables.finish(&mut profile);
        profile
    }
}

#[derive(Default)]
struct Tables {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<proto::Function>,
    function_ids: HashMap<(String, String, String), u64>,
    locations: Vec<proto::Location>,
    address_locations: HashMap<u64, u64>,
    synthetic_locations: HashMap<String, u64>,
    mappings: Vec<proto::Mapping>,
    /// `(start, limit, id)` of each mapping, sorted by start.
    mapping_ranges: Vec<(u64, u64, u64)>,
}

impl Tables {
    fn intern(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), id);
        id
    }

    fn value_type(&mut self, ty: &str, unit: &str) -> proto::ValueType {
        proto::ValueType {
            r#type: self.intern(ty),
            unit: self.intern(unit),
        }
    }

    fn label(&mut self, label: &Label) -> proto::Label {
        let key = self.intern(label.key);
        match &label.value {
            LabelValue::Str(s) => proto::Label {
                key,
                str: self.intern(s),
                ..Default::default()
            },
            LabelValue::Num(n, unit) => proto::Label {
                key,
                num: *n,
                num_unit: unit.map(|u| self.intern(u)).unwrap_or(0),
                ..Default::default()
            },
        }
    }

    fn add_mappings(&mut self, mappings: &[MappingInfo]) {
        for m in mappings {
            let id = self.mappings.len() as u64 + 1;
            let filename = self.intern(&m.path);
            let build_id = self.intern(&m.build_id);
            self.mappings.push(proto::Mapping {
                id,
                memory_start: m.start,
                memory_limit: m.limit,
                file_offset: m.file_offset,
                filename,
                build_id,
                ..Default::default()
            });
            self.mapping_ranges.push((m.start, m.limit, id));
        }
        self.mapping_ranges.sort_unstable();
    }

    fn mapping_of(&self, address: u64) -> Option<u64> {
        let i = self
            .mapping_ranges
            .partition_point(|&(start, _, _)| start <= address);
        let &(start, limit, id) = self.mapping_ranges.get(i.checked_sub(1)?)?;
        (start <= address && address < limit).then_some(id)
    }

    fn function(&mut self, name: &str, system_name: &str, file: &str) -> u64 {
        let key = (name.to_string(), system_name.to_string(), file.to_string());
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        let function = proto::Function {
            id,
            name: self.intern(name),
            system_name: self.intern(system_name),
            filename: self.intern(file),
            start_line: 0,
        };
        self.functions.push(function);
        self.function_ids.insert(key, id);
        id
    }

    fn location(&mut self, frame: &Frame, resolver: &dyn Resolver) -> u64 {
        match frame {
            Frame::Address(address) => {
                if let Some(&id) = self.address_locations.get(address) {
                    return id;
                }
                let mapping_id = self.mapping_of(*address).unwrap_or(0);
                let source = resolver.frames(*address);
                let line = source
                    .iter()
                    .map(|f| proto::Line {
                        function_id: self.function(&f.function, &f.system_name, &f.file),
                        line: f.line,
                        column: 0,
                    })
                    .collect::<Vec<_>>();
                if mapping_id != 0 && !source.is_empty() {
                    let m = &mut self.mappings[mapping_id as usize - 1];
                    m.has_functions = true;
                    if source.iter().any(|f| !f.file.is_empty()) {
                        m.has_filenames = true;
                    }
                    if source.iter().any(|f| f.line != 0) {
                        m.has_line_numbers = true;
                    }
                    if source.len() > 1 {
                        m.has_inline_frames = true;
                    }
                }
                let id = self.locations.len() as u64 + 1;
                self.locations.push(proto::Location {
                    id,
                    mapping_id,
                    address: *address,
                    line,
                    is_folded: false,
                });
                self.address_locations.insert(*address, id);
                id
            }
            Frame::Synthetic(name) => {
                if let Some(&id) = self.synthetic_locations.get(name) {
                    return id;
                }
                let function_id = self.function(name, name, "");
                let id = self.locations.len() as u64 + 1;
                self.locations.push(proto::Location {
                    id,
                    line: vec![proto::Line {
                        function_id,
                        line: 0,
                        column: 0,
                    }],
                    ..Default::default()
                });
                self.synthetic_locations.insert(name.clone(), id);
                id
            }
        }
    }

    fn finish(self, profile: &mut proto::Profile) {
        profile.string_table = self.strings;
        profile.function = self.functions;
        profile.location = self.locations;
        profile.mapping = self.mappings;
    }
}

/// Encodes `profile` as gzipped protobuf, the form every pprof endpoint serves.
pub fn encode_gzip(profile: &proto::Profile) -> Vec<u8> {
    let raw = profile.encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(raw.len() / 4),
        flate2::Compression::default(),
    );
    gz.write_all(&raw).expect("writing to a Vec cannot fail");
    gz.finish().expect("writing to a Vec cannot fail")
}

/// Largest decompressed profile [`decode`] accepts, so a small hostile file cannot exhaust memory.
pub const MAX_DECODED_SIZE: u64 = 1 << 30;

/// Most memory [`decode`] lets a profile's tables (samples, locations, functions, strings...)
/// take, counted from the wire format before decoding. Protobuf is compact: a 1 GiB profile of
/// empty samples would decode to 36 GiB, so the decompressed size alone is no bound. The
/// profiles pprofd serves take about twice their decompressed size.
pub const MAX_DECODED_MEMORY: u64 = 2 << 30;

/// Why bytes could not be read as a profile.
#[derive(Debug)]
pub enum DecodeError {
    /// The gzip stream is corrupt or truncated.
    Gzip(std::io::Error),
    /// The decompressed data exceeds [`MAX_DECODED_SIZE`].
    TooLarge,
    /// Decoding would build tables of this many bytes, more than [`MAX_DECODED_MEMORY`].
    TooMuchMemory(u64),
    /// The bytes are not a pprof protobuf message.
    Protobuf(prost::DecodeError),
    /// The message decodes but refers to strings, locations or functions that do not exist.
    Inconsistent(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Gzip(e) => write!(f, "corrupt or truncated gzip data: {e}"),
            DecodeError::TooLarge => write!(
                f,
                "profile larger than {MAX_DECODED_SIZE} bytes once decompressed"
            ),
            DecodeError::TooMuchMemory(bytes) => write!(
                f,
                "profile would take {bytes} bytes of memory once decoded, more than the {MAX_DECODED_MEMORY} allowed"
            ),
            DecodeError::Protobuf(e) => write!(f, "not a pprof profile: {e}"),
            DecodeError::Inconsistent(what) => write!(f, "malformed pprof profile: {what}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes a profile from gzipped or plain protobuf bytes and checks that its tables are
/// consistent, so readers can index them without panicking. Memory stays bounded whatever the
/// bytes: at most [`MAX_DECODED_SIZE`] decompressed and [`MAX_DECODED_MEMORY`] of tables.
pub fn decode(bytes: &[u8]) -> Result<proto::Profile, DecodeError> {
    let plain;
    let data = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .take(MAX_DECODED_SIZE + 1)
            .read_to_end(&mut out)
            .map_err(DecodeError::Gzip)?;
        if out.len() as u64 > MAX_DECODED_SIZE {
            return Err(DecodeError::TooLarge);
        }
        plain = out;
        &plain[..]
    } else {
        bytes
    };
    let needed = budget::decoded_size(data);
    if needed > MAX_DECODED_MEMORY {
        return Err(DecodeError::TooMuchMemory(needed));
    }
    let profile = proto::Profile::decode(data).map_err(DecodeError::Protobuf)?;
    validate(&profile).map_err(DecodeError::Inconsistent)?;
    Ok(profile)
}

fn validate(p: &proto::Profile) -> Result<(), String> {
    if p.string_table.first().map(String::as_str) != Some("") {
        return Err("string table must start with an empty string".into());
    }
    let strings = p.string_table.len() as i64;
    let string_ok = |i: i64| (0..strings).contains(&i);
    let types = p.sample_type.iter().chain(p.period_type.iter());
    if types
        .into_iter()
        .any(|t| !string_ok(t.r#type) || !string_ok(t.unit))
    {
        return Err("sample type names a string that does not exist".into());
    }
    if !p.comment.iter().all(|&c| string_ok(c)) || !string_ok(p.default_sample_type) {
        return Err("comment names a string that does not exist".into());
    }
    let functions: std::collections::HashSet<u64> = p.function.iter().map(|f| f.id).collect();
    for f in &p.function {
        if !string_ok(f.name) || !string_ok(f.system_name) || !string_ok(f.filename) {
            return Err(format!(
                "function {} names a string that does not exist",
                f.id
            ));
        }
    }
    for m in &p.mapping {
        if !string_ok(m.filename) || !string_ok(m.build_id) {
            return Err(format!(
                "mapping {} names a string that does not exist",
                m.id
            ));
        }
    }
    let locations: std::collections::HashSet<u64> = p.location.iter().map(|l| l.id).collect();
    for l in &p.location {
        if let Some(line) = l
            .line
            .iter()
            .find(|line| !functions.contains(&line.function_id))
        {
            return Err(format!(
                "location {} names missing function {}",
                l.id, line.function_id
            ));
        }
    }
    for s in &p.sample {
        if s.value.len() != p.sample_type.len() {
            return Err(format!(
                "a sample has {} values for {} sample types",
                s.value.len(),
                p.sample_type.len()
            ));
        }
        if let Some(id) = s.location_id.iter().find(|id| !locations.contains(id)) {
            return Err(format!("a sample names missing location {id}"));
        }
        if s.label
            .iter()
            .any(|l| !string_ok(l.key) || !string_ok(l.str) || !string_ok(l.num_unit))
        {
            return Err("a sample label names a string that does not exist".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
