//! How much memory a protobuf profile takes once decoded, read from the wire format before
//! decoding it.
//!
//! The decompressed size alone does not bound memory: protobuf is compact and the decoded
//! tables are not. An empty `Sample` is 2 bytes on the wire and a 72-byte struct in memory, a
//! packed location id is 1 byte and a `u64`; a 1 MiB gzip of empty samples decompresses to
//! 1 GiB and would decode to 36 GiB. So [`super::decode`] first walks the message's fields,
//! adds up the size of every table entry they would become, and refuses a profile over its
//! budget before allocating any of it.

use std::mem::size_of;

use super::proto::{Function, Label, Line, Location, Mapping, Sample, ValueType};

/// The messages whose fields become table entries.
#[derive(Clone, Copy)]
enum Message {
    Profile,
    Sample,
    Location,
}

/// The most memory one wire byte can decode to: a 2-byte empty message of the largest
/// struct. Charged for bytes the walk cannot parse, which prost either rejects or decodes
/// into no more than this.
fn worst_per_byte() -> u64 {
    let largest = [
        size_of::<Sample>(),
        size_of::<Location>(),
        size_of::<Mapping>(),
        size_of::<Function>(),
        size_of::<String>(),
        size_of::<Label>(),
        size_of::<Line>(),
        size_of::<ValueType>(),
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    // A 1-byte packed number becomes 8 bytes; a 2-byte message becomes `largest`.
    (largest as u64).div_ceil(2).max(8)
}

/// The bytes of table entries (structs, numbers and string contents) that decoding the
/// plain protobuf `data` as a [`super::proto::Profile`] creates, not counting the spare
/// capacity of growing vectors (at most as much again).
pub(super) fn decoded_size(data: &[u8]) -> u64 {
    message_size(data, Message::Profile)
}

fn message_size(data: &[u8], message: Message) -> u64 {
    let mut reader = Reader { data, pos: 0 };
    let mut total = 0u64;
    while reader.pos < data.len() {
        let start = reader.pos;
        let Some((field, value)) = reader.field() else {
            // Malformed from here on: prost refuses it, or decodes it into at most this.
            let rest = (data.len() - start) as u64;
            return total.saturating_add(rest.saturating_mul(worst_per_byte()));
        };
        total = total.saturating_add(field_size(message, field, value));
    }
    total
}

/// What one field adds. A field with a wire type its schema does not allow adds nothing:
/// prost refuses the message.
fn field_size(message: Message, field: u64, value: Value) -> u64 {
    let entry = |size: usize| size as u64;
    match (message, field, value) {
        // sample_type, period_type
        (Message::Profile, 1 | 11, Value::Bytes(_)) => entry(size_of::<ValueType>()),
        (Message::Profile, 2, Value::Bytes(b)) => {
            entry(size_of::<Sample>()).saturating_add(message_size(b, Message::Sample))
        }
        (Message::Profile, 3, Value::Bytes(_)) => entry(size_of::<Mapping>()),
        (Message::Profile, 4, Value::Bytes(b)) => {
            entry(size_of::<Location>()).saturating_add(message_size(b, Message::Location))
        }
        (Message::Profile, 5, Value::Bytes(_)) => entry(size_of::<Function>()),
        (Message::Profile, 6, Value::Bytes(b)) => {
            entry(size_of::<String>()).saturating_add(b.len() as u64)
        }
        // comment; sample location_id and value: repeated 64-bit numbers, packed or not.
        (Message::Profile, 13, value) | (Message::Sample, 1 | 2, value) => numbers(value),
        (Message::Sample, 3, Value::Bytes(_)) => entry(size_of::<Label>()),
        (Message::Location, 4, Value::Bytes(_)) => entry(size_of::<Line>()),
        _ => 0,
    }
}

/// The memory of a repeated 64-bit number field: one number, or a packed run of varints.
fn numbers(value: Value) -> u64 {
    match value {
        Value::Varint => 8,
        // Every varint ends in a byte below 0x80 (a run cut short is refused by prost).
        Value::Bytes(b) => b.iter().filter(|&&byte| byte < 0x80).count() as u64 * 8,
        Value::Fixed => 0,
    }
}

/// A field's value, as far as sizes go.
#[derive(Clone, Copy)]
enum Value<'a> {
    Varint,
    /// 32- or 64-bit: only unknown fields have them here, and they decode to nothing.
    Fixed,
    Bytes(&'a [u8]),
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.data.get(self.pos)?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(value);
            }
        }
        None
    }

    /// The next field number and value; `None` when the rest is not a field prost would read
    /// as one (truncated, an overlong varint, a group, wire types 6 and 7).
    fn field(&mut self) -> Option<(u64, Value<'a>)> {
        let key = self.varint()?;
        let value = match key & 7 {
            0 => {
                self.varint()?;
                Value::Varint
            }
            1 | 5 => {
                let width = if key & 7 == 1 { 8 } else { 4 };
                let end = self.pos.checked_add(width)?;
                self.data.get(self.pos..end)?;
                self.pos = end;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                let end = self.pos.checked_add(len)?;
                let bytes = self.data.get(self.pos..end)?;
                self.pos = end;
                Value::Bytes(bytes)
            }
            _ => return None,
        };
        Some((key >> 3, value))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::profile::{Frame, Label as BuilderLabel, NoSymbols, ProfileBuilder};

    /// What the decoded profile's tables hold, counted from the decoded structs.
    fn counted(p: &crate::profile::proto::Profile) -> u64 {
        let n = |count: usize, size: usize| (count * size) as u64;
        n(
            p.sample_type.len() + usize::from(p.period_type.is_some()),
            size_of::<ValueType>(),
        ) + n(p.mapping.len(), size_of::<Mapping>())
            + n(p.function.len(), size_of::<Function>())
            + n(p.comment.len(), 8)
            + p.string_table
                .iter()
                .map(|s| n(1, size_of::<String>()) + s.len() as u64)
                .sum::<u64>()
            + p.sample
                .iter()
                .map(|s| {
                    n(1, size_of::<Sample>())
                        + n(s.location_id.len() + s.value.len(), 8)
                        + n(s.label.len(), size_of::<Label>())
                })
                .sum::<u64>()
            + p.location
                .iter()
                .map(|l| n(1, size_of::<Location>()) + n(l.line.len(), size_of::<Line>()))
                .sum::<u64>()
    }

    #[test]
    fn the_walk_counts_what_decoding_builds() {
        let mut b = ProfileBuilder::new(
            &[("samples", "count"), ("cpu", "nanoseconds")],
            ("cpu", "nanoseconds"),
            10_000_000,
        );
        for i in 0..50u64 {
            b.add_sample(
                vec![
                    Frame::Address(0x1000 + i),
                    Frame::Synthetic(format!("f{}", i % 7)),
                ],
                vec![i as i64, 1 << 40],
                vec![BuilderLabel::num("bytes", 64, Some("bytes"))],
            );
        }
        b.add_comment("a comment");
        let profile = b.build(&NoSymbols);
        let encoded = profile.encode_to_vec();
        assert_eq!(decoded_size(&encoded), counted(&profile));
    }

    #[test]
    fn empty_samples_are_charged_their_struct() {
        let data = [0x12u8, 0x00].repeat(1000);
        assert_eq!(decoded_size(&data), 1000 * size_of::<Sample>() as u64);
        let decoded = crate::profile::proto::Profile::decode(&data[..]).unwrap();
        assert_eq!(decoded.sample.len(), 1000);
    }

    #[test]
    fn unparseable_bytes_are_charged_the_worst_case() {
        // A length running past the end: prost refuses it, the walk charges the worst case.
        let data = [0x12u8, 0x7f, 0x00];
        assert_eq!(decoded_size(&data), 3 * worst_per_byte());
        assert!(worst_per_byte() >= size_of::<Sample>() as u64 / 2);
    }
}
