//! The spool as dispatch and ingest see it, through the [`Spool`] trait: reads in the delivery
//! order, reads in the same group as appends, due times, expiry and restarts. Tests that depend
//! on time run on tokio's paused clock, given to the spool as its [`Clock`]. Also the helpers the
//! other files' tests share.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

use super::{SqliteOptions, SqliteSpool};
use crate::clock::{now_ms, Clock};
use crate::config::{DeliveryOrder, Durability, FullPolicy};
use crate::protocol::DataCategory;
use crate::spool::{Queued, Record, Reschedule, Spool};

/// A record received now by the system's clock.
pub(super) fn rec(body: &'static [u8]) -> Record {
    Record::for_test(body, now_ms())
}

/// Settings for a spool in `dir` on the system's clock.
pub(super) fn options(dir: &Path, order: DeliveryOrder) -> SqliteOptions {
    SqliteOptions {
        dir: dir.to_path_buf(),
        durability: Durability::Process,
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(3600),
        full_policy: FullPolicy::DropOldest,
        order,
        inline_limit: 1 << 20,
        max_page_count: None,
        clock: Clock::system(),
    }
}

/// A spool in `dir` on the system's clock.
pub(super) fn open(dir: &Path, order: DeliveryOrder) -> SqliteSpool {
    SqliteSpool::open(options(dir, order)).unwrap()
}

/// A spool in `dir` on `clock`. Start tokio clocks in the past: a spool that read the system's
/// clock instead would then find everything long expired, and nothing waiting.
fn open_on(dir: &Path, order: DeliveryOrder, clock: Clock) -> SqliteSpool {
    SqliteSpool::open(SqliteOptions { clock, ..options(dir, order) }).unwrap()
}

/// An error event received at `at`.
fn event(body: &'static [u8], at: u64) -> Record {
    Record { categories: [DataCategory::Error].into_iter().collect(), ..Record::for_test(body, at) }
}

fn bodies(batch: &[Queued]) -> Vec<&[u8]> {
    batch.iter().map(|q| &q.record.body.bytes().expect("in memory")[..]).collect()
}

/// A start in 2001, far in the system clock's past.
const BASE_MS: u64 = 1_000_000_000_000;

/// An append and a read handed to the writer in the same group, where the read queries the
/// database (an unleased row is not in the cache): the read leases the new row before its
/// record reaches the cache, and the cache must not hand it out a second time.
#[tokio::test(start_paused = true)]
async fn a_record_read_in_its_append_group_is_leased_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::tokio(BASE_MS);
    let s = open_on(dir.path(), DeliveryOrder::OldestFirst, clock);
    let rec = |body| Record::for_test(body, clock.now_ms());
    let now = || clock.now_ms() + 1;
    s.append(vec![rec(b"x"), rec(b"y")]).await.unwrap();
    let xy = s.read_batch(10, usize::MAX, now()).await.unwrap();
    s.reschedule(vec![Reschedule { id: xy[1].id, due_ms: 0, count_attempt: true }]).await.unwrap();
    let (appended, read) = tokio::join!(s.append(vec![rec(b"a")]), s.read_batch(10, usize::MAX, now()));
    appended.unwrap();
    assert_eq!(bodies(&read.unwrap()), [b"y".as_ref(), b"a"]);
    // x comes back: an unleased row that is not in the cache, and the only one to read.
    s.reschedule(vec![Reschedule { id: xy[0].id, due_ms: 0, count_attempt: true }]).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        for q in s.read_batch(10, usize::MAX, now()).await.unwrap() {
            seen.push(q.record.body.bytes().cloned().unwrap_or_default());
        }
    }
    assert_eq!(seen, [Bytes::from_static(b"x")]);
    s.close().await;
}

/// A read in the same group as appends, with nothing else changed, answers from the cache,
/// new rows included.
#[tokio::test(start_paused = true)]
async fn a_read_in_the_append_group_gets_the_new_rows() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::tokio(BASE_MS);
    let s = open_on(dir.path(), DeliveryOrder::OldestFirst, clock);
    let rec = Record::for_test(b"a", clock.now_ms());
    let (appended, read) = tokio::join!(s.append(vec![rec]), s.read_batch(10, usize::MAX, clock.now_ms() + 1));
    appended.unwrap();
    assert_eq!(bodies(&read.unwrap()), [b"a".as_ref()]);
    assert!(s.read_batch(10, usize::MAX, clock.now_ms() + 1).await.unwrap().is_empty());
    s.close().await;
}

