//! Building the pooled rustls client and sending one request with it: send, time out, classify.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::classify::{classify, Outcome};
use super::failure::Failure;
use super::limit::LimitedConnector;
use super::request::{OutBody, Request};
use crate::config::Config;

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// `--ca-file` could not be read or holds no certificate.
    #[error("cannot load CA file {path}: {message}")]
    CaFile {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration error: {0}")]
    Tls(#[from] rustls::Error),
}

type HttpsClient = Client<LimitedConnector<hyper_rustls::HttpsConnector<HttpConnector>>, OutBody>;

/// One attempt's result: the outcome plus what the answer revealed about the connection.
#[derive(Debug)]
pub struct Attempt {
    /// What to do with the record.
    pub outcome: Outcome,
    /// The HTTP version of the answer (None if there was no answer).
    pub version: Option<http::Version>,
    /// Body bytes sent (as encoded).
    pub sent_bytes: usize,
}

impl Attempt {
    /// An attempt that never reached the wire because its request could not be built: Sentry
    /// would never take it either, so it is rejected for good with `detail` as the reason.
    pub fn rejected(detail: String) -> Attempt {
        Attempt {
            outcome: Outcome::Rejected { status: 0, detail: Some(detail), limits: vec![] },
            version: None,
            sent_bytes: 0,
        }
    }
}

/// The shared upstream client.
pub struct UpstreamClient {
    client: HttpsClient,
    request_timeout: Duration,
}

impl UpstreamClient {
    /// Builds the client: one rustls config (ring provider, webpki roots plus `--ca-file`), ALPN
    /// h2 and http/1.1, pooled connections with an idle timeout below Sentry's.
    pub fn new(cfg: &Config) -> Result<UpstreamClient, UpstreamError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &cfg.ca_file {
            let err = |message: String| UpstreamError::CaFile { path: path.display().to_string(), message };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| err(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(e.to_string()))?;
            if certs.is_empty() {
                return Err(err("no certificate in the file".into()));
            }
            for c in certs {
                roots.add(c).map_err(|e| err(e.to_string()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let connector = LimitedConnector::new(https, cfg.h1_connections.max(1));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.h1_connections.max(1))
            .http2_keep_alive_interval(Some(Duration::from_secs(30)))
            .http2_keep_alive_while_idle(false)
            .build(connector);
        Ok(UpstreamClient { client, request_timeout: cfg.request_timeout })
    }

    /// Sends `req` (adding `Content-Encoding` and `Content-Length` from its body), waits at most the
    /// request timeout and classifies the answer. Never panics on network input.
    pub async fn send(&self, req: Request) -> Attempt {
        let sent_bytes = usize::try_from(req.body.len()).unwrap_or(usize::MAX);
        let req = outgoing(req);
        let fut = async {
            let resp = self.client.request(req).await?;
            let (parts, body) = resp.into_parts();
            // Drain the (small) answer so the connection goes back to the pool.
            let _ = body.collect().await;
            Ok::<_, hyper_util::client::legacy::Error>(parts)
        };
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(Ok(parts)) => Attempt {
                outcome: classify(parts.status, &parts.headers, SystemTime::now()),
                version: Some(parts.version),
                sent_bytes,
            },
            Ok(Err(e)) if unprocessed(&e) => {
                Attempt { outcome: Outcome::Refused { reason: error_chain(&e) }, version: None, sent_bytes }
            }
            Ok(Err(e)) => Attempt {
                outcome: Outcome::Transient { failure: Failure::of_error(&e), reason: error_chain(&e) },
                version: None,
                sent_bytes,
            },
            Err(_) => Attempt {
                outcome: Outcome::Transient { failure: Failure::RequestTimeout, reason: "request timed out".into() },
                version: None,
                sent_bytes,
            },
        }
    }
}

/// Why [`UpstreamClient::exchange`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// No whole answer within the request timeout.
    #[error("no answer within the request timeout")]
    Timeout,
    /// Connect, TLS or protocol failure.
    #[error("{0}")]
    Failed(String),
}

impl UpstreamClient {
    /// Sends `req` like [`UpstreamClient::send`] but hands back the answer itself (its body cut at
    /// `max_body` bytes), for a request passed through to the client as it is.
    pub async fn exchange(&self, req: Request, max_body: usize) -> Result<http::Response<Bytes>, ExchangeError> {
        let req = outgoing(req);
        let fut = async {
            let resp = self.client.request(req).await.map_err(|e| ExchangeError::Failed(error_chain(&e)))?;
            let (parts, body) = resp.into_parts();
            let body = http_body_util::Limited::new(body, max_body)
                .collect()
                .await
                .map_err(|e| ExchangeError::Failed(e.to_string()))?
                .to_bytes();
            Ok(http::Response::from_parts(parts, body))
        };
        tokio::time::timeout(self.request_timeout, fut).await.map_err(|_| ExchangeError::Timeout)?
    }
}

/// The hyper request for `req`, with the framing headers set from its body.
fn outgoing(req: Request) -> http::Request<OutBody> {
    let mut headers = req.headers;
    if let Some(enc) = req.encoding.content_encoding() {
        headers.insert(CONTENT_ENCODING, http::HeaderValue::from_static(enc));
    }
    headers.insert(CONTENT_LENGTH, http::HeaderValue::from(req.body.len()));
    let mut outgoing = http::Request::new(OutBody::from(req.body));
    *outgoing.method_mut() = req.method;
    *outgoing.uri_mut() = req.uri;
    *outgoing.headers_mut() = headers;
    outgoing
}

/// Whether the error says the upstream never processed the request: a `REFUSED_STREAM` reset,
/// or a `GOAWAY` from the upstream that h2 applies only to streams above its last stream id.
fn unprocessed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && (h2.is_go_away() || h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM));
        }
        cur = err.source();
    }
    false
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an h2 client stream ends with when the server does `act` to it (over an in-memory
    /// pipe): the error a real upstream connection would hand back through hyper.
    async fn client_stream_error(act: fn(&mut h2::server::Connection<tokio::io::DuplexStream, Bytes>)) -> h2::Error {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::handshake(server_io).await.unwrap();
            act(&mut conn);
            while let Some(Ok((_, mut respond))) = conn.accept().await {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
            }
        });
        let (mut client, conn) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::post("https://upstream/api/1/envelope/").body(()).unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let err = resp.await.unwrap_err();
        server.abort();
        err
    }

    #[tokio::test]
    async fn refused_and_go_away_streams_count_as_unprocessed() {
        // The server refuses the stream it accepted.
        let refused = client_stream_error(|_| {}).await;
        assert!(unprocessed(&refused), "{refused}");
        // The server goes away before taking any stream: ours is above its last stream id.
        let gone = client_stream_error(|c| c.abrupt_shutdown(h2::Reason::NO_ERROR)).await;
        assert!(gone.is_go_away(), "{gone}");
        assert!(unprocessed(&gone), "{gone}");
        // Found as the source of a wrapping error too (hyper-util wraps hyper wraps h2).
        #[derive(Debug)]
        struct Wrap(h2::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error")
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert!(unprocessed(&Wrap(gone)));
        // Anything else, including a reset for another reason, is a plain transient failure.
        assert!(!unprocessed(&h2::Error::from(h2::Reason::REFUSED_STREAM)), "not from the remote");
        assert!(!unprocessed(&std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
    }
}
