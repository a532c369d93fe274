//! Records appended and not yet leased, kept by the writer so that dispatch gets them without
//! reading the body back from the database: the common case, dispatch a few milliseconds behind
//! ingest. It is a byte-bounded FIFO by row id; what falls out of it is read from the database.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::config::DeliveryOrder;
use crate::spool::{Queued, Record};

/// Body bytes the cache holds at most; the oldest records leave first.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// The memory a cached record's body holds: a body in a file holds none (the cache keeps its
/// record, a few hundred bytes, however large the file).
fn held(r: &Record) -> usize {
    r.body.bytes().map_or(0, bytes::Bytes::len)
}

/// A byte-bounded FIFO of recently appended records, by row id.
#[derive(Default)]
pub(super) struct RecordCache {
    map: HashMap<i64, Arc<Record>>,
    /// Ids in insertion order; ids taken out of `map` stay here until popped or compacted.
    order: VecDeque<i64>,
    bytes: usize,
}

impl RecordCache {
    /// Adds a record just appended as row `id`, evicting the oldest beyond [`CACHE_BYTES`].
    pub(super) fn insert(&mut self, id: i64, r: Arc<Record>) {
        self.bytes += held(&r);
        self.map.insert(id, r);
        self.order.push_back(id);
        while self.bytes > CACHE_BYTES {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(r) = self.map.remove(&old) {
                self.bytes -= held(&r);
            }
        }
        // Ids taken one by one (acks, reads by id) leave stale entries in `order`; compact it
        // before it grows far beyond the records it indexes.
        if self.order.len() > 4 * self.map.len() + 1024 {
            let map = &self.map;
            self.order.retain(|id| map.contains_key(id));
        }
    }

    /// Takes row `id`'s record out, if the cache still holds it.
    pub(super) fn take(&mut self, id: i64) -> Option<Arc<Record>> {
        let r = self.map.remove(&id)?;
        self.bytes -= held(&r);
        Some(r)
    }

    /// How many records the cache holds.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Takes up to `max` records (and about `max_bytes`), oldest or newest first.
    pub(super) fn take_in_order(
        &mut self,
        order: DeliveryOrder,
        max: usize,
        max_bytes: usize,
        leased: &HashSet<i64>,
    ) -> Vec<Queued> {
        let mut out = Vec::with_capacity(max.min(self.map.len()));
        let mut bytes = 0usize;
        while out.len() < max && (bytes < max_bytes || out.is_empty()) {
            let next = match order {
                DeliveryOrder::OldestFirst => self.order.pop_front(),
                DeliveryOrder::NewestFirst => self.order.pop_back(),
            };
            let Some(id) = next else { break };
            if leased.contains(&id) {
                self.take(id);
                continue;
            }
            if let Some(record) = self.take(id) {
                bytes += record.body.len();
                out.push(Queued { id: id as u64, attempts: 0, record });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec(len: usize) -> Arc<Record> {
        Arc::new(Record { body: Bytes::from(vec![b'x'; len]).into(), ..Record::for_test(b"", 1) })
    }

    fn ids(q: &[Queued]) -> Vec<u64> {
        q.iter().map(|q| q.id).collect()
    }

    #[test]
    fn takes_in_delivery_order_within_the_count_and_byte_bounds() {
        for (order, want) in [(DeliveryOrder::OldestFirst, [1, 2, 3]), (DeliveryOrder::NewestFirst, [3, 2, 1])] {
            let mut c = RecordCache::default();
            for id in 1..=3 {
                c.insert(id, rec(10));
            }
            let none = HashSet::new();
            assert_eq!(ids(&c.take_in_order(order, 2, usize::MAX, &none)), want[..2]);
            // The byte bound still lets one record through.
            assert_eq!(ids(&c.take_in_order(order, 2, 1, &none)), want[2..]);
            assert!(c.take_in_order(order, 2, usize::MAX, &none).is_empty());
            assert_eq!((c.len(), c.bytes), (0, 0));
        }
    }

    #[test]
    fn stops_at_the_byte_bound_once_it_has_one() {
        let mut c = RecordCache::default();
        for id in 1..=3 {
            c.insert(id, rec(10));
        }
        assert_eq!(ids(&c.take_in_order(DeliveryOrder::OldestFirst, 10, 15, &HashSet::new())), [1, 2]);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn leased_and_taken_rows_are_skipped() {
        let mut c = RecordCache::default();
        for id in 1..=4 {
            c.insert(id, rec(10));
        }
        assert!(c.take(2).is_some());
        assert!(c.take(2).is_none());
        let leased: HashSet<i64> = [3].into();
        assert_eq!(ids(&c.take_in_order(DeliveryOrder::OldestFirst, 10, usize::MAX, &leased)), [1, 4]);
        assert_eq!((c.len(), c.bytes), (0, 0));
    }

    #[test]
    fn the_oldest_records_leave_beyond_the_byte_bound() {
        let mut c = RecordCache::default();
        let quarter = CACHE_BYTES / 4;
        for id in 1..=5 {
            c.insert(id, rec(quarter));
        }
        assert_eq!(c.len(), 4);
        assert!(c.bytes <= CACHE_BYTES);
        assert!(c.take(1).is_none(), "the oldest went first");
        assert!(c.take(5).is_some());
    }

    #[test]
    fn the_order_index_is_compacted_when_ids_are_taken_one_by_one() {
        let mut c = RecordCache::default();
        for id in 0..5000 {
            c.insert(id, rec(1));
            c.take(id);
        }
        assert_eq!(c.len(), 0);
        assert!(c.order.len() < 1100, "{} stale ids kept", c.order.len());
    }
}