#[tokio::test(start_paused = true)]
async fn cached_reads_follow_the_delivery_order_and_the_bounds() {
    for (order, want) in [
        (DeliveryOrder::OldestFirst, [b"a".as_ref(), b"b", b"c"]),
        (DeliveryOrder::NewestFirst, [b"c".as_ref(), b"b", b"a"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::tokio(BASE_MS);
        let s = open_on(dir.path(), order, clock);
        for b in [b"a", b"b", b"c"] {
            s.append(vec![Record::for_test(b, clock.now_ms())]).await.unwrap();
        }
        let now = clock.now_ms() + 1;
        let first = s.read_batch(2, usize::MAX, now).await.unwrap();
        let second = s.read_batch(2, 1, now).await.unwrap();
        assert_eq!(bodies(&first), want[..2]);
        assert_eq!(bodies(&second), want[2..]);
        assert!(s.read_batch(2, usize::MAX, now).await.unwrap().is_empty());
        // Acked rows are gone; a rescheduled one comes back from the database.
        s.ack(vec![first[0].id, second[0].id]).await.unwrap();
        s.reschedule(vec![Reschedule { id: first[1].id, due_ms: now, count_attempt: true }]).await.unwrap();
        let again = s.read_batch(10, usize::MAX, now).await.unwrap();
        assert_eq!(bodies(&again), [b"b".as_ref()]);
        assert_eq!(again[0].attempts, 1);
        s.close().await;
    }
}

/// A rescheduled record waits for its due time, which `next_due` tells dispatch.
#[tokio::test(start_paused = true)]
async fn a_rescheduled_record_comes_back_at_its_due_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::tokio(BASE_MS);
    let s = open_on(dir.path(), DeliveryOrder::OldestFirst, clock);
    s.append(vec![event(b"e", clock.now_ms())]).await.unwrap();
    let leased = s.read_batch(10, usize::MAX, clock.now_ms()).await.unwrap();
    let due = clock.now_ms() + 30_000;
    s.reschedule(vec![Reschedule { id: leased[0].id, due_ms: due, count_attempt: true }]).await.unwrap();
    assert_eq!(s.next_due(clock.now_ms()), Some(due));
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(s.read_batch(10, usize::MAX, clock.now_ms()).await.unwrap().is_empty(), "not due yet");
    tokio::time::advance(Duration::from_secs(1)).await;
    let back = s.read_batch(10, usize::MAX, clock.now_ms()).await.unwrap();
    assert_eq!((bodies(&back), back[0].attempts), (vec![b"e".as_ref()], 1));
    s.close().await;
}

/// Records older than the age bound are dropped by the spool's clock, and a client report
/// for them takes their place.
#[tokio::test(start_paused = true)]
async fn records_past_the_age_bound_expire_into_a_client_report() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::tokio(BASE_MS);
    let opts =
        SqliteOptions { clock, max_age: Duration::from_secs(60), ..options(dir.path(), DeliveryOrder::OldestFirst) };
    let s = SqliteSpool::open(opts).unwrap();
    s.append(vec![event(b"old", clock.now_ms())]).await.unwrap();
    // Waiting for a retry, so neither leased (leased rows do not expire) nor read back.
    let leased = s.read_batch(10, usize::MAX, clock.now_ms()).await.unwrap();
    let later = clock.now_ms() + 3_600_000;
    s.reschedule(vec![Reschedule { id: leased[0].id, due_ms: later, count_attempt: true }]).await.unwrap();
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(s.read_batch(10, usize::MAX, clock.now_ms()).await.unwrap().is_empty());
    assert_eq!(s.len(), 1, "not expired at 59 s");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(s.read_batch(10, usize::MAX, clock.now_ms()).await.unwrap().is_empty());
    assert_eq!(s.len(), 1, "expired, and a client report queued");
    let report = s.read_batch(10, usize::MAX, clock.now_ms()).await.unwrap();
    assert_eq!(report[0].record.item_types, ["client_report"]);
    assert_eq!(report[0].record.received_ms, clock.now_ms());
    s.close().await;
}

