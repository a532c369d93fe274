//! Zero-copy envelope parser.
//!
//! `Envelope = Header { "\n" Item } [ "\n" ]`, `Item = ItemHeader "\n" Payload`. Only the envelope header
//! and the item headers are parsed (each is one line of JSON); payloads are byte ranges into the
//! original [`Bytes`], never copied or text-decoded, because attachments and replay recordings are
//! binary and the sidecar must forward them byte for byte. Unknown item types and header keys are
//! kept simply by never rewriting the body.

use std::borrow::Cow;
use std::ops::Range;

use bytes::Bytes;
use serde::Deserialize;

use super::category::{Categories, DataCategory};

/// Why an envelope was refused (all map to 400, except the size limits which map to 413).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// The body is empty.
    #[error("empty envelope")]
    Empty,
    /// The first line is not a JSON object.
    #[error("invalid envelope header: {0}")]
    InvalidHeader(String),
    /// `event_id` is not 32 hex digits or a dashed UUID.
    #[error("invalid event_id in envelope header")]
    InvalidEventId,
    /// An item header line is not a JSON object with a `type`.
    #[error("invalid item header at byte {offset}: {reason}")]
    InvalidItemHeader {
        /// Offset of the item header in the body.
        offset: usize,
        /// What serde said.
        reason: String,
    },
    /// An item's `length` runs past the end of the body.
    #[error("item length {length} at byte {offset} exceeds the envelope")]
    LengthOverflow {
        /// Offset of the payload.
        offset: usize,
        /// The declared length.
        length: u64,
    },
    /// A payload with `length` is not followed by a newline or the end of the body.
    #[error("missing newline after item payload at byte {0}")]
    MissingNewline(usize),
    /// Two items of a kind Sentry accepts only once per envelope.
    #[error("duplicate item of type {0}")]
    DuplicateItem(&'static str),
    /// `event` and `transaction` in one envelope.
    #[error("an envelope cannot hold both an event and a transaction")]
    EventAndTransaction,
    /// An item over Sentry's per-type size limit.
    #[error("{ty} item of {size} bytes exceeds the limit of {limit} bytes")]
    ItemTooLarge {
        /// The item type.
        ty: &'static str,
        /// Its payload size.
        size: usize,
        /// The limit for that type.
        limit: usize,
    },
}

impl EnvelopeError {
    /// Whether this is a size violation (413) rather than malformed input (400).
    pub fn is_too_large(&self) -> bool {
        matches!(self, EnvelopeError::ItemTooLarge { .. })
    }
}

macro_rules! item_types {
    ($($variant:ident => $name:literal, $once:expr, $limit:expr;)*) => {
        /// The item types Sentry defines; anything else is `Other` and forwarded unchanged.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum ItemType {
            $(#[doc = $name] $variant,)*
            /// An item type this build does not know.
            Other(Box<str>),
        }

        impl ItemType {
            pub(super) fn from_name(s: &str) -> ItemType {
                match s { $($name => ItemType::$variant,)* other => ItemType::Other(other.into()) }
            }

            /// The wire name.
            pub fn name(&self) -> &str {
                match self { $(ItemType::$variant => $name,)* ItemType::Other(s) => s }
            }

            pub(super) fn static_name(&self) -> &'static str {
                match self { $(ItemType::$variant => $name,)* ItemType::Other(_) => "other" }
            }

            /// Whether Sentry accepts at most one item of this type per envelope.
            pub(super) fn only_once(&self) -> bool {
                match self { $(ItemType::$variant => $once,)* ItemType::Other(_) => false }
            }

            /// Sentry's size limit for one item of this type, in bytes.
            pub(super) fn size_limit(&self) -> Option<usize> {
                match self { $(ItemType::$variant => $limit,)* ItemType::Other(_) => None }
            }
        }
    };
}

const MIB: usize = 1024 * 1024;

item_types! {
    Event => "event", true, Some(MIB);
    Transaction => "transaction", true, Some(MIB);
    Security => "security", false, Some(MIB);
    RawSecurity => "raw_security", false, Some(MIB);
    Nel => "nel", false, Some(MIB);
    Attachment => "attachment", false, None;
    FormData => "form_data", false, None;
    Session => "session", false, None;
    Sessions => "sessions", false, None;
    ClientReport => "client_report", false, Some(4 * 1024);
    UserReport => "user_report", false, None;
    Feedback => "feedback", true, Some(MIB);
    CheckIn => "check_in", true, Some(100 * 1024);
    Profile => "profile", true, None;
    ProfileChunk => "profile_chunk", false, None;
    ReplayEvent => "replay_event", true, None;
    ReplayRecording => "replay_recording", true, None;
    ReplayVideo => "replay_video", true, None;
    Log => "log", true, Some(MIB);
    OtelLog => "otel_log", false, Some(MIB);
    Span => "span", true, Some(MIB);
    OtelSpan => "otel_span", false, Some(MIB);
    TraceMetric => "trace_metric", true, Some(MIB);
    Statsd => "statsd", false, Some(MIB);
    MetricBuckets => "metric_buckets", false, Some(MIB);
    UnrealReport => "unreal_report", false, None;
}

