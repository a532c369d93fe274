//! The SQL of the spool: appends (with the size bound and its drops), reads (from the record
//! cache when it can answer alone), acks, reschedules, expiry by age, and the earliest due time.
//!
//! Each function runs inside the writer's open transaction and records what must happen once
//! it commits (files to delete, leases to take, rows to evict from the cache, drops to report)
//! in a [`Pending`], so that a rollback leaves the writer's memory as it was.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};

use super::cache::RecordCache;
use super::db::Db;
use super::rows::{
    body_file_name, body_path, decode_row, encode_meta, map_row, sync_body_file, target_text, write_body_file, Row,
    ROW_COLUMNS,
};
use super::SqliteOptions;
use crate::config::{DeliveryOrder, Durability, FullPolicy};
use crate::spool::report::{DropReason, Dropped};
use crate::spool::{Body, Queued, Record, Reschedule, SpoolError};

/// Side effects of a transaction, applied only once it committed (or undone if it did not).
#[derive(Default)]
pub(super) struct Pending {
    /// Change in the row count.
    pub(super) dlen: i64,
    /// Change in the body bytes.
    pub(super) dbytes: i64,
    /// Body files written, removed again if the transaction does not commit.
    pub(super) written: Vec<PathBuf>,
    /// Body files of deleted rows, removed once it commits.
    pub(super) to_delete: Vec<PathBuf>,
    /// Rows dropped without delivery, to count and report.
    pub(super) dropped: Vec<Dropped>,
    /// Rows read, leased once it commits.
    pub(super) lease_add: Vec<i64>,
    /// Rows acked or rescheduled, whose leases end only once it commits: a row whose ack did not
    /// commit must stay leased, or the next read hands it out again and it is sent again (on a
    /// full disk, the same rows a thousand times a second).
    pub(super) lease_remove: Vec<i64>,
    /// Rows inserted (their records are cached at once, and evicted again on a rollback).
    pub(super) inserted: Vec<i64>,
    /// Rows deleted in this transaction, to be evicted from the record cache once it commits.
    pub(super) deleted: Vec<i64>,
    /// How many of them were not leased (dropped, expired, unreadable).
    pub(super) deleted_unleased: usize,
}

/// `BEGIN IMMEDIATE` with a cached statement (rusqlite's `Transaction` parses it on every call).
pub(super) fn begin(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([]).map(drop)
}

/// `COMMIT`, cached like [`begin`].
pub(super) fn commit(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare_cached("COMMIT")?.execute([]).map(drop)
}

/// Rolls back the open transaction, if there is one.
pub(super) fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

impl Db {
    /// The earliest due time after `now` (0: none).
    pub(super) fn query_next_due(&self, now: u64) -> Result<u64, rusqlite::Error> {
        let d: Option<i64> = self
            .conn
            .prepare_cached("SELECT MIN(due_ms) FROM envelopes WHERE due_ms > ?1")?
            .query_row(params![now as i64], |r| r.get(0))?;
        Ok(d.map_or(0, |d| d as u64))
    }
}

/// Inserts `records` within the byte bound: past it, drops the oldest waiting rows or refuses, as
/// the full policy says (the inner result is the answer to the caller).
#[allow(clippy::too_many_arguments)]
pub(super) fn append(
    tx: &Connection,
    opts: &SqliteOptions,
    leased: &HashSet<i64>,
    bytes_now: u64,
    records: &[Arc<Record>],
    now: u64,
    p: &mut Pending,
    seq: &mut u64,
) -> Result<Result<(), SpoolError>, rusqlite::Error> {
    let incoming: u64 = records.iter().map(|r| r.body.len() as u64).sum();
    let current = (bytes_now as i64 + p.dbytes).max(0) as u64;
    if current + incoming > opts.max_bytes {
        if opts.full_policy == FullPolicy::RejectNew || incoming > opts.max_bytes {
            return Ok(Err(SpoolError::Full));
        }
        let need = current + incoming - opts.max_bytes;
        let freed = drop_oldest(tx, &opts.dir, leased, need, p)?;
        if freed < need {
            return Ok(Err(SpoolError::Full));
        }
    }
    insert_all(tx, opts, records, now, p, seq)?;
    Ok(Ok(()))
}

