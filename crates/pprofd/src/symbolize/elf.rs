//! The ELF files symbolization reads: mapped read-only, their function symbols, and the
//! separate debug-info file a stripped object points to.
//!
//! Files are mapped rather than read so that only the pages symbolization touches become
//! resident; [`ObjectBytes::release_pages`] hands those back (they stay in the page cache,
//! outside the process's RSS) once 2 MiB of them are resident ([`ResidentBudget`]) and when
//! the request ends.

use std::fs::File;
use std::path::{Path, PathBuf};

use object::read::elf::ElfFile64;
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

/// An ELF file parsed over its bytes.
pub(crate) type Elf<'d> = ElfFile64<'d, object::Endianness>;

/// The bytes of an object file.
pub(crate) enum ObjectBytes {
    /// A file mapped read-only and private.
    Mapped(memmap2::Mmap),
    /// The vDSO: the kernel's image, already mapped in this process for as long as it runs.
    Vdso(&'static [u8]),
}

impl ObjectBytes {
    /// Maps the file at `path`.
    pub fn map(path: &Path) -> std::io::Result<ObjectBytes> {
        let file = File::open(path)?;
        // SAFETY: the mapping is private and read-only, and pprofd only reads it while it
        // symbolizes. Executables and libraries are replaced by renaming a new file over them
        // (a running executable cannot even be opened for writing: ETXTBSY), which leaves this
        // inode intact; only truncating the file in place while a request reads it would fault,
        // the same exposure as every in-process symbolizer (blazesym, the backtrace crate).
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(ObjectBytes::Mapped(map))
    }

    /// The bytes.
    pub fn data(&self) -> &[u8] {
        match self {
            ObjectBytes::Mapped(map) => map,
            ObjectBytes::Vdso(bytes) => bytes,
        }
    }

    /// Drops the pages read so far from this process's resident set. Later reads fault them
    /// back in from the page cache, so borrowed slices stay valid.
    pub fn release_pages(&self) {
        if let ObjectBytes::Mapped(map) = self {
            // SAFETY: the mapping is private, read-only and backed by a file, so MADV_DONTNEED
            // discards nothing that cannot be read again: a later access sees the same bytes.
            // Failure only means the pages stay resident until the mapping is dropped.
            let _ = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }
}

/// How far the process's file-backed resident memory may grow while DWARF is read before
/// the object's pages are handed back. Handing them back after every unit cost more than
/// reading the DWARF did (12 of 28 ms for a 10 s profile of the demo router: every unit
/// faulted `.debug_abbrev`, `.debug_str` and `.debug_ranges` pages in again, 64 KiB at a
/// time), so pages are kept until this much has built up. 4 MiB took ~10% less CPU but
/// raised the bench's peaks by 1-3 MiB (CPU profile with `debug = true` 8.1 MiB, near the
/// 10 MiB bound), so 2 MiB.
const RESIDENT_ALLOWANCE: u64 = 2 << 20;

/// Hands an object's pages back whenever the process's file-backed resident memory has grown
/// [`RESIDENT_ALLOWANCE`] past what it was at the last hand-back, as `/proc/self/statm`
/// counts it (a few microseconds to read). Where that cannot be read, at every check.
pub(crate) struct ResidentBudget<'b> {
    bytes: &'b ObjectBytes,
    baseline: std::cell::Cell<Option<u64>>,
}

impl<'b> ResidentBudget<'b> {
    /// Starts counting from the resident memory now.
    pub fn new(bytes: &'b ObjectBytes) -> Self {
        ResidentBudget {
            bytes,
            baseline: std::cell::Cell::new(file_resident_bytes()),
        }
    }

    /// Hands the pages back if the allowance is used up.
    pub fn check(&self) {
        let over = match (file_resident_bytes(), self.baseline.get()) {
            (Some(now), Some(baseline)) => now > baseline + RESIDENT_ALLOWANCE,
            _ => true,
        };
        if over {
            self.bytes.release_pages();
            self.baseline.set(file_resident_bytes());
        }
    }
}

/// The process's resident file-backed (and shared) memory: `/proc/self/statm`'s third field,
/// in pages.
fn file_resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_ascii_whitespace().nth(2)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).ok()?)
}

