//! Pure Sentry ingestion protocol: DSNs and auth, envelopes, legacy store bodies, data categories and
//! rate-limit headers.
//!
//! Nothing here does I/O or knows about the rest of the crate, so every function can be unit tested
//! (and fuzzed) on plain byte slices. The parsers borrow from the request body and never copy or
//! text-decode item payloads: the sidecar forwards what the SDK sent.

pub mod category;
pub mod dsn;
pub mod endpoint;
pub mod envelope;
pub mod envelope_stream;
pub mod rate_limits;
pub mod rewrite;
pub mod store;

pub use category::{Categories, DataCategory};
pub use dsn::{Auth, AuthError, Dsn};
pub use endpoint::Endpoint;
pub use envelope::{Envelope, EnvelopeError, ItemType};
pub use envelope_stream::{EnvelopeFacts, EnvelopeStream};
pub use rate_limits::{RateLimit, Scope};
