//! Query-string parsing with Go's rules: the first value of a repeated key wins, unknown keys
//! are ignored, and a value that is present but malformed is an error naming the parameter.

/// A parsed query string.
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        let pairs = raw
            .unwrap_or("")
            .split(['&', ';'])
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        Query { pairs }
    }

    /// The first value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `key` as an integer in `range`, `default` when absent or empty.
    pub fn int_in(
        &self,
        key: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, String> {
        let Some(raw) = self.get(key).filter(|v| !v.is_empty()) else {
            return Ok(default);
        };
        match raw.parse::<i128>() {
            Ok(n) if (*range.start() as i128..=*range.end() as i128).contains(&n) => Ok(n as u64),
            Ok(_) => Err(format!(
                "{key}={raw} is out of range: want a whole number from {} to {}",
                range.start(),
                range.end()
            )),
            Err(_) => Err(format!(
                "{key}={raw:?} is not a number: want a whole number from {} to {}",
                range.start(),
                range.end()
            )),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_value_wins_and_bad_numbers_are_named() {
        let q = Query::parse(Some("seconds=5&seconds=9&x=%41+b"));
        assert_eq!(q.get("x"), Some("A b"));
        assert_eq!(q.int_in("seconds", 30, 1..=600), Ok(5));
        assert_eq!(Query::parse(None).int_in("seconds", 30, 1..=600), Ok(30));
        for bad in [
            "seconds=abc",
            "seconds=0",
            "seconds=-3",
            "seconds=601",
            "seconds=99999999999999999999999",
        ] {
            let err = Query::parse(Some(bad))
                .int_in("seconds", 30, 1..=600)
                .unwrap_err();
            assert!(err.starts_with("seconds="), "{err}");
        }
    }

    #[test]
    fn malformed_escapes_pass_through() {
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%e2%82%ac"), "€");
    }

    #[test]
    fn random_query_strings_parse_to_bounded_values_or_named_errors() {
        // Pairs of known keys (some percent-encoded) and short values of digits, signs and
        // escapes, so values in range, at the bounds and past them all come up.
        let keys: [&[u8]; 5] = [b"seconds", b"debug", b"sec%6Fnds", b"x", b""];
        let alphabet = b"0123456789060+-%2 a\xc3\xa9";
        let mut x = 0x2545f4914f6cdd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..50_000 {
            let mut raw = Vec::new();
            for _ in 0..next() % 4 {
                raw.push(if next() % 2 == 0 { b'&' } else { b';' });
                raw.extend_from_slice(keys[next() as usize % keys.len()]);
                if next() % 8 != 0 {
                    raw.push(b'=');
                }
                for _ in 0..next() % 5 {
                    raw.push(alphabet[next() as usize % alphabet.len()]);
                }
            }
            let raw = String::from_utf8_lossy(&raw);
            let query = Query::parse(Some(&raw));
            // Every parse obeys the contract: the default when absent or empty, a value in
            // range equal to the number given, or an error naming the parameter and value.
            let given = query.get("seconds").filter(|v| !v.is_empty());
            match (query.int_in("seconds", 30, 1..=600), given) {
                (Ok(n), None) => assert_eq!(n, 30, "{raw:?}"),
                (Ok(n), Some(v)) => {
                    assert!((1..=600).contains(&n), "{raw:?} gave {n}");
                    assert_eq!(v.parse::<i128>().ok(), Some(n as i128), "{raw:?}");
                }
                (Err(e), given) => {
                    let v = given.unwrap_or_else(|| panic!("{raw:?}: error without a value: {e}"));
                    let named = e.contains(v) || e.contains(&format!("{v:?}"));
                    assert!(e.starts_with("seconds=") && named, "{raw:?}: {e}");
                    let in_range = v.parse::<i128>().is_ok_and(|n| (1..=600).contains(&n));
                    assert!(!in_range, "{raw:?}: {v} is in range but was refused: {e}");
                }
            }
            // The first `key=` pair wins, decoded.
            let first = raw
                .split(['&', ';'])
                .find(|p| p.split_once('=').map_or(*p, |(k, _)| k) == "debug")
                .map(|p| percent_decode(p.split_once('=').map_or("", |(_, v)| v)));
            assert_eq!(query.get("debug"), first.as_deref(), "{raw:?}");
        }
    }
}
