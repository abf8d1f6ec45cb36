//! Go's legacy text profiles (`debug=1`), written in one place for the heap, block/mutex,
//! goroutine and threadcreate profiles: a header, then per stack a `VALUES @ ADDRESSES` line,
//! its notes as `# ` lines and one `#\tADDRESS\tFUNCTION\tFILE:LINE` line per frame (each
//! inline frame on its own line), then a blank line; `# ` comments anywhere. Each profile
//! writes only its header and values, in Go's words for that profile.

use std::fmt::Write as _;

use super::{Frame, Resolver, SourceFrame};

/// A text profile being written.
pub(crate) struct LegacyText<'r> {
    out: String,
    symbols: &'r dyn Resolver,
    /// Added to each stored address when printed: 1 where stacks hold return addresses less
    /// one and Go's form wants the return addresses.
    shown_offset: u64,
}

impl<'r> LegacyText<'r> {
    /// Starts with `header` (one or more lines, without the final newline), naming frames
    /// with `symbols`.
    pub fn new(header: &str, symbols: &'r dyn Resolver) -> Self {
        LegacyText {
            out: format!("{header}\n"),
            symbols,
            shown_offset: 0,
        }
    }

    /// Prints every address one higher than stored (Go's heap text shows return addresses).
    pub fn showing_return_addresses(mut self) -> Self {
        self.shown_offset = 1;
        self
    }

    /// A `# comment` line.
    pub fn comment(&mut self, comment: &str) {
        let _ = writeln!(self.out, "# {comment}");
    }

    /// One stack: `values @ addresses`, each note as a `# ` line, then its frames, leaf
    /// first; a synthetic frame (`[truncated]`, ...) is a `#\tname` line.
    pub fn stack<'f>(
        &mut self,
        values: &str,
        frames: impl IntoIterator<Item = &'f Frame> + Clone,
        notes: &[String],
    ) {
        let addresses: Vec<String> = frames
            .clone()
            .into_iter()
            .filter_map(Frame::address)
            .map(|a| format!("{:#x}", a + self.shown_offset))
            .collect();
        let _ = writeln!(self.out, "{values} @ {}", addresses.join(" "));
        for note in notes {
            self.comment(note);
        }
        for frame in frames {
            match frame {
                Frame::Address(address) => {
                    let shown = address + self.shown_offset;
                    let source = self.symbols.frames(*address);
                    if source.is_empty() {
                        let place = object_offset(self.symbols, *address);
                        let _ = writeln!(self.out, "#\t{shown:#x}\t?\t{place}");
                    }
                    for f in source {
                        let _ =
                            writeln!(self.out, "#\t{shown:#x}\t{}\t{}", f.function, source_line(f));
                    }
                }
                Frame::Synthetic(name) => {
                    let _ = writeln!(self.out, "#\t{name}");
                }
            }
        }
        self.out.push('\n');
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Where an address without symbols lies: `object+0xoffset`, or the bare address.
pub(crate) fn object_offset(symbols: &dyn Resolver, address: u64) -> String {
    symbols
        .mappings()
        .iter()
        .find(|m| (m.start..m.limit).contains(&address))
        .map_or_else(
            || format!("{address:#x}"),
            |m| format!("{}+{:#x}", m.path, address - m.start + m.file_offset),
        )
}

/// `file:line`, or what is known of it.
pub(crate) fn source_line(f: &SourceFrame) -> String {
    match (f.file.as_str(), f.line) {
        ("", _) => "?".into(),
        (file, 0) => file.into(),
        (file, line) => format!("{file}:{line}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::NoSymbols;

    #[test]
    fn stacks_list_addresses_notes_and_frames() {
        let stack = [Frame::Address(0x10), Frame::Synthetic("[truncated]".into())];
        let mut text = LegacyText::new("kind profile: total 2", &NoSymbols);
        text.stack("2", &stack, &["threads: 1, 2".into()]);
        text.comment("a note");
        assert_eq!(
            text.finish(),
            "kind profile: total 2\n2 @ 0x10\n# threads: 1, 2\n#\t0x10\t?\t0x10\n#\t[truncated]\n\n# a note\n"
        );
        let mut text = LegacyText::new("heap", &NoSymbols).showing_return_addresses();
        text.stack("1: 8 [1: 8]", &stack[..1], &[]);
        assert_eq!(text.finish(), "heap\n1: 8 [1: 8] @ 0x11\n#\t0x11\t?\t0x10\n\n");
    }
}
