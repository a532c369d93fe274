//! DSNs and the three places an SDK may put its credentials (`X-Sentry-Auth`, `Authorization: Sentry`,
//! the query string); the fourth, the envelope header's `dsn`, is read by the envelope parser.
//!
//! The sidecar never invents or rewrites credentials: it only reads the public key to pick a route and
//! to reject requests that carry none, then forwards the original header or query untouched.

use std::borrow::Cow;
use std::fmt;

/// A parsed DSN: `{scheme}://{public_key}[:{secret}]@{host}[:{port}][/{prefix}]/{project_id}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Dsn {
    /// `http` or `https`.
    pub scheme: String,
    /// The public key (`sentry_key`).
    pub public_key: String,
    /// `host[:port]` exactly as written.
    pub authority: String,
    /// Path before the project id, without leading or trailing slash (often empty).
    pub prefix: String,
    /// Numeric project id.
    pub project_id: u64,
}

impl fmt::Debug for Dsn {
    // The public key is not a secret, but a DSN in logs is still noise; show it whole, the secret never.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dsn({self})")
    }
}

impl fmt::Display for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}@{}", self.scheme, self.public_key, self.authority)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        write!(f, "/{}", self.project_id)
    }
}

/// Why a DSN or an auth payload was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The DSN does not have the `scheme://key@host/project` shape.
    #[error("invalid DSN: {0}")]
    InvalidDsn(&'static str),
    /// No `sentry_key` anywhere in the request.
    #[error("missing authorization information")]
    Missing,
    /// Credentials in more than one place whose keys differ (the same key twice is fine).
    #[error("conflicting authorization: the sentry_key in {0} differs from the one in {1}")]
    Conflict(&'static str, &'static str),
    /// A `sentry_key` that is not 32 hexadecimal characters (a project key, as Sentry requires).
    #[error("invalid sentry_key: a public key is 32 hexadecimal characters")]
    InvalidKey,
    /// An auth header without a `sentry_key`, or an unparsable one.
    #[error("invalid authorization header: {0}")]
    Invalid(&'static str),
    /// `sentry_version` above 7: a newer protocol than Sentry speaks.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(String),
}

impl Dsn {
    /// Parses a DSN string.
    pub fn parse(s: &str) -> Result<Dsn, AuthError> {
        let s = s.trim();
        let (scheme, rest) = s.split_once("://").ok_or(AuthError::InvalidDsn("no scheme"))?;
        if scheme != "http" && scheme != "https" {
            return Err(AuthError::InvalidDsn("scheme must be http or https"));
        }
        let (userinfo, rest) = rest.split_once('@').ok_or(AuthError::InvalidDsn("no public key"))?;
        let public_key = userinfo.split(':').next().unwrap_or_default();
        if public_key.is_empty() {
            return Err(AuthError::InvalidDsn("empty public key"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => return Err(AuthError::InvalidDsn("no project id")),
        };
        if authority.is_empty() {
            return Err(AuthError::InvalidDsn("no host"));
        }
        let path = path.split(['?', '#']).next().unwrap_or_default().trim_end_matches('/');
        let (prefix, project) = match path.rfind('/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => ("", path),
        };
        let project_id = project.parse::<u64>().map_err(|_| AuthError::InvalidDsn("project id must be numeric"))?;
        Ok(Dsn {
            scheme: scheme.to_owned(),
            public_key: public_key.to_owned(),
            authority: authority.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            project_id,
        })
    }

    /// The ingest base URL for this DSN: `scheme://authority[/prefix]` (no trailing slash).
    pub fn base_url(&self) -> String {
        if self.prefix.is_empty() {
            format!("{}://{}", self.scheme, self.authority)
        } else {
            format!("{}://{}/{}", self.scheme, self.authority, self.prefix)
        }
    }

    /// The path of this DSN's envelope endpoint with query auth, as the browser tunnel forwards it.
    pub fn envelope_path_with_query_auth(&self) -> String {
        format!("/api/{}/envelope/?sentry_key={}&sentry_version=7", self.project_id, self.public_key)
    }
}

/// Whether `key` has the shape of a Sentry public key: 32 hexadecimal characters. Anything else
/// (control characters, a CR/LF smuggled through a decoded query, a truncated key) Sentry would
/// refuse, so the sidecar refuses it before acknowledging.
pub fn check_key(key: &str) -> Result<(), AuthError> {
    if key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(AuthError::InvalidKey)
    }
}

/// The credentials of one request, whichever place they came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// `sentry_key`, the DSN's public key.
    pub public_key: String,
    /// `sentry_version` (`7`, `6`, `7.0`).
    pub version: Option<String>,
    /// `sentry_client`, the SDK's name and version.
    pub client: Option<String>,
    /// `sentry_timestamp`, sent by raven and sentry-cli.
    pub timestamp: Option<String>,
}

impl Auth {
    /// Parses an `X-Sentry-Auth` or `Authorization` value: `Sentry k=v, k=v`. `Sentry` is
    /// case-insensitive and optional in practice; unknown keys are ignored.
    pub fn from_header(value: &str) -> Result<Auth, AuthError> {
        let v = value.trim();
        let v = match v.get(..7) {
            Some(head) if head.eq_ignore_ascii_case("sentry ") => &v[7..],
            _ => v,
        };
        Self::from_pairs(v.split(',').filter_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            Some((Cow::Borrowed(k.trim()), Cow::Borrowed(v.trim())))
        }))
    }

    /// Reads auth from a URL query string (`sentry_key=...&sentry_version=7`), if it has any.
    pub fn from_query(query: &str) -> Result<Option<Auth>, AuthError> {
        let mut pairs = form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k.starts_with("sentry_")).peekable();
        if pairs.peek().is_none() {
            return Ok(None);
        }
        Self::from_pairs(pairs).map(Some)
    }

    /// Pairs are borrowed where they can be: only the values kept are copied.
    fn from_pairs<'a>(pairs: impl Iterator<Item = (Cow<'a, str>, Cow<'a, str>)>) -> Result<Auth, AuthError> {
        let mut auth = Auth::default();
        for (k, v) in pairs {
            match &*k {
                "sentry_key" => auth.public_key = v.into_owned(),
                "sentry_version" => auth.version = Some(v.into_owned()),
                "sentry_client" => auth.client = Some(v.into_owned()),
                "sentry_timestamp" => auth.timestamp = Some(v.into_owned()),
                _ => {}
            }
        }
        if auth.public_key.is_empty() {
            return Err(AuthError::Invalid("no sentry_key"));
        }
        if let Some(v) = &auth.version {
            let major = v.split('.').next().unwrap_or_default().parse::<u32>();
            match major {
                Ok(m) if m <= 7 => {}
                Ok(_) => return Err(AuthError::UnsupportedVersion(v.clone())),
                Err(_) => return Err(AuthError::Invalid("sentry_version is not a number")),
            }
        }
        Ok(auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_prefixed_dsns() {
        let d = Dsn::parse("https://abc@o1.ingest.sentry.io/42").unwrap();
        assert_eq!(d.public_key, "abc");
        assert_eq!(d.authority, "o1.ingest.sentry.io");
        assert_eq!(d.prefix, "");
        assert_eq!(d.project_id, 42);
        assert_eq!(d.base_url(), "https://o1.ingest.sentry.io");

        let d = Dsn::parse("http://k:secret@127.0.0.1:3000/sentry/x/7/").unwrap();
        assert_eq!(d.public_key, "k");
        assert_eq!(d.authority, "127.0.0.1:3000");
        assert_eq!(d.prefix, "sentry/x");
        assert_eq!(d.project_id, 7);
        assert_eq!(d.to_string(), "http://k@127.0.0.1:3000/sentry/x/7");
    }

    #[test]
    fn rejects_bad_dsns() {
        for bad in [
            "o1.ingest.sentry.io/42",
            "ftp://k@h/1",
            "https://h/1",
            "https://@h/1",
            "https://k@h",
            "https://k@h/abc",
            "https://k@/1",
        ] {
            assert!(Dsn::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_auth_headers_like_sentry() {
        let a =
            Auth::from_header("Sentry sentry_key=abc, sentry_version=7, sentry_client=sentry.python/2.75.0").unwrap();
        assert_eq!(a.public_key, "abc");
        assert_eq!(a.client.as_deref(), Some("sentry.python/2.75.0"));
        let a = Auth::from_header(
            "sentry sentry_timestamp=1795668549.2, sentry_client=raven-python/6.10.0, sentry_version=6, sentry_key=k",
        )
        .unwrap();
        assert_eq!(a.public_key, "k");
        assert_eq!(a.timestamp.as_deref(), Some("1795668549.2"));
        assert!(Auth::from_header("Sentry sentry_key=k,sentry_version=7.0,x=y").is_ok());
        assert_eq!(
            Auth::from_header("Sentry sentry_key=k, sentry_version=8"),
            Err(AuthError::UnsupportedVersion("8".into()))
        );
        assert!(Auth::from_header("Sentry sentry_version=7").is_err());
        assert!(Auth::from_header("Bearer abc").is_err());
    }

    #[test]
    fn keys_are_32_hex_characters() {
        assert_eq!(check_key("0123456789abcdef0123456789ABCDEF"), Ok(()));
        for bad in [
            "",
            "abc",
            "0123456789abcdef0123456789abcdeg",
            "0123456789abcdef0123456789abcdef0",
            "0123456789abcdef\r\n0123456789abcd",
        ] {
            assert_eq!(check_key(bad), Err(AuthError::InvalidKey), "{bad:?}");
        }
    }

    #[test]
    fn parses_query_auth() {
        let a = Auth::from_query("sentry_version=7&sentry_key=abc&sentry_client=sentry.javascript.node%2F11.12.0")
            .unwrap()
            .unwrap();
        assert_eq!(a.public_key, "abc");
        assert_eq!(a.client.as_deref(), Some("sentry.javascript.node/11.12.0"));
        assert_eq!(Auth::from_query("foo=bar").unwrap(), None);
        assert!(Auth::from_query("sentry_version=7").is_err());
    }
}