/// One item: its type and where its header and payload sit in the body.
#[derive(Debug, Clone)]
pub struct Item {
    /// The item's `type`.
    pub ty: ItemType,
    /// The item header line (without its newline).
    pub header: Range<usize>,
    /// The payload bytes.
    pub payload: Range<usize>,
    /// The `platform` item header, which decides a profile chunk's category.
    pub ui_platform: bool,
}

/// A parsed envelope: the original bytes plus what was read from the header lines.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The whole body, as received (after content decoding).
    pub bytes: Bytes,
    /// The envelope header line (without its newline).
    pub header: Range<usize>,
    /// `event_id`, as written (32 hex digits or a dashed UUID).
    pub event_id: Option<String>,
    /// `dsn`, used by the browser tunnel and as an auth source.
    pub dsn: Option<String>,
    /// `sent_at`, as written.
    pub sent_at: Option<String>,
    /// The items in order.
    pub items: Vec<Item>,
}

#[derive(Deserialize)]
pub(super) struct RawHeader<'a> {
    #[serde(borrow, default)]
    pub(super) event_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) dsn: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) sent_at: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(super) struct RawItemHeader<'a> {
    #[serde(borrow, rename = "type")]
    pub(super) ty: Cow<'a, str>,
    #[serde(default)]
    pub(super) length: Option<u64>,
    #[serde(borrow, default)]
    pub(super) platform: Option<Cow<'a, str>>,
}

fn line_end(buf: &[u8], from: usize) -> usize {
    buf[from..].iter().position(|&b| b == b'\n').map_or(buf.len(), |i| from + i)
}

pub(super) fn is_json_object(line: &[u8]) -> bool {
    line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Whether `id` is 32 hex digits or a dashed UUID (8-4-4-4-12).
pub fn is_valid_event_id(id: &str) -> bool {
    let b = id.as_bytes();
    match b.len() {
        32 => b.iter().all(u8::is_ascii_hexdigit),
        36 => b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        }),
        _ => false,
    }
}

impl Envelope {
    /// Parses an envelope body, validating the grammar and Sentry's per-envelope rules.
    pub fn parse(bytes: Bytes) -> Result<Envelope, EnvelopeError> {
        let buf = &bytes[..];
        if buf.is_empty() {
            return Err(EnvelopeError::Empty);
        }
        let header_end = line_end(buf, 0);
        let header_line = &buf[..header_end];
        if !is_json_object(header_line) {
            return Err(EnvelopeError::InvalidHeader("not a JSON object".into()));
        }
        let raw: RawHeader<'_> =
            serde_json::from_slice(header_line).map_err(|e| EnvelopeError::InvalidHeader(e.to_string()))?;
        if let Some(id) = &raw.event_id {
            if !is_valid_event_id(id) {
                return Err(EnvelopeError::InvalidEventId);
            }
        }
        let event_id = raw.event_id.map(Cow::into_owned);
        let dsn = raw.dsn.map(Cow::into_owned);
        let sent_at = raw.sent_at.map(Cow::into_owned);

        let mut items = Vec::new();
        let mut pos = (header_end + 1).min(buf.len());
        while pos < buf.len() {
            let item_start = pos;
            let h_end = line_end(buf, pos);
            let h_line = &buf[pos..h_end];
            let bad_header = |reason: String| EnvelopeError::InvalidItemHeader { offset: item_start, reason };
            if !is_json_object(h_line) {
                return Err(bad_header("not a JSON object".into()));
            }
            let raw: RawItemHeader<'_> = serde_json::from_slice(h_line).map_err(|e| bad_header(e.to_string()))?;
            let payload_start = (h_end + 1).min(buf.len());
            let payload = match raw.length {
                Some(length) => {
                    let end = usize::try_from(length)
                        .ok()
                        .and_then(|l| payload_start.checked_add(l))
                        .filter(|end| *end <= buf.len())
                        .ok_or(EnvelopeError::LengthOverflow { offset: payload_start, length })?;
                    match buf.get(end) {
                        None | Some(b'\n') => {}
                        Some(_) => return Err(EnvelopeError::MissingNewline(end)),
                    }
                    payload_start..end
                }
                None => payload_start..line_end(buf, payload_start),
            };
            pos = payload.end + 1;
            let ty = ItemType::from_name(&raw.ty);
            let ui_platform = matches!(raw.platform.as_deref(), Some("cocoa" | "android" | "javascript"));
            items.push(Item { ty, header: item_start..h_end, payload, ui_platform });
        }
        let env = Envelope { bytes, header: 0..header_end, event_id, dsn, sent_at, items };
        env.check_rules()?;
        Ok(env)
    }

