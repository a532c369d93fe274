//! Ingest paths: `[/prefix]/api/{project_id}/{endpoint}/...` and `/api/store/`.
//!
//! A DSN may carry a path prefix (`/sentry/42` -> `/sentry/api/42/envelope/`), so the route is found
//! on the `/api/{id}/` suffix and any prefix is allowed.

use crate::protocol::Endpoint;

/// A recognised ingest path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPath<'a> {
    /// The project id (absent only for `/api/store/`).
    pub project_id: Option<u64>,
    /// The endpoint.
    pub endpoint: Endpoint,
    /// A public key carried in the path (`unreal/{key}`, `cron/{slug}/{key}`).
    pub path_key: Option<&'a str>,
}

/// Why a path is not an ingest route.
#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    /// No `/api/` in it at all.
    NotFound,
    /// `/api/{something not numeric}/`.
    InvalidProject,
}

/// Parses a request path (without query).
pub fn parse(path: &str) -> Result<ApiPath<'_>, PathError> {
    let mut saw_api = false;
    let mut from = 0;
    while let Some(i) = path[from..].find("/api/") {
        saw_api = true;
        let rest = &path[from + i + 5..];
        from += i + 5;
        if let Some(p) = parse_after_api(rest) {
            return Ok(p);
        }
    }
    if saw_api {
        Err(PathError::InvalidProject)
    } else {
        Err(PathError::NotFound)
    }
}

/// Whether `path` has a `.` or `..` segment, written plainly or percent-encoded (`%2e%2e`). Such a
/// path means something else to every server that normalises it (`/api/7/../../metrics` is
/// `/metrics`), so it is refused rather than routed by one reading and forwarded to be read by
/// another.
pub fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| {
        let mut rest = seg.as_bytes();
        let mut dots = 0;
        while !rest.is_empty() {
            if rest[0] == b'.' {
                rest = &rest[1..];
            } else if rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && rest[2].eq_ignore_ascii_case(&b'e') {
                rest = &rest[3..];
            } else {
                return false;
            }
            dots += 1;
        }
        dots == 1 || dots == 2
    })
}

fn parse_after_api(rest: &str) -> Option<ApiPath<'_>> {
    let mut segs = rest.split('/');
    let first = segs.next()?;
    if first == "store" {
        return segs.all(str::is_empty).then_some(ApiPath {
            project_id: None,
            endpoint: Endpoint::Store,
            path_key: None,
        });
    }
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let project_id = first.parse::<u64>().ok()?;
    let segs: Vec<&str> = segs.filter(|s| !s.is_empty()).collect();
    let (endpoint, path_key) = match segs.as_slice() {
        ["envelope"] => (Endpoint::Envelope, None),
        ["store"] => (Endpoint::Store, None),
        ["minidump"] => (Endpoint::Minidump, None),
        ["security"] | ["csp-report"] => (Endpoint::Security, None),
        ["nel"] => (Endpoint::Nel, None),
        ["events", _, "attachments"] => (Endpoint::Attachments, None),
        ["unreal", key] => (Endpoint::Unreal, Some(*key)),
        ["cron", _slug] => (Endpoint::Cron, None),
        ["cron", _slug, key] => (Endpoint::Cron, Some(*key)),
        ["otlp", "v1", "traces"] => (Endpoint::Otlp, None),
        _ => (Endpoint::Other, None),
    };
    Some(ApiPath { project_id: Some(project_id), endpoint, path_key })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(p: &str) -> (Option<u64>, Endpoint) {
        let a = parse(p).unwrap();
        (a.project_id, a.endpoint)
    }

    #[test]
    fn endpoints() {
        assert_eq!(ep("/api/42/envelope/"), (Some(42), Endpoint::Envelope));
        assert_eq!(ep("/api/42/envelope"), (Some(42), Endpoint::Envelope));
        assert_eq!(ep("/sentry/api/42/envelope/"), (Some(42), Endpoint::Envelope));
        assert_eq!(ep("/api/sentry/api/42/store/"), (Some(42), Endpoint::Store));
        assert_eq!(ep("/api/store/"), (None, Endpoint::Store));
        assert_eq!(ep("/api/42/minidump/"), (Some(42), Endpoint::Minidump));
        assert_eq!(ep("/api/42/csp-report/"), (Some(42), Endpoint::Security));
        assert_eq!(ep("/api/42/security/"), (Some(42), Endpoint::Security));
        assert_eq!(ep("/api/42/nel/"), (Some(42), Endpoint::Nel));
        assert_eq!(ep("/api/42/events/abc/attachments/"), (Some(42), Endpoint::Attachments));
        assert_eq!(ep("/api/42/otlp/v1/traces/"), (Some(42), Endpoint::Otlp));
        assert_eq!(ep("/api/42/something/new/"), (Some(42), Endpoint::Other));
        let a = parse("/api/42/unreal/abc/").unwrap();
        assert_eq!((a.endpoint, a.path_key), (Endpoint::Unreal, Some("abc")));
        let a = parse("/api/42/cron/nightly/abc/").unwrap();
        assert_eq!((a.endpoint, a.path_key), (Endpoint::Cron, Some("abc")));
    }

    #[test]
    fn dot_segments() {
        for bad in
            ["/api/7/../../metrics", "/api/7/%2e%2e/%2E%2E/metrics", "/api/./7/envelope/", "/api/7/.%2e/x", "/.."]
        {
            assert!(has_dot_segment(bad), "{bad}");
        }
        for ok in ["/api/7/envelope/", "/api/7/...", "/api/7/a.b/", "/api/7/%2e%2ex/", "/"] {
            assert!(!has_dot_segment(ok), "{ok}");
        }
    }

    #[test]
    fn not_routes() {
        assert_eq!(parse("/"), Err(PathError::NotFound));
        assert_eq!(parse("/envelope/"), Err(PathError::NotFound));
        assert_eq!(parse("/api/abc/envelope/"), Err(PathError::InvalidProject));
        assert_eq!(parse("/api/store/extra"), Err(PathError::InvalidProject));
        assert_eq!(parse("/api/"), Err(PathError::InvalidProject));
    }
}
