//! Why an upstream attempt failed, as a small closed set with stable labels: the `reason` of
//! `sidecar_upstream_failures_total`, of the line that opens the circuit and of `/readyz`.
//!
//! A closed set, not the error's text: an operator alerts and searches on a label, and "refused"
//! wants a different fix (start the upstream, fix the port) than "tls_unknown_issuer" (pass
//! `--ca-file`). The error's text still goes with it into the logs, as the detail.
//!
//! The TLS verdict sits deep in the error: hyper-util's error holds the connector's boxed error,
//! an `io::Error` wrapping tokio-rustls's `io::Error` wrapping the `rustls::Error`; an `io::Error`'s
//! `source()` skips the error it wraps, so [`Failure::of_error`] also descends through
//! `io::Error::get_ref`.

use std::error::Error;
use std::io;

use rustls::{CertificateError, Error as TlsError};

/// Why an upstream attempt got no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The upstream's host name did not resolve.
    Dns,
    /// Nothing listens on the upstream's port (connection refused).
    Refused,
    /// No TCP connection within `connect_timeout`.
    ConnectTimeout,
    /// The certificate chains to a CA the sidecar does not trust (a private CA without `--ca-file`).
    TlsUnknownIssuer,
    /// The certificate is valid, but not for the upstream's host name.
    TlsNameMismatch,
    /// The certificate has expired (or is not valid yet).
    TlsExpired,
    /// The certificate failed verification for another reason (revoked, bad signature, ...).
    TlsBadCertificate,
    /// The TLS handshake failed without a verdict on the certificate (an alert, no common version).
    TlsHandshake,
    /// The upstream answered 500 to 599.
    Http5xx,
    /// The upstream answered 408.
    Http408,
    /// No whole answer within `request_timeout`.
    RequestTimeout,
    /// The connection was reset or closed before the answer.
    Reset,
    /// Anything else.
    Other,
}

impl Failure {
    /// Every failure, in the order of [`crate::telemetry::FAILURE_REASONS`].
    pub const ALL: [Failure; 13] = [
        Failure::Dns,
        Failure::Refused,
        Failure::ConnectTimeout,
        Failure::TlsUnknownIssuer,
        Failure::TlsNameMismatch,
        Failure::TlsExpired,
        Failure::TlsBadCertificate,
        Failure::TlsHandshake,
        Failure::Http5xx,
        Failure::Http408,
        Failure::RequestTimeout,
        Failure::Reset,
        Failure::Other,
    ];

    /// The stable label (metrics, logs, `/readyz`).
    pub fn label(self) -> &'static str {
        match self {
            Failure::Dns => "dns",
            Failure::Refused => "refused",
            Failure::ConnectTimeout => "connect_timeout",
            Failure::TlsUnknownIssuer => "tls_unknown_issuer",
            Failure::TlsNameMismatch => "tls_name_mismatch",
            Failure::TlsExpired => "tls_expired",
            Failure::TlsBadCertificate => "tls_bad_certificate",
            Failure::TlsHandshake => "tls_handshake",
            Failure::Http5xx => "http_5xx",
            Failure::Http408 => "http_408",
            Failure::RequestTimeout => "request_timeout",
            Failure::Reset => "reset",
            Failure::Other => "other",
        }
    }

    /// Whether the upstream's certificate failed verification: a configuration error that no
    /// retry fixes (the CA, the name or the certificate must change), not a transient one.
    pub fn is_certificate(self) -> bool {
        matches!(
            self,
            Failure::TlsUnknownIssuer | Failure::TlsNameMismatch | Failure::TlsExpired | Failure::TlsBadCertificate
        )
    }

    /// An HTTP status that means "try again later" (408 and 5xx).
    pub fn of_status(status: u16) -> Failure {
        if status == 408 {
            Failure::Http408
        } else {
            Failure::Http5xx
        }
    }

    /// Classifies a transport error by what its source chain holds.
    pub fn of_error(e: &(dyn Error + 'static)) -> Failure {
        let chain = chain(e);
        if let Some(tls) = chain.iter().find_map(|e| e.downcast_ref::<TlsError>()) {
            return of_tls(tls);
        }
        for e in &chain {
            if let Some(io) = e.downcast_ref::<io::Error>() {
                match io.kind() {
                    io::ErrorKind::ConnectionRefused => return Failure::Refused,
                    // Only the connector times out with an `io::Error`; the request timeout is ours.
                    io::ErrorKind::TimedOut => return Failure::ConnectTimeout,
                    io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof => return Failure::Reset,
                    _ => {}
                }
            }
            // hyper-util's connector says so only in its message (its error type is private).
            if e.to_string() == "dns error" {
                return Failure::Dns;
            }
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                    return Failure::Reset;
                }
            }
            if e.downcast_ref::<h2::Error>().is_some() {
                return Failure::Reset;
            }
        }
        Failure::Other
    }
}