    fn check_rules(&self) -> Result<(), EnvelopeError> {
        let mut seen: Vec<&ItemType> = Vec::new();
        for item in &self.items {
            if let Some(limit) = item.ty.size_limit() {
                let size = item.payload.len();
                if size > limit {
                    return Err(EnvelopeError::ItemTooLarge { ty: item.ty.static_name(), size, limit });
                }
            }
            if item.ty.only_once() {
                if seen.contains(&&item.ty) {
                    return Err(EnvelopeError::DuplicateItem(item.ty.static_name()));
                }
                seen.push(&item.ty);
            }
        }
        if seen.contains(&&ItemType::Event) && seen.contains(&&ItemType::Transaction) {
            return Err(EnvelopeError::EventAndTransaction);
        }
        Ok(())
    }

    /// The bytes of one item's payload (a cheap slice of the body).
    pub fn payload(&self, item: &Item) -> Bytes {
        self.bytes.slice(item.payload.clone())
    }

    /// The data categories of everything in the envelope (what rate limits apply to).
    pub fn categories(&self) -> Categories {
        let mut set = Categories::EMPTY;
        for item in &self.items {
            for c in item_categories(&item.ty, item.ui_platform) {
                set.insert(*c);
            }
        }
        set
    }
}

/// The data categories an item is rate limited by: its primary categories, as Relay assigns them
/// (an event is `error`, a transaction `transaction`, ...).
pub fn item_categories(ty: &ItemType, ui_platform: bool) -> &'static [DataCategory] {
    use DataCategory as C;
    match ty {
        ItemType::Event => &[C::Error],
        // The primary category only: a limit on `span` must not hold back a whole transaction, and
        // a limit on `transaction` holds it (with its spans) as Sentry would drop it.
        ItemType::Transaction => &[C::Transaction],
        ItemType::Attachment => &[C::Attachment],
        ItemType::Session | ItemType::Sessions => &[C::Session],
        ItemType::UserReport | ItemType::Feedback => &[C::Feedback],
        ItemType::CheckIn => &[C::Monitor],
        ItemType::Profile => &[C::Profile],
        ItemType::ProfileChunk if ui_platform => &[C::ProfileChunkUi],
        ItemType::ProfileChunk => &[C::ProfileChunk],
        ItemType::ReplayEvent | ItemType::ReplayRecording | ItemType::ReplayVideo => &[C::Replay],
        ItemType::Log | ItemType::OtelLog => &[C::LogItem],
        ItemType::Span | ItemType::OtelSpan => &[C::Span],
        ItemType::TraceMetric => &[C::TraceMetric],
        ItemType::Security | ItemType::RawSecurity => &[C::Security],
        ItemType::Statsd | ItemType::MetricBuckets => &[C::MetricBucket],
        ItemType::ClientReport | ItemType::FormData | ItemType::Nel | ItemType::UnrealReport | ItemType::Other(_) => {
            &[]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[u8]) -> Result<Envelope, EnvelopeError> {
        Envelope::parse(Bytes::copy_from_slice(s))
    }

    #[test]
    fn items_with_and_without_length() {
        let body = b"{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\",\"dsn\":\"https://e12d836b15bb49d7bbf99e64295d995b@sentry.io/42\"}\n\
{\"type\":\"attachment\",\"length\":10,\"content_type\":\"text/plain\",\"filename\":\"hello.txt\"}\n\
\xef\xbb\xbfHello\r\n\n\
{\"type\":\"event\",\"content_type\":\"application/json\",\"filename\":\"application.log\"}\n\
{\"message\":\"hello world\",\"level\":\"error\"}\n";
        let env = parse(body).unwrap();
        assert_eq!(env.event_id.as_deref(), Some("9ec79c33ec9942ab8353589fcb2e04dc"));
        assert!(env.dsn.is_some());
        assert_eq!(env.items.len(), 2);
        assert_eq!(env.items[0].ty, ItemType::Attachment);
        assert_eq!(&env.payload(&env.items[0])[..], b"\xef\xbb\xbfHello\r\n");
        assert_eq!(env.items[1].ty, ItemType::Event);
        assert_eq!(&env.payload(&env.items[1])[..], b"{\"message\":\"hello world\",\"level\":\"error\"}");
        assert_eq!(format!("{:?}", env.categories()), r#"{"error", "attachment"}"#);
    }

    #[test]
    fn no_trailing_newline_and_empty_payloads() {
        let env = parse(b"{}\n{\"type\":\"session\"}\n{\"sid\":1}").unwrap();
        assert_eq!(env.items.len(), 1);
        assert_eq!(&env.payload(&env.items[0])[..], b"{\"sid\":1}");
        let env = parse(b"{}\n{\"type\":\"attachment\",\"length\":0}").unwrap();
        assert_eq!(env.items[0].payload.len(), 0);
        let env = parse(b"{}\n{\"type\":\"attachment\",\"length\":0}\n\n{\"type\":\"attachment\"}\n\n").unwrap();
        assert_eq!(env.items.len(), 2);
        let env = parse(b"{}").unwrap();
        assert!(env.items.is_empty());
        let env = parse(b"{}\n").unwrap();
        assert!(env.items.is_empty());
    }

    #[test]
    fn unknown_types_and_keys_are_kept() {
        let env = parse(b"{\"x\":{\"y\":1}}\n{\"type\":\"brand_new\",\"foo\":true,\"length\":3}\nabc\n").unwrap();
        assert_eq!(env.items[0].ty, ItemType::Other("brand_new".into()));
        assert_eq!(env.items[0].ty.name(), "brand_new");
        assert!(env.categories().is_empty());
    }

    #[test]
    fn dashed_and_plain_event_ids() {
        assert!(parse(b"{\"event_id\":\"c72dfba5-18ff-48fa-ae42-2b3759e7ba81\"}\n").is_ok());
        assert_eq!(parse(b"{\"event_id\":\"nope\"}\n").unwrap_err(), EnvelopeError::InvalidEventId);
        assert!(is_valid_event_id("C72DFBA518FF48FAAE422B3759E7BA81"));
        assert!(!is_valid_event_id("c72dfba5-18ff-48fa-ae42-2b3759e7ba8-"));
    }

    #[test]
    fn malformed_envelopes() {
        use EnvelopeError as E;
        assert_eq!(parse(b"").unwrap_err(), E::Empty);
        assert!(matches!(parse(b"[1,2]\n").unwrap_err(), E::InvalidHeader(_)));
        assert!(matches!(parse(b"{\"sent_at\":\"a\",\"sent_at\":\"b\"}").unwrap_err(), E::InvalidHeader(_)));
        assert!(matches!(parse(b"{}\n{\"length\":1}\na").unwrap_err(), E::InvalidItemHeader { .. }));
        assert!(matches!(parse(b"{}\nnot json\n").unwrap_err(), E::InvalidItemHeader { .. }));
        assert!(matches!(parse(b"{}\n{\"type\":\"event\",\"length\":100}\n{}").unwrap_err(), E::LengthOverflow { .. }));
        assert!(matches!(parse(b"{}\n{\"type\":\"attachment\",\"length\":1}\nabc").unwrap_err(), E::MissingNewline(_)));
        assert!(matches!(
            parse(b"{}\n{\"type\":\"attachment\",\"length\":1}\na\n\n").unwrap_err(),
            E::InvalidItemHeader { .. }
        ));
        assert_eq!(
            parse(b"{}\n{\"type\":\"event\"}\n{}\n{\"type\":\"event\"}\n{}").unwrap_err(),
            E::DuplicateItem("event")
        );
        assert_eq!(
            parse(b"{}\n{\"type\":\"event\"}\n{}\n{\"type\":\"transaction\"}\n{}").unwrap_err(),
            E::EventAndTransaction
        );
        assert!(parse(b"{}\n{\"type\":\"event\",\"length\":18446744073709551615}\n").is_err());
    }

    #[test]
    fn item_size_limits() {
        let mut body = b"{}\n{\"type\":\"client_report\"}\n".to_vec();
        body.extend(std::iter::repeat_n(b'x', 5000));
        let err = parse(&body).unwrap_err();
        assert!(err.is_too_large());
    }
}