/// Waits decided by the previous process end with it: after a restart the record is due at
/// once, by the spool's clock.
#[tokio::test(start_paused = true)]
async fn retry_waits_end_with_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::tokio(BASE_MS);
    let s = open_on(dir.path(), DeliveryOrder::OldestFirst, clock);
    s.append(vec![event(b"e", clock.now_ms())]).await.unwrap();
    let leased = s.read_batch(10, usize::MAX, clock.now_ms()).await.unwrap();
    let due = clock.now_ms() + 600_000;
    s.reschedule(vec![Reschedule { id: leased[0].id, due_ms: due, count_attempt: true }]).await.unwrap();
    s.close().await;
    tokio::time::advance(Duration::from_secs(5)).await;
    let s = open_on(dir.path(), DeliveryOrder::OldestFirst, clock);
    assert_eq!(s.next_due(clock.now_ms()), None, "nothing waits");
    let back = s.read_batch(10, usize::MAX, clock.now_ms()).await.unwrap();
    assert_eq!((bodies(&back), back[0].attempts), (vec![b"e".as_ref()], 1));
    s.close().await;
}

/// `disk_bytes` is what the spool's files take: the database, its WAL and the body files.
#[tokio::test]
async fn disk_bytes_counts_the_database_the_wal_and_body_files() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), DeliveryOrder::OldestFirst);
    let big = Bytes::from(vec![b'x'; 2 << 20]);
    s.append(vec![rec(b"small"), Record { body: big.into(), ..rec(b"") }]).await.unwrap();
    let files: u64 =
        ["spool.db", "spool.db-wal"].iter().map(|f| std::fs::metadata(dir.path().join(f)).map_or(0, |m| m.len())).sum();
    let bodies: u64 =
        std::fs::read_dir(dir.path().join("bodies")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(bodies >= 2 << 20, "the large body is a file of its own");
    assert_eq!(s.disk_bytes(), Some(files + bodies));
    s.close().await;
}

/// Dispatch waiting for records: the next append's group leases them for it, so they are taken
/// without a read (and a read no longer hands them out); the wish is used up by that append.
#[tokio::test]
async fn fresh_records_reach_dispatch_with_the_append() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), DeliveryOrder::OldestFirst);
    assert!(s.take_fresh().is_empty());
    s.want_fresh(2);
    s.append(vec![rec(b"a"), rec(b"b"), rec(b"c")]).await.unwrap();
    let fresh = s.take_fresh();
    assert_eq!(bodies(&fresh), [&b"a"[..], b"b"], "leased with the append, up to what was wanted");
    let read = s.read_batch(10, usize::MAX, now_ms()).await.unwrap();
    assert_eq!(bodies(&read), [&b"c"[..]], "the offered records are leased");
    s.append(vec![rec(b"d")]).await.unwrap();
    assert!(s.take_fresh().is_empty(), "the wish was used up");
    s.want_fresh(5);
    assert!(s.take_fresh().is_empty(), "taking withdraws the wish");
    s.append(vec![rec(b"e")]).await.unwrap();
    assert!(s.take_fresh().is_empty());
    s.close().await;
}

/// An ack that may wait rides with the next append's hand-off instead of one of its own, and goes
/// on its own after `LAZY` when nothing else comes.
#[tokio::test(start_paused = true)]
async fn a_lazy_ack_rides_with_the_next_append_or_goes_after_a_while() {
    let dir = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(open_on(dir.path(), DeliveryOrder::OldestFirst, Clock::tokio(BASE_MS)));
    s.append(vec![event(b"a", BASE_MS), event(b"b", BASE_MS)]).await.unwrap();
    let ids: Vec<u64> = s.read_batch(10, usize::MAX, BASE_MS).await.unwrap().iter().map(|q| q.id).collect();
    let sent = || super::lock(&s.submit).sent;
    let before = sent();
    let ack = s.ack_soon(vec![ids[0]]);
    tokio::task::yield_now().await;
    assert_eq!((sent(), s.len()), (before, 2), "not sent on its own at once");
    s.append(vec![event(b"c", BASE_MS)]).await.unwrap();
    assert_eq!(sent(), before + 1, "one hand-off for the append and the ack");
    ack.await.unwrap();
    assert_eq!(s.len(), 2, "acked with the append: a out, c in");
    let started = tokio::time::Instant::now();
    s.ack_soon(vec![ids[1]]).await.unwrap();
    assert_eq!(s.len(), 1);
    assert!(started.elapsed() >= super::handoff::LAZY, "alone, it went after the wait");
    s.close().await;
}

