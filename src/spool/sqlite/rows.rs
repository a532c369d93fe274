//! How a [`Record`] is laid out in a row and back: the columns, the JSON meta (method, path,
//! headers, keys, stored encoding) and, for bodies above `inline_limit`, the file under `bodies/`
//! that holds the body instead of the row.
//!
//! The meta is written from a borrowed view of the record ([`MetaOut`]) so that encoding copies
//! nothing but the JSON, and read into an owned [`Meta`]; both must keep the same JSON, since
//! spools written by earlier versions are read back after an upgrade.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::protocol::{Categories, Endpoint};
use crate::routing::{Target, UpstreamUrl};
use crate::spool::{Body, BodyFile, Record};

/// The meta column as read back.
#[derive(Serialize, Deserialize)]
pub(super) struct Meta {
    pub(super) endpoint: String,
    pub(super) method: String,
    pub(super) path: String,
    pub(super) headers: Vec<(String, String)>,
    pub(super) project: u64,
    pub(super) key: String,
    #[serde(default)]
    pub(super) event_id: Option<String>,
    #[serde(default)]
    pub(super) items: Vec<String>,
    /// `Content-Encoding` of the stored body (absent: as the SDK sent it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) encoding: Option<String>,
}

/// [`Meta`] as written: borrowed from the record, so encoding copies nothing but the JSON.
#[derive(Serialize)]
struct MetaOut<'a> {
    endpoint: &'a str,
    method: &'a str,
    path: &'a str,
    headers: HeadersOut<'a>,
    project: u64,
    key: &'a str,
    event_id: Option<&'a str>,
    items: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    encoding: Option<&'a str>,
}

/// Header pairs serialized as `[["name","value"],...]`, skipping values that are not UTF-8.
struct HeadersOut<'a>(&'a [(http::HeaderName, http::HeaderValue)]);

impl Serialize for HeadersOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v))))
    }
}

/// The meta column of a record.
pub(super) fn encode_meta(r: &Record) -> Vec<u8> {
    let meta = MetaOut {
        endpoint: r.endpoint.name(),
        method: r.method.as_str(),
        path: &r.path_and_query,
        headers: HeadersOut(&r.headers),
        project: r.project_id,
        key: &r.public_key,
        event_id: r.event_id.as_deref(),
        items: &r.item_types,
        encoding: r.stored_label(),
    };
    serde_json::to_vec(&meta).unwrap_or_default()
}

/// The target column: the upstream's URL, or empty for the capture log.
pub(super) fn target_text(t: &Target) -> &str {
    match t {
        Target::Upstream(u) => u.as_str(),
        Target::Capture => "",
    }
}

/// Where the body file `name` of the spool in `dir` is.
pub(super) fn body_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("bodies").join(name)
}

/// Writes a body kept out of the database; returns the file's name and path. Names carry the
/// time, the process and a per-process sequence, so they do not repeat across restarts.
pub(super) fn write_body_file(dir: &Path, now: u64, seq: &mut u64, body: &[u8]) -> std::io::Result<(String, PathBuf)> {
    let (name, path) = body_file_name(dir, now, seq);
    std::fs::write(&path, body)?;
    Ok((name, path))
}

/// Puts a body file on disk, its data and its name in the directory, before its row commits
/// (`durability = power`: the row's commit is fsync'd, and a row whose file a power loss took
/// could never be sent).
pub(super) fn sync_body_file(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()?;
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// The name and path of the next body file.
pub(super) fn body_file_name(dir: &Path, now: u64, seq: &mut u64) -> (String, PathBuf) {
    *seq += 1;
    let name = format!("{now}-{}-{}.body", std::process::id(), *seq);
    let path = body_path(dir, &name);
    (name, path)
}

/// The columns [`map_row`] reads, in its order.
pub(super) const ROW_COLUMNS: &str = "id, received_ms, attempts, categories, target, meta, body, body_file, size";

/// A row as read, before it is decoded.
pub(super) struct Row {
    pub(super) id: i64,
    pub(super) received_ms: i64,
    pub(super) attempts: i64,
    pub(super) categories: i64,
    pub(super) target: String,
    pub(super) meta: Vec<u8>,
    pub(super) body: Option<Vec<u8>>,
    pub(super) body_file: Option<String>,
}

/// Reads the [`ROW_COLUMNS`] of a result row: the row and its size.
pub(super) fn map_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Row, i64)> {
    Ok((
        Row {
            id: r.get(0)?,
            received_ms: r.get(1)?,
            attempts: r.get(2)?,
            categories: r.get(3)?,
            target: r.get(4)?,
            meta: r.get(5)?,
            body: r.get(6)?,
            body_file: r.get(7)?,
        },
        r.get(8)?,
    ))
}