/// The errors of `e`'s chain, descending into what an `io::Error` wraps (its `source()` skips it).
fn chain<'a>(e: &'a (dyn Error + 'static)) -> Vec<&'a (dyn Error + 'static)> {
    let mut out = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        if out.len() == 32 {
            break;
        }
        out.push(err);
        cur = match err.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &'a (dyn Error + 'static)),
            None => err.source(),
        };
    }
    out
}

fn of_tls(e: &TlsError) -> Failure {
    match e {
        TlsError::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => Failure::TlsUnknownIssuer,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                Failure::TlsNameMismatch
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => Failure::TlsExpired,
            _ => Failure::TlsBadCertificate,
        },
        _ => Failure::TlsHandshake,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that wraps another the way hyper-util's client and connector errors do.
    #[derive(Debug)]
    struct Wrap(&'static str, Box<dyn Error + Send + Sync>);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.1)
        }
    }

    /// A rustls error as hyper-rustls hands it over: `io::Error::other(io::Error(InvalidData, e))`,
    /// inside the connector's and the client's errors.
    fn tls(e: TlsError) -> Wrap {
        let inner = io::Error::new(io::ErrorKind::InvalidData, e);
        Wrap("client error (Connect)", Box::new(io::Error::other(inner)))
    }

    fn connect(kind: io::ErrorKind) -> Wrap {
        Wrap("client error (Connect)", Box::new(Wrap("tcp connect error", Box::new(io::Error::from(kind)))))
    }

    #[test]
    fn certificate_verdicts_are_found_through_the_io_errors_that_hide_them() {
        let cert = |c| Failure::of_error(&tls(TlsError::InvalidCertificate(c)));
        assert_eq!(cert(CertificateError::UnknownIssuer), Failure::TlsUnknownIssuer);
        assert_eq!(cert(CertificateError::NotValidForName), Failure::TlsNameMismatch);
        assert_eq!(cert(CertificateError::Expired), Failure::TlsExpired);
        assert_eq!(cert(CertificateError::NotValidYet), Failure::TlsExpired);
        assert_eq!(cert(CertificateError::BadSignature), Failure::TlsBadCertificate);
        assert_eq!(Failure::of_error(&tls(TlsError::HandshakeNotComplete)), Failure::TlsHandshake);
        // The io::Error's own source() does not lead there: only get_ref() does.
        let hidden = tls(TlsError::InvalidCertificate(CertificateError::UnknownIssuer));
        assert!(hidden.source().and_then(|s| s.source()).is_none());
        for f in [Failure::TlsUnknownIssuer, Failure::TlsNameMismatch, Failure::TlsExpired, Failure::TlsBadCertificate]
        {
            assert!(f.is_certificate(), "{f:?}");
        }
        assert!(!Failure::TlsHandshake.is_certificate() && !Failure::Refused.is_certificate());
    }

    #[test]
    fn connection_failures_by_their_io_error_and_dns_by_the_connector_message() {
        assert_eq!(Failure::of_error(&connect(io::ErrorKind::ConnectionRefused)), Failure::Refused);
        assert_eq!(Failure::of_error(&connect(io::ErrorKind::TimedOut)), Failure::ConnectTimeout);
        assert_eq!(Failure::of_error(&connect(io::ErrorKind::ConnectionReset)), Failure::Reset);
        assert_eq!(Failure::of_error(&connect(io::ErrorKind::UnexpectedEof)), Failure::Reset);
        let dns = Wrap("client error (Connect)", Box::new(Wrap("dns error", Box::new(io::Error::other("nope")))));
        assert_eq!(Failure::of_error(&dns), Failure::Dns);
        assert_eq!(Failure::of_error(&io::Error::other("what")), Failure::Other);
        assert_eq!(Failure::of_error(&h2::Error::from(h2::Reason::INTERNAL_ERROR)), Failure::Reset);
    }

    #[test]
    fn statuses_and_labels() {
        assert_eq!(Failure::of_status(503), Failure::Http5xx);
        assert_eq!(Failure::of_status(500), Failure::Http5xx);
        assert_eq!(Failure::of_status(408), Failure::Http408);
        let labels: Vec<&str> = Failure::ALL.iter().map(|f| f.label()).collect();
        assert_eq!(labels, crate::telemetry::FAILURE_REASONS, "the labels registered at zero");
    }
}