/// For each of `svmas` (sorted file addresses), the linkage name of the function symbol that
/// holds it (the innermost, when symbols nest), from `.symtab`, else `.dynsym`.
///
/// One pass over the table with a binary search per symbol: the memory used is one slot per
/// address, not a sorted copy of the table.
pub(crate) fn function_symbols<'d>(elf: &Elf<'d>, svmas: &[u64]) -> Vec<Option<&'d str>> {
    let mut best: Vec<Option<(u64, &'d str)>> = vec![None; svmas.len()];
    let mut visit = |symbol: object::read::elf::ElfSymbol<'d, '_, _, _>| {
        if symbol.kind() != SymbolKind::Text || symbol.size() == 0 {
            return;
        }
        let (start, end) = (
            symbol.address(),
            symbol.address().saturating_add(symbol.size()),
        );
        let first = svmas.partition_point(|&a| a < start);
        if svmas.get(first).is_none_or(|&a| a >= end) {
            // Holds no address: its name (in `.strtab`, a page fault away) is not read.
            return;
        }
        let Ok(name) = symbol.name() else { return };
        for (slot, _) in best[first..]
            .iter_mut()
            .zip(&svmas[first..])
            .take_while(|(_, &a)| a < end)
        {
            // The innermost symbol wins; of aliases at one address, the public name
            // (`clone3` over `__clone3`), as debuggers show it.
            let underscores = |n: &str| n.len() - n.trim_start_matches('_').len();
            if slot.is_none_or(|(s, other)| {
                start > s || (start == s && underscores(name) < underscores(other))
            }) {
                *slot = Some((start, name));
            }
        }
    };
    if elf.symbol_table().is_some() {
        elf.symbols().for_each(&mut visit);
    } else {
        elf.dynamic_symbols().for_each(&mut visit);
    }
    best.into_iter().map(|b| b.map(|(_, name)| name)).collect()
}

/// The stated address ranges of the function symbols named one of `names`, from `.symtab`
/// (local functions such as musl's thread entry `start` are only there), else `.dynsym`.
pub(crate) fn named_function_ranges(elf: &Elf<'_>, names: &[&str]) -> Vec<std::ops::Range<u64>> {
    let symbols = if elf.symbol_table().is_some() {
        elf.symbols()
    } else {
        elf.dynamic_symbols()
    };
    symbols
        .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
        .filter(|s| s.name().is_ok_and(|name| names.contains(&name)))
        .map(|s| s.address()..s.address().saturating_add(s.size()))
        .collect()
}

/// Whether the file has a full symbol table (`.symtab`), not only the exported names of
/// `.dynsym`.
pub(crate) fn has_symbol_table(elf: &Elf<'_>) -> bool {
    elf.symbol_table().is_some()
}

/// Whether the file carries DWARF debug information of its own.
pub(crate) fn has_debug_info(elf: &Elf<'_>) -> bool {
    elf.section_by_name(".debug_info")
        .is_some_and(|s| s.size() > 0)
}

/// The separate debug-info file of `elf` (at `path`), as GDB looks for it: by build ID under
/// `/usr/lib/debug/.build-id/ab/cdef….debug`, then by `.gnu_debuglink` name beside the
/// object, in its `.debug/` directory and under `/usr/lib/debug` + its directory. A
/// candidate counts only if it has `.debug_info` and, when both files carry build IDs,
/// the same one.
pub(crate) fn debug_file(path: &Path, elf: &Elf<'_>) -> Option<(PathBuf, ObjectBytes)> {
    let build_id = elf.build_id().ok().flatten();
    let mut candidates = Vec::new();
    if let Some(id) = build_id.filter(|id| id.len() > 1) {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        candidates.push(PathBuf::from(format!(
            "/usr/lib/debug/.build-id/{}/{}.debug",
            &hex[..2],
            &hex[2..]
        )));
    }
    if let Ok(Some((name, _crc))) = elf.gnu_debuglink() {
        let name = Path::new(std::str::from_utf8(name).ok()?);
        let dir = path.parent().unwrap_or(Path::new("/"));
        candidates.push(dir.join(name));
        candidates.push(dir.join(".debug").join(name));
        candidates.push(
            Path::new("/usr/lib/debug")
                .join(dir.strip_prefix("/").unwrap_or(dir))
                .join(name),
        );
    }
    candidates.into_iter().find_map(|candidate| {
        // The object itself is never its own debug file (a debuglink naming itself).
        if candidate == path {
            return None;
        }
        let bytes = ObjectBytes::map(&candidate).ok()?;
        let debug = Elf::parse(bytes.data()).ok()?;
        let matches = match (build_id, debug.build_id().ok().flatten()) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        let usable = matches && has_debug_info(&debug);
        drop(debug);
        usable.then_some((candidate, bytes))
    })
}
