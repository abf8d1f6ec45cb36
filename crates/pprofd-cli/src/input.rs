//! Loading one profile from a file (`.pb.gz` or `.pb`), a member of a support archive, or a URL.

use std::borrow::Cow;
use std::io::Read;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use pprofd::profile::proto::Profile;

use crate::fetch::{self, Token};

/// How long to wait for a profile URL: long enough for a 30 s CPU profile and symbolization.
const URL_TIMEOUT: Duration = Duration::from_secs(120);
/// The archive member read when none is named: the CPU profile.
const DEFAULT_MEMBER: &str = "cpu.pb.gz";
/// Largest file read, and largest archive once decompressed: the bound the profile decoder
/// puts on a decompressed profile, so a small hostile file (a gzip bomb) is an error instead
/// of exhausting memory. A support archive of a large service is a few hundred megabytes.
pub const MAX_INPUT_SIZE: u64 = pprofd::profile::MAX_DECODED_SIZE;

/// A decoded profile and where it came from.
pub struct Loaded {
    /// The file, `archive:member` or URL it was read from.
    pub origin: String,
    /// The decoded profile.
    pub profile: Profile,
}

/// Loads the profile `spec` names: `http://...` (fetched as given, with `token` when there is
/// one), `FILE.pb.gz`, `FILE.pb`, `ARCHIVE.tar.gz` (its CPU profile) or `ARCHIVE.tar.gz:NAME`
/// (its member `NAME`, with or without the `.pb.gz` ending).
pub fn load(spec: &str, token: Option<&Token>) -> Result<Loaded, String> {
    if spec.starts_with("http://") || spec.starts_with("https://") {
        let url = fetch::normalize_url(spec)?;
        let fetched = fetch::get(&url, URL_TIMEOUT, token)?;
        return decode(&url, &fetched.body);
    }
    let (path, member) = split_member(spec);
    let bytes = read_file(path, MAX_INPUT_SIZE)?;
    load_bytes(path, &bytes, member)
}

/// Reads the profile in `bytes`, the contents of the file `path`: a profile (gzipped or not),
/// or a tar or tar.gz archive from which `member` (see [`load`]) is read. Any bytes give a
/// profile or an error naming `path`, never a panic, and at most [`MAX_INPUT_SIZE`] bytes are
/// decompressed for the archive (the profile decoder bounds the profile the same way).
pub fn load_bytes(path: &str, bytes: &[u8], member: Option<&str>) -> Result<Loaded, String> {
    match archive_members(bytes, MAX_INPUT_SIZE).map_err(|e| format!("{path}: {e}"))? {
        Some(archive) => {
            let (name, data) = pick_member(&archive, member).map_err(|e| format!("{path}: {e}"))?;
            decode(&format!("{path}:{name}"), data)
        }
        None if member.is_some() => Err(format!(
            "{path}: not an archive, so it has no member {:?}",
            member.unwrap_or_default()
        )),
        None => decode(path, bytes),
    }
}

/// The contents of the file `path`, refused when larger than `limit` bytes.
fn read_file(path: &str, limit: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut bytes = Vec::new();
    // One byte past the limit tells a file of exactly `limit` bytes from a larger one.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{path}: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "{path}: larger than {limit} bytes, the most pprofd reads as a profile or archive"
        ));
    }
    Ok(bytes)
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

/// A tar archive held in memory and the regular files in it.
struct Archive<'a> {
    /// The tar bytes: borrowed for a plain tar, decompressed for a tar.gz.
    tar: Cow<'a, [u8]>,
    /// Each regular file's path and where its contents lie in `tar`.
    files: Vec<(String, Range<usize>)>,
}

impl Archive<'_> {
    /// The files whose names end like a profile's, as `(path, contents)`.
    fn profiles(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files
            .iter()
            .filter(|(name, _)| name.ends_with(".pb.gz") || name.ends_with(".pb"))
            .map(|(name, range)| (name.as_str(), &self.tar[range.clone()]))
    }
}

