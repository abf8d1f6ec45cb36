//! Response serialization: the fast path, and the wasteful one behind the `hotspot` incident.

use std::fmt::Write;

use serde_json::Value;

/// Serializes a response the ordinary way: one pass, no intermediate strings.
pub fn to_json(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a serde_json::Value always serializes")
}

/// Serializes a response the way the `hotspot` incident does: every value is formatted into a
/// string of its own, and after every field the whole document written so far is read again to
/// check that it still parses. That defensive re-check makes the cost quadratic in the response
/// size, so under load this function holds most of the CPU.
pub fn to_json_by_reformatting(value: &Value) -> Vec<u8> {
    let mut out = String::new();
    write_json_rechecking(&mut out, value);
    out.into_bytes()
}

/// Writes `value` to `out`, re-checking all of `out` after each object member and array element.
///
/// The re-check is written out here rather than in a helper so that a profile charges its time
/// to this function, which is where the mistake is.
#[inline(never)]
fn write_json_rechecking(out: &mut String, value: &Value) {
    let (open, close, children): (char, char, Vec<(Option<&String>, &Value)>) = match value {
        Value::Null => return out.push_str("null"),
        Value::Bool(b) => return out.push_str(&format!("{b}")),
        Value::Number(n) => return out.push_str(&format!("{n}")),
        Value::String(s) => return out.push_str(&format!("{}", Value::String(s.clone()))),
        Value::Array(items) => ('[', ']', items.iter().map(|item| (None, item)).collect()),
        Value::Object(members) => (
            '{',
            '}',
            members.iter().map(|(k, v)| (Some(k), v)).collect(),
        ),
    };
    out.push(open);
    for (i, (key, child)) in children.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if let Some(key) = key {
            let _ = write!(out, "{}:", Value::String(key.clone()));
        }
        write_json_rechecking(out, child);
        // Read the whole partial document again: are its strings closed and brackets balanced?
        let mut depth = 0i64;
        let mut in_string = false;
        let mut escaped = false;
        for &byte in out.as_bytes() {
            if in_string {
                match byte {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
            } else {
                match byte {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => depth -= 1,
                    _ => {}
                }
            }
            assert!(depth >= 0, "serializer wrote an unbalanced bracket");
        }
        assert!(!in_string, "serializer left a string open");
    }
    out.push(close);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_serializers_write_the_same_json() {
        let value = serde_json::json!({
            "data": {"products": [{"id": "p1", "name": "Quote \" and \\ slash", "price": 12.5,
            "reviews": [], "tags": {}, "inStock": true, "note": null}]}
        });
        let fast: Value = serde_json::from_slice(&to_json(&value)).unwrap();
        let slow: Value = serde_json::from_slice(&to_json_by_reformatting(&value)).unwrap();
        assert_eq!(fast, value);
        assert_eq!(slow, value);
    }
}
