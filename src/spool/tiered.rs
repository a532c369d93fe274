//! `durability = memory`: acknowledge from RAM, spill to the SQLite spool when RAM holds more than
//! its share and when shutting down. The fastest level; what is in RAM is lost on a crash, which
//! is the documented trade.

use std::sync::Arc;

use tokio::sync::Notify;

use super::{BoxFuture, MemorySpool, Queued, Record, Reschedule, Spool, SpoolError, SqliteOptions, SqliteSpool};

/// Memory ids carry this bit so that acks and reschedules find their tier.
const MEM_BIT: u64 = 1 << 62;

/// A RAM tier in front of the durable spool.
pub struct TieredSpool {
    mem: MemorySpool,
    disk: SqliteSpool,
    mem_limit: u64,
    notify: Arc<Notify>,
}

impl TieredSpool {
    /// Opens the disk tier (delivering whatever a previous run spilled) with a RAM tier of
    /// `mem_limit` bytes in front.
    pub fn open(opts: SqliteOptions, mem_limit: u64) -> Result<TieredSpool, SpoolError> {
        let notify = Arc::new(Notify::new());
        let disk = SqliteSpool::open_with_notify(opts, notify.clone())?;
        Ok(TieredSpool { mem: MemorySpool::with_notify(notify.clone()), disk, mem_limit, notify })
    }
}

fn split<T>(items: Vec<T>, id: impl Fn(&T) -> u64) -> (Vec<T>, Vec<T>) {
    items.into_iter().partition(|i| id(i) & MEM_BIT != 0)
}

impl Spool for TieredSpool {
    fn append(&self, records: Vec<Record>) -> BoxFuture<'_, Result<(), SpoolError>> {
        let incoming: u64 = records.iter().map(|r| r.body.len() as u64).sum();
        // A body in a file is on disk already: its record goes to the disk tier, which takes the
        // file (the RAM tier's budget is for bodies in memory).
        let files = records.iter().any(|r| r.body.file().is_some());
        if !files && self.mem.bytes() + incoming <= self.mem_limit {
            self.mem.append(records)
        } else {
            self.disk.append(records)
        }
    }

    fn read_batch(
        &self,
        max_count: usize,
        max_bytes: usize,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<Vec<Queued>, SpoolError>> {
        Box::pin(async move {
            // The disk tier holds the older records (spilled, or left by a previous run).
            let mut out = if self.disk.is_empty() {
                Vec::new()
            } else {
                self.disk.read_batch(max_count, max_bytes, now_ms).await?
            };
            if out.len() < max_count {
                let mem = self.mem.read_batch(max_count - out.len(), max_bytes, now_ms).await?;
                out.extend(mem.into_iter().map(|mut q| {
                    q.id |= MEM_BIT;
                    q
                }));
            }
            Ok(out)
        })
    }

    fn ack(&self, ids: Vec<u64>) -> BoxFuture<'_, Result<(), SpoolError>> {
        Box::pin(async move {
            let (mem, disk) = split(ids, |i| *i);
            self.mem.ack(mem.into_iter().map(|i| i & !MEM_BIT).collect()).await?;
            if !disk.is_empty() {
                self.disk.ack(disk).await?;
            }
            Ok(())
        })
    }

    fn reschedule(&self, items: Vec<Reschedule>) -> BoxFuture<'_, Result<(), SpoolError>> {
        Box::pin(async move {
            let (mem, disk) = split(items, |r| r.id);
            self.mem.reschedule(mem.into_iter().map(|r| Reschedule { id: r.id & !MEM_BIT, ..r }).collect()).await?;
            if !disk.is_empty() {
                self.disk.reschedule(disk).await?;
            }
            Ok(())
        })
    }

    fn len(&self) -> u64 {
        self.mem.len() + self.disk.len()
    }

    fn bytes(&self) -> u64 {
        self.mem.bytes() + self.disk.bytes()
    }

    fn next_due(&self, now_ms: u64) -> Option<u64> {
        match (self.mem.next_due(now_ms), self.disk.next_due(now_ms)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    fn writable(&self) -> Result<(), String> {
        self.disk.writable()
    }

    fn disk_bytes(&self) -> Option<u64> {
        self.disk.disk_bytes()
    }

    fn oldest_ms(&self) -> Option<u64> {
        match (self.mem.oldest_ms(), self.disk.oldest_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let left = self.mem.take_all();
            if !left.is_empty() {
                let n = left.len();
                match self.disk.append(left).await {
                    Ok(()) => tracing::info!(envelopes = n, "spilled the memory spool to disk"),
                    Err(e) => {
                        tracing::error!(envelopes = n, error = %e, "could not spill the memory spool; these are lost")
                    }
                }
            }
            self.disk.close().await;
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::spool::{Body, TempBody};

    /// A body in a file goes to the disk tier (which takes the file), whatever room the RAM tier
    /// has; bodies in memory stay in RAM.
    #[tokio::test]
    async fn file_bodies_go_to_the_disk_tier() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::Config::with_defaults("127.0.0.1:0".parse().unwrap(), dir.path().to_owned());
        let s = TieredSpool::open(SqliteOptions::from_config(&cfg), 1 << 20).unwrap();
        let (temp, mut f) = TempBody::create(&dir.path().join("bodies"), 1).unwrap();
        f.write_all(b"abc").unwrap();
        let file = Body::File(Arc::new(temp.finish(3)));
        s.append(vec![Record { body: file, ..Record::for_test(b"", 1) }]).await.unwrap();
        s.append(vec![Record::for_test(b"in memory", 1)]).await.unwrap();
        assert_eq!((s.mem.len(), s.disk.len()), (1, 1));
        s.close().await;
    }
}
