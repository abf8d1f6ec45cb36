//! Symbolization of this process's addresses, outside any signal handler.
//!
//! [`ProcessSymbols::resolve`] reads the executable mappings from `/proc/self/maps` (with the
//! build IDs of the loaded objects) and, object by object, names each address: the function
//! symbol that holds it from `.symtab` (else `.dynsym`), then, where the object or its
//! separate debug file has DWARF, the inline chain with file:line ([`dwarf`]). Debug files
//! are found by build ID under `/usr/lib/debug/.build-id/` and by `.gnu_debuglink` beside the
//! object, in its `.debug/` directory and under `/usr/lib/debug` ([`elf::debug_file`]).
//!
//! Memory (docs/invariants.md invariant 5): objects are mapped read-only; only the DWARF
//! units that hold an asked-for address are read, one at a time, and the pages read are
//! handed back whenever 2 MiB of them are resident ([`elf::ResidentBudget`]), so the
//! resident cost follows that allowance and the largest unit a profile touches rather than
//! the size of the binary. What is kept across calls is an index of where things are in the
//! units read so far, offsets and address ranges only ([`unit_index`]: 480 KiB after the
//! demo router's benchmark), so a later request reads just the parts of a unit that hold
//! its addresses; the mappings are dropped before `resolve` returns. The result holds only
//! the frames of the addresses.
//! glibc keeps freed memory in the arena of the thread that freed it, so the short-lived
//! tables are handed back with `malloc_trim` at the end.
//!
//! [`Resolver::comments`] says what symbolization cost (thread CPU time) and names the
//! objects with unnamed addresses and neither a symbol table nor debug info, with how to
//! symbolize them later.

mod dies;
mod dwarf;
mod elf;
mod lines;
mod names;
mod unit_index;

use std::collections::HashMap;
use std::path::Path;

use crate::objects;
use crate::profile::{MappingInfo, Resolver, SourceFrame};

mod mappings;
use mappings::executable_mappings;
use elf::{Elf, ObjectBytes, ResidentBudget};
use names::FunctionName;

/// Mappings and symbols for a set of addresses of this process.
pub(crate) struct ProcessSymbols {
    mappings: Vec<MappingInfo>,
    frames: HashMap<u64, Vec<SourceFrame>>,
    comments: Vec<String>,
}

impl ProcessSymbols {
    /// Reads the mappings and symbolizes `addresses` (absolute, already normalised; in any
    /// order, repeats allowed).
    pub fn resolve(addresses: impl IntoIterator<Item = u64>) -> Self {
        // Symbolization runs on one thread: its CPU time is what it cost.
        let started = crate::procfs::thread_cpu_time();
        let mut addresses: Vec<u64> = addresses.into_iter().collect();
        addresses.sort_unstable();
        addresses.dedup();
        let mappings = executable_mappings();
        let exe = std::fs::read_link("/proc/self/exe")
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut frames = HashMap::with_capacity(addresses.len());
        let mut comments = Vec::new();
        for object in objects::loaded_objects(false) {
            let first = addresses.partition_point(|&a| a < object.avma_range.start);
            let last = addresses.partition_point(|&a| a < object.avma_range.end);
            let here = &addresses[first..last];
            if here.is_empty() {
                continue;
            }
            let bytes = if object.path == "[vdso]" {
                vdso_bytes(&mappings)
            } else if object.path == exe {
                // The executable through its magic link: still there when the file on disk
                // was replaced or deleted since the service started.
                ObjectBytes::map(Path::new("/proc/self/exe")).ok()
            } else {
                ObjectBytes::map(Path::new(&object.path)).ok()
            };
            let svmas: Vec<u64> = here.iter().map(|&a| a - object.bias).collect();
            let (chains, full_symbols) = bytes
                .as_ref()
                .map(|bytes| {
                    unit_index::with_object(&object.path, &object.build_id, |index| {
                        object_frames(Path::new(&object.path), bytes, &svmas, index)
                    })
                })
                .unwrap_or_else(|| (vec![Vec::new(); svmas.len()], false));
            let unnamed = chains.iter().filter(|c| c.is_empty()).count();
            if unnamed > 0 && !full_symbols {
                comments.push(unsymbolized_comment(&object, unnamed, here.len()));
            }
            for (&address, chain) in here.iter().zip(chains) {
                if !chain.is_empty() {
                    frames.insert(address, chain);
                }
            }
        }
        release_freed_memory();
        // One line: it changes nothing a reader of the profile should do, and `go tool pprof`
        // prints every comment above every table.
        let index = unit_index::held().map_or(String::new(), |(spans, bytes)| {
            format!(
                "; its index of the DWARF read so far: {spans} ranges, {} KiB",
                bytes.div_ceil(1024)
            )
        });
        comments.push(format!(
            "pprofd: symbolized {} addresses in {:.1} ms of CPU time{index}",
            addresses.len(),
            (crate::procfs::thread_cpu_time() - started).as_secs_f64() * 1e3
        ));
        ProcessSymbols {
            mappings,
            frames,
            comments,
        }
    }
}

