//! Addresses to inline chains with file:line, from DWARF, one compilation unit at a time.
//!
//! `.debug_aranges` says which unit holds each address (when it is missing, each unit's own
//! ranges do). Each unit that holds an address is then read once: its line program is run to
//! the rows covering the addresses, and its DIE tree walked for the subprograms and inlined
//! subroutines whose ranges hold them, skipping every function that holds none ([`lines`],
//! [`DieWalk`]); both stop once every address is found. Nothing of a unit is kept but the
//! frames of its addresses, and the file's pages are handed back as they build up
//! ([`super::elf::ResidentBudget`]), so memory follows the largest unit a profile touches,
//! not the binary.

use std::collections::HashMap;
use std::ops::ControlFlow;

use gimli::{AttributeValue, EndianSlice, RunTimeEndian};
use object::{Object, ObjectSection};

use super::dies::{DieWalk, RangeAt};
use super::elf::Elf;
use super::lines;
use super::names::FunctionName;
use super::unit_index::{self, DieResume, ObjectIndex, Span, UnitIndex};

pub(super) type Reader<'d> = EndianSlice<'d, RunTimeEndian>;
pub(super) type Unit<'d> = gimli::Unit<Reader<'d>>;

/// One frame of an inline chain as DWARF gives it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DwarfFrame {
    /// The function, when its DIE names it.
    pub name: Option<FunctionName>,
    /// Source file, empty when unknown.
    pub file: String,
    /// Source line, 0 when unknown.
    pub line: u32,
}

/// The DWARF sections of an object file, borrowed from its bytes. Compressed sections
/// (`SHF_COMPRESSED`) are left out: decompressing one would cost as much memory as the
/// section, so such objects get function names from their symbol table only.
pub(crate) fn load<'d>(elf: &Elf<'d>) -> Option<gimli::Dwarf<Reader<'d>>> {
    let endian = if elf.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let section = |id: gimli::SectionId| -> Result<Reader<'d>, ()> {
        let data = elf
            .section_by_name(id.name())
            .filter(|s| {
                s.compressed_file_range()
                    .is_ok_and(|r| r.format == object::CompressionFormat::None)
            })
            .and_then(|s| s.data().ok())
            .unwrap_or(&[]);
        Ok(EndianSlice::new(data, endian))
    };
    let dwarf = gimli::Dwarf::load(section).ok()?;
    (!gimli::Section::reader(&dwarf.debug_info).is_empty()).then_some(dwarf)
}

/// The inline chain of each of `svmas` (sorted file addresses), innermost frame first;
/// empty where DWARF does not cover the address. `index` says where things are in the units
/// read before, and learns more ([`unit_index`]). `release_pages` runs after each unit, to
/// hand the pages read so far back when they have built up.
pub(crate) fn resolve(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    svmas: &[u64],
    index: &mut ObjectIndex,
    release_pages: impl Fn(),
) -> Vec<Vec<DwarfFrame>> {
    let mut chains = vec![Vec::new(); svmas.len()];
    let (units, unit_starts) = units_of(dwarf, svmas);
    let mut by_unit: Vec<(usize, usize)> = units
        .into_iter()
        .enumerate()
        .filter_map(|(i, unit)| Some((unit?, i)))
        .collect();
    by_unit.sort_unstable();
    let mut names = Names::new(dwarf, unit_starts);
    for group in by_unit.chunk_by(|a, b| a.0 == b.0) {
        let offset = gimli::DebugInfoOffset(group[0].0);
        let indices: Vec<usize> = group.iter().map(|&(_, i)| i).collect();
        let addresses: Vec<u64> = indices.iter().map(|&i| svmas[i]).collect();
        let unit = dwarf
            .debug_info
            .header_from_offset(offset)
            .and_then(|header| dwarf.unit(header));
        if let Ok(unit) = unit {
            // A malformed unit leaves its addresses with symbol-table names only.
            let unit_index = index.unit(offset.0);
            let frames = UnitFrames::new(dwarf, &unit, &mut names).chains(&addresses, unit_index);
            if let Ok(unit_chains) = frames {
                for (i, chain) in indices.into_iter().zip(unit_chains) {
                    chains[i] = chain;
                }
            }
        }
        release_pages();
    }
    chains
}

