//! Flame graphs for browsers: a profile endpoint asked with an `Accept` header that prefers
//! `image/svg+xml` or `text/html` answers with an SVG flame graph instead of the protobuf, so
//! a person with only a browser sees the profile. Tools (`go tool pprof`, curl, scrapers) send
//! no such preference and keep getting the protobuf.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCEPT, CONTENT_DISPOSITION, CONTENT_TYPE};
use hyper::{Request, Response};

use super::routes;
use crate::flame_graph::flame_graph_svg;
use crate::profile::proto::Profile;

/// Serves `req` through the routes, turning a protobuf answer into an SVG flame graph when the
/// client prefers SVG or HTML.
pub(super) async fn handle(
    req: Request<Incoming>,
    settings: Arc<routes::Settings>,
    read_deadline: tokio::time::Instant,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let wants_svg = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(prefers_svg);
    let response = routes::handle(req, settings, read_deadline).await?;
    let is_profile = response.status().is_success()
        && response.headers().contains_key(CONTENT_DISPOSITION)
        && response.headers().get(CONTENT_TYPE)
            == Some(&HeaderValue::from_static("application/octet-stream"));
    if !wants_svg || !is_profile {
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let svg = tokio::task::spawn_blocking(move || {
        let profile = crate::profile::decode(&bytes).map_err(|e| e.to_string())?;
        let index = default_sample_index(&profile);
        flame_graph_svg(&profile, index, "pprofd")
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    let mut response = Response::from_parts(parts, Full::new(Bytes::new()));
    let headers = response.headers_mut();
    headers.remove(CONTENT_DISPOSITION);
    match svg {
        Ok(svg) => {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("image/svg+xml"));
            *response.body_mut() = Full::new(Bytes::from(svg));
        }
        Err(reason) => {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            *response.body_mut() = Full::new(Bytes::from(format!(
                "no flame graph to draw: {reason}\nAsk without an Accept header (curl, go tool pprof) for the profile itself.\n"
            )));
        }
    }
    Ok(response)
}

/// Whether an `Accept` header ranks SVG or HTML above the protobuf (`application/octet-stream`,
/// `application/*` or `*/*`). Browsers ask `text/html,...,*/*;q=0.8`; curl asks `*/*`.
fn prefers_svg(accept: &str) -> bool {
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
