//! The code each loaded object's CFI describes, remembered from one reading of the unwind
//! tables to the next.
//!
//! Finding it parses every FDE that `.eh_frame_hdr` lists. On the demo router that was about
//! half the time of [`UnwindTables::load`](super::UnwindTables::load), which every goroutine
//! dump, CPU profile and heap-table refresh runs, and a tenth of a whole goroutine dump. An
//! object's FDEs do not change while it stays loaded, so each reading keeps the ranges of the
//! objects it saw (by path, build ID and `.eh_frame` address) for the next one, and forgets
//! those of unloaded objects. They are small: a range per run of adjacent FDEs.

use std::mem;
use std::ops::Range;
use std::sync::{Arc, Mutex, TryLockError};

use crate::objects::{LoadedObject, UnwindSections};

/// One object's described ranges, in stated (file) addresses, sorted and merged.
struct Described {
    path: String,
    build_id: String,
    eh_frame_svma: Range<u64>,
    ranges: Arc<[Range<u64>]>,
}

/// What the last reading saw. Only ever tried, and held just to take or put the list: a
/// reading never waits for another, and a child forked while one held it (the lock stays
/// taken there) reads its objects without it.
static KEPT: Mutex<Vec<Described>> = Mutex::new(Vec::new());

/// The described ranges of one reading of the loaded objects.
pub(super) struct DescribedRanges {
    previous: Vec<Described>,
    current: Vec<Described>,
}

impl DescribedRanges {
    /// Starts a reading with what the last one kept (nothing if another holds it now).
    pub fn start() -> Self {
        let previous = match KEPT.try_lock() {
            Ok(mut kept) => mem::take(&mut *kept),
            Err(TryLockError::Poisoned(poisoned)) => mem::take(&mut *poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => Vec::new(),
        };
        Self::after(previous)
    }

    fn after(previous: Vec<Described>) -> Self {
        DescribedRanges {
            previous,
            current: Vec::new(),
        }
    }

    /// The stated address ranges that `object`'s CFI describes, sorted and merged; kept from
    /// the last reading when it saw the same object.
    pub fn of(&mut self, object: &LoadedObject, sections: &UnwindSections) -> Arc<[Range<u64>]> {
        if object.build_id.is_empty() {
            // Nothing tells a rebuilt file at the same path and addresses apart: not kept.
            return read(sections, object.text_svma.as_ref()).into();
        }
        let same = |d: &Described| {
            d.path == object.path
                && d.build_id == object.build_id
                && d.eh_frame_svma == sections.eh_frame_svma
        };
        let ranges = match self.previous.iter().position(same) {
            Some(at) => self.previous.swap_remove(at).ranges,
            None => read(sections, object.text_svma.as_ref()).into(),
        };
        self.current.push(Described {
            path: object.path.clone(),
            build_id: object.build_id.clone(),
            eh_frame_svma: sections.eh_frame_svma.clone(),
            ranges: Arc::clone(&ranges),
        });
        ranges
    }

    /// Keeps this reading's ranges for the next one (unless another reading holds them now).
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
fn read(sections: &UnwindSections, text_svma: Option<&Range<u64>>) -> Vec<Range<u64>> {
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
    fn a_reading_keeps_the_ranges_of_the_objects_it_saw_for_the_next() {
        let objects = crate::objects::loaded_objects(true);
        let with_cfi: Vec<_> = objects
            .iter()
            .filter(|o| !o.build_id.is_empty())
            .filter_map(|o| Some((o, o.unwind_sections.as_ref()?)))
            .collect();
        assert!(with_cfi.len() >= 2, "the test binary and libc have CFI and build IDs");

        let mut first = DescribedRanges::after(Vec::new());
        let firsts: Vec<_> = with_cfi.iter().map(|(o, s)| first.of(o, s)).collect();
        // The second reading sees all but the first object, as if it had been unloaded.
        let mut second = DescribedRanges::after(first.current);
        for ((object, sections), kept) in with_cfi.iter().zip(&firsts).skip(1) {
            let ranges = second.of(object, sections);
            assert!(Arc::ptr_eq(&ranges, kept), "{} read again", object.path);
            assert_eq!(
                *ranges,
                *read(sections, object.text_svma.as_ref()),
                "{}",
                object.path
            );
            assert!(ranges.windows(2).all(|w| w[0].end < w[1].start));
        }
        let paths: Vec<&str> = second.current.iter().map(|d| d.path.as_str()).collect();
        assert!(!paths.contains(&with_cfi[0].0.path.as_str()), "{paths:?}");
        assert_eq!(paths.len(), with_cfi.len() - 1);
    }
}