/// The tar or tar.gz archive in `bytes`, or `None` when `bytes` are not an archive. A gzip
/// stream that decompresses to more than `limit` bytes is an error, as is a member whose
/// header claims more data than the archive holds.
fn archive_members(bytes: &[u8], limit: u64) -> Result<Option<Archive<'_>>, String> {
    let tar: Cow<[u8]> = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        // One byte past the limit tells a stream of exactly `limit` bytes from a larger one.
        flate2::read::MultiGzDecoder::new(bytes)
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|e| format!("corrupt or truncated gzip data: {e}"))?;
        if out.len() as u64 > limit {
            return Err(format!(
                "larger than {limit} bytes once decompressed, the most pprofd reads"
            ));
        }
        Cow::Owned(out)
    } else {
        Cow::Borrowed(bytes)
    };
    let is_tar = tar.get(257..262) == Some(b"ustar");
    // An empty tar is only end-of-archive blocks: zeros, in multiples of 512 bytes.
    let is_empty_tar =
        !tar.is_empty() && tar.len().is_multiple_of(512) && tar.iter().all(|&b| b == 0);
    if !is_tar && !is_empty_tar {
        return Ok(None);
    }
    let mut files = Vec::new();
    let mut archive = tar::Archive::new(&tar[..]);
    let entries = archive
        .entries()
        .map_err(|e| format!("unreadable archive: {e}"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("unreadable archive: {e}"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| format!("unreadable archive: {e}"))?
            .to_string_lossy()
            .into_owned();
        // A regular file's contents follow its header unbroken; the header's size is only a
        // claim, so check it against what the archive holds.
        let start = entry.raw_file_position();
        let range = start
            .checked_add(entry.size())
            .and_then(|end| Some(usize::try_from(start).ok()?..usize::try_from(end).ok()?))
            .filter(|range| range.end <= tar.len())
            .ok_or_else(|| {
                format!(
                    "archive member {name} is truncated: its header says {} bytes",
                    entry.size()
                )
            })?;
        files.push((name, range));
    }
    Ok(Some(Archive { tar, files }))
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Chooses the profile `wanted` (by file name, with or without `.pb.gz`), else the CPU profile,
/// else the only profile in the archive; returns its file name and contents.
fn pick_member<'a>(
    archive: &'a Archive<'_>,
    wanted: Option<&str>,
) -> Result<(String, &'a [u8]), String> {
    let profiles: Vec<(&str, &[u8])> = archive.profiles().collect();
    if profiles.is_empty() {
        return Err("archive holds no profiles".into());
    }
    let names = || {
        profiles
            .iter()
            .map(|(n, _)| file_name(n))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let matches = |name: &str, wanted: &str| {
        let name = file_name(name);
        name == wanted
            || name.strip_suffix(".pb.gz") == Some(wanted)
            || name.strip_suffix(".pb") == Some(wanted)
    };
    let chosen = match wanted {
        Some(wanted) => profiles
            .iter()
            .find(|(n, _)| matches(n, wanted))
            .ok_or_else(|| format!("archive has no profile {wanted:?}; it has {}", names()))?,
        None if profiles.len() == 1 => &profiles[0],
        None => profiles
            .iter()
            .find(|(n, _)| file_name(n) == DEFAULT_MEMBER)
            .ok_or_else(|| {
                format!(
                    "archive holds several profiles; name one as ARCHIVE:NAME, from {}",
                    names()
                )
            })?,
    };
    Ok((file_name(chosen.0).to_string(), chosen.1))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, name, *data).unwrap();
        }
        tar.into_inner().unwrap()
    }

    fn small_profile() -> Vec<u8> {
        let mut builder =
            pprofd::profile::ProfileBuilder::new(&[("samples", "count")], ("samples", "count"), 1);
        builder.add_sample(
            vec![pprofd::profile::Frame::Synthetic("main".into())],
            vec![3],
            vec![],
        );
        pprofd::profile::encode_gzip(&builder.build(&pprofd::profile::NoSymbols))
    }

    #[test]
    fn members_are_read_by_name_from_tar_and_tar_gz() {
        let profile = small_profile();
        let tar = tar_of(&[
            ("x/cpu.pb.gz", &profile),
            ("x/heap.pb.gz", &profile),
            ("x/README.txt", b"hi"),
        ]);
        for bytes in [tar.clone(), gzip(&tar)] {
            let loaded = load_bytes("a.tar.gz", &bytes, Some("heap")).unwrap();
            assert_eq!(loaded.origin, "a.tar.gz:heap.pb.gz");
            assert_eq!(loaded.profile.sample.len(), 1);
            let loaded = load_bytes("a.tar.gz", &bytes, None).unwrap();
            assert_eq!(loaded.origin, "a.tar.gz:cpu.pb.gz");
            let missing = load_bytes("a.tar.gz", &bytes, Some("mutex")).err().unwrap();
            assert!(missing.contains("cpu.pb.gz, heap.pb.gz"), "{missing}");
        }
        assert!(load_bytes("p.pb.gz", &profile, None).is_ok());
    }

    #[test]
    fn a_gzip_bomb_is_an_error_past_the_limit() {
        // 4 MiB of zeros gzips to about 4 KiB; the limit here is 1 MiB so the test stays
        // small, and `load_bytes` applies the same check with MAX_INPUT_SIZE.
        let bomb = gzip(&vec![0u8; 4 << 20]);
        assert!(bomb.len() < 16 << 10);
        let error = archive_members(&bomb, 1 << 20).err().unwrap();
        assert!(
            error.contains("larger than 1048576 bytes once decompressed"),
            "{error}"
        );
        // Exactly at the limit is still read (and is an empty tar: all zeros).
        let at_limit = gzip(&vec![0u8; 1 << 20]);
        let archive = archive_members(&at_limit, 1 << 20).unwrap().unwrap();
        assert!(archive.files.is_empty());
    }

    #[test]
    fn a_member_claiming_more_than_the_archive_holds_is_an_error() {
        let profile = small_profile();
        let mut tar = tar_of(&[("x/cpu.pb.gz", &profile)]);
        // Cut the archive inside the member's data: the header still claims all of it.
        tar.truncate(512 + profile.len() / 2);
        let error = load_bytes("cut.tar", &tar, None).err().unwrap();
        assert!(
            error.contains("cut.tar: archive member x/cpu.pb.gz is truncated"),
            "{error}"
        );
    }

    #[test]
    fn files_over_the_limit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.pb");
        std::fs::write(&path, vec![7u8; 1001]).unwrap();
        let path = path.to_str().unwrap();
        let error = read_file(path, 1000).unwrap_err();
        assert!(error.contains("larger than 1000 bytes"), "{error}");
        assert_eq!(read_file(path, 1001).unwrap().len(), 1001);
    }
}
