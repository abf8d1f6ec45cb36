//! The CLI's reader of a file given on the command line (`pprofd top FILE`,
//! `ARCHIVE.tar.gz:NAME`): any bytes, read as a profile, a tar or a tar.gz archive, give a
//! decoded profile or an error naming the file, never a panic, and decompress no more than
//! the stated limits (`input::MAX_INPUT_SIZE`, `pprofd::profile::MAX_DECODED_SIZE`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pprofd_cli::input;

/// The name the bytes go by, which every error must start with.
const PATH: &str = "fuzzed.tar.gz";

fuzz_target!(|data: &[u8]| {
    // Both ways a user names what to read: the default member, and a member by name.
    for member in [None, Some("heap")] {
        match input::load_bytes(PATH, data, member) {
            Ok(loaded) => {
                assert!(loaded.origin.starts_with(PATH), "{}", loaded.origin);
                // The decoder validated the tables: every index a reader follows exists.
                let p = &loaded.profile;
                for sample in &p.sample {
                    assert_eq!(sample.value.len(), p.sample_type.len());
                    for id in &sample.location_id {
                        let location = p.location.iter().find(|l| l.id == *id).expect("validated");
                        for line in &location.line {
                            let function = p
                                .function
                                .iter()
                                .find(|f| f.id == line.function_id)
                                .expect("validated");
                            let _ = &p.string_table[function.name as usize];
                        }
                    }
                }
            }
            Err(message) => assert!(
                message.starts_with(PATH),
                "error without the file: {message}"
            ),
        }
    }
});
