//! Reading decoded profiles: the functions of a sample's stack, a function's share, a
//! sample's labels.

use std::collections::HashMap;

use pprofd::profile::proto::{Function, Location, Profile, Sample};

/// The names of the functions on `sample`'s stack, leaf first, innermost inline frame first.
pub fn function_names(profile: &Profile, sample: &Sample) -> Vec<String> {
    let locations: HashMap<u64, &Location> = profile.location.iter().map(|l| (l.id, l)).collect();
    let functions: HashMap<u64, &Function> = profile.function.iter().map(|f| (f.id, f)).collect();
    sample
        .location_id
        .iter()
        .flat_map(|id| locations[id].line.iter())
        .map(|line| profile.string_table[functions[&line.function_id].name as usize].clone())
        .collect()
}

/// The share of the first sample value (the sample count) held by stacks through a function
/// whose name ends with `function_suffix`.
pub fn share_of(profile: &Profile, function_suffix: &str) -> f64 {
    let total: i64 = profile.sample.iter().map(|s| s.value[0]).sum();
    let matching: i64 = profile
        .sample
        .iter()
        .filter(|s| {
            function_names(profile, s)
                .iter()
                .any(|f| f.ends_with(function_suffix))
        })
        .map(|s| s.value[0])
        .sum();
    matching as f64 / total as f64
}

/// Whether a stack (`functions`, leaf first) runs through a function whose name ends with
/// `through` and ends in one of `roots`: a whole stack of that code.
pub fn reaches_root_through(functions: &[String], through: &str, roots: &[&str]) -> bool {
    functions
        .last()
        .is_some_and(|root| roots.contains(&root.as_str()))
        && functions.iter().any(|f| f.ends_with(through))
}

/// Asserts that functions `seventy` and `thirty` (name suffixes) hold more than 90% of the
/// samples between them, split 70/30 (the workers of `cpu_workload` and
/// `.ci/platform-service`).
///
/// The split may miss 70% by `floor` points, or by four standard errors of a binomial share
/// of that many samples when that is more: a loaded machine gives the workers a few hundred
/// samples instead of 800, and a correct profile of 200 samples is off by 6 points one run in
/// twenty (CI saw 76.3%). Four standard errors still fail a profile that charges the two
/// functions alike or to the wrong one.
pub fn assert_seventy_thirty(profile: &Profile, seventy: &str, thirty: &str, floor: f64) {
    let total: i64 = profile.sample.iter().map(|s| s.value[0]).sum();
    let seventy = share_of(profile, seventy);
    let thirty = share_of(profile, thirty);
    let split = seventy / (seventy + thirty);
    let samples = (seventy + thirty) * total as f64;
    let tolerance = floor.max(4.0 * (0.7 * 0.3 / samples).sqrt());
    assert!(
        seventy + thirty > 0.9 && (split - 0.7).abs() <= tolerance,
        "hot_seventy {:.1}%, hot_thirty {:.1}% of {total} samples (70/30 within {:.1} points)",
        seventy * 100.0,
        thirty * 100.0,
        tolerance * 100.0
    );
}

/// The index of the sample type called `name`; fails the test when there is none.
pub fn sample_index(profile: &Profile, name: &str) -> usize {
    profile
        .sample_type
        .iter()
        .position(|t| profile.string_table[t.r#type as usize] == name)
        .unwrap_or_else(|| panic!("no sample type {name}"))
}

/// The string value of `sample`'s label `key`.
pub fn label<'a>(profile: &'a Profile, sample: &Sample, key: &str) -> Option<&'a str> {
    let strings = &profile.string_table;
    sample
        .label
        .iter()
        .find(|l| strings[l.key as usize] == key)
        .map(|l| strings[l.str as usize].as_str())
}

/// The span a delta profile covers: from its first snapshot (`time_nanos`) to its last.
pub fn window(profile: &Profile) -> std::ops::RangeInclusive<std::time::SystemTime> {
    let start = std::time::SystemTime::UNIX_EPOCH
        + std::time::Duration::from_nanos(profile.time_nanos as u64);
    start..=start + std::time::Duration::from_nanos(profile.duration_nanos as u64)
}
