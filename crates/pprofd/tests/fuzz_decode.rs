//! Mutation fuzzing of the profile reader: thousands of corrupted variants of a real profile
//! (bit flips, truncations, insertions, splices, length-field damage), gzipped and plain,
//! must each decode to a profile or an error, never a panic, and a decoded profile must be
//! safe to walk. The same corpus seeds the cargo-fuzz target in `fuzz/`.

use pprofd::profile::{self, Frame, Label, ProfileBuilder};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seed_profile() -> Vec<u8> {
    let mut b = ProfileBuilder::new(
        &[("samples", "count"), ("cpu", "nanoseconds")],
        ("cpu", "nanoseconds"),
        10_000_000,
    );
    for i in 0..20u64 {
        b.add_sample(
            vec![
                Frame::Address(0x1000 + i),
                Frame::Address(0x2000 + i % 3),
                Frame::Synthetic("[truncated]".into()),
            ],
            vec![i as i64, i as i64 * 10],
            vec![
                Label::str("thread", format!("t{i}")),
                Label::num("bytes", 64, Some("bytes")),
            ],
        );
    }
    b.add_comment("seed");
    pprofd::symbolize_and_encode(b)
}

/// Touches every index a reader would follow.
fn walk(p: &profile::proto::Profile) -> usize {
    let mut n = 0;
    for s in &p.sample {
        for id in &s.location_id {
            let location = p.location.iter().find(|l| l.id == *id).expect("validated");
            for line in &location.line {
                let f = p
                    .function
                    .iter()
                    .find(|f| f.id == line.function_id)
                    .expect("validated");
                n += p.string_table[f.name as usize].len();
            }
        }
        for l in &s.label {
            n += p.string_table[l.key as usize].len() + p.string_table[l.str as usize].len();
        }
    }
    n
}

fn mutate(rng: &mut XorShift, input: &[u8]) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 => data.truncate(rng.below(data.len() + 1)),
            2 => {
                let i = rng.below(data.len() + 1);
                data.insert(i, rng.next() as u8);
            }
            3 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = [0x00, 0x7f, 0x80, 0xff][rng.below(4)];
            }
            4 if data.len() > 8 => {
                let (a, b) = (rng.below(data.len()), rng.below(data.len()));
                let len = rng.below(32).min(data.len() - a.max(b));
                let chunk = data[a..a + len].to_vec();
                data[b..b + len].copy_from_slice(&chunk);
            }
            _ => data.extend((0..rng.below(16)).map(|_| rng.next() as u8)),
        }
    }
    data
}

#[test]
fn corrupted_profiles_are_errors_never_panics() {
    let gz = seed_profile();
    let plain = {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    };
    let mut rng = XorShift(0x9e3779b97f4a7c15);
    let (mut ok, mut errors) = (0, 0);
    for round in 0..20_000 {
        let seed = if round % 2 == 0 { &gz } else { &plain };
        let data = mutate(&mut rng, seed);
        match profile::decode(&data) {
            Ok(p) => {
                walk(&p);
                ok += 1;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                errors += 1;
            }
        }
    }
    assert!(
        errors > 1000 && ok > 100,
        "mutations exercised both paths: {ok} ok, {errors} errors"
    );
}