/// A body streamed to a `.part` file is renamed into place by the append (never read), handed to
/// dispatch as a file, read back as a file after a restart, and removed with its row's ack.
#[tokio::test]
async fn a_file_body_is_taken_by_rename_kept_across_a_restart_and_removed_on_ack() {
    use std::io::Write;
    use std::sync::Arc;

    use crate::spool::{Body, TempBody};
    let dir = tempfile::tempdir().unwrap();
    let bodies_dir = dir.path().join("bodies");
    let s = open(dir.path(), DeliveryOrder::OldestFirst);
    let (temp, mut f) = TempBody::create(&bodies_dir, 1).unwrap();
    f.write_all(b"a body in a file").unwrap();
    let part = temp.path().to_owned();
    let file = Arc::new(temp.finish(16));
    s.append(vec![Record { body: Body::File(file.clone()), ..rec(b"") }]).await.unwrap();
    assert!(!part.exists(), "renamed, not copied");
    assert!(file.path().extension().is_some_and(|e| e == "body"));
    drop(file);
    assert_eq!(s.bytes(), 16);
    let batch = s.read_batch(10, 1 << 20, now_ms()).await.unwrap();
    let leased = batch[0].record.body.file().expect("a file").path();
    assert_eq!(std::fs::read(&leased).unwrap(), b"a body in a file");
    drop(batch);
    assert!(leased.exists(), "the spool's file outlives the record handed out");
    s.close().await;
    // A crash's upload in progress is gone at the next start; the row's file is not.
    let (left, _) = TempBody::create(&bodies_dir, 2).unwrap();
    let left_path = left.path().to_owned();
    std::mem::forget(left);
    let s = open(dir.path(), DeliveryOrder::OldestFirst);
    assert!(!left_path.exists());
    let batch = s.read_batch(10, 1 << 20, now_ms()).await.unwrap();
    let Body::File(f) = &batch[0].record.body else { panic!("read back as a file") };
    assert_eq!((f.path(), f.len()), (leased.clone(), 16));
    s.ack(vec![batch[0].id]).await.unwrap();
    assert!(!leased.exists(), "removed with its row");
    s.close().await;
}

/// With `durability = power` body files are synced before their rows commit, for bodies written
/// by the spool and for files streamed at ingest alike, and read back as they were.
#[tokio::test]
async fn power_durability_syncs_body_files_before_the_commit() {
    use std::io::Write;
    use std::sync::Arc;

    use crate::spool::{Body, TempBody};
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteSpool::open(SqliteOptions {
        durability: Durability::Power,
        inline_limit: 8,
        ..options(dir.path(), DeliveryOrder::OldestFirst)
    })
    .unwrap();
    let (temp, mut f) = TempBody::create(&dir.path().join("bodies"), 1).unwrap();
    f.write_all(b"streamed at ingest").unwrap();
    let file = Arc::new(temp.finish(18));
    s.append(vec![rec(b"larger than eight bytes"), Record { body: Body::File(file), ..rec(b"") }]).await.unwrap();
    let batch = s.read_batch(10, 1 << 20, now_ms()).await.unwrap();
    let read = |b: &Body| match b {
        Body::File(f) => std::fs::read(f.path()).unwrap(),
        Body::Mem(m) => m.to_vec(),
    };
    assert_eq!(read(&batch[0].record.body), b"larger than eight bytes");
    assert_eq!(read(&batch[1].record.body), b"streamed at ingest");
    s.close().await;
}
