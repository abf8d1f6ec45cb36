//! `pprofd symbolize PROFILE --debug-dir DIR -o OUT`: names the addresses of a profile taken
//! from a stripped build, from the unstripped binary or debug file kept aside, without Go.
//!
//! Each mapping with unsymbolized locations is looked up in DIR as `go tool pprof`'s
//! `PPROF_BINARY_PATH` and debuggers lay such files out: `DIR/<build ID>`,
//! `DIR/<build ID>/<file name>` (or any file there), `DIR/.build-id/ab/cdef….debug`, then
//! `DIR/<file name>`; a file whose build ID differs is refused. Addresses become file
//! addresses through the mapping and the file's program headers, and blazesym reads the
//! file's symbols and DWARF for function names, file:line and inline frames.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{CodeInfo, Input, Sym, Symbolized, Symbolizer};
use clap::Args;
use pprofd::profile::proto::{Function, Line, Mapping, Profile};

use crate::fetch::Token;
use crate::input;

/// Arguments of `pprofd symbolize`.
#[derive(Args)]
pub struct SymbolizeArgs {
    /// Profile to symbolize: FILE.pb.gz, FILE.pb, ARCHIVE.tar.gz:NAME or an http:// URL.
    pub profile: String,
    /// Directory holding the unstripped binaries or debug files, by build ID or by name.
    #[arg(long, value_name = "DIR")]
    pub debug_dir: PathBuf,
    /// Where to write the symbolized profile (gzipped pprof).
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: PathBuf,
}

/// Runs `pprofd symbolize` and returns what it did, one line per mapping; `token` is sent when
/// the profile is a URL.
pub fn run(args: &SymbolizeArgs, token: Option<&Token>) -> Result<String, String> {
    if !args.debug_dir.is_dir() {
        return Err(format!(
            "--debug-dir {}: not a directory",
            args.debug_dir.display()
        ));
    }
    let mut profile = input::load(&args.profile, token)?.profile;
    let report = symbolize(&mut profile, &args.debug_dir);
    if report.symbolized == 0 && !report.missing.is_empty() {
        return Err(format!(
            "nothing symbolized, {} not written: {}",
            args.output.display(),
            report.missing.join("; ")
        ));
    }
    pprofd::profile::remove_uninteresting_frames(&mut profile)
        .map_err(|e| format!("{}: {e}", args.profile))?;
    std::fs::write(&args.output, pprofd::profile::encode_gzip(&profile))
        .map_err(|e| format!("{}: {e}", args.output.display()))?;
    let mut out = report.lines.join("\n");
    for missing in &report.missing {
        out.push_str(&format!("\nnot symbolized: {missing}"));
    }
    out.push_str(&format!("\nwrote {}\n", args.output.display()));
    Ok(out)
}

/// What [`symbolize`] did.
#[derive(Debug, Default)]
pub struct Report {
    /// Locations given functions.
    pub symbolized: usize,
    /// One line per mapping symbolized: its file, the file used, how many locations.
    pub lines: Vec<String>,
    /// Mappings that needed symbols and got none, with the reason.
    pub missing: Vec<String>,
}

/// Symbolizes every location of `profile` that has an address but no lines, from the files
/// found in `dir`.
pub fn symbolize(profile: &mut Profile, dir: &Path) -> Report {
    let mut report = Report::default();
    let mut strings = Strings::new(profile);
    let mut functions: HashMap<(i64, i64), u64> = profile
        .function
        .iter()
        .map(|f| ((f.name, f.filename), f.id))
        .collect();
    for mapping_index in 0..profile.mapping.len() {
        let mapping = profile.mapping[mapping_index].clone();
        let wanted: Vec<usize> = profile
            .location
            .iter()
            .enumerate()
            .filter(|(_, l)| l.mapping_id == mapping.id && l.line.is_empty() && l.address != 0)
            .map(|(i, _)| i)
            .collect();
        let name = strings.table[mapping.filename as usize].clone();
        if wanted.is_empty() || name.starts_with('[') {
            continue;
        }
        let build_id = strings.table[mapping.build_id as usize].clone();
        let described = if build_id.is_empty() {
            name.clone()
        } else {
            format!("{name} (build ID {build_id})")
        };
        let file = match find_file(dir, &name, &build_id) {
            Ok(file) => file,
            Err(why) => {
                report.missing.push(format!("{described}: {why}"));
                continue;
            }
        };
        let segments = match executable_segments(&file) {
            Ok(segments) => segments,
            Err(why) => {
                report
                    .missing
                    .push(format!("{described}: {}: {why}", file.display()));
                continue;
            }
        };
        let file_addresses: Vec<Option<u64>> = wanted
            .iter()
            .map(|&i| file_address(&mapping, &segments, profile.location[i].address))
            .collect();
        let known: Vec<u64> = file_addresses.iter().flatten().copied().collect();
        let symbolizer = Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .build();
        let source = Source::Elf(Elf::new(&file));
        let results = match symbolizer.symbolize(&source, Input::VirtOffset(&known)) {
            Ok(results) => results,
            Err(e) => {
                report
                    .missing
                    .push(format!("{described}: {}: {e}", file.display()));
                continue;
            }
        };
        let mut results = results.into_iter();
        let mut count = 0;
        let mut flags = MappingFlags::default();
        for (&i, address) in wanted.iter().zip(&file_addresses) {
            let Some(Symbolized::Sym(sym)) = address.and_then(|_| results.next()) else {
                continue;
            };
            let chain = inline_chain(&sym);
            flags.add(&chain);
            profile.location[i].line = chain
                .into_iter()
                .map(|frame| {
                    let key = (strings.intern(&frame.function), strings.intern(&frame.file));
                    let function_id = *functions.entry(key).or_insert_with(|| {
                        let id = profile.function.len() as u64 + 1;
                        profile.function.push(Function {
                            id,
                            name: key.0,
                            system_name: key.0,
                            filename: key.1,
                            start_line: 0,
                        });
                        id
                    });
                    Line {
                        function_id,
                        line: frame.line,
                        column: 0,
                    }
                })
                .collect();
            count += 1;
        }
        flags.apply(&mut profile.mapping[mapping_index]);
        report.symbolized += count;
        report.lines.push(format!(
            "{described}: {count} of {} addresses from {}",
            wanted.len(),
            file.display()
        ));
    }
    strings.finish(profile);
    report
}

