//! The transport: one pooled HTTP client (hyper-util over hyper-rustls), HTTP/2 by ALPN where
//! offered, HTTP/1.1 keep-alive otherwise.
//!
//! It knows nothing of the spool: dispatch builds each [`Request`] (headers, body and its
//! encoding), and this module only sends it, times it out and turns every answer or error into an
//! [`Outcome`] with [`classify()`], a pure function the dispatcher and the tests call directly; a
//! failure also says why, as a [`Failure`] with a stable label.

mod classify;
mod client;
mod coalesce;
mod failure;
mod limit;
mod request;

pub use classify::{classify, Outcome};
pub use client::{Attempt, ExchangeError, UpstreamClient, UpstreamError};
pub use failure::Failure;
pub use request::{Body, OutBody, Request};
