//! The ingest endpoints a request can come in on: the label every metric, log line and spool row
//! uses for it.

/// The ingest endpoint a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `/api/{id}/envelope/`
    Envelope,
    /// `/api/{id}/store/` and `/api/store/`
    Store,
    /// `/api/{id}/minidump/`
    Minidump,
    /// `/api/{id}/security/` and `/api/{id}/csp-report/`
    Security,
    /// `/api/{id}/nel/`
    Nel,
    /// `/api/{id}/events/{event_id}/attachments/`
    Attachments,
    /// `/api/{id}/unreal/{key}/`
    Unreal,
    /// `/api/{id}/cron/{slug}[/{key}]/`
    Cron,
    /// `/api/{id}/otlp/v1/traces/`
    Otlp,
    /// The browser tunnel.
    Tunnel,
    /// Any other `/api/{id}/...` path, passed through.
    Other,
}

impl Endpoint {
    /// The label used in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Envelope => "envelope",
            Endpoint::Store => "store",
            Endpoint::Minidump => "minidump",
            Endpoint::Security => "security",
            Endpoint::Nel => "nel",
            Endpoint::Attachments => "attachments",
            Endpoint::Unreal => "unreal",
            Endpoint::Cron => "cron",
            Endpoint::Otlp => "otlp",
            Endpoint::Tunnel => "tunnel",
            Endpoint::Other => "other",
        }
    }

    /// Every endpoint, in declaration order (`ALL[e as usize] == e`).
    pub const ALL: [Endpoint; 11] = [
        Endpoint::Envelope,
        Endpoint::Store,
        Endpoint::Minidump,
        Endpoint::Security,
        Endpoint::Nel,
        Endpoint::Attachments,
        Endpoint::Unreal,
        Endpoint::Cron,
        Endpoint::Otlp,
        Endpoint::Tunnel,
        Endpoint::Other,
    ];

    /// The inverse of [`Endpoint::name`].
    pub fn from_name(s: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.name() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_all_is_indexed_by_discriminant() {
        for (i, e) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i);
            assert_eq!(Endpoint::from_name(e.name()), Some(*e));
        }
    }
}
