//! `pprofd top`: the flat/cum table of `go tool pprof -top`.

use clap::Args;

use crate::analysis::{by_function, format_value, percent, View};
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
}

/// Runs `pprofd top` and returns the table; `token` is sent when the profile is a URL.
pub fn run(args: &TopArgs, token: Option<&Token>) -> Result<String, String> {
    let loaded = input::load(&args.profile, token)?;
    let view = View::new(&loaded.profile);
    let index = view.sample_index(args.sample_index.as_deref())?;
    Ok(table(&view, index, args.count, args.cum, &loaded.origin))
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
