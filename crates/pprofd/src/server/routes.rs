//! The HTTP side of every endpoint: the token check, paths and methods from the endpoint table,
//! the `/symbol` body, and Go's responses for what the request layer produced. Transport-free
//! (an `http::Request` in, an `http::Response` out), so the standalone server and the axum
//! mount answer alike.

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_DISPOSITION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::time::Instant;

use super::flame;
use crate::endpoints::{self, PREFIX};
use crate::produce::{self, Failure, Output, Settings};

/// Largest `/symbol` POST body accepted.
const MAX_SYMBOL_BODY: usize = 1 << 20;

/// The response body: every answer is whole before it is sent.
pub(crate) type Body = Full<Bytes>;

/// Answers one request. A POST body (only `/symbol` takes one) must arrive by `read_deadline`,
/// or the answer is 408.
pub(crate) async fn answer<B>(
    req: Request<B>,
    settings: &Settings,
    read_deadline: Instant,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let bearer = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    if !settings.admits(bearer) {
        let mut response = error(StatusCode::UNAUTHORIZED, "Unauthorized");
        response
            .headers_mut()
            .insert("WWW-Authenticate", HeaderValue::from_static("Bearer"));
        return response;
    }
    let path = req.uri().path().to_string();
    let name = if path == PREFIX.trim_end_matches('/') {
        ""
    } else if let Some(name) = path.strip_prefix(PREFIX) {
        name
    } else {
        return error(
            StatusCode::NOT_FOUND,
            "404 page not found: pprof endpoints live under /debug/pprof/",
        );
    };
    let allowed = endpoints::find(name).map_or(&["GET"][..], |e| e.methods);
    if !allowed.contains(&req.method().as_str()) {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("method {} not allowed on {path}", req.method()),
        );
        response.headers_mut().insert(
            ALLOW,
            HeaderValue::from_str(&allowed.join(", ")).expect("method names are ASCII"),
        );
        return response;
    }
    let wants_svg = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(flame::prefers_svg);
    let request = if req.method() == Method::POST {
        let body = Limited::new(req.into_body(), MAX_SYMBOL_BODY).collect();
        match tokio::time::timeout_at(read_deadline, body).await {
            Ok(Ok(body)) => produce::Request::symbol(&String::from_utf8_lossy(&body.to_bytes())),
            Ok(Err(_)) => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("symbol request body larger than {MAX_SYMBOL_BODY} bytes"),
                )
            }
            Err(_) => {
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive in time; send the whole request at once",
                )
            }
        }
    } else {
        match produce::Request::parse(name, req.uri().query(), settings.max_profile_seconds) {
            Ok(request) => request,
            Err(failure) => return failed(failure),
        }
    };
    match produce::produce(request, settings).await {
        Ok(Output::Profile { profile, .. }) if wants_svg => {
            flame::svg_response(profile).await
        }
        Ok(Output::Profile { file_name, profile }) => {
            let bytes = tokio::task::spawn_blocking(move || crate::profile::encode_gzip(&profile))
                .await;
            match bytes {
                Ok(bytes) => profile_bytes(&file_name, bytes),
                Err(e) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("encoding the profile failed: {e}"),
                ),
            }
        }
        Ok(Output::Text(body)) => text("text/plain; charset=utf-8", body),
        Ok(Output::Html(body)) => text("text/html; charset=utf-8", body),
        Err(failure) => failed(failure),
    }
}

/// The response for a request that got no profile.
fn failed(failure: Failure) -> Response<Body> {
    let status =
        StatusCode::from_u16(failure.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error(status, &failure.message)
}

/// A plain-text error with Go's headers; `X-Go-Pprof` makes `go tool pprof` print the message.
pub(crate) fn error(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = text("text/plain; charset=utf-8", format!("{message}\n"));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("X-Go-Pprof", HeaderValue::from_static("1"));
    response
}

pub(super) fn text(content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A gzipped protobuf profile with Go's download headers.
fn profile_bytes(name: &str, bytes: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        CONTENT_DISPOSITION,
        HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
            .expect("profile names are ASCII"),
    );
    headers.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    response
}
