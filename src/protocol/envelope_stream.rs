//! The envelope grammar and Sentry's per-envelope rules, checked on a body fed in pieces as it
//! streams through (a large upload is never whole in memory): the same checks, the same errors
//! and the same facts (event id, dsn, `sent_at`, item types, data categories) as
//! [`Envelope::parse`](super::Envelope::parse) gives on the whole body.
//!
//! Only header lines are buffered (each up to [`MAX_LINE`]; a longer one is refused, where the
//! whole-body parser would read it), payloads are counted, not kept. As in the whole-body parser,
//! a grammar error anywhere wins over a rule error (an item too large, a duplicate), which wins
//! over an event and a transaction in one envelope.

use std::borrow::Cow;

use super::category::Categories;
use super::envelope::{is_json_object, is_valid_event_id, item_categories, RawHeader, RawItemHeader};
use super::{Envelope, EnvelopeError, ItemType};

/// The longest envelope or item header line a streamed envelope may have (real ones are well
/// under a kilobyte): header lines are the only part held in memory.
pub const MAX_LINE: usize = 64 * 1024;

/// Item types recorded per envelope (for the capture log and logs); an envelope of more items
/// is still checked item by item, only their names past this are not kept.
const ITEM_TYPES_KEPT: usize = 1000;

/// What a valid envelope says of itself: what ingest needs to store and route it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeFacts {
    /// `event_id`, as written.
    pub event_id: Option<String>,
    /// `dsn`, as written.
    pub dsn: Option<String>,
    /// `sent_at`, as written.
    pub sent_at: Option<String>,
    /// The item types in order (the first [`ITEM_TYPES_KEPT`]).
    pub item_types: Vec<String>,
    /// The data categories of all items.
    pub categories: Categories,
}

impl EnvelopeFacts {
    /// The facts of an envelope parsed whole.
    pub fn of(env: &Envelope) -> EnvelopeFacts {
        EnvelopeFacts::from_parsed(env.clone()).0
    }

    /// The facts of an envelope parsed whole, and its bytes, moving its strings out (ingest's
    /// path for every small envelope: nothing is copied but the item type names).
    pub fn from_parsed(env: Envelope) -> (EnvelopeFacts, bytes::Bytes) {
        let facts = EnvelopeFacts {
            item_types: env.items.iter().take(ITEM_TYPES_KEPT).map(|i| i.ty.name().to_owned()).collect(),
            categories: env.categories(),
            event_id: env.event_id,
            dsn: env.dsn,
            sent_at: env.sent_at,
        };
        (facts, env.bytes)
    }
}

/// Where the validator is in the body.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading the envelope header line.
    Header,
    /// Reading an item header line (`started`: at least one byte of it came).
    ItemHeader { started: bool },
    /// Counting a payload of declared length: `left` bytes to go.
    Payload { left: u64 },
    /// After a payload of declared length: a newline or the end must follow.
    AfterPayload,
    /// A payload without a length: up to the next newline.
    LinePayload,
}

/// The item being read.
#[derive(Debug)]
struct Current {
    ty: ItemType,
    ui_platform: bool,
    payload_start: u64,
    length: Option<u64>,
}

/// An envelope checked as it streams: [`EnvelopeStream::feed`] each piece in order, then
/// [`EnvelopeStream::finish`].
#[derive(Debug)]
pub struct EnvelopeStream {
    /// Bytes fed so far (the offset of the next byte).
    pos: u64,
    state: State,
    line: Vec<u8>,
    line_start: u64,
    cur: Option<Current>,
    facts: EnvelopeFacts,
    /// Only-once item types seen so far.
    seen: Vec<ItemType>,
    /// The first rule broken, in item order.
    rule_error: Option<EnvelopeError>,
    /// The first grammar error: once set, the rest is not looked at.
    error: Option<EnvelopeError>,
}

impl Default for EnvelopeStream {
    fn default() -> Self {
        EnvelopeStream::new()
    }
}

impl EnvelopeStream {
    /// A validator at the start of a body.
    pub fn new() -> EnvelopeStream {
        EnvelopeStream {
            pos: 0,
            state: State::Header,
            line: Vec::new(),
            line_start: 0,
            cur: None,
            facts: EnvelopeFacts {
                event_id: None,
                dsn: None,
                sent_at: None,
                item_types: Vec::new(),
                categories: Categories::EMPTY,
            },
            seen: Vec::new(),
            rule_error: None,
            error: None,
        }
    }

    /// The grammar error found so far, if any (the body can be refused before its end).
    pub fn error(&self) -> Option<&EnvelopeError> {
        self.error.as_ref()
    }

