//! The local sink used when no upstream is configured: one JSON line per envelope in
//! `<spool-dir>/capture.jsonl` plus one log line, so a newcomer sees the whole pipeline work with
//! no account and no network.
//!
//! A body that ingest kept in a file (over 1 MiB) is not put in the line: it is decoded as a
//! stream into a file of its own under `<spool-dir>/captured/`, which the line names, so that a
//! crash storm of minidumps in capture mode costs disk, not memory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::spool::Record;

/// The capture sink.
pub struct Capture {
    path: PathBuf,
    file: Mutex<Option<tokio::fs::File>>,
    /// Names the files of large bodies.
    seq: AtomicU64,
}

impl Capture {
    /// A sink appending to `path` (created on first use).
    pub fn new(path: PathBuf) -> Capture {
        Capture { path, file: Mutex::new(None), seq: AtomicU64::new(0) }
    }

    /// Where captured envelopes go.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Appends one record as a JSON line and logs it.
    pub async fn write(&self, rec: &Record) -> std::io::Result<()> {
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
            "path": rec.path_and_query,
        });
        let size = match rec.decoded_file()? {
            Some(reader) => {
                let dir = self.path.parent().unwrap_or(std::path::Path::new(".")).join("captured");
                let n = self.seq.fetch_add(1, Ordering::Relaxed);
                let dest = dir.join(format!("{}-{}-{n}.body", rec.received_ms, std::process::id()));
                let to = dest.clone();
                let size = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
                    std::fs::create_dir_all(&dir)?;
                    let mut reader = reader;
                    std::io::copy(&mut reader, &mut std::fs::File::create(&to)?)
                })
                .await
                .map_err(std::io::Error::other)??;
                line["body_file"] = serde_json::Value::from(dest.to_string_lossy().into_owned());
                size
            }
            None => {
                // A record stored compressed for an upstream that is no longer configured.
                let body = rec.decoded_body()?;
                match std::str::from_utf8(&body) {
                    Ok(text) => line["body"] = serde_json::Value::from(text),
                    Err(_) => {
                        line["body_base64"] =
                            serde_json::Value::from(base64::engine::general_purpose::STANDARD.encode(&body))
                    }
                }
                body.len() as u64
            }
        };
        line["bytes"] = serde_json::Value::from(size);
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
            bytes = size,
            endpoint = %rec.endpoint.name(),
            "captured"
        );
        Ok(())
    }
}