/// Inserts rows for `records`, each due at its arrival; large bodies go to files first.
pub(super) fn insert_all<R: std::borrow::Borrow<Record>>(
    tx: &Connection,
    opts: &SqliteOptions,
    records: &[R],
    now: u64,
    p: &mut Pending,
    seq: &mut u64,
) -> Result<(), rusqlite::Error> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO envelopes (received_ms, due_ms, attempts, size, categories, target, meta, body, body_file)
         VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for r in records {
        let r: &Record = r.borrow();
        let meta = encode_meta(r);
        let io = |e: std::io::Error| rusqlite::Error::ToSqlConversionFailure(Box::new(e));
        let (inline, file): (Option<&[u8]>, Option<String>) = match &r.body {
            // Streamed to a file at ingest: moved into place, never read.
            Body::File(f) => {
                let (name, path) = body_file_name(&opts.dir, now, seq);
                f.adopt(&path).map_err(io)?;
                p.written.push(path.clone());
                if opts.durability == Durability::Power {
                    sync_body_file(&path).map_err(io)?;
                }
                (None, Some(name))
            }
            Body::Mem(b) if b.len() > opts.inline_limit => {
                let (name, path) = write_body_file(&opts.dir, now, seq, b).map_err(io)?;
                p.written.push(path.clone());
                if opts.durability == Durability::Power {
                    sync_body_file(&path).map_err(io)?;
                }
                (None, Some(name))
            }
            Body::Mem(b) => (Some(&b[..]), None),
        };
        stmt.execute(params![
            r.received_ms as i64,
            r.received_ms as i64,
            r.body.len() as i64,
            r.categories.0 as i64,
            target_text(&r.target),
            meta,
            inline,
            file,
        ])?;
        p.inserted.push(tx.last_insert_rowid());
        p.dlen += 1;
        p.dbytes += r.body.len() as i64;
    }
    Ok(())
}

/// Leases up to `max` due rows (and about `max_bytes`) in the delivery order.
#[allow(clippy::too_many_arguments)]
pub(super) fn read(
    tx: &Connection,
    opts: &SqliteOptions,
    unleased: u64,
    leased: &HashSet<i64>,
    cache: &mut RecordCache,
    max: usize,
    max_bytes: usize,
    now: u64,
    p: &mut Pending,
) -> Result<Vec<Queued>, rusqlite::Error> {
    // The common case, dispatch keeping up with ingest: every row that was committed and not
    // leased when this group started, and every row appended in it so far, is a fresh append
    // still in the cache (the cache only ever holds such rows), so the answer is known without a
    // query. Rows rescheduled earlier in this group wait for the next read, which the reschedule's
    // wake-up triggers. Acks only delete leased rows; drops or an earlier read in the group take
    // the query path.
    if p.lease_add.is_empty() && p.deleted_unleased == 0 && cache.len() as u64 == unleased + p.inserted.len() as u64 {
        let taken = cache.take_in_order(opts.order, max, max_bytes, leased);
        p.lease_add.extend(taken.iter().map(|q| q.id as i64));
        return Ok(taken);
    }
    // Oldest first walks the due index (fresh rows are due at arrival, so this is arrival order
    // for them, and retried rows come back when they are due); newest first walks the ids
    // backwards, which is arrival order reversed among the due rows.
    let order = match opts.order {
        DeliveryOrder::OldestFirst => "due_ms, id",
        DeliveryOrder::NewestFirst => "id DESC",
    };
    // Leased rows still match the query; ask for enough extra rows to skip them.
    let sql = format!("SELECT id FROM envelopes WHERE due_ms <= ?1 ORDER BY {order} LIMIT ?2");
    let skip = leased.len() + p.lease_add.len();
    let ids: Vec<i64> = tx
        .prepare_cached(&sql)?
        .query_map(params![now as i64, (max + skip) as i64], |r| r.get(0))?
        .collect::<Result<Vec<i64>, _>>()?
        .into_iter()
        .filter(|id| !leased.contains(id) && !p.lease_add.contains(id))
        .take(max)
        .collect();
    let mut out = Vec::with_capacity(ids.len());
    let mut bytes = 0usize;
    let mut stmt = tx.prepare_cached(&format!("SELECT {ROW_COLUMNS} FROM envelopes WHERE id = ?1"))?;
    for id in ids {
        if bytes >= max_bytes && !out.is_empty() {
            break;
        }
        if let Some(record) = cache.take(id) {
            bytes += record.body.len();
            p.lease_add.push(id);
            out.push(Queued { id: id as u64, attempts: 0, record });
            continue;
        }
        let Some((row, size)) = stmt.query_row(params![id], map_row).optional()? else { continue };
        bytes += size.max(0) as usize;
        let attempts = row.attempts;
        let file = row.body_file.clone();
        match decode_row(&opts.dir, row) {
            Some(record) => {
                p.lease_add.push(id);
                out.push(Queued { id: id as u64, attempts: attempts.max(0) as u32, record: Arc::new(record) });
            }
            None => {
                // Unreadable (missing body file, damaged meta): it can never be sent; count it.
                tracing::error!(id, "spooled envelope cannot be read back; dropping it");
                metrics::counter!(crate::telemetry::DROPPED, "reason" => DropReason::Unreadable.label(), "category" => "none")
                    .increment(1);
                tx.execute("DELETE FROM envelopes WHERE id = ?1", params![id])?;
                p.deleted_unleased += 1;
                p.dlen -= 1;
                p.dbytes -= size;
                if let Some(f) = file {
                    p.to_delete.push(body_path(&opts.dir, &f));
                }
            }
        }
    }
    Ok(out)
}

