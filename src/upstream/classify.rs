//! Upstream answers -> what dispatch does next: 2xx delivered, 429 wait, other 4xx never, 408 and
//! 5xx later (Sentry's documented response semantics for ingestion endpoints).

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};

use super::failure::Failure;
use crate::protocol::rate_limits::{parse_rate_limits, parse_retry_after};
use crate::protocol::RateLimit;

/// What an upstream attempt means for the envelope.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 2xx: delivered; `limits` are any `X-Sentry-Rate-Limits` that came with it.
    Delivered {
        /// Limits announced on the success.
        limits: Vec<RateLimit>,
    },
    /// 429: keep the envelope and wait.
    RateLimited {
        /// How long the answer asked us to wait (`Retry-After`, else 60 s).
        retry_after: Duration,
        /// The per-category limits, if the header was present.
        limits: Vec<RateLimit>,
    },
    /// A 4xx other than 408/429: Sentry will never take it; drop and count.
    Rejected {
        /// The status.
        status: u16,
        /// `X-Sentry-Error`, if any.
        detail: Option<String>,
        /// Limits announced on the answer.
        limits: Vec<RateLimit>,
    },
    /// 408, 5xx, connect/TLS/timeout/reset: try again later (a certificate that fails
    /// verification too, but the circuit treats it as the configuration error it is).
    Transient {
        /// Why, as a closed set (metrics, `/readyz`, the circuit).
        failure: Failure,
        /// The detail for logs (the status, or the error chain).
        reason: String,
    },
    /// The upstream did not process the request: HTTP/2 `REFUSED_STREAM`, or a `GOAWAY` whose
    /// last stream id excludes it (RFC 9113 section 8.7: safe to send again, on a new
    /// connection). Not an upstream failure: send again at once.
    Refused {
        /// A short reason for logs.
        reason: String,
    },
}

/// Classifies an HTTP answer.
pub fn classify(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Outcome {
    let limits = headers
        .get_all("x-sentry-rate-limits")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse_rate_limits)
        .collect::<Vec<_>>();
    let code = status.as_u16();
    match code {
        200..=299 => Outcome::Delivered { limits },
        429 => {
            let retry_after = headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, now))
                .or_else(|| limits.iter().map(|l| l.duration).max())
                .unwrap_or(Duration::from_secs(60));
            Outcome::RateLimited { retry_after, limits }
        }
        408 | 500..=599 => Outcome::Transient { failure: Failure::of_status(code), reason: format!("status {code}") },
        _ => Outcome::Rejected {
            status: code,
            detail: headers.get("x-sentry-error").and_then(|v| v.to_str().ok()).map(|s| s.chars().take(200).collect()),
            limits,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn every_class() {
        let now = SystemTime::now();
        assert!(matches!(classify(StatusCode::OK, &h(&[]), now), Outcome::Delivered { .. }));
        match classify(StatusCode::OK, &h(&[("x-sentry-rate-limits", "60:error:key")]), now) {
            Outcome::Delivered { limits } => assert_eq!(limits.len(), 1),
            o => panic!("{o:?}"),
        }
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &h(&[("retry-after", "5")]), now),
            Outcome::RateLimited { retry_after: Duration::from_secs(5), limits: vec![] }
        );
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, &h(&[]), now),
            Outcome::RateLimited { retry_after, .. } if retry_after == Duration::from_secs(60)
        ));
        for s in [408u16, 500, 502, 503, 504] {
            let st = StatusCode::from_u16(s).unwrap();
            assert!(matches!(classify(st, &h(&[]), now), Outcome::Transient { .. }), "{s}");
        }
        for s in [400u16, 401, 403, 404, 413] {
            let st = StatusCode::from_u16(s).unwrap();
            assert!(matches!(classify(st, &h(&[]), now), Outcome::Rejected { .. }), "{s}");
        }
        match classify(StatusCode::BAD_REQUEST, &h(&[("x-sentry-error", "bad")]), now) {
            Outcome::Rejected { detail, .. } => assert_eq!(detail.as_deref(), Some("bad")),
            o => panic!("{o:?}"),
        }
    }
}
