//! `pprofd flame`: a flame graph SVG (inferno) from a profile.

use std::collections::HashMap;

use clap::Args;

use crate::analysis::View;
use crate::input;

/// Arguments of `pprofd flame`.
#[derive(Args)]
pub struct FlameArgs {
    /// Profile to draw: FILE.pb.gz, FILE.pb, ARCHIVE.tar.gz[:NAME] or an http:// URL.
    pub profile: String,
    /// Where to write the SVG (open it in a browser: it is interactive).
    #[arg(short, long, default_value = "flame.svg")]
    pub output: String,
    /// Which value sets the widths, e.g. cpu, inuse_space, delay. Defaults as in `top`.
    #[arg(long, value_name = "NAME")]
    pub sample_index: Option<String>,
}

/// Runs `pprofd flame` and returns the line to print.
pub fn run(args: &FlameArgs) -> Result<String, String> {
    let loaded = input::load(&args.profile)?;
    let view = View::new(&loaded.profile);
    let index = view.sample_index(args.sample_index.as_deref())?;
    let svg = render(&view, index, &loaded.origin)?;
    std::fs::write(&args.output, svg).map_err(|e| format!("{}: {e}", args.output))?;
    Ok(format!(
        "wrote {} (flame graph of {})\n",
        args.output, loaded.origin
    ))
}

/// Renders sample type `index` of the profile as an SVG flame graph.
pub fn render(view: &View, index: usize, origin: &str) -> Result<Vec<u8>, String> {
    let (kind, unit) = view.sample_types()[index];
    // Folded stacks: frames root first, separated by ';', then the summed value.
    let mut folded: HashMap<String, i64> = HashMap::new();
    for sample in &view.profile().sample {
        let value = sample.value[index];
        if value <= 0 {
            continue;
        }
        let stack: Vec<String> = view
            .frames(sample)
            .iter()
            .rev()
            .map(|f| f.function.replace(';', ":"))
            .collect();
        *folded.entry(stack.join(";")).or_default() += value;
    }
    if folded.is_empty() {
        return Err(format!("{origin}: no {kind} samples to draw"));
    }
    let mut lines: Vec<String> = folded
        .into_iter()
        .map(|(stack, value)| format!("{stack} {value}"))
        .collect();
    lines.sort();
    let mut options = inferno::flamegraph::Options::default();
    options.title = format!("{kind} ({unit}): {origin}");
    options.count_name = unit.to_string();
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)
        .map_err(|e| format!("drawing the flame graph failed: {e}"))?;
    Ok(svg)
}