/// Deletes rows by id with their body files; returns the bytes freed.
fn delete_rows(
    tx: &Connection,
    ids: impl Iterator<Item = i64>,
    p: &mut Pending,
    dir: &Path,
) -> Result<u64, rusqlite::Error> {
    // A lookup and a plain delete, not `DELETE ... RETURNING`: SQLite materialises RETURNING rows
    // in an ephemeral table, opened (a b-tree, a pager, a page cache: a dozen allocations) for
    // every execution, so for every acked envelope.
    let mut look = tx.prepare_cached("SELECT size, body_file FROM envelopes WHERE id = ?1")?;
    let mut delete = tx.prepare_cached("DELETE FROM envelopes WHERE id = ?1")?;
    let mut freed = 0u64;
    for id in ids {
        let gone: Option<(i64, Option<String>)> =
            look.query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        if let Some((size, file)) = gone {
            delete.execute(params![id])?;
            p.deleted.push(id);
            p.dlen -= 1;
            p.dbytes -= size;
            freed += size.max(0) as u64;
            if let Some(f) = file {
                p.to_delete.push(body_path(dir, &f));
            }
        }
    }
    Ok(freed)
}

/// Deletes acked rows.
pub(super) fn ack(tx: &Connection, dir: &Path, ids: &[u64], p: &mut Pending) -> Result<(), rusqlite::Error> {
    delete_rows(tx, ids.iter().map(|i| *i as i64), p, dir)?;
    Ok(())
}

/// Sets new due times, counting an attempt where asked.
pub(super) fn reschedule(tx: &Connection, items: &[Reschedule]) -> Result<(), rusqlite::Error> {
    let mut stmt = tx.prepare_cached("UPDATE envelopes SET due_ms = ?1, attempts = attempts + ?2 WHERE id = ?3")?;
    for r in items {
        stmt.execute(params![r.due_ms as i64, i64::from(r.count_attempt), r.id as i64])?;
    }
    Ok(())
}

/// Deletes the waiting (not leased) rows that `sql` selects, recording why; returns the bytes freed
/// and how many rows were dropped.
fn drop_where(
    tx: &Connection,
    dir: &Path,
    leased: &HashSet<i64>,
    sql: &str,
    args: &[i64],
    reason: DropReason,
    p: &mut Pending,
) -> Result<(u64, usize), rusqlite::Error> {
    let mut victims = Vec::new();
    {
        let mut stmt = tx.prepare_cached(sql)?;
        let mut q = stmt.query(rusqlite::params_from_iter(args.iter()))?;
        while let Some(r) = q.next()? {
            let (row, _) = map_row(r)?;
            if !leased.contains(&row.id) && !p.lease_add.contains(&row.id) {
                victims.push(row);
            }
        }
    }
    let n = victims.len();
    p.deleted_unleased += n;
    let ids: Vec<i64> = victims.iter().map(|v| v.id).collect();
    for v in victims {
        // Only the meta is needed to report the drop; skip reading large body files.
        let v = Row { body: None, body_file: None, ..v };
        if let Some(rec) = decode_row(dir, v) {
            p.dropped.push(Dropped::of(&rec, reason));
        }
    }
    let freed = delete_rows(tx, ids.into_iter(), p, dir)?;
    Ok((freed, n))
}

/// Drops the oldest waiting rows (client reports excepted) until `need` bytes are freed.
fn drop_oldest(
    tx: &Connection,
    dir: &Path,
    leased: &HashSet<i64>,
    need: u64,
    p: &mut Pending,
) -> Result<u64, rusqlite::Error> {
    // Client reports (no categories) are never dropped to make room; they are tiny.
    let sql = format!("SELECT {ROW_COLUMNS} FROM envelopes WHERE categories != 0 AND id > ?1 ORDER BY id LIMIT 64");
    let mut freed = 0;
    let mut after = 0i64;
    while freed < need {
        let last: Option<i64> = tx
            .prepare_cached(
                "SELECT MAX(id) FROM (SELECT id FROM envelopes WHERE categories != 0 AND id > ?1 ORDER BY id LIMIT 64)",
            )?
            .query_row(params![after], |r| r.get(0))?;
        let Some(last) = last else { break };
        let (f, _) = drop_where(tx, dir, leased, &sql, &[after], DropReason::SpoolFull, p)?;
        freed += f;
        after = last;
    }
    Ok(freed)
}

/// Drops the waiting rows older than the age bound at `now` (client reports get twice the age).
pub(super) fn expire(
    tx: &Connection,
    opts: &SqliteOptions,
    leased: &HashSet<i64>,
    now: u64,
    p: &mut Pending,
) -> Result<(), rusqlite::Error> {
    let age = u64::try_from(opts.max_age.as_millis()).unwrap_or(u64::MAX / 4);
    let cutoff = now.saturating_sub(age) as i64;
    // Client reports (no categories) summarise losses; they get twice the age before they go.
    let report_cutoff = now.saturating_sub(age.saturating_mul(2)) as i64;
    let sql = format!(
        "SELECT {ROW_COLUMNS} FROM envelopes WHERE received_ms < ?1 \
         AND (categories != 0 OR received_ms < ?2) ORDER BY id LIMIT 1000"
    );
    drop_where(tx, &opts.dir, leased, &sql, &[cutoff, report_cutoff], DropReason::TooOld, p)?;
    Ok(())
}
