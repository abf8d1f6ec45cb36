//! `pprofd top`: the flat/cum table of `go tool pprof -top`.

use clap::Args;

use crate::analysis::{by_function, by_label, format_value, percent, TagFocus, View};
use crate::fetch::Token;
use crate::input;

/// Arguments of `pprofd top`.
#[derive(Args)]
pub struct TopArgs {
    /// Profile to read: FILE.pb.gz, FILE.pb, ARCHIVE.tar.gz, ARCHIVE.tar.gz:NAME or an http:// URL.
    pub profile: String,
    /// Which value to rank by, e.g. cpu, samples, inuse_space, alloc_space, delay, contentions.
    /// Defaults to the profile's own default (inuse_space for heap, cpu for CPU profiles).
    #[arg(long, value_name = "NAME")]
    pub sample_index: Option<String>,
    /// How many functions to show.
    #[arg(short = 'n', long = "nodes", default_value_t = 20)]
    pub count: usize,
    /// Rank by cumulative value (the function and everything it calls) instead of flat.
    #[arg(long)]
    pub cum: bool,
    /// Print the table by the values of this label (e.g. `--tag operation`), each with its
    /// hottest function, instead of by function.
    #[arg(long, value_name = "KEY")]
    pub tag: Option<String>,
    /// Keep only the samples whose label KEY is VALUE, e.g. `--tag-focus operation=GetUser`.
    #[arg(long, value_name = "KEY=VALUE")]
    pub tag_focus: Option<TagFocus>,
}

/// Runs `pprofd top` and returns the table; `token` is sent when the profile is a URL.
pub fn run(args: &TopArgs, token: Option<&Token>) -> Result<String, String> {
    let loaded = input::load(&args.profile, token)?;
    let profile = match &args.tag_focus {
        Some(focus) => focus.apply(&loaded.profile)?,
        None => loaded.profile,
    };
    let view = View::new(&profile);
    let index = view.sample_index(args.sample_index.as_deref())?;
    Ok(match &args.tag {
        Some(key) => tag_table(&view, index, key, args.count, &loaded.origin),
        None => table(&view, index, args.count, args.cum, &loaded.origin),
    })
}

/// The table by the values of label `key`: each value's total and share, and the function
/// with most of its flat value.
pub fn tag_table(view: &View, index: usize, key: &str, count: usize, origin: &str) -> String {
    let (kind, unit) = view.sample_types()[index];
    let total = view.total(index);
    let rows = by_label(view, index, key);
    let mut out = format!(
        "Profile: {origin}\nType: {kind} ({unit}), total {}, by label {key:?} ({} values)\n",
        format_value(total, unit),
        rows.iter().filter(|(value, _)| value.is_some()).count(),
    );
    out.push_str(&format!(
        "{:>10} {:>7}  {key} (hottest function)\n",
        "value", "share"
    ));
    for (value, sum) in rows.into_iter().take(count) {
        let hottest = value
            .as_ref()
            .and_then(|value| {
                let focus = TagFocus {
                    key: key.to_string(),
                    value: value.clone(),
                };
                focus.hottest_function(view.profile(), index)
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "{:>10} {:>7}  {} {}\n",
            format_value(sum, unit),
            percent(sum, total),
            value.as_deref().unwrap_or("(no label)"),
            if hottest.is_empty() {
                String::new()
            } else {
                format!("({hottest})")
            },
        ));
    }
    out
}

/// The table for sample type `index`, `count` rows, ranked by flat or cumulative value.
pub fn table(view: &View, index: usize, count: usize, by_cum: bool, origin: &str) -> String {
    let (kind, unit) = view.sample_types()[index];
    let total = view.total(index);
    let mut rows = by_function(view, index);
    rows.sort_by(|a, b| {
        let key = |r: &crate::analysis::FunctionRow| {
            if by_cum {
                (r.cum, r.flat)
            } else {
                (r.flat, r.cum)
            }
        };
        key(b)
            .cmp(&key(a))
            .then_with(|| a.function.cmp(&b.function))
    });
    let mut out = format!(
        "Profile: {origin}\nType: {kind} ({unit}), total {}, {} samples\nShowing top {} of {} functions, by {}\n",
        format_value(total, unit),
        view.profile().sample.len(),
        count.min(rows.len()),
        rows.len(),
        if by_cum { "cum" } else { "flat" },
    );
    out.push_str(&format!(
        "{:>10} {:>7} {:>7} {:>10} {:>7}  function (hottest line)\n",
        "flat", "flat%", "sum%", "cum", "cum%"
    ));
    let mut running = 0;
    for row in rows.iter().take(count) {
        running += row.flat;
        out.push_str(&format!(
            "{:>10} {:>7} {:>7} {:>10} {:>7}  {} {}\n",
            format_value(row.flat, unit),
            percent(row.flat, total),
            percent(running, total),
            format_value(row.cum, unit),
            percent(row.cum, total),
            row.function,
            row.hottest_line,
        ));
    }
    out
}
