//! The rows of a unit's line program: address, file and line only.
//!
//! gimli's `LineRows` keeps every register of the DWARF line state machine and builds an
//! instruction value per opcode, ~45 ns a row; a 10 s profile of the demo router runs 190k
//! rows to find ~400 of them, 10 ms of its symbolization. This runs the same machine for the
//! three registers symbolization uses, straight off the program's bytes, with gimli's header
//! parsing (opcode base, line range, standard opcode lengths) and gimli's handling of
//! tombstoned sequences (a `DW_LNE_set_address` backwards or to -1/-2: the sequence of a
//! function the linker dropped; its rows are left out). `DW_LNE_define_file` (DWARF 2-4,
//! which no current compiler emits) is stepped over: rows naming the file it defines get no
//! file name.

use std::ops::ControlFlow;

use gimli::Reader as _;

use super::dwarf::Reader;

/// One row of the line table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Row {
    pub address: u64,
    /// Index into the header's file table.
    pub file: u64,
    /// 0 when the row has no source line.
    pub line: u64,
    /// The first address after the sequence: this row covers no instruction.
    pub end_sequence: bool,
    /// Where the row's sequence starts in the program (a place [`for_each_row`] can start
    /// from: the line registers start over at each sequence).
    pub sequence: usize,
    /// Where the program goes on after this row: after an `end_sequence` row, the start of
    /// the next sequence.
    pub next: usize,
}

/// The line state machine's registers that [`Row`] needs, and what skips tombstones.
struct Registers {
    address: u64,
    op_index: u64,
    file: u64,
    line: u64,
    tombstone: bool,
}

impl Registers {
    /// The state at the start of each sequence (DWARF 5 section 6.2.2; file 1 as gimli).
    fn new() -> Self {
        Registers {
            address: 0,
            op_index: 0,
            file: 1,
            line: 1,
            tombstone: false,
        }
    }

    fn advance_line(&mut self, increment: i64) {
        // Saturating below like gimli: a line number never goes under 0.
        self.line = if increment < 0 {
            self.line.saturating_sub(increment.unsigned_abs())
        } else {
            self.line.wrapping_add(increment as u64)
        };
    }
}