/// The file in `dir` for a mapping of `name` with `build_id` (empty when unknown).
fn find_file(dir: &Path, name: &str, build_id: &str) -> Result<PathBuf, String> {
    let base = Path::new(name).file_name().map(PathBuf::from);
    let mut candidates = Vec::new();
    if !build_id.is_empty() {
        let by_id = dir.join(build_id);
        candidates.push(by_id.clone());
        if let Some(base) = &base {
            candidates.push(by_id.join(base));
        }
        if let Ok(entries) = std::fs::read_dir(&by_id) {
            let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            files.sort();
            candidates.extend(files);
        }
        if build_id.len() > 2 {
            candidates.push(
                dir.join(".build-id")
                    .join(&build_id[..2])
                    .join(format!("{}.debug", &build_id[2..])),
            );
        }
    }
    if let Some(base) = &base {
        candidates.push(dir.join(base));
    }
    let mut refused = Vec::new();
    for candidate in candidates.iter().filter(|c| c.is_file()) {
        if build_id.is_empty() {
            return Ok(candidate.clone());
        }
        match blazesym::helper::read_elf_build_id(candidate) {
            Ok(Some(id)) if hex(&id) == build_id => return Ok(candidate.clone()),
            Ok(Some(id)) => {
                refused.push(format!("{} has build ID {}", candidate.display(), hex(&id)))
            }
            Ok(None) => refused.push(format!("{} has no build ID", candidate.display())),
            Err(e) => refused.push(format!("{}: {e}", candidate.display())),
        }
    }
    if refused.is_empty() {
        let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
        Err(format!("no file found (tried {})", tried.join(", ")))
    } else {
        Err(refused.join(", "))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An executable `PT_LOAD` program header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    vaddr: u64,
    memsz: u64,
    offset: u64,
    filesz: u64,
    align: u64,
}

/// The executable `PT_LOAD` segments of the 64-bit little-endian ELF file at `path`.
fn executable_segments(path: &Path) -> Result<Vec<Segment>, String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut header = [0u8; 64];
    file.read_exact(&mut header)
        .map_err(|_| "too short for an ELF header".to_string())?;
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]) as u64;
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (
        u64_at(&header, 32),
        u16_at(&header, 54),
        u16_at(&header, 56),
    );
    // ELF64 program headers are 56 bytes; insisting on it also bounds what a hostile file
    // can make this read (65535 headers at most).
    if phentsize != 56 || phnum == 0 {
        return Err("no 64-bit program headers".into());
    }
    let mut table = vec![0u8; (phentsize * phnum) as usize];
    file.seek(SeekFrom::Start(phoff))
        .and_then(|_| file.read_exact(&mut table))
        .map_err(|_| "program headers past the end of the file".to_string())?;
    const PT_LOAD: u32 = 1;
    const PF_X: u32 = 1;
    Ok(table
        .chunks_exact(phentsize as usize)
        .filter(|h| u32_at(h, 0) == PT_LOAD && u32_at(h, 4) & PF_X != 0)
        .map(|h| Segment {
            offset: u64_at(h, 8),
            vaddr: u64_at(h, 16),
            filesz: u64_at(h, 32),
            memsz: u64_at(h, 40),
            align: u64_at(h, 48),
        })
        .collect())
}

