//! `pprofd diff`: which call sites grew between two profiles (a heap series, typically).

use std::collections::HashSet;

use clap::Args;

use crate::analysis::{by_call_site, format_value, View};
use crate::fetch::Token;
use crate::input;

/// Arguments of `pprofd diff`.
#[derive(Args)]
pub struct DiffArgs {
    /// The earlier profile (FILE, ARCHIVE, ARCHIVE:NAME or URL).
    pub base: String,
    /// The later profile.
    pub new: String,
    /// Which value to compare; defaults to the NEW profile's default (inuse_space for heap).
    #[arg(long, value_name = "NAME")]
    pub sample_index: Option<String>,
    /// How many call sites to show.
    #[arg(short = 'n', long = "nodes", default_value_t = 10)]
    pub count: usize,
}

/// One call site's change.
#[derive(Debug)]
pub struct Growth {
    /// Function at the call site.
    pub function: String,
    /// `file:line` of the call site.
    pub position: String,
    /// Value in the base profile.
    pub base: i64,
    /// Value in the new profile.
    pub new: i64,
}

impl Growth {
    /// How much the site grew (negative when it shrank).
    pub fn delta(&self) -> i64 {
        self.new - self.base
    }
}

/// The comparison of two profiles on one sample type.
pub struct Comparison {
    /// Sample type compared and its unit.
    pub kind: String,
    /// Unit of the values.
    pub unit: String,
    /// Total in the base and new profile.
    pub totals: (i64, i64),
    /// Every call site, largest growth first.
    pub sites: Vec<Growth>,
}

/// Runs `pprofd diff` and returns the report; `token` is sent for profiles given as URLs.
pub fn run(args: &DiffArgs, token: Option<&Token>) -> Result<String, String> {
    let base = input::load(&args.base, token)?;
    let new = input::load(&args.new, token)?;
    let comparison = compare(&base.profile, &new.profile, args.sample_index.as_deref())?;
    Ok(report(&comparison, &base.origin, &new.origin, args.count))
}

/// Compares `base` and `new` on the sample type `name` (default: `new`'s default).
pub fn compare(
    base: &pprofd::profile::proto::Profile,
    new: &pprofd::profile::proto::Profile,
    name: Option<&str>,
) -> Result<Comparison, String> {
    let new_view = View::new(new);
    let base_view = View::new(base);
    let new_index = new_view.sample_index(name)?;
    let (kind, unit) = new_view.sample_types()[new_index];
    let base_index = base_view
        .sample_index(Some(kind))
        .map_err(|e| format!("the base profile cannot be compared: {e}"))?;
    let base_sites = by_call_site(&base_view, base_index);
    let new_sites = by_call_site(&new_view, new_index);
    let keys: HashSet<&(String, String)> = base_sites.keys().chain(new_sites.keys()).collect();
    let mut sites: Vec<Growth> = keys
        .into_iter()
        .map(|key| Growth {
            function: key.0.clone(),
            position: key.1.clone(),
            base: base_sites.get(key).copied().unwrap_or(0),
            new: new_sites.get(key).copied().unwrap_or(0),
        })
        .collect();
    sites.sort_by(|a, b| {
        b.delta()
            .cmp(&a.delta())
            .then_with(|| a.function.cmp(&b.function))
    });
    Ok(Comparison {
        kind: kind.to_string(),
        unit: unit.to_string(),
        totals: (base_view.total(base_index), new_view.total(new_index)),
        sites,
    })
}

/// The printed report: totals, then the `count` sites that grew most.
pub fn report(c: &Comparison, base: &str, new: &str, count: usize) -> String {
    let unit = c.unit.as_str();
    let (base_total, new_total) = c.totals;
    let mut out = format!(
        "{} from {base} to {new}: {} -> {} ({})\n",
        c.kind,
        format_value(base_total, unit),
        format_value(new_total, unit),
        signed(new_total - base_total, unit),
    );
    out.push_str(
        "Call sites that grew most (each sample charged to its innermost frame in your own code):\n",
    );
    out.push_str(&format!(
        "{:>11} {:>9} {:>11} {:>11}  call site\n",
        "growth", "change", "base", "new"
    ));
    let growing: Vec<&Growth> = c
        .sites
        .iter()
        .filter(|g| g.delta() > 0)
        .take(count)
        .collect();
    if growing.is_empty() {
        out.push_str("  (no call site grew)\n");
    }
    for g in growing {
        out.push_str(&format!(
            "{:>11} {:>9} {:>11} {:>11}  {} {}\n",
            signed(g.delta(), unit),
            relative_change(g.base, g.new),
            format_value(g.base, unit),
            format_value(g.new, unit),
            g.function,
            g.position,
        ));
    }
    out
}

fn signed(value: i64, unit: &str) -> String {
    let formatted = format_value(value, unit);
    if value > 0 {
        format!("+{formatted}")
    } else {
        formatted
    }
}

/// The change relative to the base value: `+35.0%`, or `new` where the site was absent.
pub fn relative_change(base: i64, new: i64) -> String {
    if base == 0 {
        "new".into()
    } else {
        format!("{:+.1}%", (new - base) as f64 * 100.0 / base as f64)
    }
}
