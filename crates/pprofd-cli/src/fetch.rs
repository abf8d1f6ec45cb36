//! HTTP GETs against pprof endpoints, with errors that say what the server answered.

use std::time::Duration;

/// Largest response accepted: profiles of big services run to tens of megabytes.
const MAX_BODY_BYTES: u64 = 512 << 20;

/// The environment variable the CLI reads its token from, the same one the server reads.
pub const TOKEN_ENV: &str = pprofd::TOKEN_ENV;

/// A bearer token for servers started with `PPROF_TOKEN`.
///
/// It has no `Display` and its `Debug` hides the value, so a token cannot end up in an error
/// message, a log line or an archive by formatting the wrong variable.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// Checks a token given with `--token` or `PPROF_TOKEN`; empty means none, as on the server.
    /// The error never contains the token.
    pub fn new(raw: &str) -> Result<Option<Token>, String> {
        if raw.is_empty() {
            return Ok(None);
        }
        // What an HTTP header value may hold (RFC 9110 field-vchar, inner spaces and tabs).
        // Anything else would be refused by the HTTP client with a less helpful error, or
        // worse, end the header early.
        let header_safe = raw
            .bytes()
            .all(|b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b) || b >= 0x80);
        let trimmed = raw.trim_matches([' ', '\t']).len() == raw.len();
        if !header_safe || !trimmed {
            return Err(format!(
                "the token (--token or {TOKEN_ENV}) cannot be sent in an HTTP header: it has a control character, \
                 a line break or leading or trailing space"
            ));
        }
        Ok(Some(Token(raw.to_string())))
    }

    /// The token itself, for handing to a child process that must require it. Never print it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<hidden>)")
    }
}

/// Why a GET failed.
#[derive(Debug)]
pub struct FetchError {
    /// One line saying what happened.
    pub message: String,
    /// The HTTP status the server answered with, or `None` when it could not be reached.
    pub status: Option<u16>,
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

/// Adds `http://` when `target` has no scheme; refuses HTTPS, which this client does not speak,
/// and every other scheme by its name (`ftp://h:1` would otherwise become `http://ftp://h:1`
/// and fail in DNS).
pub fn normalize_url(target: &str) -> Result<String, String> {
    if target.starts_with("https://") {
        return Err(format!(
            "{target}: HTTPS is not supported; pprof endpoints are plain HTTP on a private port"
        ));
    }
    if target.starts_with("http://") {
        return Ok(target.to_string());
    }
    if let Some((scheme, _)) = target.split_once("://") {
        return Err(format!(
            "{target}: {scheme}:// is not a scheme pprof endpoints are served over; give http://HOST:PORT or HOST:PORT"
        ));
    }
    Ok(format!("http://{target}"))
}

/// GETs `url`, allowing `timeout` for the whole exchange, with `Authorization: Bearer TOKEN`
/// when a token is given. A status other than 200 is an error carrying the first line of the
/// server's message (pprof servers explain themselves there); a 401 says how to pass a token.
pub fn get(url: &str, timeout: Duration, token: Option<&Token>) -> Result<Fetched, FetchError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.get(url);
    if let Some(token) = token {
        request = request.header("authorization", token.header_value());
    }
    let mut response = request.call().map_err(|e| describe(url, e))?;
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
    if status == 401 {
        // pprofd's server says only "Unauthorized", on purpose; the hint is the CLI's to give.
        let hint = if token.is_some() {
            format!("the server refused the token; check --token or {TOKEN_ENV}")
        } else {
            format!("the server requires a token; pass --token or set {TOKEN_ENV}")
        };
        return Err(FetchError {
            message: format!("GET {url}: HTTP 401 Unauthorized: {hint}"),
            status: Some(401),
        });
    }
    if status != 200 {
        let message = String::from_utf8_lossy(&body);
        let first_line = message.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(FetchError {
            message: format!("GET {url}: HTTP {}: {}", status.as_u16(), first_line.trim()),
            status: Some(status.as_u16()),
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
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_that_cannot_be_a_header_are_refused_without_being_repeated() {
        assert!(Token::new("").unwrap().is_none(), "empty means no token");
        let token = Token::new("abc-DEF_123.~+/=").unwrap().unwrap();
        assert_eq!(token.header_value(), "Bearer abc-DEF_123.~+/=");
        for bad in [
            "secret\nX-Evil: 1",
            "secret\r",
            " secret",
            "secret\t",
            "se\0cret",
        ] {
            let message = Token::new(bad).unwrap_err();
            assert!(message.contains("HTTP header"), "{message}");
            assert!(
                !message.contains("secret"),
                "the error repeats the token: {message}"
            );
        }
    }

    #[test]
    fn debug_hides_the_token() {
        let token = Token::new("hunter2").unwrap();
        assert_eq!(format!("{token:?}"), "Some(Token(<hidden>))");
    }
}
