//! The in-memory spool: the reference implementation of the trait's semantics, used by tests and
//! by `durability = memory`. Oldest-first ordering comes from ordered sets keyed by sequence number,
//! so every operation is O(log n) even with a million records waiting.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::{BoxFuture, Queued, Record, Reschedule, Spool, SpoolError};

#[derive(Default)]
struct Inner {
    next_id: u64,
    records: HashMap<u64, Slot>,
    ready: BTreeSet<u64>,
    delayed: BTreeSet<(u64, u64)>,
    bytes: u64,
}

struct Slot {
    record: Arc<Record>,
    attempts: u32,
}

/// A spool that lives in RAM.
#[derive(Default)]
pub struct MemorySpool {
    inner: Mutex<Inner>,
    notify: Arc<Notify>,
}

impl MemorySpool {
    /// An empty spool.
    pub fn new() -> MemorySpool {
        MemorySpool::default()
    }

    /// A spool that wakes `notify` on appends (shared with a disk tier).
    pub fn with_notify(notify: Arc<Notify>) -> MemorySpool {
        MemorySpool { inner: Mutex::default(), notify }
    }

    /// Removes and returns every record, leased or not, oldest first (for spilling to disk).
    pub fn take_all(&self) -> Vec<Record> {
        let mut g = self.lock();
        let mut all: Vec<(u64, Slot)> = g.records.drain().collect();
        g.ready.clear();
        g.delayed.clear();
        g.bytes = 0;
        all.sort_by_key(|(id, _)| *id);
        all.into_iter().map(|(_, s)| Arc::try_unwrap(s.record).unwrap_or_else(|a| (*a).clone())).collect()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the sets inconsistent in a way that matters
        // more than stopping the sidecar would, so keep going with the data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Spool for MemorySpool {
    fn oldest_ms(&self) -> Option<u64> {
        // A scan, at a scrape: the memory tier is small (bounded by `memory_spool_bytes`).
        self.lock().records.values().map(|s| s.record.received_ms).min()
    }

    fn append(&self, records: Vec<Record>) -> BoxFuture<'_, Result<(), SpoolError>> {
        {
            let mut g = self.lock();
            for r in records {
                g.next_id += 1;
                let id = g.next_id;
                g.bytes += r.body.len() as u64;
                g.records.insert(id, Slot { record: Arc::new(r), attempts: 0 });
                g.ready.insert(id);
            }
        }
        self.notify.notify_one();
        Box::pin(async { Ok(()) })
    }

    fn read_batch(
        &self,
        max_count: usize,
        max_bytes: usize,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<Vec<Queued>, SpoolError>> {
        let mut out = Vec::new();
        {
            let mut g = self.lock();
            while let Some(&(due, id)) = g.delayed.first() {
                if due > now_ms {
                    break;
                }
                g.delayed.pop_first();
                g.ready.insert(id);
            }
            let mut bytes = 0usize;
            while out.len() < max_count && (out.is_empty() || bytes < max_bytes) {
                let Some(id) = g.ready.pop_first() else { break };
                if let Some(slot) = g.records.get(&id) {
                    bytes += slot.record.body.len();
                    out.push(Queued { id, attempts: slot.attempts, record: slot.record.clone() });
                }
            }
        }
        Box::pin(async { Ok(out) })
    }

    fn ack(&self, ids: Vec<u64>) -> BoxFuture<'_, Result<(), SpoolError>> {
        {
            let mut g = self.lock();
            for id in ids {
                if let Some(slot) = g.records.remove(&id) {
                    g.bytes -= slot.record.body.len() as u64;
                }
            }
        }
        Box::pin(async { Ok(()) })
    }

    fn reschedule(&self, items: Vec<Reschedule>) -> BoxFuture<'_, Result<(), SpoolError>> {
        {
            let mut g = self.lock();
            for r in items {
                if let Some(slot) = g.records.get_mut(&r.id) {
                    if r.count_attempt {
                        slot.attempts = slot.attempts.saturating_add(1);
                    }
                    g.delayed.insert((r.due_ms, r.id));
                }
            }
        }
        self.notify.notify_one();
        Box::pin(async { Ok(()) })
    }

    fn len(&self) -> u64 {
        self.lock().records.len() as u64
    }

    fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    fn next_due(&self, now_ms: u64) -> Option<u64> {
        let g = self.lock();
        g.delayed.first().map(|(due, _)| *due).filter(|d| *d > now_ms)
    }

    fn notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    fn writable(&self) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(body: &'static [u8]) -> Record {
        Record::for_test(body, 0)
    }

    #[tokio::test]
    async fn lease_ack_and_reschedule() {
        let s = MemorySpool::new();
        s.append(vec![rec(b"a"), rec(b"bb"), rec(b"ccc")]).await.unwrap();
        assert_eq!((s.len(), s.bytes()), (3, 6));
        let batch = s.read_batch(2, usize::MAX, 0).await.unwrap();
        assert_eq!(
            batch.iter().map(|q| &q.record.body.bytes().unwrap()[..]).collect::<Vec<_>>(),
            [b"a".as_ref(), b"bb"]
        );
        // Leased records are not handed out twice.
        let rest = s.read_batch(10, usize::MAX, 0).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert!(s.read_batch(10, usize::MAX, 0).await.unwrap().is_empty());
        s.ack(vec![batch[0].id]).await.unwrap();
        s.reschedule(vec![Reschedule { id: batch[1].id, due_ms: 100, count_attempt: true }]).await.unwrap();
        assert_eq!(s.next_due(50), Some(100));
        assert!(s.read_batch(10, usize::MAX, 99).await.unwrap().is_empty());
        let again = s.read_batch(10, usize::MAX, 100).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, 1);
        assert_eq!((s.len(), s.bytes()), (2, 5));
    }

    #[tokio::test]
    async fn byte_bound_still_returns_one() {
        let s = MemorySpool::new();
        s.append(vec![rec(b"aaaa"), rec(b"bbbb")]).await.unwrap();
        assert_eq!(s.read_batch(10, 1, 0).await.unwrap().len(), 1);
    }
}
