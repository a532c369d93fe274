//! The queue between ingest and dispatch.
//!
//! Ingest appends a [`Record`] and answers the SDK only after the append returned; dispatch reads due
//! records in batches, and each one leaves the spool only through [`Spool::ack`] (delivered or dropped
//! for good) or goes back to waiting through [`Spool::reschedule`]. Records handed out by
//! [`Spool::read_batch`] are leased: they are not handed out again until rescheduled, and a lease
//! does not survive a restart, so a crash mid-send means a retry, never a loss.
//!
//! The trait is object-safe (boxed futures) so the durable SQLite store and the in-memory one used
//! by tests are interchangeable behind `Arc<dyn Spool>`.

mod body;
mod lock;
mod memory;
mod record;
pub mod report;
mod sqlite;
mod tiered;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use body::{remove_parts, Body, BodyFile, TempBody};
pub use lock::{LockError, SpoolLock};
pub use memory::MemorySpool;
pub use record::{Queued, Record};

// For the files of this module that name them through `super`.
use crate::protocol::Endpoint;
use crate::routing::Target;
pub use sqlite::{SqliteOptions, SqliteSpool};
pub use tiered::TieredSpool;

/// A boxed future, for the object-safe trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The spool is at its size bound and the policy refuses new data (answered 503 + Retry-After).
    #[error("spool is full")]
    Full,
    /// The spool's filesystem is nearly full: new data is refused until deliveries free space.
    #[error("the spool's disk is nearly full")]
    DiskFull,
    /// The disk said no (ENOSPC, EIO, ...).
    #[error("spool I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The spool is shutting down.
    #[error("spool is closed")]
    Closed,
}

/// The queue interface between ingest and dispatch.
pub trait Spool: Send + Sync + 'static {
    /// Appends records; returns once they are as durable as the spool promises.
    fn append(&self, records: Vec<Record>) -> BoxFuture<'_, Result<(), SpoolError>>;

    /// Leases up to `max_count` records (and about `max_bytes`) that are due at `now_ms`, oldest first.
    fn read_batch(
        &self,
        max_count: usize,
        max_bytes: usize,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<Vec<Queued>, SpoolError>>;

    /// Removes leased records for good (delivered, or dropped and counted).
    fn ack(&self, ids: Vec<u64>) -> BoxFuture<'_, Result<(), SpoolError>>;

    /// Like [`Spool::ack`], but the write may wait a little for other writes to go with (it
    /// only has to be done before the next start: until then the records stay leased).
    fn ack_soon(&self, ids: Vec<u64>) -> BoxFuture<'_, Result<(), SpoolError>> {
        self.ack(ids)
    }

    /// Says that dispatch has room for `max_count` records and nothing to send: the spool may
    /// lease records for it with the next append, to be picked up with [`Spool::take_fresh`],
    /// so that a fresh record reaches dispatch without a read of its own. Spools that cannot
    /// ignore it (dispatch reads when woken).
    fn want_fresh(&self, _max_count: usize) {}

    /// Records leased for dispatch after [`Spool::want_fresh`] (and withdraws the wish). They
    /// are leased as if read: each must be acked or rescheduled.
    fn take_fresh(&self) -> Vec<Queued> {
        Vec::new()
    }

    /// Returns leased records to the queue, each due again at its time.
    fn reschedule(&self, items: Vec<Reschedule>) -> BoxFuture<'_, Result<(), SpoolError>>;

    /// Records waiting or leased.
    fn len(&self) -> u64;

    /// Whether nothing is waiting or leased.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Body bytes waiting or leased.
    fn bytes(&self) -> u64;

    /// The earliest due time (unix ms) of a record that is waiting but not due yet at `now_ms`.
    fn next_due(&self, now_ms: u64) -> Option<u64>;

    /// Woken whenever records are appended or rescheduled.
    fn notify(&self) -> Arc<tokio::sync::Notify>;

    /// Whether appends can succeed right now (for /readyz).
    fn writable(&self) -> Result<(), String>;

    /// When the oldest record waiting or leased was accepted (unix ms), if any.
    fn oldest_ms(&self) -> Option<u64> {
        None
    }

    /// Bytes the spool's files take on disk now, if it has any.
    fn disk_bytes(&self) -> Option<u64> {
        None
    }

    /// Flushes and closes: leased records become waiting again for the next start.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A leased record going back to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reschedule {
    /// The record.
    pub id: u64,
    /// When it is due again (unix ms).
    pub due_ms: u64,
    /// Whether this counts as a failed attempt (a rate-limit or circuit hold does not).
    pub count_attempt: bool,
}

impl SqliteOptions {
    /// The spool settings of a configuration (bodies over 1 MiB go to files).
    pub fn from_config(cfg: &crate::config::Config) -> SqliteOptions {
        SqliteOptions {
            dir: cfg.spool_dir.clone(),
            durability: cfg.durability,
            max_bytes: cfg.spool_max_bytes,
            max_age: cfg.spool_max_age,
            full_policy: cfg.spool_full_policy,
            order: cfg.delivery_order,
            inline_limit: 1024 * 1024,
            max_page_count: None,
            clock: crate::clock::Clock::system(),
        }
    }
}

/// Opens the spool the configuration asks for.
pub fn open(cfg: &crate::config::Config) -> Result<std::sync::Arc<dyn Spool>, SpoolError> {
    let opts = SqliteOptions::from_config(cfg);
    Ok(match cfg.durability {
        crate::config::Durability::Memory => std::sync::Arc::new(TieredSpool::open(opts, cfg.memory_spool_bytes)?),
        _ => std::sync::Arc::new(SqliteSpool::open(opts)?),
    })
}