/// The `.debug_info` offset of the unit that holds each address, and the sorted offsets of
/// the units the index names (with `.debug_aranges`, those with code).
fn units_of(dwarf: &gimli::Dwarf<Reader<'_>>, svmas: &[u64]) -> (Vec<Option<usize>>, Vec<usize>) {
    let mut units = vec![None; svmas.len()];
    let mut starts = Vec::new();
    let mut assign = |begin: u64, end: u64, unit: usize| {
        let first = svmas.partition_point(|&a| a < begin);
        let last = svmas.partition_point(|&a| a < end);
        for slot in &mut units[first..last] {
            slot.get_or_insert(unit);
        }
    };
    let mut headers = dwarf.debug_aranges.headers();
    let mut any_aranges = false;
    while let Ok(Some(header)) = headers.next() {
        any_aranges = true;
        let unit = header.debug_info_offset().0;
        starts.push(unit);
        let mut entries = header.entries();
        while let Ok(Some(entry)) = entries.next() {
            let range = entry.range();
            assign(range.begin, range.end, unit);
        }
    }
    if !any_aranges {
        // No index: read each unit's root DIE for its ranges.
        let mut headers = dwarf.units();
        while let Ok(Some(header)) = headers.next() {
            let Some(offset) = header.debug_info_offset() else {
                continue;
            };
            starts.push(offset.0);
            let Ok(unit) = dwarf.unit(header) else {
                continue;
            };
            let Ok(mut ranges) = dwarf.unit_ranges(&unit) else {
                continue;
            };
            while let Ok(Some(range)) = ranges.next() {
                assign(range.begin, range.end, offset.0);
            }
        }
    }
    starts.sort_unstable();
    starts.dedup();
    (units, starts)
}

