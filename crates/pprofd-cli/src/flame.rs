//! `pprofd flame`: a flame graph SVG (inferno) from a profile.

use clap::Args;

use crate::analysis::{TagFocus, View};
use crate::fetch::Token;
use crate::input;

/// Arguments of `pprofd flame`.
#[derive(Args)]
pub struct FlameArgs {
    /// Profile to draw: FILE.pb.gz, FILE.pb, ARCHIVE.tar.gz, ARCHIVE.tar.gz:NAME or an http:// URL.
    pub profile: String,
    /// Where to write the SVG (open it in a browser: it is interactive).
    #[arg(short, long, default_value = "flame.svg")]
    pub output: String,
    /// Which value sets the widths, e.g. cpu, inuse_space, delay. Defaults as in `top`.
    #[arg(long, value_name = "NAME")]
    pub sample_index: Option<String>,
    /// Draw only the samples whose label KEY is VALUE, e.g. `--tag-focus operation=GetUser`.
    #[arg(long, value_name = "KEY=VALUE")]
    pub tag_focus: Option<TagFocus>,
}

/// Runs `pprofd flame` and returns the line to print; `token` is sent when the profile is a URL.
pub fn run(args: &FlameArgs, token: Option<&Token>) -> Result<String, String> {
    let loaded = input::load(&args.profile, token)?;
    let profile = match &args.tag_focus {
        Some(focus) => focus.apply(&loaded.profile)?,
        None => loaded.profile,
    };
    let view = View::new(&profile);
    let index = view.sample_index(args.sample_index.as_deref())?;
    let svg = render(&view, index, &loaded.origin)?;
    std::fs::write(&args.output, svg).map_err(|e| format!("{}: {e}", args.output))?;
    Ok(format!(
        "wrote {} (flame graph of {})\n",
        args.output, loaded.origin
    ))
}

/// Renders sample type `index` of the profile as an SVG flame graph (the same renderer the
/// server uses for browsers).
pub fn render(view: &View, index: usize, origin: &str) -> Result<Vec<u8>, String> {
    pprofd::server::flame_graph_svg(view.profile(), index, origin)
        .map_err(|e| format!("{origin}: {e}"))
}
