use super::*;

struct FakeSymbols {
    mappings: Vec<MappingInfo>,
    inline: Vec<SourceFrame>,
}

impl Resolver for FakeSymbols {
    fn mappings(&self) -> &[MappingInfo] {
        &self.mappings
    }
    fn frames(&self, address: u64) -> &[SourceFrame] {
        if address == 0x1010 {
            &self.inline
        } else {
            &[]
        }
    }
}

fn frame(function: &str, line: i64) -> SourceFrame {
    SourceFrame {
        function: function.into(),
        system_name: function.into(),
        file: "src/lib.rs".into(),
        line,
    }
}

#[test]
fn round_trips_with_locations_mappings_and_inline_lines() {
    let mut b = ProfileBuilder::new(
        &[("samples", "count"), ("cpu", "nanoseconds")],
        ("cpu", "nanoseconds"),
        10_000_000,
    );
    b.set_time(UNIX_EPOCH + Duration::from_secs(5), Duration::from_secs(2));
    b.add_comment("hello");
    b.add_sample(
        vec![
            Frame::Address(0x1010),
            Frame::Address(0x1fff),
            Frame::Synthetic("[truncated]".into()),
        ],
        vec![3, 30_000_000],
        vec![
            Label::str("thread", "main"),
            Label::num("bytes", 64, Some("bytes")),
        ],
    );
    b.add_sample(
        vec![Frame::Address(0x1010), Frame::Address(0x9000)],
        vec![1, 10_000_000],
        vec![],
    );
    assert_eq!(b.addresses(), vec![0x1010, 0x1fff, 0x9000]);
    let symbols = FakeSymbols {
        mappings: vec![MappingInfo {
            start: 0x1000,
            limit: 0x2000,
            file_offset: 0,
            path: "/bin/app".into(),
            build_id: "ab".into(),
        }],
        inline: vec![frame("inner", 7), frame("outer", 3)],
    };
    let encoded = encode_gzip(&b.build(&symbols));
    let p = decode(&encoded).unwrap();
    let s = |i: i64| p.string_table[i as usize].as_str();
    assert_eq!(p.time_nanos, 5_000_000_000);
    assert_eq!(p.duration_nanos, 2_000_000_000);
    assert_eq!(p.period, 10_000_000);
    assert_eq!(s(p.comment[0]), "hello");
    assert_eq!(p.sample.len(), 2);
    // Same address, same location.
    assert_eq!(p.sample[0].location_id[0], p.sample[1].location_id[0]);
    let leaf = &p.location[p.sample[0].location_id[0] as usize - 1];
    assert_eq!(leaf.address, 0x1010);
    assert_eq!(leaf.mapping_id, 1);
    let names: Vec<&str> = leaf
        .line
        .iter()
        .map(|l| s(p.function[l.function_id as usize - 1].name))
        .collect();
    assert_eq!(names, ["inner", "outer"]);
    let outside = &p.location[p.sample[1].location_id[1] as usize - 1];
    assert_eq!((outside.address, outside.mapping_id), (0x9000, 0));
    let m = &p.mapping[0];
    assert!(m.has_functions && m.has_filenames && m.has_line_numbers && m.has_inline_frames);
    assert_eq!((s(m.filename), s(m.build_id)), ("/bin/app", "ab"));
    let label = &p.sample[0].label[1];
    assert_eq!(
        (s(label.key), label.num, s(label.num_unit)),
        ("bytes", 64, "bytes")
    );
    // Plain (not gzipped) protobuf decodes too.
    assert_eq!(decode(&p.encode_to_vec()).unwrap(), p);
}

#[test]
fn rejects_garbage_truncation_and_dangling_references() {
    assert!(matches!(
        decode(b"hello, not a profile"),
        Err(DecodeError::Protobuf(_)) | Err(DecodeError::Inconsistent(_))
    ));
    let mut b = ProfileBuilder::new(&[("samples", "count")], ("cpu", "nanoseconds"), 1);
    b.add_sample(vec![Frame::Address(1)], vec![1], vec![]);
    let gz = encode_gzip(&b.build(&NoSymbols));
    assert!(matches!(
        decode(&gz[..gz.len() / 2]),
        Err(DecodeError::Gzip(_))
    ));
    let mut p = decode(&gz).unwrap();
    p.sample[0].location_id.push(99);
    assert!(matches!(
        decode(&p.encode_to_vec()),
        Err(DecodeError::Inconsistent(_))
    ));
    assert!(matches!(decode(&[]), Err(DecodeError::Inconsistent(_))));
}

/// Regression: 64 KiB of gzip holding 64 MiB of empty samples decoded to 2.4 GB of `Sample`
/// structs (36 times the decompressed size; the CLI's `top` on it peaked at 2.4 GB RSS). Such a
/// profile is now refused before anything is allocated for it.
#[test]
fn a_profile_that_would_exhaust_memory_is_refused_before_decoding() {
    let empty_samples = [0x12u8, 0x00].repeat(32 << 20);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&empty_samples).unwrap();
    let gz = gz.finish().unwrap();
    assert!(gz.len() < 1 << 20, "{} bytes", gz.len());
    match decode(&gz) {
        Err(DecodeError::TooMuchMemory(bytes)) => assert!(bytes > MAX_DECODED_MEMORY),
        other => panic!("expected TooMuchMemory, got {other:?}"),
    }
    let message = decode(&gz).unwrap_err().to_string();
    assert!(
        message.contains("bytes of memory once decoded"),
        "{message}"
    );
}
