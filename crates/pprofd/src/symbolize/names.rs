//! Function names as pprof needs them: the demangled name in `Function.name`, the linkage
//! symbol in `Function.system_name`.
//!
//! `go tool pprof` (google/pprof `symbolizer.demangleSingleFunction`, vendored in Go 1.26 as in
//! 1.19)
//! treats a function whose `system_name` equals its `name` as not demangled yet and, when the
//! text looks like demangled C++ (it holds `::`, `<` or `[`), cuts everything inside `<...>`
//! and `(...)`: `<demo::Scan as Iterator>::next` would show as `::next` and merge with every
//! other `next`. So a demangled Rust name always travels with its mangled symbol, and a name
//! with no known symbol gets an empty `system_name`, which pprof leaves alone.

/// A function's display name and its linkage symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FunctionName {
    /// Demangled, with `<Type as Trait>` kept and legacy mangling's `::h0123…` hash dropped.
    pub name: String,
    /// The symbol as the object names it, or empty when only the source name is known.
    pub system_name: String,
}

impl FunctionName {
    /// The name of a linkage symbol (from `.symtab` or `DW_AT_linkage_name`). Rust symbols
    /// (legacy `_ZN…17h…E` and v0 `_R…`) are demangled here; C symbols stay as they are, and
    /// C++ ones too, which pprof demangles itself (its `system_name` equals `name`).
    /// A symbol version (`clock_nanosleep@GLIBC_2.2.5`, `@@GLIBC_2.34` in some symbol tables)
    /// is left out of both: it names the library's ABI, not the function.
    pub fn from_symbol(symbol: &str) -> Self {
        let symbol = symbol.split_once('@').map_or(symbol, |(name, _)| name);
        let name = match rustc_demangle::try_demangle(symbol) {
            // The alternate form leaves out the hash of legacy names and v0's crate hashes.
            Ok(demangled) => format!("{demangled:#}"),
            Err(_) => symbol.to_string(),
        };
        FunctionName {
            name,
            system_name: symbol.to_string(),
        }
    }

    /// A name from DWARF's `DW_AT_name` alone, with no linkage symbol to go with it.
    pub fn from_source_name(name: &str) -> Self {
        FunctionName {
            name: name.to_string(),
            system_name: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbol_versions_are_left_out() {
        let versioned = FunctionName::from_symbol("clock_nanosleep@GLIBC_2.2.5");
        assert_eq!(versioned.name, "clock_nanosleep");
        assert_eq!(versioned.system_name, "clock_nanosleep");
        assert_eq!(
            FunctionName::from_symbol("pthread_cond_wait@@GLIBC_2.3.2").name,
            "pthread_cond_wait"
        );
    }

    #[test]
    fn demangles_legacy_rust_symbols_without_the_hash_and_keeps_the_trait() {
        // `<demo::Scan as core::iter::traits::iterator::Iterator>::next`, legacy mangling.
        let symbol = "_ZN69_$LT$demo..Scan$u20$as$u20$core..iter..traits..iterator..Iterator$GT$4next17h0123456789abcdefE";
        let name = FunctionName::from_symbol(symbol);
        assert_eq!(
            name.name,
            "<demo::Scan as core::iter::traits::iterator::Iterator>::next"
        );
        assert_eq!(name.system_name, symbol);
    }

    #[test]
    fn demangles_v0_rust_symbols() {
        let name = FunctionName::from_symbol("_RNvCs1234_7mycrate4work");
        assert_eq!(name.name, "mycrate::work");
        assert_ne!(name.name, name.system_name);
    }

    #[test]
    fn leaves_c_symbols_as_they_are() {
        let name = FunctionName::from_symbol("memcpy");
        assert_eq!(
            (name.name.as_str(), name.system_name.as_str()),
            ("memcpy", "memcpy")
        );
    }

    #[test]
    fn a_source_name_alone_has_no_system_name() {
        let name = FunctionName::from_source_name("poll");
        assert_eq!(name.name, "poll");
        assert!(name.system_name.is_empty());
    }
}
