//! The ELF objects loaded in this process, read through `dl_iterate_phdr`.
//!
//! Both the unwinder (which needs each object's `.eh_frame`) and the symbolizer (which needs
//! build IDs for the profile's mappings) start here. Everything is copied out while the
//! loader's lock is held, so a concurrent `dlclose` cannot unmap memory we are reading.

use std::ffi::CStr;
use std::ops::Range;

/// One loaded object: the executable, a shared library or the vDSO.
pub(crate) struct LoadedObject {
    /// Path as the loader knows it; the executable's real path for the main program.
    pub path: String,
    /// Difference between run-time addresses and the addresses stated in the file.
    pub bias: u64,
    /// Run-time address range covered by the object's `PT_LOAD` segments.
    pub avma_range: Range<u64>,
    /// Stated (file) address ranges of executable segments.
    pub text_svma: Option<Range<u64>>,
    /// Each executable `PT_LOAD` segment exactly as the file states it, moved to its run-time
    /// address: what the profile's mappings describe.
    pub executable_segments: Vec<ExecutableSegment>,
    /// GNU build ID, lowercase hex.
    pub build_id: String,
    /// Copies of `.eh_frame_hdr` and `.eh_frame`, when asked for and present.
    pub unwind_sections: Option<UnwindSections>,
}

/// One executable `PT_LOAD` segment of a loaded object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExecutableSegment {
    /// Run-time addresses of the segment: its stated `p_vaddr..p_vaddr + p_memsz` plus the
    /// object's bias. Not rounded to pages, so that `start - file_offset` relates run-time
    /// addresses to file offsets for every address inside, as pprof's tools compute it.
    pub avma: Range<u64>,
    /// The segment's `p_offset`: where `avma.start` lies in the file.
    pub file_offset: u64,
    /// The segment's `p_align`: run-time and file addresses agree modulo it.
    pub align: u64,
}

/// Copies of an object's DWARF call-frame sections, with their stated addresses.
pub(crate) struct UnwindSections {
    pub eh_frame_hdr_svma: Range<u64>,
    pub eh_frame_hdr: Vec<u8>,
    pub eh_frame_svma: Range<u64>,
    pub eh_frame: Vec<u8>,
}

/// A count that changes whenever an object is loaded or unloaded (glibc's `dlpi_adds` and
/// `dlpi_subs`), to tell when unwind tables must be rebuilt.
pub(crate) fn load_generation() -> (u64, u64) {
    unsafe extern "C" fn first(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid `info`; `data` is the `(u64, u64)` below.
        unsafe {
            let out = &mut *(data as *mut (u64, u64));
            *out = ((*info).dlpi_adds, (*info).dlpi_subs);
        }
        1
    }
    let mut generation = (0u64, 0u64);
    // SAFETY: `first` only writes through `data`, which points at `generation`, alive for the call.
    unsafe { libc::dl_iterate_phdr(Some(first), &mut generation as *mut _ as *mut libc::c_void) };
    generation
}

/// Lists the loaded objects; with `with_unwind_sections` also copies their `.eh_frame` data.
pub(crate) fn loaded_objects(with_unwind_sections: bool) -> Vec<LoadedObject> {
    struct State {
        with_unwind_sections: bool,
        objects: Vec<LoadedObject>,
    }
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid `info` whose headers describe mapped memory for
        // the duration of the callback, and `data` is the `State` below.
        unsafe {
            let state = &mut *(data as *mut State);
            if let Some(object) = read_object(&*info, state.with_unwind_sections) {
                state.objects.push(object);
            }
        }
        0
    }
    let mut state = State {
        with_unwind_sections,
        objects: Vec::new(),
    };
    // SAFETY: `visit` only touches `state`, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), &mut state as *mut _ as *mut libc::c_void) };
    state.objects
}

/// Reads one object's headers.
///
/// # Safety
/// `info` must come from `dl_iterate_phdr` and this must run inside its callback.
unsafe fn read_object(
    info: &libc::dl_phdr_info,
    with_unwind_sections: bool,
) -> Option<LoadedObject> {
    let bias = info.dlpi_addr;
    // SAFETY: the loader guarantees `dlpi_phnum` headers at `dlpi_phdr`.
    let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
    let name = if info.dlpi_name.is_null() {
        String::new()
    } else {
        // SAFETY: a non-null `dlpi_name` is a NUL-terminated string owned by the loader.
        unsafe { CStr::from_ptr(info.dlpi_name) }
            .to_string_lossy()
            .into_owned()
    };
    let loads = || headers.iter().filter(|h| h.p_type == libc::PT_LOAD);
    let start = loads().map(|h| h.p_vaddr).min()?;
    let end = loads().map(|h| h.p_vaddr + h.p_memsz).max()?;
    let text_svma = loads()
        .filter(|h| h.p_flags & libc::PF_X != 0)
        .map(|h| h.p_vaddr..h.p_vaddr + h.p_memsz)
        .reduce(|a, b| a.start.min(b.start)..a.end.max(b.end));
    let executable_segments = loads()
        .filter(|h| h.p_flags & libc::PF_X != 0 && h.p_memsz > 0)
        .map(|h| ExecutableSegment {
            avma: bias + h.p_vaddr..bias + h.p_vaddr + h.p_memsz,
            file_offset: h.p_offset,
            align: h.p_align,
        })
        .collect();
    let path = if name.is_empty() {
        std::fs::read_link("/proc/self/exe")
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else if name.starts_with("linux-vdso") || name.starts_with("linux-gate") {
        "[vdso]".to_string()
    } else {
        name
    };
    let build_id = headers
        .iter()
        .filter(|h| h.p_type == libc::PT_NOTE)
        .find_map(|h| {
            // SAFETY: a PT_NOTE segment lies inside a loaded segment of this object.
            let notes = unsafe {
                std::slice::from_raw_parts((bias + h.p_vaddr) as *const u8, h.p_filesz as usize)
            };
            gnu_build_id(notes)
        })
        .unwrap_or_default();
    let unwind_sections = if with_unwind_sections {
        headers
            .iter()
            .find(|h| h.p_type == libc::PT_GNU_EH_FRAME)
            // SAFETY: the PT_GNU_EH_FRAME segment and the load segments are mapped.
            .and_then(|hdr| unsafe { copy_unwind_sections(bias, hdr, headers) })
    } else {
        None
    };
    Some(LoadedObject {
        path,
        bias,
        avma_range: bias + start..bias + end,
        text_svma,
        executable_segments,
        build_id,
        unwind_sections,
    })
}

/// Finds the `NT_GNU_BUILD_ID` note in a note segment.
fn gnu_build_id(mut notes: &[u8]) -> Option<String> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let align4 = |n: usize| (n + 3) & !3;
    while notes.len() >= 12 {
        let word = |i: usize| u32::from_ne_bytes(notes[i..i + 4].try_into().unwrap());
        let (namesz, descsz, kind) = (word(0) as usize, word(4) as usize, word(8));
        let name_end = 12 + align4(namesz);
        let desc_end = name_end + align4(descsz);
        if desc_end > notes.len() {
            return None;
        }
        if kind == NT_GNU_BUILD_ID && &notes[12..12 + namesz] == b"GNU\0" {
            let desc = &notes[name_end..name_end + descsz];
            return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
        }
        notes = &notes[desc_end..];
    }
    None
}

