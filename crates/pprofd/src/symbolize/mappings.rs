//! The profile's mappings: the executable, file-backed mappings of this process with the
//! build IDs of the objects they belong to.

use std::collections::HashMap;

use crate::objects;
use crate::profile::MappingInfo;

/// Executable, file-backed mappings of this process (plus the vDSO), main executable first.
pub(super) fn executable_mappings() -> Vec<MappingInfo> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let build_ids: HashMap<String, String> = objects::loaded_objects(false)
        .into_iter()
        .map(|o| (o.path, o.build_id))
        .collect();
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut mappings: Vec<MappingInfo> = maps
        .lines()
        .filter_map(|line| parse_maps_line(line, &build_ids))
        .collect();
    // Stable sort: the executable's mappings first, the rest in address order.
    mappings.sort_by_key(|m| m.path != exe);
    mappings
}

fn parse_maps_line(line: &str, build_ids: &HashMap<String, String>) -> Option<MappingInfo> {
    let mut fields = line.split_ascii_whitespace();
    let (range, perms, offset) = (fields.next()?, fields.next()?, fields.next()?);
    let path = fields.nth(2)?;
    if perms.as_bytes().get(2) != Some(&b'x') || !(path.starts_with('/') || path == "[vdso]") {
        return None;
    }
    let (start, limit) = range.split_once('-')?;
    Some(MappingInfo {
        start: u64::from_str_radix(start, 16).ok()?,
        limit: u64::from_str_radix(limit, 16).ok()?,
        file_offset: u64::from_str_radix(offset, 16).ok()?,
        path: path.to_string(),
        build_id: build_ids.get(path).cloned().unwrap_or_default(),
    })
}
