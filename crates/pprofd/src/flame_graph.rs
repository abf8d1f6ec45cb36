//! SVG flame graphs of decoded profiles, drawn with inferno: for browsers that ask a profile
//! endpoint for one (see `server`) and for the CLI's `flame` command. Pure computation on
//! the pprof model, so it builds on every platform.

use std::collections::HashMap;

use crate::profile::proto::Profile;

/// Draws sample type `index` of a validated `profile` as an interactive SVG flame graph
/// (inferno), titled `title`. Errors when the profile has no positive value to draw.
pub fn flame_graph_svg(profile: &Profile, index: usize, title: &str) -> Result<Vec<u8>, String> {
    let string = |i: i64| {
        profile
            .string_table
            .get(i as usize)
            .map(String::as_str)
            .unwrap_or("")
    };
    let functions: HashMap<u64, &str> = profile
        .function
        .iter()
        .map(|f| (f.id, string(f.name)))
        .collect();
    // Each location's frames, caller first, as they appear in a folded stack.
    let locations: HashMap<u64, Vec<String>> = profile
        .location
        .iter()
        .map(|l| {
            let frames = if l.line.is_empty() {
                vec![format!("{:#x}", l.address)]
            } else {
                l.line
                    .iter()
                    .rev()
                    .map(|line| {
                        functions
                            .get(&line.function_id)
                            .copied()
                            .unwrap_or("?")
                            .replace(';', ":")
                    })
                    .collect()
            };
            (l.id, frames)
        })
        .collect();
    let mut folded: HashMap<String, i64> = HashMap::new();
    for sample in &profile.sample {
        let value = sample.value.get(index).copied().unwrap_or(0);
        if value <= 0 {
            continue;
        }
        let stack: Vec<&str> = sample
            .location_id
            .iter()
            .rev()
            .filter_map(|id| locations.get(id))
            .flatten()
            .map(String::as_str)
            .collect();
        *folded.entry(stack.join(";")).or_default() += value;
    }
    let (kind, unit) = profile
        .sample_type
        .get(index)
        .map(|t| (string(t.r#type), string(t.unit)))
        .unwrap_or(("", ""));
    if folded.is_empty() {
        return Err(format!("the profile has no {kind} samples"));
    }
    let mut lines: Vec<String> = folded
        .into_iter()
        .map(|(stack, value)| format!("{stack} {value}"))
        .collect();
    lines.sort();
    let mut options = inferno::flamegraph::Options::default();
    options.title = format!("{title}: {kind} ({unit})");
    options.count_name = unit.to_string();
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)
        .map_err(|e| format!("drawing the flame graph failed: {e}"))?;
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Frame, NoSymbols, ProfileBuilder};

    #[test]
    fn draws_the_stacks_of_a_profile() {
        let mut builder = ProfileBuilder::new(&[("samples", "count")], ("cpu", "nanoseconds"), 1);
        let stack = |names: &[&str]| {
            names
                .iter()
                .map(|n| Frame::Synthetic(n.to_string()))
                .collect()
        };
        builder.add_sample(stack(&["leaf_function", "main"]), vec![7], vec![]);
        builder.add_sample(stack(&["other_leaf", "main"]), vec![3], vec![]);
        let profile = builder.build(&NoSymbols);
        let svg = String::from_utf8(flame_graph_svg(&profile, 0, "test").unwrap()).unwrap();
        assert!(
            svg.contains("<svg") && svg.contains("leaf_function") && svg.contains("other_leaf")
        );
        let empty = ProfileBuilder::new(&[("samples", "count")], ("cpu", "nanoseconds"), 1)
            .build(&NoSymbols);
        assert!(flame_graph_svg(&empty, 0, "test").is_err());
    }
}
