//! One push over HTTP (ureq, blocking, on the push thread), and what its
//! answer means: accepted, worth retrying (connection errors, timeouts,
//! 5xx, 408, 429 with its Retry-After), or refused for good (another 4xx).

use std::{
    io::Read as _,
    time::{Duration, SystemTime},
};

use base64::Engine as _;

use super::{Auth, Endpoint};

/// Connecting takes longer than this only when something is wrong.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A whole request, unless a shutdown's deadline is nearer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an error answer is kept for the log.
const MAX_ERROR_BODY: u64 = 512;
/// A Retry-After longer than this is capped: the window would be too old.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// A request a backend is sent.
pub struct Request {
    pub url: String,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Retry {
        after: Option<Duration>,
        why: String,
    },
    Refused {
        status: u16,
        why: String,
    },
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(REQUEST_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(format!("tracer/{}", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// Sends `request` with the tenant and credentials of `endpoint`, giving
/// up after `timeout`.
pub fn send(
    agent: &ureq::Agent,
    endpoint: &Endpoint,
    request: Request,
    timeout: Duration,
) -> Outcome {
    let mut req = agent
        .post(&request.url)
        .config()
        .timeout_global(Some(timeout))
        .build()
        .header("Content-Type", request.content_type);
    if let Some(tenant) = &endpoint.tenant {
        req = req.header("X-Scope-OrgID", tenant);
    }
    match &endpoint.auth {
        Some(Auth::Basic { username, password }) => {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            req = req.header("Authorization", format!("Basic {token}"));
        }
        Some(Auth::Bearer(token)) => {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        None => {}
    }
    let mut response = match req.send(&request.body[..]) {
        Ok(r) => r,
        Err(err) => {
            return Outcome::Retry {
                after: None,
                why: err.to_string(),
            };
        }
    };
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Outcome::Accepted;
    }
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry_after(v, SystemTime::now()));
    let mut text = String::new();
    let _ = response
        .body_mut()
        .as_reader()
        .take(MAX_ERROR_BODY)
        .read_to_string(&mut text);
    let why = format!(
        "HTTP {status}: {}",
        text.lines().next().unwrap_or("").trim()
    );
    if status >= 500 || status == 408 || status == 429 {
        Outcome::Retry {
            after: retry_after,
            why,
        }
    } else {
        Outcome::Refused { status, why }
    }
}

/// A Retry-After value: seconds, or an HTTP date (RFC 9110).
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(retry_after(&later, now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after("99999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after("soon", now), None);
    }
}