    /// Checks the next piece of the body.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.error.is_none() {
            let used = match self.state {
                State::Header | State::ItemHeader { .. } => self.header_bytes(data),
                State::Payload { left } => {
                    let n = usize::try_from(left).map_or(data.len(), |l| l.min(data.len()));
                    let left = left - n as u64;
                    self.state = if left == 0 { State::AfterPayload } else { State::Payload { left } };
                    n
                }
                State::AfterPayload => {
                    if data[0] == b'\n' {
                        self.end_item(self.pos);
                        self.state = State::ItemHeader { started: false };
                    } else {
                        self.error = Some(EnvelopeError::MissingNewline(self.offset(self.pos)));
                    }
                    1
                }
                State::LinePayload => match data.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.end_item(self.pos + i as u64);
                        self.state = State::ItemHeader { started: false };
                        i + 1
                    }
                    None => data.len(),
                },
            };
            self.pos += used as u64;
            data = &data[used..];
        }
    }

    /// The envelope's facts once the whole body was fed, or why it is refused.
    pub fn finish(mut self) -> Result<EnvelopeFacts, EnvelopeError> {
        if self.error.is_none() {
            match self.state {
                State::Header if self.pos == 0 => return Err(EnvelopeError::Empty),
                State::Header => self.header_line(),
                State::ItemHeader { started: false } => {}
                State::ItemHeader { started: true } => {
                    self.item_header_line(false);
                    // The header ran to the end: the payload is empty, or overruns.
                    if self.error.is_none() {
                        self.end_at_eof();
                    }
                }
                State::Payload { .. } | State::AfterPayload | State::LinePayload => self.end_at_eof(),
            }
        }
        if let Some(e) = self.error.or(self.rule_error) {
            return Err(e);
        }
        if self.seen.contains(&ItemType::Event) && self.seen.contains(&ItemType::Transaction) {
            return Err(EnvelopeError::EventAndTransaction);
        }
        Ok(self.facts)
    }

    fn offset(&self, at: u64) -> usize {
        usize::try_from(at).unwrap_or(usize::MAX)
    }

    /// Bytes of a header line (envelope or item); returns how many of `data` it took.
    fn header_bytes(&mut self, data: &[u8]) -> usize {
        if let State::ItemHeader { started: false } = self.state {
            self.state = State::ItemHeader { started: true };
            self.line_start = self.pos;
        }
        let (take, done) = match data.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (data.len(), false),
        };
        if self.line.len() + take > MAX_LINE {
            let reason = format!("header line longer than {MAX_LINE} bytes");
            self.error = Some(match self.state {
                State::Header => EnvelopeError::InvalidHeader(reason),
                _ => EnvelopeError::InvalidItemHeader { offset: self.offset(self.line_start), reason },
            });
            return data.len();
        }
        self.line.extend_from_slice(&data[..take]);
        if !done {
            return take;
        }
        match self.state {
            State::Header => {
                self.header_line();
                self.state = State::ItemHeader { started: false };
            }
            _ => self.item_header_line(true),
        }
        take + 1
    }

    /// The envelope header line, whole in `line`.
    fn header_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        if !is_json_object(&line) {
            self.error = Some(EnvelopeError::InvalidHeader("not a JSON object".into()));
            return;
        }
        let raw: RawHeader<'_> = match serde_json::from_slice(&line) {
            Ok(r) => r,
            Err(e) => {
                self.error = Some(EnvelopeError::InvalidHeader(e.to_string()));
                return;
            }
        };
        if raw.event_id.as_deref().is_some_and(|id| !is_valid_event_id(id)) {
            self.error = Some(EnvelopeError::InvalidEventId);
            return;
        }
        self.facts.event_id = raw.event_id.map(Cow::into_owned);
        self.facts.dsn = raw.dsn.map(Cow::into_owned);
        self.facts.sent_at = raw.sent_at.map(Cow::into_owned);
    }

    /// An item header line, whole in `line`; `newline`: it ended with one (else at the end).
    fn item_header_line(&mut self, newline: bool) {
        let line = std::mem::take(&mut self.line);
        let offset = self.offset(self.line_start);
        let bad = |reason: String| EnvelopeError::InvalidItemHeader { offset, reason };
        if !is_json_object(&line) {
            self.error = Some(bad("not a JSON object".into()));
            return;
        }
        let raw: RawItemHeader<'_> = match serde_json::from_slice(&line) {
            Ok(r) => r,
            Err(e) => {
                self.error = Some(bad(e.to_string()));
                return;
            }
        };
        // The newline of the header is `pos + take`; the payload starts after it.
        let payload_start = self.line_start + line.len() as u64 + u64::from(newline);
        let ui_platform = matches!(raw.platform.as_deref(), Some("cocoa" | "android" | "javascript"));
        self.cur = Some(Current { ty: ItemType::from_name(&raw.ty), ui_platform, payload_start, length: raw.length });
        self.state = match raw.length {
            Some(0) => State::AfterPayload,
            Some(left) => State::Payload { left },
            None => State::LinePayload,
        };
    }

    /// The body ended inside (or right after) the current item.
    fn end_at_eof(&mut self) {
        match self.state {
            State::Payload { .. } => {
                if let Some(c) = &self.cur {
                    self.error = Some(EnvelopeError::LengthOverflow {
                        offset: self.offset(c.payload_start),
                        length: c.length.unwrap_or(0),
                    });
                }
            }
            State::AfterPayload | State::LinePayload => self.end_item(self.pos),
            _ => {}
        }
    }

    /// The current item's payload ended at `end`: its rules are checked and its facts kept.
    fn end_item(&mut self, end: u64) {
        let Some(c) = self.cur.take() else { return };
        let size = end.saturating_sub(c.payload_start);
        if self.rule_error.is_none() {
            if let Some(limit) = c.ty.size_limit() {
                if size > limit as u64 {
                    let size = usize::try_from(size).unwrap_or(usize::MAX);
                    self.rule_error = Some(EnvelopeError::ItemTooLarge { ty: c.ty.static_name(), size, limit });
                }
            }
        }
        if c.ty.only_once() {
            if self.seen.contains(&c.ty) {
                if self.rule_error.is_none() {
                    self.rule_error = Some(EnvelopeError::DuplicateItem(c.ty.static_name()));
                }
            } else {
                self.seen.push(c.ty.clone());
            }
        }
        for cat in item_categories(&c.ty, c.ui_platform) {
            self.facts.categories.insert(*cat);
        }
        if self.facts.item_types.len() < ITEM_TYPES_KEPT {
            self.facts.item_types.push(c.ty.name().to_owned());
        }
    }
}

#[cfg(test)]
mod tests;
