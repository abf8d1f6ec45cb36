//! Any bytes given to the profile reader are a profile or an error, never a panic, and a
//! decoded profile can be walked by index.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(profile) = pprofd::profile::decode(data) {
        for sample in &profile.sample {
            for id in &sample.location_id {
                let location = profile.location.iter().find(|l| l.id == *id).expect("validated");
                for line in &location.line {
                    let function = profile.function.iter().find(|f| f.id == line.function_id).expect("validated");
                    let _ = &profile.string_table[function.name as usize];
                }
            }
        }
    }
});
