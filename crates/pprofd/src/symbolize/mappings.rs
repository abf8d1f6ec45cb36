//! The profile's mappings: one per executable segment of each loaded object, with the object's
//! GNU build ID.
//!
//! The segments come from the loader (`dl_iterate_phdr`), which also gives each object's build
//! ID from its `PT_NOTE` segments in memory; the file names come from `/proc/self/maps`, matched
//! by address range. Matching by path fails: on a merged-`/usr` system the loader knows
//! `/lib/x86_64-linux-gnu/libc.so.6` while the kernel names the file
//! `/usr/lib/x86_64-linux-gnu/libc.so.6`.
//!
//! Each mapping ends where its segment ends and starts where the segment's `p_vaddr`, rounded
//! down to its `p_align`, lies at run time, with the file offset of that start (`p_offset`
//! less the same amount; the two agree modulo `p_align`). `start - file_offset` is the same as
//! for the segment's exact start, which is what pprof's binutils and `pprofd symbolize` use.
//! Go's `go tool pprof BINARY PROFILE` relocates addresses by `memory_start` minus the file's
//! first executable `p_vaddr` rounded down to its `p_align` (Go 1.26's `cmd/internal/objfile`;
//! Go 1.19 did not round), so only this start makes its offline symbolization name the right
//! functions: with the segment's exact start every address was off by the segment's offset
//! within its alignment. With a 4 KiB `p_align` (lld's and GNU ld's on x86_64) the start is the
//! page-rounded start `/proc/self/maps` shows.

use std::ops::Range;

use crate::objects;
use crate::profile::MappingInfo;

/// Executable mappings of this process (plus the vDSO), main executable first.
pub(super) fn executable_mappings() -> Vec<MappingInfo> {
    let maps: Vec<MapsLine> = std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter_map(parse_maps_line)
        .collect();
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut mappings = mappings_of(&objects::loaded_objects(false), &maps);
    // Stable sort: the executable's mappings first, the rest in address order.
    mappings.sort_by_key(|m| (m.path != exe, m.start));
    mappings
}

/// The mappings of `objects`' executable segments, named as `/proc/self/maps` names the file
/// holding them, then the executable file mappings of `maps` that no object covers (code
/// mapped by hand rather than by the loader), as the kernel shows them, without build ID.
fn mappings_of(objects: &[objects::LoadedObject], maps: &[MapsLine]) -> Vec<MappingInfo> {
    let mut mappings = Vec::new();
    for object in objects {
        for segment in &object.executable_segments {
            let path = maps
                .iter()
                .find(|line| line.range.contains(&segment.avma.start))
                .map_or(object.path.as_str(), |line| line.path.as_str());
            // `p_offset` and `p_vaddr` agree modulo `p_align`, so the lead is the same in both.
            let lead = segment.file_offset % segment.align.max(1);
            mappings.push(MappingInfo {
                start: segment.avma.start - lead,
                limit: segment.avma.end,
                file_offset: segment.file_offset - lead,
                path: path.to_string(),
                build_id: object.build_id.clone(),
            });
        }
    }
    let by_objects = mappings.len();
    for line in maps.iter().filter(|line| line.executable) {
        let covered = mappings[..by_objects]
            .iter()
            .any(|m| m.start < line.range.end && line.range.start < m.limit);
        if !covered {
            mappings.push(MappingInfo {
                start: line.range.start,
                limit: line.range.end,
                file_offset: line.offset,
                path: line.path.clone(),
                build_id: String::new(),
            });
        }
    }
    mappings
}

/// A file-backed line of `/proc/self/maps` (or the vDSO's).
#[derive(Debug)]
struct MapsLine {
    range: Range<u64>,
    offset: u64,
    executable: bool,
    path: String,
}

fn parse_maps_line(line: &str) -> Option<MapsLine> {
    let mut fields = line.split_ascii_whitespace();
    let (range, perms, offset) = (fields.next()?, fields.next()?, fields.next()?);
    // The path is the rest of the line after device and inode: it may contain spaces.
    let path = fields.nth(2)?;
    let path = &line[line.find(path)?..];
    if !(path.starts_with('/') || path == "[vdso]") {
        return None;
    }
    let (start, limit) = range.split_once('-')?;
    Some(MapsLine {
        range: u64::from_str_radix(start, 16).ok()?..u64::from_str_radix(limit, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        path: path.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_loaded_object_has_its_build_id_and_the_kernels_file_name() {
        let mappings = executable_mappings();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(mappings[0].path, exe.to_string_lossy(), "{mappings:#?}");
        let here = every_loaded_object_has_its_build_id_and_the_kernels_file_name as *const ()
            as usize as u64;
        assert!((mappings[0].start..mappings[0].limit).contains(&here));
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let libc = mappings
            .iter()
            .find(|m| m.path.contains("/libc.so"))
            .expect("libc mapped");
        assert!(
            !libc.build_id.is_empty(),
            "libc has a GNU build ID: {libc:?}"
        );
        for m in &mappings {
            // Each mapping ends inside an executable line of /proc/self/maps naming the same
            // file, so its path is the kernel's even where the loader's differs.
            let line = maps
                .lines()
                .filter_map(parse_maps_line)
                .find(|l| l.range.contains(&(m.limit - 1)))
                .unwrap_or_else(|| panic!("{m:?} is in no /proc/self/maps line"));
            assert!(line.executable && line.path == m.path, "{m:?} vs {line:?}");
            assert!(m.limit <= line.range.end, "{m:?} vs {line:?}");
            // The file offset of `start` follows from the maps line's page-aligned one (the
            // start may lie before the line's where `p_align` is larger than a page).
            assert_eq!(
                m.start.wrapping_sub(line.range.start),
                m.file_offset.wrapping_sub(line.offset),
                "{m:?}"
            );
        }
    }

    #[test]
    fn maps_lines_keep_paths_with_spaces_and_skip_anonymous_memory() {
        let line =
            parse_maps_line("7f00-7f10 r-xp 00001000 08:01 42    /opt/my app/lib x.so").unwrap();
        assert_eq!(line.path, "/opt/my app/lib x.so");
        assert_eq!(
            (line.range, line.offset, line.executable),
            (0x7f00..0x7f10, 0x1000, true)
        );
        assert!(parse_maps_line("7f00-7f10 rw-p 00000000 00:00 0").is_none());
        assert!(parse_maps_line("7f00-7f10 rw-p 00000000 00:00 0    [stack]").is_none());
        assert!(parse_maps_line("7f00-7f10 r-xp 00000000 00:00 0    [vdso]").is_some());
    }
}