/// Runs `header`'s line program from the sequence that starts `from` bytes into it, giving
/// each of `addresses` (sorted) the `(file index, line)` of the row covering it in `found`.
///
/// With `sequences`, reads on until every address has its row, noting each sequence read to
/// its end, and returns where to read on later (`None`: the program's end). Without, reads
/// just the one sequence.
fn read_rows(
    header: &gimli::LineProgramHeader<Reader<'_>>,
    from: usize,
    addresses: &[u64],
    found: &mut [Option<(u64, u32)>],
    mut sequences: Option<&mut unit_index::Spans>,
) -> gimli::Result<Option<usize>> {
    // The row in effect from its address up to the next row's, within a sequence, and the
    // first address not below it: rows rise within a sequence, so that index only moves
    // forward until the next sequence starts.
    let mut current: Option<(u64, u64, u32)> = None;
    let mut next = 0;
    let mut unfound = found.iter().filter(|f| f.is_none()).count();
    let mut sequence_begin = None;
    let mut stopped_at = None;
    lines::for_each_row(header, from, |row| {
        if let Some((start, file, line)) = current {
            let end = row.address;
            while next < addresses.len() && addresses[next] < start {
                next += 1;
            }
            while next < addresses.len() && addresses[next] < end {
                if found[next].is_none() {
                    found[next] = Some((file, line));
                    unfound -= 1;
                }
                next += 1;
            }
        } else {
            next = addresses.partition_point(|&a| a < row.address);
        }
        let begin = *sequence_begin.get_or_insert(row.address);
        if row.end_sequence {
            sequence_begin = None;
            let Some(sequences) = sequences.as_deref_mut() else {
                return ControlFlow::Break(());
            };
            if let Ok(at) = u32::try_from(row.sequence) {
                sequences.push(Span {
                    begin,
                    end: row.address,
                    at,
                    depth: 0,
                });
            }
        }
        current = (!row.end_sequence).then_some((row.address, row.file, row.line as u32));
        // Sequences do not overlap, so once every address has its row the rest of the
        // program can only repeat what is found.
        if unfound == 0 {
            stopped_at = Some(if row.end_sequence {
                row.next
            } else {
                row.sequence
            });
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    Ok(stopped_at)
}

/// A function DIE that holds an address: the chain is built from these, outermost first.
struct Function {
    depth: isize,
    name: Option<FunctionName>,
    /// Where the inlined call was made (`DW_AT_call_file`, `DW_AT_call_line`), in the
    /// function one level out.
    call_file: u64,
    call_line: u32,
}

/// One unit being read.
struct UnitFrames<'u, 'a, 'd> {
    dwarf: &'a gimli::Dwarf<Reader<'d>>,
    unit: &'u Unit<'d>,
    /// File paths rendered so far, by line-program file index.
    files: HashMap<u64, String>,
    names: &'u mut Names<'a, 'd>,
}

impl<'u, 'a, 'd> UnitFrames<'u, 'a, 'd> {
    fn new(
        dwarf: &'a gimli::Dwarf<Reader<'d>>,
        unit: &'u Unit<'d>,
        names: &'u mut Names<'a, 'd>,
    ) -> Self {
        UnitFrames {
            dwarf,
            unit,
            files: HashMap::new(),
            names,
        }
    }

    /// The inline chains of `addresses` (sorted, all in this unit), innermost first.
    fn chains(
        &mut self,
        addresses: &[u64],
        index: &mut UnitIndex,
    ) -> gimli::Result<Vec<Vec<DwarfFrame>>> {
        let rows = self.line_rows(addresses, index)?;
        let functions = self.functions(addresses, index)?;
        let mut chains = Vec::with_capacity(addresses.len());
        for (row, functions) in rows.into_iter().zip(functions) {
            let (mut file, mut line) = row.unwrap_or((u64::MAX, 0));
            let mut chain = Vec::with_capacity(functions.len().max(1));
            for function in functions.iter().rev() {
                chain.push(DwarfFrame {
                    name: function.name.clone(),
                    file: self.file(file),
                    line,
                });
                (file, line) = (function.call_file, function.call_line);
            }
            if chain.is_empty() && row.is_some() {
                // A line row but no function DIE: keep the line, the symbol table names it.
                chain.push(DwarfFrame {
                    name: None,
                    file: self.file(file),
                    line,
                });
            }
            chains.push(chain);
        }
        Ok(chains)
    }

    /// The `(file index, line)` of the line-table row covering each address: from the
    /// sequences `index` knows, else by reading on where the last reading stopped.
    fn line_rows(
        &self,
        addresses: &[u64],
        index: &mut UnitIndex,
    ) -> gimli::Result<Vec<Option<(u64, u32)>>> {
        let mut found = vec![None; addresses.len()];
        let Some(program) = self.unit.line_program.as_ref() else {
            return Ok(found);
        };
        let header = program.header();
        let mut unknown = Vec::new();
        let mut i = 0;
        while i < addresses.len() {
            let Some(sequence) = index.sequences.holding(addresses[i]).copied() else {
                unknown.push(i);
                i += 1;
                continue;
            };
            let end = i + addresses[i..].partition_point(|&a| a < sequence.end);
            let at = sequence.at as usize;
            read_rows(header, at, &addresses[i..end], &mut found[i..end], None)?;
            i = end;
        }
        let Some(from) = index.lines_from.filter(|_| !unknown.is_empty()) else {
            return Ok(found);
        };
        let rest: Vec<u64> = unknown.iter().map(|&i| addresses[i]).collect();
        let mut rest_found = vec![None; rest.len()];
        index.lines_from = read_rows(
            header,
            from,
            &rest,
            &mut rest_found,
            Some(&mut index.sequences),
        )?;
        index.sequences.sort();
        for (i, row) in unknown.into_iter().zip(rest_found) {
            found[i] = row;
        }
        Ok(found)
    }

    /// For each address, the function DIEs whose ranges hold it, outermost first: from the
    /// subtrees of the functions `index` knows, else by walking on where the last walk
    /// stopped.
    fn functions(
        &mut self,
        addresses: &[u64],
        index: &mut UnitIndex,
    ) -> gimli::Result<Vec<Vec<Function>>> {
        let mut chains: Vec<Vec<Function>> = (0..addresses.len()).map(|_| Vec::new()).collect();
        let mut known = Vec::new();
        let mut unknown = Vec::new();
        for (i, &address) in addresses.iter().enumerate() {
            match index.functions.holding(address) {
                Some(&span) => known.push((span, i)),
                None => unknown.push(i),
            }
        }
        // By function (one with several ranges holds addresses that are not adjacent).
        known.sort_unstable_by_key(|&(span, i)| (span.at, i));
        for group in known.chunk_by(|a, b| a.0.at == b.0.at) {
            let span = group[0].0;
            let indices: Vec<usize> = group.iter().map(|&(_, i)| i).collect();
            let offset = gimli::UnitOffset(span.at as usize);
            let mut dies = DieWalk::at(self.unit, offset, span.depth as isize)?;
            self.walk_for(&indices, addresses, &mut chains, |frames, some, some_chains| {
                frames.walk(&mut dies, None, some, some_chains, None)
            })?;
        }
        let Some(resume) = index.dies_from.filter(|_| !unknown.is_empty()) else {
            return Ok(chains);
        };
        let mut dies = match resume.offset {
            Some(offset) => DieWalk::at(self.unit, gimli::UnitOffset(offset), resume.depth)?,
            None => DieWalk::new(self.unit)?,
        };
        let functions = &mut index.functions;
        index.dies_from =
            self.walk_for(&unknown, addresses, &mut chains, |frames, some, some_chains| {
                frames.walk(&mut dies, resume.skip_below, some, some_chains, Some(functions))
            })?;
        index.functions.sort();
        Ok(chains)
    }

    /// Runs `walk` over the addresses at `indices` (and their chains), then puts the chains
    /// found back in place.
    fn walk_for<R>(
        &mut self,
        indices: &[usize],
        addresses: &[u64],
        chains: &mut [Vec<Function>],
        walk: impl FnOnce(&mut Self, &[u64], &mut [Vec<Function>]) -> gimli::Result<R>,
    ) -> gimli::Result<R> {
        let some: Vec<u64> = indices.iter().map(|&i| addresses[i]).collect();
        let mut some_chains: Vec<Vec<Function>> = indices
            .iter()
            .map(|&i| std::mem::take(&mut chains[i]))
            .collect();
        let result = walk(self, &some, &mut some_chains)?;
        for (&i, chain) in indices.iter().zip(some_chains) {
            chains[i] = chain;
        }
        Ok(result)
    }

    /// Walks `dies` (with `skip_below`: inside the subtree of a function that holds none of
    /// the addresses, at that depth), pushing onto each address's chain the function DIEs
    /// whose ranges hold it, until every address is held and the function holding the last
    /// has closed.
    ///
    /// With `functions`, notes the ranges of each outermost function passed and returns
    /// where to walk on later (`None`: the walk reached the unit's end). Without, reads only
    /// the subtree of the first DIE.
    ///
    /// Only function DIEs outside skipped subtrees are looked at, and of those only the ones
    /// that hold an address have their attributes parsed ([`DieWalk`]).
    fn walk(
        &mut self,
        dies: &mut DieWalk<'u, 'd>,
        mut skip_below: Option<isize>,
        addresses: &[u64],
        chains: &mut [Vec<Function>],
        mut functions: Option<&mut unit_index::Spans>,
    ) -> gimli::Result<Option<DieResume>> {
        let mut hits = Vec::new();
        let mut attrs = Vec::new();
        let unit = self.unit;
        // Addresses no function holds yet, and the depth of the outermost function holding
        // some whose subtree is being read: once all are held and that subtree is closed,
        // the rest of the unit holds none of them (functions do not overlap).
        let mut unheld = addresses.len();
        let mut open_holder: Option<isize> = None;
        let mut subtree_root: Option<isize> = None;
        let holding = |begin: u64, end: u64, hits: &mut Vec<usize>| {
            let first = addresses.partition_point(|&a| a < begin);
            let last = first + addresses[first..].partition_point(|&a| a < end);
            hits.extend(first..last);
        };
        while let Some(die) = dies.next()? {
            let depth = die.depth;
            if functions.is_none() {
                match subtree_root {
                    None => subtree_root = Some(depth),
                    Some(root) if depth <= root => return Ok(None),
                    Some(_) => {}
                }
            }
            if open_holder.is_some_and(|d| depth <= d) {
                open_holder = None;
            }
            if unheld == 0 && open_holder.is_none() {
                return Ok(Some(DieResume {
                    offset: Some(die.offset.0),
                    depth,
                    skip_below,
                }));
            }
            let skipped = match skip_below {
                Some(d) if depth > d => true,
                _ => {
                    skip_below = None;
                    false
                }
            };
            if skipped || !die.shape.function {
                dies.skip(&die)?;
                continue;
            }
            hits.clear();
            // An outermost function's ranges go into the index.
            let mut note = |begin: u64, end: u64| {
                if let (None, Some(functions), Ok(at)) = (
                    open_holder,
                    functions.as_deref_mut(),
                    u32::try_from(die.offset.0),
                ) {
                    let depth = depth as i32;
                    functions.push(Span {
                        begin,
                        end,
                        at,
                        depth,
                    });
                }
            };
            match die.shape.range {
                RangeAt::Nowhere => {}
                RangeAt::Fixed { .. } => {
                    if let Some((begin, end)) = dies.fixed_range(&die)? {
                        note(begin, end);
                        holding(begin, end, &mut hits);
                    }
                }
                RangeAt::Parsed => {
                    dies.read(&die, &mut attrs)?;
                    self.for_each_range(&attrs, |begin, end| {
                        note(begin, end);
                        holding(begin, end, &mut hits);
                    })?;
                }
            }
            if hits.is_empty() {
                if die.shape.range != RangeAt::Parsed {
                    dies.skip(&die)?;
                }
                skip_below = Some(depth);
                continue;
            }
            if die.shape.range != RangeAt::Parsed {
                dies.read(&die, &mut attrs)?;
            }
            let (mut call_file, mut call_line) = (u64::MAX, 0);
            for attr in &attrs {
                match (attr.name(), attr.udata_value()) {
                    (gimli::DW_AT_call_file, Some(f)) => call_file = f,
                    (gimli::DW_AT_call_line, Some(l)) => call_line = l as u32,
                    _ => {}
                }
            }
            let name = self.names.name(unit, die.offset, &attrs, 0);
            open_holder.get_or_insert(depth);
            for &i in &hits {
                let chain = &mut chains[i];
                if chain.is_empty() {
                    unheld -= 1;
                }
                // Ranges nest; one that does not (bad DWARF) replaces the deeper entries.
                while chain.last().is_some_and(|f| f.depth >= depth) {
                    chain.pop();
                }
                chain.push(Function {
                    depth,
                    name: name.clone(),
                    call_file,
                    call_line,
                });
            }
        }
        Ok(None)
    }

    /// Calls `f` with each address range of the DIE with `attrs` (`DW_AT_low_pc` with
    /// `DW_AT_high_pc`, or `DW_AT_ranges`), as gimli's `Dwarf::die_ranges` reads them.
    fn for_each_range(
        &self,
        attrs: &[gimli::Attribute<Reader<'d>>],
        mut f: impl FnMut(u64, u64),
    ) -> gimli::Result<()> {
        let (mut low, mut high, mut size) = (None, None, None);
        for attr in attrs {
            match attr.name() {
                gimli::DW_AT_low_pc => low = self.dwarf.attr_address(self.unit, attr.value())?,
                gimli::DW_AT_high_pc => match attr.value() {
                    AttributeValue::Udata(n) => size = Some(n),
                    value => high = self.dwarf.attr_address(self.unit, value)?,
                },
                gimli::DW_AT_ranges => {
                    if let Some(mut ranges) = self.dwarf.attr_ranges(self.unit, attr.value())? {
                        while let Some(range) = ranges.next()? {
                            f(range.begin, range.end);
                        }
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
        if let (Some(begin), Some(end)) = (low, size.map(|n| low.unwrap_or(0) + n).or(high)) {
            f(begin, end);
        }
        Ok(())
    }

    /// The path of line-program file `index` (u64::MAX: none).
    fn file(&mut self, index: u64) -> String {
        if index == u64::MAX {
            return String::new();
        }
        if let Some(path) = self.files.get(&index) {
            return path.clone();
        }
        let path = self.render_file(index).unwrap_or_default();
        self.files.insert(index, path.clone());
        path
    }

    fn render_file(&self, index: u64) -> Option<String> {
        let header = self.unit.line_program.as_ref()?.header();
        let file = header.file(index)?;
        let string = |value| {
            self.dwarf
                .attr_string(self.unit, value)
                .ok()
                .map(|s| s.to_string_lossy().into_owned())
        };
        let mut path = self
            .unit
            .comp_dir
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Directory 0 is the compilation directory.
        if file.directory_index() != 0 {
            if let Some(dir) = file.directory(header).and_then(string) {
                push_path(&mut path, &dir);
            }
        }
        push_path(&mut path, &string(file.path_name())?);
        Some(path)
    }
}

/// Function names of one object's DWARF, by the `.debug_info` offset of the DIE that gives
/// them, and what it takes to follow references into other units.
struct Names<'a, 'd> {
    dwarf: &'a gimli::Dwarf<Reader<'d>>,
    names: HashMap<usize, Option<FunctionName>>,
    /// Sorted start offsets of units: those `.debug_aranges` lists, and those found since
    /// between them.
    unit_starts: Vec<usize>,
    /// The units references led into, parsed once (a few: LTO's inlined functions come
    /// from a handful of units). Bounded by [`REFERENCED_UNITS`].
    referenced_units: HashMap<usize, Unit<'d>>,
}

/// Most units kept parsed for cross-unit references at once; the cache starts over past it.
const REFERENCED_UNITS: usize = 16;
/// Most references followed for one name (bad DWARF could loop).
const REFERENCE_HOPS: u32 = 8;

impl<'a, 'd> Names<'a, 'd> {
    fn new(dwarf: &'a gimli::Dwarf<Reader<'d>>, unit_starts: Vec<usize>) -> Self {
        Names {
            dwarf,
            names: HashMap::new(),
            unit_starts,
            referenced_units: HashMap::new(),
        }
    }

    /// The name of the function DIE at `offset` in `unit` with `attrs`: its linkage name,
    /// else that of the DIE it refers to (`DW_AT_abstract_origin` for inlined and
    /// out-of-line instances, `DW_AT_specification` for definitions of declarations; in this
    /// unit or, after cross-unit inlining, another), else its plain `DW_AT_name`.
    fn name(
        &mut self,
        unit: &Unit<'d>,
        offset: gimli::UnitOffset,
        attrs: &[gimli::Attribute<Reader<'d>>],
        hops: u32,
    ) -> Option<FunctionName> {
        let key = offset.to_debug_info_offset(&unit.header)?.0;
        if let Some(name) = self.names.get(&key) {
            return name.clone();
        }
        let mut plain = None;
        let mut origin = None;
        for attr in attrs {
            match attr.name() {
                gimli::DW_AT_linkage_name | gimli::DW_AT_MIPS_linkage_name => {
                    if let Ok(s) = self.dwarf.attr_string(unit, attr.value()) {
                        let name = Some(FunctionName::from_symbol(&s.to_string_lossy()));
                        self.names.insert(key, name.clone());
                        return name;
                    }
                }
                gimli::DW_AT_name => plain = self.dwarf.attr_string(unit, attr.value()).ok(),
                gimli::DW_AT_abstract_origin | gimli::DW_AT_specification => {
                    origin = match attr.value() {
                        AttributeValue::UnitRef(target) => {
                            target.to_debug_info_offset(&unit.header).map(|o| o.0)
                        }
                        AttributeValue::DebugInfoRef(target) => Some(target.0),
                        _ => None,
                    };
                }
                _ => {}
            }
        }
        // Inserted before following the reference, so a cycle in bad DWARF ends here.
        self.names.insert(key, None);
        let referred = origin
            .filter(|&target| target != key && hops < REFERENCE_HOPS)
            .and_then(|target| self.name_at(unit, target, hops + 1));
        let name = referred
            .or_else(|| plain.map(|p| FunctionName::from_source_name(&p.to_string_lossy())));
        self.names.insert(key, name.clone());
        name
    }

    /// The name of the DIE at `.debug_info` offset `target`, referred to from `from`.
    fn name_at(&mut self, from: &Unit<'d>, target: usize, hops: u32) -> Option<FunctionName> {
        let in_from = gimli::DebugInfoOffset(target)
            .to_unit_offset(&from.header)
            .filter(|o| o.0 >= from.header.header_size());
        if let Some(offset) = in_from {
            let entry = from.entry(offset).ok()?;
            return self.name(from, offset, entry.attrs(), hops);
        }
        let start = self.unit_start(target)?;
        if !self.referenced_units.contains_key(&start) {
            if self.referenced_units.len() >= REFERENCED_UNITS {
                self.referenced_units.clear();
            }
            let header = self
                .dwarf
                .debug_info
                .header_from_offset(gimli::DebugInfoOffset(start))
                .ok()?;
            let unit = self.dwarf.unit(header).ok()?;
            self.referenced_units.insert(start, unit);
        }
        // Taken out while its DIEs are read (the cache is borrowed mutably meanwhile).
        let unit = self.referenced_units.remove(&start)?;
        let name = gimli::DebugInfoOffset(target)
            .to_unit_offset(&unit.header)
            .and_then(|offset| {
                let entry = unit.entry(offset).ok()?;
                self.name(&unit, offset, entry.attrs(), hops)
            });
        self.referenced_units.insert(start, unit);
        name
    }

    /// The start of the unit holding `.debug_info` offset `target`.
    ///
    /// From the nearest known unit start below it, unit headers are read forward: the
    /// code-less units that references lead into (the abstract DIEs of functions inlined
    /// from other codegen units) lie among the units of the same crate, so this reads a few
    /// headers rather than all of them (each on its own page of `.debug_info`).
    fn unit_start(&mut self, target: usize) -> Option<usize> {
        let i = self.unit_starts.partition_point(|&s| s <= target);
        let mut start = i.checked_sub(1).map_or(0, |i| self.unit_starts[i]);
        loop {
            let header = self
                .dwarf
                .debug_info
                .header_from_offset(gimli::DebugInfoOffset(start))
                .ok()?;
            let end = start + header.length_including_self();
            if target < end {
                return Some(start);
            }
            start = end;
            let at = self.unit_starts.partition_point(|&s| s < start);
            if self.unit_starts.get(at) != Some(&start) {
                self.unit_starts.insert(at, start);
            }
        }
    }
}

/// Appends `part` to `path` with a `/`, or replaces `path` when `part` is absolute.
fn push_path(path: &mut String, part: &str) {
    if part.starts_with('/') || path.is_empty() {
        *path = part.to_string();
    } else {
        if !path.ends_with('/') {
            path.push('/');
        }
        path.push_str(part);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::elf::ObjectBytes;
    use object::ObjectSymbol;

    /// Addresses inside the functions of this test binary: a few thousand, from every unit.
    fn addresses_in_functions(elf: &Elf<'_>) -> Vec<u64> {
        let mut addresses: Vec<u64> = elf
            .symbols()
            .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 16)
            .step_by(3)
            .map(|s| s.address() + s.size() / 2)
            .collect();
        addresses.sort_unstable();
        addresses.dedup();
        addresses
    }

    /// What the index remembers changes how much is read, never what is found: addresses
    /// resolved with an index that knows nothing, part of the units, or all of them after
    /// several requests, get the same chains.
    #[test]
    fn the_index_of_units_read_before_gives_the_same_frames() {
        let bytes = ObjectBytes::map(std::path::Path::new("/proc/self/exe")).unwrap();
        let elf = Elf::parse(bytes.data()).unwrap();
        let dwarf = load(&elf).expect("the test binary has DWARF");
        let all = addresses_in_functions(&elf);
        assert!(all.len() > 1000, "{} addresses", all.len());
        let expected = resolve(&dwarf, &all, &mut ObjectIndex::default(), || {});
        let named = expected.iter().filter(|c| !c.is_empty()).count();
        assert!(named > all.len() * 9 / 10, "{named} of {}", all.len());
        // One request in four addresses, then another, then everything, then again.
        let mut index = ObjectIndex::default();
        let quarter: Vec<u64> = all.iter().copied().step_by(4).collect();
        let odd: Vec<u64> = all.iter().copied().skip(1).step_by(2).collect();
        for asked in [&quarter, &odd, &all, &all] {
            let chains = resolve(&dwarf, asked, &mut index, || {});
            for (address, chain) in asked.iter().zip(chains) {
                let at = all.binary_search(address).unwrap();
                assert_eq!(chain, expected[at], "{address:#x}");
            }
        }
    }

    #[test]
    fn joins_paths_like_the_compiler_wrote_them() {
        let mut path = "/src/app".to_string();
        push_path(&mut path, "src");
        push_path(&mut path, "main.rs");
        assert_eq!(path, "/src/app/src/main.rs");
        push_path(&mut path, "/rustc/abc/library/core/src/iter.rs");
        assert_eq!(path, "/rustc/abc/library/core/src/iter.rs");
    }
}
