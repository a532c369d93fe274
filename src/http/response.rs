//! Building answers: `{"id": ...}` on success, `{"detail": ...}` plus `X-Sentry-Error` on errors, and
//! the CORS headers browsers need on every ingest route.

use bytes::Bytes;
use http::header::{HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;

/// A response with a JSON body.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `200 {"id":"..."}`, or `{}` without an event id.
pub fn accepted(event_id: Option<&str>) -> Response<Full<Bytes>> {
    match event_id {
        Some(id) => json(StatusCode::OK, serde_json::json!({ "id": id }).to_string()),
        None => json(StatusCode::OK, Bytes::from_static(b"{}")),
    }
}

/// An error answer with a short detail.
pub fn error(status: StatusCode, detail: &str) -> Response<Full<Bytes>> {
    let mut r = json(status, serde_json::json!({ "detail": detail }).to_string());
    let header: String = detail.chars().filter(|c| !c.is_control()).take(200).collect();
    if let Ok(v) = HeaderValue::from_str(&header) {
        r.headers_mut().insert("x-sentry-error", v);
    }
    r
}

/// Adds the CORS headers every ingest answer carries.
pub fn add_cors(r: &mut Response<Full<Bytes>>) {
    let h = r.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static("x-sentry-error, x-sentry-rate-limits, retry-after"),
    );
}

/// The answer to a CORS preflight.
pub fn preflight() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    let h = r.headers_mut();
    h.insert("access-control-allow-methods", HeaderValue::from_static("GET, POST, OPTIONS"));
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static(
            "x-sentry-auth, x-requested-with, x-forwarded-for, origin, referer, accept, content-type, \
             authentication, authorization, content-encoding, transfer-encoding",
        ),
    );
    h.insert("access-control-max-age", HeaderValue::from_static("3600"));
    add_cors(&mut r);
    r
}

/// A metrics label for a status code (labels must be `'static`).
pub fn status_label(s: StatusCode) -> &'static str {
    match s.as_u16() {
        200 => "200",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        411 => "411",
        413 => "413",
        415 => "415",
        429 => "429",
        500 => "500",
        501 => "501",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => "other",
    }
}
