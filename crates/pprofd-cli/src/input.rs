//! Loading one profile from a file (`.pb.gz` or `.pb`), a member of a support archive, or a URL.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use pprofd::profile::proto::Profile;

use crate::fetch;

/// How long to wait for a profile URL: long enough for a 30 s CPU profile and symbolization.
const URL_TIMEOUT: Duration = Duration::from_secs(120);
/// The archive member read when none is named: the CPU profile.
const DEFAULT_MEMBER: &str = "cpu.pb.gz";

/// A decoded profile and where it came from.
pub struct Loaded {
    /// The file, `archive:member` or URL it was read from.
    pub origin: String,
    /// The decoded profile.
    pub profile: Profile,
}

/// Loads the profile `spec` names: `http://...` (fetched as given), `FILE.pb.gz`, `FILE.pb`,
/// `ARCHIVE.tar.gz` (its CPU profile) or `ARCHIVE.tar.gz:NAME` (its member `NAME`, with or
/// without the `.pb.gz` ending).
pub fn load(spec: &str) -> Result<Loaded, String> {
    if spec.starts_with("http://") || spec.starts_with("https://") {
        let url = fetch::normalize_url(spec)?;
        let fetched = fetch::get(&url, URL_TIMEOUT)?;
        return decode(&url, &fetched.body);
    }
    let (path, member) = split_member(spec);
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    match archive_members(&bytes).map_err(|e| format!("{path}: {e}"))? {
        Some(members) => {
            let (name, data) = pick_member(members, member).map_err(|e| format!("{path}: {e}"))?;
            decode(&format!("{path}:{name}"), &data)
        }
        None if member.is_some() => Err(format!(
            "{path}: not an archive, so it has no member {:?}",
            member.unwrap_or_default()
        )),
        None => decode(path, &bytes),
    }
}

fn decode(origin: &str, bytes: &[u8]) -> Result<Loaded, String> {
    let profile = pprofd::profile::decode(bytes).map_err(|e| format!("{origin}: {e}"))?;
    Ok(Loaded {
        origin: origin.to_string(),
        profile,
    })
}

/// Splits `archive.tar.gz:heap` into path and member; a path that exists as given wins.
fn split_member(spec: &str) -> (&str, Option<&str>) {
    if Path::new(spec).exists() {
        return (spec, None);
    }
    match spec.rsplit_once(':') {
        Some((path, member)) if !member.contains('/') && Path::new(path).exists() => {
            (path, Some(member))
        }
        _ => (spec, None),
    }
}

/// A file of an archive: its path and contents.
pub type Member = (String, Vec<u8>);

/// The files of a tar or tar.gz archive, or `None` when `bytes` are not an archive.
pub fn archive_members(bytes: &[u8]) -> Result<Option<Vec<Member>>, String> {
    let plain;
    let tar_bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .take(pprofd::profile::MAX_DECODED_SIZE + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("corrupt or truncated gzip data: {e}"))?;
        plain = out;
        &plain[..]
    } else {
        bytes
    };
    let is_tar = tar_bytes.get(257..262) == Some(b"ustar");
    // An empty tar is only end-of-archive blocks: zeros, in multiples of 512 bytes.
    let is_empty_tar =
        !tar_bytes.is_empty() && tar_bytes.len() % 512 == 0 && tar_bytes.iter().all(|&b| b == 0);
    if !is_tar && !is_empty_tar {
        return Ok(None);
    }
    let mut archive = tar::Archive::new(tar_bytes);
    let mut members = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| format!("unreadable archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("unreadable archive: {e}"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| format!("unreadable archive: {e}"))?
            .to_string_lossy()
            .into_owned();
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| format!("unreadable archive member {name}: {e}"))?;
        members.push((name, data));
    }
    Ok(Some(members))
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Chooses the member `wanted` (by file name, with or without `.pb.gz`), else the CPU profile,
/// else the only profile in the archive.
fn pick_member(members: Vec<Member>, wanted: Option<&str>) -> Result<Member, String> {
    let profiles: Vec<Member> = members
        .into_iter()
        .filter(|(name, _)| name.ends_with(".pb.gz") || name.ends_with(".pb"))
        .collect();
    if profiles.is_empty() {
        return Err("archive holds no profiles".into());
    }
    let names: Vec<String> = profiles
        .iter()
        .map(|(n, _)| file_name(n).to_string())
        .collect();
    let matches = |name: &str, wanted: &str| {
        let name = file_name(name);
        name == wanted
            || name.strip_suffix(".pb.gz") == Some(wanted)
            || name.strip_suffix(".pb") == Some(wanted)
    };
    let chosen = match wanted {
        Some(wanted) => profiles
            .into_iter()
            .find(|(n, _)| matches(n, wanted))
            .ok_or_else(|| {
                format!(
                    "archive has no profile {wanted:?}; it has {}",
                    names.join(", ")
                )
            })?,
        None if profiles.len() == 1 => profiles.into_iter().next().expect("one profile"),
        None => profiles
            .into_iter()
            .find(|(n, _)| file_name(n) == DEFAULT_MEMBER)
            .ok_or_else(|| {
                format!(
                    "archive holds several profiles; name one as ARCHIVE:NAME, from {}",
                    names.join(", ")
                )
            })?,
    };
    Ok((file_name(&chosen.0).to_string(), chosen.1))
}