/// The address the file states for run-time `address` in `mapping`.
///
/// The mapping says which file offset its start holds. In a binary, the segment holding that
/// file offset gives the address, as pprof computes it. A debug file (`objcopy
/// --only-keep-debug`) keeps each segment's address but not its file contents or offsets; there
/// a segment's address and offset agree modulo the page size, which fixes where the mapping
/// starts in the segment, whether the mapping is the segment exactly (pprofd's) or rounded to
/// pages (`/proc/self/maps`, Go's).
fn file_address(mapping: &Mapping, segments: &[Segment], address: u64) -> Option<u64> {
    let in_mapping = address.checked_sub(mapping.memory_start)?;
    let file_offset = mapping.file_offset.checked_add(in_mapping)?;
    segments.iter().find_map(|s| {
        let stated = if s.filesz > 0 {
            (s.offset..s.offset + s.filesz)
                .contains(&file_offset)
                .then(|| file_offset - s.offset + s.vaddr)?
        } else {
            let page = s.align.clamp(4096, 1 << 16);
            let start_in_segment = s.vaddr.wrapping_sub(mapping.file_offset) % page;
            (s.vaddr - start_in_segment).checked_add(in_mapping)?
        };
        (s.vaddr..s.vaddr + s.memsz)
            .contains(&stated)
            .then_some(stated)
    })
}

/// One frame of an inline chain.
struct Frame {
    function: String,
    file: String,
    line: i64,
}

/// blazesym's answer (the outermost function, with its inlined callees outermost first) in
/// pprof's order: innermost first.
fn inline_chain(sym: &Sym<'_>) -> Vec<Frame> {
    let frame = |name: &str, code: Option<&CodeInfo<'_>>| Frame {
        function: without_legacy_hash(name).to_string(),
        file: code
            .map(|c| c.to_path().to_string_lossy().into_owned())
            .unwrap_or_default(),
        line: code.and_then(|c| c.line).unwrap_or(0) as i64,
    };
    let mut chain: Vec<Frame> = sym
        .inlined
        .iter()
        .rev()
        .map(|f| frame(&f.name, f.code_info.as_ref()))
        .collect();
    chain.push(frame(&sym.name, sym.code_info.as_deref()));
    chain
}

/// Drops the `::h0123456789abcdef` hash that legacy Rust mangling leaves on demangled names,
/// as the in-process symbolizer does, so both give the same names.
fn without_legacy_hash(name: &str) -> &str {
    match name.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            head
        }
        _ => name,
    }
}

/// What a mapping's locations now carry.
#[derive(Default)]
struct MappingFlags {
    functions: bool,
    filenames: bool,
    line_numbers: bool,
    inline_frames: bool,
}

impl MappingFlags {
    fn add(&mut self, chain: &[Frame]) {
        self.functions |= chain.iter().any(|f| !f.function.is_empty());
        self.filenames |= chain.iter().any(|f| !f.file.is_empty());
        self.line_numbers |= chain.iter().any(|f| f.line != 0);
        self.inline_frames |= chain.len() > 1;
    }

    fn apply(&self, mapping: &mut Mapping) {
        mapping.has_functions |= self.functions;
        mapping.has_filenames |= self.filenames;
        mapping.has_line_numbers |= self.line_numbers;
        mapping.has_inline_frames |= self.inline_frames;
    }
}

/// The profile's string table, with new strings appended.
struct Strings {
    table: Vec<String>,
    ids: HashMap<String, i64>,
}

impl Strings {
    fn new(profile: &mut Profile) -> Strings {
        let table = std::mem::take(&mut profile.string_table);
        let mut ids = HashMap::with_capacity(table.len());
        for (i, s) in table.iter().enumerate() {
            ids.entry(s.clone()).or_insert(i as i64);
        }
        Strings { table, ids }
    }

    fn intern(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.table.len() as i64;
        self.table.push(s.to_string());
        self.ids.insert(s.to_string(), id);
        id
    }

    fn finish(self, profile: &mut Profile) {
        profile.string_table = self.table;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: Segment = Segment {
        vaddr: 0xc1d60,
        memsz: 0x235840,
        offset: 0xc0d60,
        filesz: 0x235840,
        align: 0x1000,
    };

    fn mapping(start: u64, limit: u64, file_offset: u64) -> Mapping {
        Mapping {
            memory_start: start,
            memory_limit: limit,
            file_offset,
            ..Default::default()
        }
    }

    #[test]
    fn exact_and_page_rounded_mappings_give_the_same_file_addresses() {
        let bias = 0x5555_0000_0000;
        let exact = mapping(bias + 0xc1d60, bias + 0xc1d60 + 0x235840, 0xc0d60);
        let rounded = mapping(bias + 0xc1000, bias + 0x2f8000, 0xc0000);
        let debug_only = Segment {
            offset: 0xdd0,
            filesz: 0,
            ..TEXT
        };
        for address in [bias + 0xc1d60, bias + 0x123456, bias + 0xc1d60 + 0x23583f] {
            let stated = address - bias;
            for m in [&exact, &rounded] {
                assert_eq!(file_address(m, &[TEXT], address), Some(stated), "{m:?}");
                assert_eq!(file_address(m, &[debug_only], address), Some(stated));
            }
        }
        assert_eq!(file_address(&exact, &[TEXT], bias + 0x1000), None);
        assert_eq!(file_address(&exact, &[TEXT], bias + 0x400000), None);
    }

    #[test]
    fn strips_legacy_hashes_only() {
        assert_eq!(
            without_legacy_hash("app::work::h0123456789abcdef"),
            "app::work"
        );
        assert_eq!(without_legacy_hash("app::hello"), "app::hello");
    }
}