/// Calls `row` with each row of `header`'s program in order, from the sequence that starts
/// `from` bytes into the program (0: the first), until it breaks.
pub(super) fn for_each_row(
    header: &gimli::LineProgramHeader<Reader<'_>>,
    from: usize,
    mut row: impl FnMut(Row) -> ControlFlow<()>,
) -> gimli::Result<()> {
    let opcode_base = header.opcode_base();
    let line_range = header.line_range();
    if line_range == 0 {
        return Err(gimli::Error::LineRangeZero);
    }
    let line_base = i64::from(header.line_base());
    let min_length = u64::from(header.minimum_instruction_length());
    let max_ops = u64::from(header.maximum_operations_per_instruction()).max(1);
    let address_size = header.address_size();
    // The lowest tombstone: -2 in the address size (gold and lld write -2 or -1).
    let min_tombstone = match address_size {
        8 => u64::MAX - 1,
        size => (1u64 << (u64::from(size) * 8)).wrapping_sub(2),
    };
    let opcode_lengths = *header.standard_opcode_lengths();
    let program = header.raw_program_buf();
    let mut input = program;
    input.skip(from)?;
    let offset = |input: &Reader<'_>| program.len() - input.len();
    let mut sequence = from;
    let mut state = Registers::new();
    // DWARF 5 section 6.2.5.1, step 2: an operation advance moves the address by whole
    // instructions and op_index within one (VLIW; x86_64 and aarch64 have one op each).
    let advance = |state: &mut Registers, operations: u64| -> gimli::Result<()> {
        if state.tombstone {
            return Ok(());
        }
        let by = if max_ops == 1 {
            min_length.wrapping_mul(operations)
        } else {
            let ops = state.op_index.wrapping_add(operations);
            state.op_index = ops % max_ops;
            min_length.wrapping_mul(ops / max_ops)
        };
        state.address = state
            .address
            .checked_add(by)
            .ok_or(gimli::Error::AddressOverflow)?;
        Ok(())
    };
    while !input.is_empty() {
        let opcode = input.read_u8()?;
        // Extended opcodes first, then special ones, as gimli reads them.
        let (emit, end_sequence) = if opcode == 0 {
            let length = input.read_uleb128()?;
            let mut operands = input.split(length as usize)?;
            match gimli::DwLne(operands.read_u8()?) {
                gimli::DW_LNE_end_sequence => (true, true),
                gimli::DW_LNE_set_address => {
                    let address = operands.read_address(address_size)?;
                    state.tombstone = address < state.address || address >= min_tombstone;
                    if !state.tombstone {
                        state.address = address;
                        state.op_index = 0;
                    }
                    (false, false)
                }
                // Discriminators, define_file and vendor extensions: nothing rows need.
                _ => (false, false),
            }
        } else if opcode >= opcode_base {
            let adjusted = opcode - opcode_base;
            state.advance_line(line_base + i64::from(adjusted % line_range));
            advance(&mut state, u64::from(adjusted / line_range))?;
            (true, false)
        } else {
            match gimli::DwLns(opcode) {
                gimli::DW_LNS_copy => {}
                gimli::DW_LNS_advance_pc => {
                    let operations = input.read_uleb128()?;
                    advance(&mut state, operations)?;
                }
                gimli::DW_LNS_advance_line => state.advance_line(input.read_sleb128()?),
                gimli::DW_LNS_set_file => state.file = input.read_uleb128()?,
                gimli::DW_LNS_set_column | gimli::DW_LNS_set_isa => {
                    input.read_uleb128()?;
                }
                gimli::DW_LNS_negate_stmt
                | gimli::DW_LNS_set_basic_block
                | gimli::DW_LNS_set_prologue_end
                | gimli::DW_LNS_set_epilogue_begin => {}
                gimli::DW_LNS_const_add_pc => {
                    advance(&mut state, u64::from((255 - opcode_base) / line_range))?;
                }
                gimli::DW_LNS_fixed_advance_pc => {
                    let by = input.read_u16()?;
                    if !state.tombstone {
                        state.address = state
                            .address
                            .checked_add(u64::from(by))
                            .ok_or(gimli::Error::AddressOverflow)?;
                        state.op_index = 0;
                    }
                }
                _ => {
                    // An opcode this reader does not know: the header says how many
                    // ULEB128 operands it has.
                    let mut lengths = opcode_lengths;
                    lengths.skip(usize::from(opcode - 1))?;
                    for _ in 0..lengths.read_u8()? {
                        input.read_uleb128()?;
                    }
                }
            }
            (opcode == gimli::DW_LNS_copy.0, false)
        };
        if emit {
            if !state.tombstone {
                let flow = row(Row {
                    address: state.address,
                    file: state.file,
                    line: state.line,
                    end_sequence,
                    sequence,
                    next: offset(&input),
                });
                if flow.is_break() {
                    return Ok(());
                }
            }
            if end_sequence {
                state = Registers::new();
                sequence = offset(&input);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::dwarf;
    use crate::symbolize::elf::{Elf, ObjectBytes};

    /// Every row of every unit of this test binary's DWARF (a release build, as rustc
    /// writes it) is the row gimli's `LineRows` gives.
    #[test]
    fn rows_are_gimlis_rows_for_every_unit_of_this_binary() {
        let bytes = ObjectBytes::map(std::path::Path::new("/proc/self/exe")).unwrap();
        let elf = Elf::parse(bytes.data()).unwrap();
        let dwarf = dwarf::load(&elf).expect("the test binary has DWARF");
        let (mut units, mut rows) = (0, 0);
        let mut headers = dwarf.units();
        while let Some(header) = headers.next().unwrap() {
            let unit = dwarf.unit(header).unwrap();
            let Some(program) = unit.line_program.clone() else {
                continue;
            };
            let mut expected = Vec::new();
            let mut gimli_rows = program.clone().rows();
            while let Some((_, row)) = gimli_rows.next_row().unwrap() {
                expected.push((
                    row.address(),
                    row.file_index(),
                    row.line().map_or(0, |l| l.get()),
                    row.end_sequence(),
                ));
            }
            let mut ours = Vec::new();
            for_each_row(program.header(), 0, |row| {
                ours.push(row);
                ControlFlow::Continue(())
            })
            .unwrap();
            let plain = |rows: &[Row]| -> Vec<(u64, u64, u64, bool)> {
                rows.iter()
                    .map(|r| (r.address, r.file, r.line, r.end_sequence))
                    .collect()
            };
            assert_eq!(plain(&ours), expected, "unit {:?}", unit.header.offset());
            // Stopped halfway, the rows so far are the same.
            let half = expected.len() / 2;
            let mut prefix = Vec::new();
            for_each_row(program.header(), 0, |row| {
                prefix.push(row);
                if prefix.len() == half {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
            if half > 0 {
                assert_eq!(plain(&prefix), expected[..half]);
            }
            // Each row's sequence starts where the sequence before it ended, or after it
            // (past a tombstoned sequence, whose rows are left out).
            let mut start = 0;
            for row in &ours {
                assert!(row.sequence >= start, "unit {:?}", unit.header.offset());
                start = row.sequence;
                if row.end_sequence {
                    start = row.next;
                }
            }
            // Started at a sequence, the rows are those of the whole run from there on (a
            // sample of sequences: checking each would be quadratic).
            let ends = ours.iter().enumerate().filter(|(_, r)| r.end_sequence);
            for (i, row) in ends.step_by(61) {
                let mut rest = Vec::new();
                for_each_row(program.header(), row.next, |row| {
                    rest.push(row);
                    ControlFlow::Continue(())
                })
                .unwrap();
                assert_eq!(rest, ours[i + 1..], "unit {:?}", unit.header.offset());
            }
            units += 1;
            rows += ours.len();
        }
        assert!(units > 10 && rows > 10_000, "{units} units, {rows} rows");
    }
}
