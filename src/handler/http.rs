//! The `http` handler: POSTs each payload to a URL and classifies the response.
//!
//! 2xx is success; 408, 425, 429, 5xx, connection errors and timeouts are transient; any other
//! status is permanent. `Retry-After` (seconds or an HTTP date) becomes the failure's
//! `retry_after`, which routing honours as a minimum delay.

use std::time::{Duration, SystemTime};

use base64::Engine;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;

use super::{Failure, Handler, Message, Outcome};
use crate::headers::{truncate, MAX_ERROR_MESSAGE};

/// POSTs messages to one URL over a pooled, keep-alive client.
#[derive(Debug, Clone)]
pub struct HttpHandler {
    client: reqwest::Client,
    url: reqwest::Url,
    /// Message headers passed on as request headers (lower-case names).
    forward: Vec<String>,
}

/// Why an [`HttpHandler`] cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL does not parse.
    #[error("{url:?} is not a URL: {reason}")]
    NotAUrl {
        /// The text given.
        url: String,
        /// What the URL parser said.
        reason: url::ParseError,
    },
    /// Not `http://` or `https://`.
    #[error("{0} must start with http:// or https://")]
    Scheme(String),
    /// The HTTP client could not be built (TLS set-up).
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Checks that `url` is an `http://` or `https://` URL (pure: what [`HttpHandler::new`] checks
/// before it builds the client).
pub fn check_url(url: &str) -> Result<reqwest::Url, HttpError> {
    let parsed = reqwest::Url::parse(url).map_err(|reason| HttpError::NotAUrl {
        url: url.to_string(),
        reason,
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(HttpError::Scheme(parsed.to_string()));
    }
    Ok(parsed)
}

impl HttpHandler {
    /// `timeout` bounds each request (the handler timeout bounds it too).
    pub fn new(url: &str, timeout: Duration) -> Result<HttpHandler, HttpError> {
        let url = check_url(url)?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(HttpHandler {
            client,
            url,
            forward: Vec::new(),
        })
    }

    /// Forwards the message headers with these names (case-insensitive) as request headers.
    pub fn forward_headers(mut self, names: Vec<String>) -> HttpHandler {
        self.forward = names.into_iter().map(|n| n.to_ascii_lowercase()).collect();
        self
    }

    fn request_headers(&self, message: &Message) -> HeaderMap {
        let mut map = HeaderMap::new();
        let content_type = crate::headers::last(&message.headers, "content-type")
            .and_then(|h| h.value.as_deref())
            .and_then(|v| HeaderValue::from_bytes(v).ok())
            .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
        map.insert(CONTENT_TYPE, content_type);
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                map.insert(HeaderName::from_static(name), v);
            }
        };
        put("x-rebound-topic", message.topic.clone());
        put("x-rebound-partition", message.partition.to_string());
        put("x-rebound-offset", message.offset.to_string());
        put("x-rebound-attempt", message.attempt.to_string());
        if let Some(key) = &message.key {
            let text = match std::str::from_utf8(key) {
                Ok(s) if HeaderValue::from_str(s).is_ok() => s.to_string(),
                _ => format!(
                    "base64:{}",
                    base64::engine::general_purpose::STANDARD.encode(key)
                ),
            };
            put("x-rebound-key", text);
        }
        for h in &message.headers {
            let Ok(name) = std::str::from_utf8(&h.name) else {
                continue;
            };
            let lower = name.to_ascii_lowercase();
            if !self.forward.contains(&lower) {
                continue;
            }
            if let (Ok(n), Some(Ok(v))) = (
                HeaderName::from_bytes(lower.as_bytes()),
                h.value.as_deref().map(HeaderValue::from_bytes),
            ) {
                map.append(n, v);
            }
        }
        map
    }
}

/// Reads `Retry-After` (RFC 9110 §10.2.3): delay-seconds or an HTTP date; `None` when it is
/// neither. Delay-seconds too large for a `u64` read as [`Duration::MAX`] (the server asked for
/// "very long"); a date in the past reads as zero. Routing cuts any value to `--max-delay`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(
            value
                .parse::<u64>()
                .map_or(Duration::MAX, Duration::from_secs),
        );
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// Classifies a status per the contract.
pub fn classify(status: StatusCode) -> Option<bool> {
    // Some(true) = transient, Some(false) = permanent, None = success.
    if status.is_success() {
        return None;
    }
    let code = status.as_u16();
    Some(matches!(code, 408 | 425 | 429) || status.is_server_error())
}

#[async_trait::async_trait]
impl Handler for HttpHandler {
    async fn handle(&self, message: &Message) -> Outcome {
        let response = self
            .client
            .post(self.url.clone())
            .headers(self.request_headers(message))
            .body(message.payload().to_vec())
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Outcome::transient("timeout", e.to_string()),
            Err(e) if e.is_connect() => return Outcome::transient("connect", e.to_string()),
            Err(e) => return Outcome::transient("http_error", e.to_string()),
        };
        let status = response.status();
        let Some(transient) = classify(status) else {
            return Outcome::Success;
        };
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body = response.bytes().await.unwrap_or_default();
        let text = String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_MESSAGE)]);
        let mut failure = Failure::new(
            format!("http_{}", status.as_u16()),
            truncate(&format!("HTTP {status}: {text}"), MAX_ERROR_MESSAGE).to_string(),
        );
        failure.retry_after = retry_after;
        if transient {
            Outcome::Transient(failure)
        } else {
            Outcome::Permanent(failure)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify_per_the_contract() {
        let c = |n: u16| classify(StatusCode::from_u16(n).unwrap());
        assert_eq!(c(200), None);
        assert_eq!(c(204), None);
        for t in [408, 425, 429, 500, 502, 503, 599] {
            assert_eq!(c(t), Some(true), "{t}");
        }
        for p in [400, 401, 403, 404, 409, 422] {
            assert_eq!(c(p), Some(false), "{p}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_784_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(
            parse_retry_after("999999999999", now),
            Some(Duration::from_secs(999_999_999_999))
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::MAX)
        );
        let y9999 = parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now).unwrap();
        assert!(
            y9999 > Duration::from_secs(7_900 * 365 * 86_400),
            "{y9999:?}"
        );
    }
}