impl Resolver for ProcessSymbols {
    fn mappings(&self) -> &[MappingInfo] {
        &self.mappings
    }

    fn frames(&self, address: u64) -> &[SourceFrame] {
        self.frames.get(&address).map_or(&[], Vec::as_slice)
    }

    fn comments(&self) -> &[String] {
        &self.comments
    }
}

/// The inline chain (innermost first) of each of `svmas`, sorted file addresses of the object
/// at `path` whose bytes are `bytes`; empty where nothing names the address. And whether the
/// object has its full symbols: a `.symtab` or DWARF (its own or a debug file's), not just
/// the exported names of `.dynsym`.
fn object_frames(
    path: &Path,
    bytes: &ObjectBytes,
    svmas: &[u64],
    index: &mut unit_index::ObjectIndex,
) -> (Vec<Vec<SourceFrame>>, bool) {
    let Ok(object) = Elf::parse(bytes.data()) else {
        return (vec![Vec::new(); svmas.len()], false);
    };
    let own_symtab = elf::has_symbol_table(&object);
    // A separate debug file also brings the symbol table a stripped object lacks (Debian's
    // libc6-dbg: `start_thread`, `clone3`).
    let separate = (!own_symtab || !elf::has_debug_info(&object))
        .then(|| elf::debug_file(path, &object))
        .flatten();
    let separate_object = separate
        .as_ref()
        .and_then(|(_, debug_bytes)| Elf::parse(debug_bytes.data()).ok());
    let symbol_source = match &separate_object {
        Some(debug) if !own_symtab && elf::has_symbol_table(debug) => debug,
        _ => &object,
    };
    let has_symtab = elf::has_symbol_table(symbol_source);
    // Demangled only where DWARF names no outermost function (see `source_frames`).
    let symbols = elf::function_symbols(symbol_source, svmas);
    bytes.release_pages();
    let (debug_bytes, debug_object) = match (&separate, &separate_object) {
        (Some((_, debug_bytes)), Some(debug)) if !elf::has_debug_info(&object) => {
            (debug_bytes, debug)
        }
        _ => (bytes, &object),
    };
    let sections = dwarf::load(debug_object);
    let has_dwarf = sections.is_some();
    let budget = ResidentBudget::new(debug_bytes);
    let chains = match sections {
        Some(sections) => dwarf::resolve(&sections, svmas, index, || budget.check()),
        None => vec![Vec::new(); svmas.len()],
    };
    debug_bytes.release_pages();
    let frames = chains
        .into_iter()
        .zip(symbols)
        .map(|(chain, symbol)| source_frames(chain, symbol))
        .collect();
    (frames, has_symtab || has_dwarf)
}

/// pprof's frames from DWARF's chain, with the symbol table's name for the outermost
/// function when DWARF has none (or no chain at all).
fn source_frames(chain: Vec<dwarf::DwarfFrame>, symbol: Option<&str>) -> Vec<SourceFrame> {
    if chain.is_empty() {
        return symbol
            .map(|s| {
                let s = FunctionName::from_symbol(s);
                vec![SourceFrame {
                    function: s.name,
                    system_name: s.system_name,
                    file: String::new(),
                    line: 0,
                }]
            })
            .unwrap_or_default();
    }
    let outermost = chain.len() - 1;
    chain
        .into_iter()
        .enumerate()
        .map(|(i, frame)| {
            let name = frame
                .name
                .or_else(|| {
                    (i == outermost)
                        .then(|| symbol.map(FunctionName::from_symbol))
                        .flatten()
                })
                .unwrap_or_else(|| FunctionName::from_source_name("??"));
            SourceFrame {
                function: name.name,
                system_name: name.system_name,
                file: frame.file,
                line: frame.line as i64,
            }
        })
        .collect()
}

