//! Symbolization of this process's addresses, outside any signal handler.
//!
//! [`ProcessSymbols::resolve`] reads the executable mappings from `/proc/self/maps` (with the
//! build IDs of the loaded objects) and asks blazesym for the function, file, line and inline
//! chain of each address. The blazesym symbolizer is created per call and dropped before it
//! returns, so no symbol cache outlives a profile (docs/invariants.md invariant 5).
//!
//! A symbolizer parses the binary's DWARF into tens of MiB of short-lived tables. glibc keeps
//! such freed memory in the arena of the thread that freed it, so over many requests on
//! pprofd's pool threads the service's RSS would creep up by tens of MiB; on glibc the freed
//! memory is handed back with `malloc_trim` once the symbolizer is gone.

use std::collections::HashMap;

use blazesym::symbolize::source::{Process, Source};
use blazesym::symbolize::{CodeInfo, Input, Symbolized, Symbolizer};
use blazesym::Pid;

use crate::profile::{MappingInfo, Resolver, SourceFrame};

mod mappings;
use mappings::executable_mappings;

/// Mappings and symbols for a set of addresses of this process.
pub(crate) struct ProcessSymbols {
    mappings: Vec<MappingInfo>,
    frames: HashMap<u64, Vec<SourceFrame>>,
}

impl ProcessSymbols {
    /// Reads the mappings and symbolizes `addresses` (absolute, already normalised; in any
    /// order, repeats allowed).
    pub fn resolve(addresses: impl IntoIterator<Item = u64>) -> Self {
        let mut addresses: Vec<u64> = addresses.into_iter().collect();
        addresses.sort_unstable();
        addresses.dedup();
        let addresses = addresses.as_slice();
        let mappings = executable_mappings();
        let mut frames = HashMap::with_capacity(addresses.len());
        let symbolizer = Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .build();
        let mut process = Process::new(Pid::Slf);
        // Paths from /proc/self/maps rather than /proc/self/map_files, which needs
        // CAP_SYS_ADMIN that production containers rarely grant. Our own paths resolve in our
        // own mount namespace.
        process.map_files = false;
        let source = Source::Process(process);
        // Sorted input is blazesym's fast path.
        if let Ok(results) = symbolizer.symbolize(&source, Input::AbsAddr(addresses)) {
            for (&address, result) in addresses.iter().zip(results) {
                if let Symbolized::Sym(sym) = result {
                    frames.insert(address, inline_chain(&sym));
                }
            }
        }
        drop(symbolizer);
        release_freed_memory();
        ProcessSymbols { mappings, frames }
    }
}

impl Resolver for ProcessSymbols {
    fn mappings(&self) -> &[MappingInfo] {
        &self.mappings
    }

    fn frames(&self, address: u64) -> &[SourceFrame] {
        self.frames.get(&address).map_or(&[], Vec::as_slice)
    }
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

/// Turns blazesym's answer (outermost function first, each with the location inside it)
/// into pprof's order: innermost first.
fn inline_chain(sym: &blazesym::symbolize::Sym<'_>) -> Vec<SourceFrame> {
    let frame = |name: &str, code: Option<&CodeInfo<'_>>| {
        let function = clean_name(name);
        SourceFrame {
            system_name: function.clone(),
            function,
            file: code
                .map(|c| c.to_path().to_string_lossy().into_owned())
                .unwrap_or_default(),
            line: code.and_then(|c| c.line).unwrap_or(0) as i64,
        }
    };
    let mut chain: Vec<SourceFrame> = sym
        .inlined
        .iter()
        .rev()
        .map(|f| frame(&f.name, f.code_info.as_ref()))
        .collect();
    chain.push(frame(&sym.name, sym.code_info.as_deref()));
    chain
}

/// Drops the `::h0123456789abcdef` hash that legacy Rust mangling leaves on demangled names.
fn clean_name(name: &str) -> String {
    match name.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            head.to_string()
        }
        _ => name.to_string(),
    }
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

    #[test]
    fn strips_legacy_hashes_only() {
        assert_eq!(clean_name("app::work::h0123456789abcdef"), "app::work");
        assert_eq!(clean_name("app::hello"), "app::hello");
    }
}
