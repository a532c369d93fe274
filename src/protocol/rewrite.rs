//! The only changes the sidecar makes to what it forwards: shifting the envelope header's
//! `sent_at` (or a store request's `sentry_timestamp`) by the time the envelope spent in the
//! sidecar. Sentry corrects client clock drift by `received_at - sent_at`; without the shift, every
//! timestamp of a buffered event would move by the time it waited in the spool.
//!
//! It lives with the protocol facts because it is pure text work on the wire format (no I/O, no
//! knowledge of the spool); dispatch calls it while building the request. Only the header line is
//! rewritten, with every other header value kept as raw JSON text; item bytes are never touched.
//! Delays under a second are left alone: they are below Sentry's drift threshold and not worth a
//! copy of the body.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Below this, timestamps are not shifted.
pub const MIN_SHIFT: Duration = Duration::from_secs(1);

/// Returns the envelope with `sent_at` moved forward by `elapsed`, or `None` if there is nothing
/// to change (no `sent_at`, an unparsable one, or a shift below [`MIN_SHIFT`]).
pub fn shift_sent_at(envelope: &Bytes, elapsed: Duration) -> Option<Bytes> {
    if elapsed < MIN_SHIFT {
        return None;
    }
    let end = envelope.iter().position(|b| *b == b'\n').unwrap_or(envelope.len());
    let header: BTreeMap<&str, &RawValue> = serde_json::from_slice(&envelope[..end]).ok()?;
    let sent_at: &str = serde_json::from_str(header.get("sent_at")?.get()).ok()?;
    let shifted = shift_rfc3339(sent_at, elapsed)?;
    let shifted_json = serde_json::to_string(&shifted).ok()?;
    let raw = RawValue::from_string(shifted_json).ok()?;
    let mut header = header;
    header.insert("sent_at", &raw);
    let line = serde_json::to_vec(&header).ok()?;
    let mut out = BytesMut::with_capacity(line.len() + envelope.len() - end);
    out.extend_from_slice(&line);
    out.extend_from_slice(&envelope[end..]);
    Some(out.freeze())
}

fn shift_rfc3339(s: &str, by: Duration) -> Option<String> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    let shifted = t.checked_add(time::Duration::try_from(by).ok()?)?;
    shifted.to_offset(time::UtcOffset::UTC).format(&Rfc3339).ok()
}

/// Returns an `X-Sentry-Auth` value with `sentry_timestamp` moved forward by `elapsed`, or `None`
/// if it has none (or the shift is below [`MIN_SHIFT`]).
pub fn shift_auth_timestamp(auth: &str, elapsed: Duration) -> Option<String> {
    if elapsed < MIN_SHIFT {
        return None;
    }
    let key = "sentry_timestamp=";
    let start = auth.find(key)? + key.len();
    let len = auth[start..].find([',', ' ']).unwrap_or(auth.len() - start);
    let old: f64 = auth[start..start + len].parse().ok()?;
    let new = old + elapsed.as_secs_f64();
    Some(format!("{}{:.6}{}", &auth[..start], new, &auth[start + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_at_moves_and_items_stay() {
        let env = Bytes::from_static(
            b"{\"event_id\":\"5afe190d31734655bc997ee41b47bc65\",\"sent_at\":\"2026-11-26T04:48:54.888289Z\",\"trace\":{\"sample_rand\":0.1234567890123}}\n{\"type\":\"event\",\"length\":2}\n{}\n",
        );
        let out = shift_sent_at(&env, Duration::from_secs(90)).unwrap();
        let line_end = out.iter().position(|b| *b == b'\n').unwrap();
        let header: serde_json::Value = serde_json::from_slice(&out[..line_end]).unwrap();
        assert_eq!(header["sent_at"], "2026-11-26T04:50:24.888289Z");
        assert_eq!(header["event_id"], "5afe190d31734655bc997ee41b47bc65");
        assert!(std::str::from_utf8(&out[..line_end]).unwrap().contains("0.1234567890123"), "raw values kept");
        assert_eq!(&out[line_end..], &env[env.iter().position(|b| *b == b'\n').unwrap()..]);
        // Offsets other than Z are understood.
        let env = Bytes::from_static(b"{\"sent_at\":\"2026-11-26T05:00:00+01:00\"}");
        let out = shift_sent_at(&env, Duration::from_secs(5)).unwrap();
        assert_eq!(&out[..], b"{\"sent_at\":\"2026-11-26T04:00:05Z\"}");
    }

    #[test]
    fn nothing_to_change() {
        let env = Bytes::from_static(b"{\"event_id\":\"5afe190d31734655bc997ee41b47bc65\"}\n");
        assert!(shift_sent_at(&env, Duration::from_secs(60)).is_none(), "absent stays absent");
        let env = Bytes::from_static(b"{\"sent_at\":\"2026-11-26T04:48:54Z\"}\n");
        assert!(shift_sent_at(&env, Duration::from_millis(20)).is_none());
        let env = Bytes::from_static(b"{\"sent_at\":\"yesterday\"}\n");
        assert!(shift_sent_at(&env, Duration::from_secs(60)).is_none());
    }

    #[test]
    fn store_timestamp() {
        let a = "Sentry sentry_timestamp=1795668549.2030363, sentry_client=raven-python/6.10.0, sentry_version=6, sentry_key=k";
        let out = shift_auth_timestamp(a, Duration::from_secs(10)).unwrap();
        assert_eq!(out, "Sentry sentry_timestamp=1795668559.203036, sentry_client=raven-python/6.10.0, sentry_version=6, sentry_key=k");
        assert!(shift_auth_timestamp("Sentry sentry_key=k", Duration::from_secs(10)).is_none());
        let b = "Sentry sentry_key=k,sentry_timestamp=100";
        assert_eq!(
            shift_auth_timestamp(b, Duration::from_secs(2)).unwrap(),
            "Sentry sentry_key=k,sentry_timestamp=102.000000"
        );
    }
}
