//! Flame graphs for browsers: a profile endpoint asked with an `Accept` header that prefers
//! `image/svg+xml` or `text/html` answers with an SVG flame graph instead of the protobuf, so
//! a person with only a browser sees the profile. Tools (`go tool pprof`, curl, scrapers) send
//! no such preference and keep getting the protobuf.

use hyper::Response;

use super::routes::{self, Body};
use crate::flame_graph::flame_graph_svg;
use crate::profile::proto::Profile;

/// The SVG flame graph of `profile`'s default sample type, drawn on the blocking pool; a
/// profile with nothing to draw is answered with why, and how to get the profile itself.
pub(super) async fn svg_response(profile: Box<Profile>) -> Response<Body> {
    let svg = tokio::task::spawn_blocking(move || {
        let index = default_sample_index(&profile);
        flame_graph_svg(&profile, index, "pprofd")
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match svg {
        Ok(svg) => routes::text("image/svg+xml", svg),
        Err(reason) => routes::text(
            "text/plain; charset=utf-8",
            format!(
                "no flame graph to draw: {reason}\nAsk without an Accept header (curl, go tool pprof) for the profile itself.\n"
            ),
        ),
    }
}

/// Whether an `Accept` header ranks SVG or HTML above the protobuf (`application/octet-stream`,
/// `application/*` or `*/*`). Browsers ask `text/html,...,*/*;q=0.8`; curl asks `*/*`.
pub(super) fn prefers_svg(accept: &str) -> bool {
    let mut visual = 0.0f32;
    let mut binary = 0.0f32;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "image/svg+xml" | "text/html" => visual = visual.max(q),
            "application/octet-stream" | "application/*" | "*/*" => binary = binary.max(q),
            _ => {}
        }
    }
    visual > binary
}

/// The profile's default sample type, or its last one as `go tool pprof` picks.
fn default_sample_index(profile: &Profile) -> usize {
    let by_name = profile
        .sample_type
        .iter()
        .position(|t| profile.default_sample_type != 0 && t.r#type == profile.default_sample_type);
    by_name.unwrap_or(profile.sample_type.len().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_get_svg_and_tools_get_the_profile() {
        assert!(prefers_svg(
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
        ));
        assert!(prefers_svg("image/svg+xml"));
        assert!(!prefers_svg("*/*"));
        assert!(!prefers_svg("application/octet-stream, text/html;q=0.5"));
        assert!(!prefers_svg(""));
    }
}
