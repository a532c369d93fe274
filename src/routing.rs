//! Where a request goes: upstream base URLs, the per-project and per-key routes of the config file,
//! the default upstream (or the capture sink), and the browser tunnel's allow-list.
//!
//! Ingest asks it once to store a target with each record; dispatch asks again at send time, so a
//! restart with changed routes applies to a backlog too (tunnel records keep their DSN's host,
//! which the allow-list approved when they came in).

use crate::protocol::Dsn;

/// A per-project or per-key route from the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    /// Match this project id (any if unset).
    pub project: Option<u64>,
    /// Match this public key (any if unset).
    pub key: Option<String>,
    /// Send matching requests here.
    pub upstream: UpstreamUrl,
}

/// An upstream base URL: `http(s)://host[:port][/prefix]`, stored without a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamUrl(pub std::sync::Arc<str>);

impl UpstreamUrl {
    /// Parses and normalises an upstream URL.
    pub fn parse(s: &str) -> Result<UpstreamUrl, String> {
        let uri: http::Uri = s.trim().parse().map_err(|e| format!("{e}"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err("the URL must start with http:// or https://".into()),
        }
        let authority = uri.authority().ok_or("the URL has no host")?;
        if authority.as_str().contains('@') {
            return Err("the upstream URL must not hold credentials".into());
        }
        if uri.query().is_some() {
            return Err("the upstream URL must not have a query".into());
        }
        let path = uri.path().trim_end_matches('/');
        let scheme = uri.scheme_str().unwrap_or("https");
        Ok(UpstreamUrl(format!("{scheme}://{authority}{path}").into()))
    }

    /// The URL as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a record goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// An upstream Sentry (or Relay) base URL.
    Upstream(UpstreamUrl),
    /// The local capture sink (no upstream configured).
    Capture,
}

/// The routing table: rules in order, then the default upstream, then capture.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    default: Option<UpstreamUrl>,
    rules: Vec<RouteRule>,
    tunnel_allow: Vec<Dsn>,
}

impl Routes {
    /// A table of `rules` (first match wins), falling back to `default`, with the tunnel's allow-list.
    pub fn new(default: Option<UpstreamUrl>, rules: Vec<RouteRule>, tunnel_allow: Vec<Dsn>) -> Routes {
        Routes { default, rules, tunnel_allow }
    }

    /// Where a request of this project and key goes: the first matching route, else the default
    /// upstream, else the capture sink.
    pub fn target_for(&self, project_id: u64, key: &str) -> Target {
        for r in &self.rules {
            if r.project.is_none_or(|p| p == project_id) && r.key.as_deref().is_none_or(|k| k == key) {
                return Target::Upstream(r.upstream.clone());
            }
        }
        match &self.default {
            Some(u) => Target::Upstream(u.clone()),
            None => Target::Capture,
        }
    }

    /// Whether any request can reach an upstream (so an upstream client is needed).
    pub fn has_upstream(&self) -> bool {
        self.default.is_some() || !self.rules.is_empty() || !self.tunnel_allow.is_empty()
    }

    /// Whether the browser tunnel is on (its allow-list is not empty).
    pub fn tunnel_enabled(&self) -> bool {
        !self.tunnel_allow.is_empty()
    }

    /// The upstream a tunnelled envelope with this DSN may go to: the allow-list entry with the
    /// same host, project and path prefix decides scheme and host, never the client.
    pub fn tunnel_target(&self, dsn: &Dsn) -> Option<Result<UpstreamUrl, String>> {
        self.tunnel_allow
            .iter()
            .find(|a| {
                a.authority.eq_ignore_ascii_case(&dsn.authority)
                    && a.project_id == dsn.project_id
                    && a.prefix == dsn.prefix
            })
            .map(|a| UpstreamUrl::parse(&a.base_url()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> UpstreamUrl {
        UpstreamUrl::parse(s).unwrap()
    }

    #[test]
    fn first_matching_rule_then_default_then_capture() {
        let rules = vec![
            RouteRule { project: Some(7), key: None, upstream: url("https://seven.example") },
            RouteRule { project: None, key: Some("abc".into()), upstream: url("https://abc.example/") },
        ];
        let r = Routes::new(Some(url("https://default.example")), rules.clone(), vec![]);
        assert_eq!(r.target_for(7, "abc"), Target::Upstream(url("https://seven.example")));
        assert_eq!(r.target_for(8, "abc"), Target::Upstream(url("https://abc.example")));
        assert_eq!(r.target_for(8, "x"), Target::Upstream(url("https://default.example")));
        assert_eq!(Routes::new(None, rules, vec![]).target_for(8, "x"), Target::Capture);
        assert!(!Routes::default().has_upstream());
    }

    #[test]
    fn the_tunnel_allows_only_listed_hosts_projects_and_prefixes() {
        let allow = vec![Dsn::parse("https://k@o1.ingest.sentry.io/42").unwrap()];
        let r = Routes::new(None, vec![], allow);
        assert!(r.tunnel_enabled() && r.has_upstream());
        let ok = Dsn::parse("https://other@O1.ingest.sentry.io/42").unwrap();
        assert_eq!(r.tunnel_target(&ok), Some(Ok(url("https://o1.ingest.sentry.io"))));
        for no in
            ["https://k@evil.example/42", "https://k@o1.ingest.sentry.io/43", "https://k@o1.ingest.sentry.io/p/42"]
        {
            assert_eq!(r.tunnel_target(&Dsn::parse(no).unwrap()), None, "{no}");
        }
    }

    #[test]
    fn upstream_urls_are_normalised_and_checked() {
        assert_eq!(url("https://sentry.example.com/prefix/").as_str(), "https://sentry.example.com/prefix");
        for bad in ["ftp://x", "https://user@x", "https://x/?q=1", "nope"] {
            assert!(UpstreamUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