/// The vDSO's image, as the kernel mapped it (the whole `[vdso]` mapping, so every header
/// the ELF parser reads lies inside it).
fn vdso_bytes(mappings: &[MappingInfo]) -> Option<ObjectBytes> {
    let vdso = mappings.iter().find(|m| m.path == "[vdso]")?;
    // SAFETY: the kernel maps the vDSO readable for the life of the process and never
    // unmaps it; `start..limit` is that mapping as /proc/self/maps lists it.
    let image = unsafe {
        std::slice::from_raw_parts(vdso.start as *const u8, (vdso.limit - vdso.start) as usize)
    };
    Some(ObjectBytes::Vdso(image))
}

/// The profile comment for an object with `unnamed` of its `addresses` left unnamed, having
/// neither a symbol table nor debug info.
fn unsymbolized_comment(
    object: &objects::LoadedObject,
    unnamed: usize,
    addresses: usize,
) -> String {
    let build_id = if object.build_id.is_empty() {
        "no build ID".to_string()
    } else {
        format!("build ID {}", object.build_id)
    };
    let base = Path::new(&object.path)
        .file_name()
        .map_or(object.path.clone(), |n| n.to_string_lossy().into_owned());
    let id_dir = if object.build_id.is_empty() {
        "BUILD_ID"
    } else {
        &object.build_id
    };
    format!(
        "pprofd: {unnamed} of {addresses} addresses in {} ({build_id}) are not symbolized: it \
         has no symbol table and no debug file was found. To symbolize them later, put the \
         unstripped file in DIR as DIR/{id_dir}/{base} and run \
         `pprofd symbolize PROFILE --debug-dir DIR -o OUT`, or upstream pprof's \
         `PPROF_BINARY_PATH=DIR pprof PROFILE` (`go tool pprof`, Go 1.26 included, matches no \
         build IDs; for the executable, `go tool pprof UNSTRIPPED PROFILE` works)",
        object.path,
    )
}

/// Returns free memory at the top of glibc's heaps and in whole free pages of its arenas to
/// the kernel. Elsewhere (musl, or a global allocator other than the C library's) there is
/// nothing to do: those allocators return memory by their own policy.
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only takes glibc's arena locks, like any malloc call; pprofd calls
    // it outside signal handlers, on its own threads.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The stated (file) address ranges of the functions named one of `names` in `object`, read
/// from its symbol table (the executable through `/proc/self/exe`). Empty when the object
/// cannot be read or names none of them. Allocates and reads files: never call from a handler.
pub(crate) fn named_functions(object: &objects::LoadedObject, names: &[&str]) -> Vec<std::ops::Range<u64>> {
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = if object.path == exe {
        Path::new("/proc/self/exe")
    } else {
        Path::new(&object.path)
    };
    let Ok(bytes) = ObjectBytes::map(path) else {
        return Vec::new();
    };
    let ranges = Elf::parse(bytes.data())
        .map(|elf| elf::named_function_ranges(&elf, names))
        .unwrap_or_default();
    bytes.release_pages();
    ranges
}

/// The function names at `addresses`, for the symbolz protocol (`/debug/pprof/symbol`).
pub(crate) fn function_names(addresses: &[u64]) -> Vec<(u64, String)> {
    let symbols = ProcessSymbols::resolve(addresses.iter().copied());
    addresses
        .iter()
        .filter_map(|&a| {
            // The outermost function of the inline chain is the symbol that holds the address.
            let name = symbols.frames(a).last()?.function.clone();
            Some((a, name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_function_with_a_known_name() -> u64 {
        std::hint::black_box(a_function_with_a_known_name as *const () as usize as u64)
    }

    #[test]
    fn resolves_a_function_with_file_and_line() {
        let address = a_function_with_a_known_name();
        let symbols = ProcessSymbols::resolve([address]);
        let frames = symbols.frames(address);
        let outer = frames.last().expect("symbolized");
        assert!(
            outer.function.ends_with("a_function_with_a_known_name"),
            "{outer:?}"
        );
        assert!(outer.file.ends_with("symbolize/mod.rs"), "{outer:?}");
        assert!(outer.line > 0);
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let main = &symbols.mappings()[0];
        assert_eq!(main.path, exe.to_string_lossy());
        assert!((main.start..main.limit).contains(&address));
        assert!(!main.build_id.is_empty(), "rustc links with a GNU build ID");
    }
}
