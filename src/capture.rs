//! The local sink used when no upstream is configured: one JSON line per envelope in
//! `<spool-dir>/capture.jsonl` plus one log line, so a newcomer sees the whole pipeline work with
//! no account and no network.

use std::path::PathBuf;

use base64::Engine;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::spool::Record;

/// The capture sink.
pub struct Capture {
    path: PathBuf,
    file: Mutex<Option<tokio::fs::File>>,
}

impl Capture {
    /// A sink appending to `path` (created on first use).
    pub fn new(path: PathBuf) -> Capture {
        Capture { path, file: Mutex::new(None) }
    }

    /// Where captured envelopes go.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Appends one record as a JSON line and logs it.
    pub async fn write(&self, rec: &Record) -> std::io::Result<()> {
        // A record stored compressed for an upstream that is no longer configured.
        let body = rec.decoded_body()?;
        let received_at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(rec.received_ms) * 1_000_000)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok());
        let mut line = serde_json::json!({
            "received_at": received_at,
            "endpoint": rec.endpoint.name(),
            "project": rec.project_id,
            "public_key": rec.public_key,
            "event_id": rec.event_id,
            "item_types": rec.item_types,
            "bytes": body.len(),
            "path": rec.path_and_query,
        });
        match std::str::from_utf8(&body) {
            Ok(text) => line["body"] = serde_json::Value::from(text),
            Err(_) => {
                line["body_base64"] = serde_json::Value::from(base64::engine::general_purpose::STANDARD.encode(&body))
            }
        }
        let mut bytes = serde_json::to_vec(&line).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        {
            let mut guard = self.file.lock().await;
            if guard.is_none() {
                let f = tokio::fs::OpenOptions::new().create(true).append(true).open(&self.path).await?;
                *guard = Some(f);
            }
            if let Some(f) = guard.as_mut() {
                f.write_all(&bytes).await?;
                f.flush().await?;
            }
        }
        tracing::info!(
            project = rec.project_id,
            event_id = %rec.event_id.as_deref().unwrap_or("-"),
            items = %rec.item_types.join(","),
            bytes = body.len(),
            endpoint = %rec.endpoint.name(),
            "captured"
        );
        Ok(())
    }
}
