//! HTTP GETs against pprof endpoints, with errors that say what the server answered.

use std::time::Duration;

/// Largest response accepted: profiles of big services run to tens of megabytes.
const MAX_BODY_BYTES: u64 = 512 << 20;

/// Why a GET failed.
#[derive(Debug)]
pub struct FetchError {
    /// One line saying what happened.
    pub message: String,
    /// Whether the server answered (with a status other than 200), as opposed to being unreachable.
    pub server_answered: bool,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<FetchError> for String {
    fn from(e: FetchError) -> String {
        e.message
    }
}

/// A successful response.
pub struct Fetched {
    /// The response body.
    pub body: Vec<u8>,
    /// The `Server` header, which says what serves the endpoints when it is present.
    pub server: Option<String>,
}

/// Adds `http://` when `target` has no scheme and refuses HTTPS, which this client does not speak.
pub fn normalize_url(target: &str) -> Result<String, String> {
    if target.starts_with("https://") {
        return Err(format!(
            "{target}: HTTPS is not supported; pprof endpoints are plain HTTP on a private port"
        ));
    }
    if target.starts_with("http://") {
        Ok(target.to_string())
    } else {
        Ok(format!("http://{target}"))
    }
}

/// GETs `url`, allowing `timeout` for the whole exchange. A status other than 200 is an error
/// carrying the first line of the server's message (pprof servers explain themselves there).
pub fn get(url: &str, timeout: Duration) -> Result<Fetched, FetchError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| describe(url, e))?;
    let status = response.status();
    let server = response
        .headers()
        .get("server")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY_BYTES)
        .read_to_vec()
        .map_err(|e| describe(url, e))?;
    if status != 200 {
        let message = String::from_utf8_lossy(&body);
        let first_line = message.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(FetchError {
            message: format!("GET {url}: HTTP {}: {}", status.as_u16(), first_line.trim()),
            server_answered: true,
        });
    }
    Ok(Fetched { body, server })
}

fn describe(url: &str, error: ureq::Error) -> FetchError {
    let message = match error {
        ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("GET {url}: connection refused (is the service running with PPROF_ADDR set to this address?)")
        }
        ureq::Error::Timeout(_) => format!("GET {url}: no answer in time"),
        other => format!("GET {url}: {other}"),
    };
    FetchError {
        message,
        server_answered: false,
    }
}