/// Copies `.eh_frame_hdr` and the `.eh_frame` it points to.
///
/// `.eh_frame` has no length in the headers; it runs at most to the end of the load segment
/// holding it, and the unwinder only reads the entries the header's table points at.
///
/// # Safety
/// Must run inside the `dl_iterate_phdr` callback that produced `headers`.
unsafe fn copy_unwind_sections(
    bias: u64,
    hdr: &libc::Elf64_Phdr,
    headers: &[libc::Elf64_Phdr],
) -> Option<UnwindSections> {
    let hdr_avma = bias + hdr.p_vaddr;
    // SAFETY: the segment is mapped while the object is loaded (caller's contract).
    let hdr_bytes =
        unsafe { std::slice::from_raw_parts(hdr_avma as *const u8, hdr.p_memsz as usize) };
    if hdr_bytes.len() < 8 || hdr_bytes[0] != 1 {
        return None;
    }
    let eh_frame_avma = decode_eh_frame_ptr(hdr_bytes[1], hdr_avma + 4, &hdr_bytes[4..])?;
    let eh_frame_svma = eh_frame_avma.checked_sub(bias)?;
    let segment = headers.iter().find(|h| {
        h.p_type == libc::PT_LOAD && (h.p_vaddr..h.p_vaddr + h.p_filesz).contains(&eh_frame_svma)
    })?;
    let eh_frame_len = segment.p_vaddr + segment.p_filesz - eh_frame_svma;
    // SAFETY: the range lies inside a mapped load segment of this object.
    let eh_frame =
        unsafe { std::slice::from_raw_parts(eh_frame_avma as *const u8, eh_frame_len as usize) };
    Some(UnwindSections {
        eh_frame_hdr_svma: hdr.p_vaddr..hdr.p_vaddr + hdr.p_memsz,
        eh_frame_hdr: hdr_bytes.to_vec(),
        eh_frame_svma: eh_frame_svma..eh_frame_svma + eh_frame_len,
        eh_frame: eh_frame.to_vec(),
    })
}

/// Decodes the `eh_frame_ptr` field of `.eh_frame_hdr` (a DWARF pointer encoding).
fn decode_eh_frame_ptr(encoding: u8, field_avma: u64, bytes: &[u8]) -> Option<u64> {
    const PCREL: u8 = 0x10;
    let value = match encoding & 0x0f {
        0x00 | 0x04 => u64::from_ne_bytes(bytes.get(..8)?.try_into().ok()?),
        0x03 => u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?) as u64,
        0x0b => i32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?) as i64 as u64,
        0x0c => i64::from_ne_bytes(bytes.get(..8)?.try_into().ok()?) as u64,
        _ => return None,
    };
    match encoding & 0x70 {
        0 => Some(value),
        PCREL => Some(field_avma.wrapping_add(value)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_executable_with_unwind_sections_and_build_id() {
        let objects = loaded_objects(true);
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let main = objects
            .iter()
            .find(|o| o.path == exe.to_string_lossy())
            .expect("executable listed");
        let here =
            finds_the_executable_with_unwind_sections_and_build_id as *const () as usize as u64;
        assert!(
            main.avma_range.contains(&here),
            "this function lies in the executable"
        );
        let sections = main
            .unwind_sections
            .as_ref()
            .expect("executable has .eh_frame");
        assert!(sections.eh_frame.len() > 1000);
        assert!(objects.iter().any(|o| o.path.contains("libc.so")));
    }

    #[test]
    fn reads_a_gnu_build_id_note() {
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_ne_bytes());
        note.extend_from_slice(&3u32.to_ne_bytes());
        note.extend_from_slice(&3u32.to_ne_bytes());
        note.extend_from_slice(b"GNU\0");
        note.extend_from_slice(&[0xab, 0xcd, 0xef, 0]);
        assert_eq!(gnu_build_id(&note).as_deref(), Some("abcdef"));
        assert_eq!(gnu_build_id(&note[..10]), None);
    }
}
