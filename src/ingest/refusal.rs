//! How ingest refuses: a status, a reason label for `sidecar_rejected_total`, a short detail for
//! the SDK (`{"detail": ...}` and `X-Sentry-Error`) and the headers some refusals carry
//! (`Retry-After`), built from each error ingest can meet.

use http::StatusCode;

use super::body::BodyError;
use super::budget::Overloaded;
use super::forward::ForwardError;
use super::stream::StreamError;
use crate::protocol::{AuthError, EnvelopeError};
use crate::spool::SpoolError;

/// `Retry-After` of a request refused for want of memory budget: in-flight bodies finish in
/// seconds, so a retry soon is likely to get through.
const OVERLOADED_RETRY_AFTER: &str = "2";

/// A refused request: status, a reason label for metrics, and the detail for the SDK.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct Refusal {
    pub(super) status: StatusCode,
    pub(super) reason: &'static str,
    pub(super) detail: String,
    pub(super) headers: Vec<(&'static str, String)>,
}

impl Refusal {
    pub(super) fn new(status: StatusCode, reason: &'static str, detail: impl Into<String>) -> Refusal {
        Refusal { status, reason, detail: detail.into(), headers: Vec::new() }
    }

    pub(super) fn with_header(mut self, name: &'static str, value: String) -> Refusal {
        self.headers.push((name, value));
        self
    }
}

impl From<BodyError> for Refusal {
    fn from(e: BodyError) -> Refusal {
        let (status, reason) = match &e {
            BodyError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            BodyError::Read(_) => (StatusCode::BAD_REQUEST, "body_read"),
            BodyError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            BodyError::UnsupportedEncoding(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "encoding"),
            BodyError::Corrupt(..) => (StatusCode::BAD_REQUEST, "corrupt_body"),
            // Waiting cannot make room for it: a 413, so the SDK does not retry it forever.
            BodyError::Overloaded(Overloaded::NeverFits { .. }) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            BodyError::Overloaded(Overloaded::Busy(_)) => {
                return Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", e.to_string())
                    .with_header("retry-after", OVERLOADED_RETRY_AFTER.to_owned());
            }
        };
        Refusal::new(status, reason, e.to_string())
    }
}

impl From<StreamError> for Refusal {
    fn from(e: StreamError) -> Refusal {
        match e {
            StreamError::Body(e) => e.into(),
            StreamError::Envelope(e) => e.into(),
            StreamError::Spool(e) => e.into(),
        }
    }
}

impl From<EnvelopeError> for Refusal {
    fn from(e: EnvelopeError) -> Refusal {
        if e.is_too_large() {
            Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
        } else {
            Refusal::new(StatusCode::BAD_REQUEST, "invalid_envelope", e.to_string())
        }
    }
}

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Refusal {
        match e {
            AuthError::UnsupportedVersion(_) => Refusal::new(StatusCode::BAD_REQUEST, "auth", e.to_string()),
            AuthError::InvalidKey => Refusal::new(StatusCode::UNAUTHORIZED, "invalid_key", e.to_string()),
            AuthError::Conflict(..) => Refusal::new(StatusCode::UNAUTHORIZED, "auth_conflict", e.to_string()),
            _ => Refusal::new(StatusCode::UNAUTHORIZED, "auth", e.to_string()),
        }
    }
}

impl From<ForwardError> for Refusal {
    fn from(e: ForwardError) -> Refusal {
        match e {
            ForwardError::Timeout => Refusal::new(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", e.to_string()),
            ForwardError::Unreachable(_) => {
                Refusal::new(StatusCode::BAD_GATEWAY, "upstream_unreachable", e.to_string())
            }
        }
    }
}

impl From<SpoolError> for Refusal {
    fn from(e: SpoolError) -> Refusal {
        match e {
            SpoolError::DiskFull => Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "disk_full",
                "cannot queue the event now: the sidecar's disk is nearly full",
            )
            .with_header("retry-after", "10".to_owned()),
            SpoolError::Full => {
                Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "spool_full", "the sidecar's spool is full; retry later")
                    .with_header("retry-after", "60".to_owned())
            }
            e => {
                tracing::error!(error = %e, "spool append failed; answering 503");
                Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "spool", format!("cannot queue the event now: {e}"))
                    .with_header("retry-after", "10".to_owned())
            }
        }
    }
}
