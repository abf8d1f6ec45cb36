//! What each loaded object's code tells the unwinder (the ranges its CFI describes, and the
//! thread roots of [`roots`](super::roots) it holds), remembered from one reading of the
//! unwind tables to the next.
//!
//! Finding the described ranges parses every FDE that `.eh_frame_hdr` lists. On the demo
//! router that was about half the time of [`UnwindTables::load`](super::UnwindTables::load),
//! which every goroutine dump, CPU profile and heap-table refresh runs, and a tenth of a whole
//! goroutine dump; finding the roots (musl only) maps the object and reads its symbol table.
//! Neither changes while the object stays loaded, so each reading keeps what it found for the
//! objects it saw (by path, build ID and `.eh_frame` address) for the next one, and forgets
//! unloaded objects. That stays resident between readings: 16 bytes a range, and functions
//! are rarely adjacent, so about one range per FDE (8,135 ranges, 127 KiB, for this crate's
//! test binary and its five libraries), and a few roots.

use std::mem;
use std::ops::Range;
use std::sync::{Arc, Mutex, TryLockError};

use crate::objects::{LoadedObject, UnwindSections};

/// What one object's code tells the unwinder, in stated (file) addresses.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ObjectCode {
    /// The ranges its CFI describes, sorted and merged.
    pub described: Vec<Range<u64>>,
    /// The functions of [`UNDESCRIBED_ROOTS`](super::roots::UNDESCRIBED_ROOTS) it holds.
    pub roots: Vec<Range<u64>>,
}

impl ObjectCode {
    /// Reads it: the FDEs, and the symbol table where the C library leaves roots undescribed.
    fn read(object: &LoadedObject) -> Self {
        let names = super::roots::UNDESCRIBED_ROOTS;
        ObjectCode {
            described: object
                .unwind_sections
                .as_ref()
                .map(|sections| described_ranges(sections, object.text_svma.as_ref()))
                .unwrap_or_default(),
            roots: if names.is_empty() {
                Vec::new()
            } else {
                crate::symbolize::named_functions(object, names)
            },
        }
    }
}

/// One object's code, and what tells the object apart.
struct Kept {
    path: String,
    build_id: String,
    eh_frame_svma: Option<Range<u64>>,
    code: Arc<ObjectCode>,
}

/// What the last reading saw. Only ever tried, and held just to take or put the list: a
/// reading never waits for another, and a child forked while one held it (the lock stays
/// taken there) reads its objects without it.
static KEPT: Mutex<Vec<Kept>> = Mutex::new(Vec::new());

/// What one reading of the loaded objects found of their code.
pub(super) struct DescribedCode {
    previous: Vec<Kept>,
    current: Vec<Kept>,
}

impl DescribedCode {
    /// Starts a reading with what the last one kept (nothing if another holds it now).
    pub fn start() -> Self {
        let previous = match KEPT.try_lock() {
            Ok(mut kept) => mem::take(&mut *kept),
            Err(TryLockError::Poisoned(poisoned)) => mem::take(&mut *poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => Vec::new(),
        };
        Self::after(previous)
    }

    fn after(previous: Vec<Kept>) -> Self {
        DescribedCode {
            previous,
            current: Vec::new(),
        }
    }

    /// What `object`'s code tells the unwinder (read before its unwind sections are taken);
    /// kept from the last reading when it saw the same object.
    pub fn of(&mut self, object: &LoadedObject) -> Arc<ObjectCode> {
        if object.build_id.is_empty() {
            // Nothing tells a rebuilt file at the same path and addresses apart: not kept.
            return Arc::new(ObjectCode::read(object));
        }
        let eh_frame_svma = object.unwind_sections.as_ref().map(|s| s.eh_frame_svma.clone());
        let same = |k: &Kept| {
            k.path == object.path && k.build_id == object.build_id && k.eh_frame_svma == eh_frame_svma
        };
        let code = match self.previous.iter().position(same) {
            Some(at) => self.previous.swap_remove(at).code,
            None => Arc::new(ObjectCode::read(object)),
        };
        self.current.push(Kept {
            path: object.path.clone(),
            build_id: object.build_id.clone(),
            eh_frame_svma,
            code: Arc::clone(&code),
        });
        code
    }

    /// Keeps what this reading found for the next one (unless another reading holds it now).
    pub fn keep(self) {
        match KEPT.try_lock() {
            Ok(mut kept) => *kept = self.current,
            Err(TryLockError::Poisoned(poisoned)) => {
                *poisoned.into_inner() = self.current;
                KEPT.clear_poison();
            }
            Err(TryLockError::WouldBlock) => {}
        }
    }
}

/// The stated address ranges of the FDEs that `.eh_frame_hdr`'s table lists (what framehop
/// finds CFI for), sorted and merged. An FDE that does not parse describes nothing.
fn described_ranges(sections: &UnwindSections, text_svma: Option<&Range<u64>>) -> Vec<Range<u64>> {
    use gimli::UnwindSection;
    let mut bases = gimli::BaseAddresses::default()
        .set_eh_frame_hdr(sections.eh_frame_hdr_svma.start)
        .set_eh_frame(sections.eh_frame_svma.start);
    if let Some(text) = text_svma {
        bases = bases.set_text(text.start);
    }
    let eh_frame = gimli::EhFrame::new(&sections.eh_frame, gimli::NativeEndian);
    let hdr = gimli::EhFrameHdr::new(&sections.eh_frame_hdr, gimli::NativeEndian)
        .parse(&bases, 8)
        .ok();
    let mut ranges = Vec::new();
    if let Some(table) = hdr.as_ref().and_then(|hdr| hdr.table()) {
        let mut entries = table.iter(&bases);
        while let Ok(Some((_, pointer))) = entries.next() {
            let Ok(offset) = table.pointer_to_offset(pointer) else {
                continue;
            };
            let Ok(fde) = eh_frame.fde_from_offset(&bases, offset, gimli::EhFrame::cie_from_offset)
            else {
                continue;
            };
            let start = fde.initial_address();
            ranges.push(start..start.saturating_add(fde.len()));
        }
    }
    super::merged(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_keeps_what_it_found_of_the_objects_it_saw_for_the_next() {
        let objects = crate::objects::loaded_objects(true);
        let with_build_id: Vec<_> = objects.iter().filter(|o| !o.build_id.is_empty()).collect();
        assert!(
            with_build_id.len() >= 2,
            "the test binary and libc have build IDs"
        );

        let mut first = DescribedCode::after(Vec::new());
        let firsts: Vec<_> = with_build_id.iter().map(|o| first.of(o)).collect();
        // The second reading sees all but the first object, as if it had been unloaded.
        let mut second = DescribedCode::after(first.current);
        for (object, kept) in with_build_id.iter().zip(&firsts).skip(1) {
            let code = second.of(object);
            assert!(Arc::ptr_eq(&code, kept), "{} read again", object.path);
            assert_eq!(*code, ObjectCode::read(object), "{}", object.path);
            assert!(code.described.windows(2).all(|w| w[0].end < w[1].start));
        }
        assert!(
            firsts.iter().any(|code| !code.described.is_empty()),
            "the test binary's CFI describes its code"
        );
        let paths: Vec<&str> = second.current.iter().map(|k| k.path.as_str()).collect();
        assert!(!paths.contains(&with_build_id[0].path.as_str()), "{paths:?}");
        assert_eq!(paths.len(), with_build_id.len() - 1);
    }
}
