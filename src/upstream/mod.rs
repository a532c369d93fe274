//! The one upstream HTTP client: hyper-util's pooled client over hyper-rustls, HTTP/2 by ALPN where
//! offered, HTTP/1.1 keep-alive otherwise.
//!
//! This module builds requests from spooled records (compressing the body, keeping the SDK's auth,
//! never copying the inbound `Host`) and turns every answer or error into an [`Outcome`] with
//! [`classify`], a pure function the dispatcher and the tests call directly.

mod classify;
mod client;
mod coalesce;
mod limit;
pub mod rewrite;

pub use classify::{classify, Outcome};
pub use client::{UpstreamClient, UpstreamError};