/// The record of a row, reading its body file if it has one; `None` if anything is unreadable
/// (a missing body file, damaged meta): such a row can never be sent.
pub(super) fn decode_row(dir: &Path, row: Row) -> Option<Record> {
    let meta: Meta = serde_json::from_slice(&row.meta).ok()?;
    let body = match (row.body, &row.body_file) {
        (Some(b), _) => Body::Mem(Bytes::from(b)),
        // Stays a file (sent from it in pieces); a file that is gone makes the row unreadable.
        (None, Some(f)) => {
            let path = body_path(dir, f);
            let len = std::fs::metadata(&path).ok()?.len();
            Body::File(std::sync::Arc::new(BodyFile::kept(path, len)))
        }
        (None, None) => Body::Mem(Bytes::new()),
    };
    let target =
        if row.target.is_empty() { Target::Capture } else { Target::Upstream(UpstreamUrl::parse(&row.target).ok()?) };
    let headers = meta
        .headers
        .into_iter()
        .filter_map(|(k, v)| Some((http::HeaderName::try_from(k).ok()?, http::HeaderValue::try_from(v).ok()?)))
        .collect();
    let (encoding, incompressible) = Record::parse_stored_label(meta.encoding.as_deref())?;
    Some(Record {
        target,
        encoding,
        incompressible,
        endpoint: Endpoint::from_name(&meta.endpoint)?,
        method: http::Method::from_bytes(meta.method.as_bytes()).ok()?,
        path_and_query: meta.path,
        headers,
        body,
        project_id: meta.project,
        public_key: meta.key,
        event_id: meta.event_id,
        categories: Categories(u32::try_from(row.categories).unwrap_or(0)),
        item_types: meta.items,
        received_ms: row.received_ms.max(0) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Encoding;
    use crate::protocol::DataCategory;

    fn rec(body: &'static [u8]) -> Record {
        Record::for_test(body, 1_700_000_000_000)
    }

    /// The borrowed meta encoder writes exactly what the owned `Meta` did, so spools written
    /// before it read back the same, and non-UTF-8 header values are still left out.
    #[test]
    fn meta_is_encoded_as_before() {
        for (event_id, encoding) in [(None, Encoding::Identity), (Some("ab".repeat(16)), Encoding::Gzip)] {
            let mut r = rec(b"{}");
            r.headers = vec![
                (http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-sentry-envelope")),
                (http::HeaderName::from_static("x-odd"), http::HeaderValue::from_bytes(b"\xff\xfe").unwrap()),
                (http::HeaderName::from_static("x-sentry-auth"), http::HeaderValue::from_static("Sentry sentry_key=k")),
            ];
            r.event_id = event_id.clone();
            r.encoding = encoding;
            r.item_types = vec!["event".into(), "attachment".into()];
            let owned = Meta {
                endpoint: r.endpoint.name().to_owned(),
                method: r.method.as_str().to_owned(),
                path: r.path_and_query.clone(),
                headers: vec![
                    ("content-type".into(), "application/x-sentry-envelope".into()),
                    ("x-sentry-auth".into(), "Sentry sentry_key=k".into()),
                ],
                project: r.project_id,
                key: r.public_key.clone(),
                event_id,
                items: r.item_types.clone(),
                encoding: r.stored_label().map(str::to_owned),
            };
            assert_eq!(
                String::from_utf8(encode_meta(&r)).unwrap(),
                String::from_utf8(serde_json::to_vec(&owned).unwrap()).unwrap()
            );
        }
    }

    /// A record written as a row (inline, or with its body in a file) reads back the same.
    #[test]
    fn a_row_decodes_to_the_record_it_was_encoded_from() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bodies")).unwrap();
        let mut r = rec(b"the body");
        r.target = Target::Upstream(UpstreamUrl::parse("https://o1.ingest.sentry.io").unwrap());
        r.headers = vec![(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"))];
        r.event_id = Some("cd".repeat(16));
        r.encoding = Encoding::Gzip;
        r.categories = [DataCategory::Error].into_iter().collect();
        r.item_types = vec!["event".into()];
        let mut seq = 0;
        let (name, path) = write_body_file(dir.path(), 5, &mut seq, r.body.bytes().unwrap()).unwrap();
        assert_eq!((path.clone(), seq), (body_path(dir.path(), &name), 1));
        for (body, body_file) in [(Some(r.body.bytes().unwrap().to_vec()), None), (None, Some(name.clone()))] {
            let row = Row {
                id: 7,
                received_ms: r.received_ms as i64,
                attempts: 0,
                categories: i64::from(r.categories.0),
                target: target_text(&r.target).to_owned(),
                meta: encode_meta(&r),
                body,
                body_file,
            };
            let back = decode_row(dir.path(), row).unwrap();
            assert_eq!(back.target, r.target);
            assert_eq!((back.endpoint, &back.method, &back.path_and_query), (r.endpoint, &r.method, &r.path_and_query));
            assert_eq!(back.headers, r.headers);
            let back_body = match &back.body {
                Body::Mem(b) => b.clone(),
                Body::File(f) => Bytes::from(std::fs::read(f.path()).unwrap()),
            };
            assert_eq!(
                (&back_body, back.encoding, back.incompressible),
                (r.body.bytes().unwrap(), r.encoding, r.incompressible)
            );
            assert_eq!((back.project_id, &back.public_key, &back.event_id), (r.project_id, &r.public_key, &r.event_id));
            assert_eq!(
                (back.categories.0, &back.item_types, back.received_ms),
                (r.categories.0, &r.item_types, r.received_ms)
            );
        }
        // A body file that is gone makes the row unreadable, not an empty record.
        std::fs::remove_file(&path).unwrap();
        let row = Row {
            id: 7,
            received_ms: 1,
            attempts: 0,
            categories: 0,
            target: String::new(),
            meta: encode_meta(&r),
            body: None,
            body_file: Some(name),
        };
        assert!(decode_row(dir.path(), row).is_none());
    }
}
