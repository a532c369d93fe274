//! Large bodies, streamed to a file as they arrive instead of held whole: wire bytes -> content
//! decoder (if `Content-Encoding`) -> envelope validation -> compressor for the upstream -> a
//! `.part` file under the spool's `bodies/`, which the spool then takes without a copy.
//!
//! A body takes this path when it is larger than [`STREAM_BYTES`]: by its `Content-Length`, as
//! it grows (chunked), or once decoded (a small compressed body that decodes past the threshold
//! is decoded again, this time into a file; a bomb so costs the file, compressed, not memory).
//! The pipeline runs on tokio's blocking pool; the async side reads the socket and hands pieces
//! over a small channel, each piece paid from the in-flight budget until the pipeline has
//! consumed it, and stops reading while the channel is full (back-pressure). A decoder slot of
//! the [`DecodePool`] is held only while there is input to work on, so slow uploads do not keep
//! others from decoding. Decoded bytes count against `--max-decoded-bytes` (413 past it); file
//! bytes in flight count against the spool's byte bound (503 past it). Whatever fails, the
//! `.part` file is removed.

use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::body::{BodyError, Rest};
use super::budget::{Budget, Hold};
use crate::codec::{self, Encoding, StreamEncoder};
use crate::protocol::{EnvelopeError, EnvelopeFacts, EnvelopeStream};
use crate::spool::{BodyFile, Spool, SpoolError, TempBody};

/// Bodies larger than this (wire or decoded) are streamed to a file: the spool's inline limit,
/// above which it keeps bodies in files anyway.
pub const STREAM_BYTES: usize = 1024 * 1024;

/// Pieces of a body waiting for the pipeline (each at most what hyper read at once).
const CHANNEL_PIECES: usize = 4;

/// The pipeline's own read and write buffers.
const BUFFER_BYTES: usize = 64 * 1024;

/// Why a body could not be streamed to a file.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading, decoding or a limit.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// Not a valid envelope.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The file could not be written (a full disk, or the spool's byte bound).
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// A body streamed to a file: the file, how it is encoded, and (for envelopes) what it says.
#[derive(Debug)]
pub struct Streamed {
    /// The finished file.
    pub file: BodyFile,
    /// Its encoding (the `--compression` setting).
    pub encoding: Encoding,
    /// The envelope's facts, when it was validated as one.
    pub facts: Option<EnvelopeFacts>,
    /// The body's size decoded (before it was compressed for the upstream).
    pub decoded_len: u64,
}

/// Bytes of body files being written, across requests, held against the spool's byte bound
/// (with the bytes the spool holds already when it refuses new data once full; with drop-oldest
/// it makes room when the record is appended).
pub struct DiskGauge {
    in_flight: AtomicU64,
    max: u64,
    spool: Option<Arc<dyn Spool>>,
}

impl std::fmt::Debug for DiskGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskGauge").field("in_flight", &self.in_flight()).field("max", &self.max).finish()
    }
}

impl DiskGauge {
    /// A gauge allowing `max` bytes of files in flight, plus what `spool` holds if given.
    pub fn new(max: u64, spool: Option<Arc<dyn Spool>>) -> DiskGauge {
        DiskGauge { in_flight: AtomicU64::new(0), max, spool }
    }

    /// Bytes of files being written now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Counts `n` more bytes, unless that passes the bound.
    fn add(&self, n: u64) -> bool {
        let max = self.max.saturating_sub(self.spool.as_ref().map_or(0, |s| s.bytes()));
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_add(n).filter(|t| *t <= max))
            .is_ok()
    }

    fn sub(&self, n: u64) {
        self.in_flight.fetch_sub(n, Ordering::AcqRel);
    }
}

/// What one pipeline needs to know.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The spool's `bodies/`.
    pub dir: PathBuf,
    /// Codings to undo (from `Content-Encoding`).
    pub codings: Vec<String>,
    /// `--max-decoded-bytes`.
    pub decoded_limit: usize,
    /// Check the body as an envelope.
    pub envelope: bool,
    /// The compression for the upstream, and its level.
    pub algo: Encoding,
    /// The gzip-style level.
    pub level: u32,
    /// Now (unix ms), for the file's name.
    pub now_ms: u64,
    /// Disk to count at once: the `Content-Length`, when there is one. A large body with a
    /// length gets its room whole or not at all (many uploads each given part of the room
    /// would all fail late).
    pub reserve: u64,
}

impl Plan {
    /// Memory the pipeline's state may take (decoders, compressor, buffers), paid from the
    /// budget for as long as it runs.
    pub fn state_bytes(&self) -> usize {
        let decoders: usize = self.codings.iter().map(|c| codec::decoder_state_bytes(c)).sum();
        decoders + self.encoder_bytes()
    }

    /// The compressor's and the buffers' part of [`Plan::state_bytes`].
    fn encoder_bytes(&self) -> usize {
        StreamEncoder::<std::fs::File>::state_bytes(self.algo) + 3 * BUFFER_BYTES
    }
}

/// Bytes counted against the gauge for one file; given back on drop (the file is then the
/// spool's, counted in its bytes, or removed).
struct DiskHold {
    gauge: Arc<DiskGauge>,
    counted: u64,
}

impl DiskHold {
    /// `reserve` bytes counted at once.
    fn new(gauge: Arc<DiskGauge>, reserve: u64) -> std::io::Result<DiskHold> {
        if !gauge.add(reserve) {
            return Err(std::io::Error::other(SpoolFull));
        }
        Ok(DiskHold { gauge, counted: reserve })
    }

    /// Counts up to `end` bytes in all.
    fn grow_to(&mut self, end: u64) -> std::io::Result<()> {
        if end > self.counted {
            if !self.gauge.add(end - self.counted) {
                return Err(std::io::Error::other(SpoolFull));
            }
            self.counted = end;
        }
        Ok(())
    }
}

impl Drop for DiskHold {
    fn drop(&mut self) {
        self.gauge.sub(self.counted);
    }
}

/// A writer whose bytes are counted in a [`DiskHold`] before they are written.
struct Counted<W> {
    inner: W,
    written: u64,
    hold: DiskHold,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hold.grow_to(self.written + buf.len() as u64)?;
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The marker of a write refused by the gauge.
#[derive(Debug, thiserror::Error)]
#[error("body files in flight would pass the spool's byte bound")]
struct SpoolFull;

/// A write error as the client hears it.
fn write_error(e: std::io::Error) -> StreamError {
    if e.get_ref().is_some_and(|i| i.is::<SpoolFull>()) {
        StreamError::Spool(SpoolError::Full)
    } else if e.kind() == std::io::ErrorKind::StorageFull {
        StreamError::Spool(SpoolError::DiskFull)
    } else {
        StreamError::Spool(SpoolError::Io(e))
    }
}

/// Runs the pipeline over `input` to the end (blocking: call it on the blocking pool).
pub fn run(input: Box<dyn Read + Send>, plan: &Plan, gauge: Arc<DiskGauge>) -> Result<Streamed, StreamError> {
    let hold = DiskHold::new(gauge, plan.reserve).map_err(write_error)?;
    let (temp, file) = TempBody::create(&plan.dir, plan.now_ms).map_err(write_error)?;
    let (name, mut decoded) = if plan.codings.is_empty() {
        ("body", input)
    } else {
        codec::decode_stream(&plan.codings, input).map_err(BodyError::from)?
    };
    let out = Counted { inner: BufWriter::with_capacity(BUFFER_BYTES, file), written: 0, hold };
    let mut enc = StreamEncoder::new(plan.algo, plan.level, out).map_err(write_error)?;
    let mut check = plan.envelope.then(EnvelopeStream::new);
    let mut buf = vec![0u8; BUFFER_BYTES];
    let mut total = 0usize;
    loop {
        let n = match decoded.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BodyError::Corrupt(name, e).into()),
        };
        total += n;
        if total > plan.decoded_limit {
            return Err(BodyError::TooLarge(plan.decoded_limit).into());
        }
        if let Some(c) = &mut check {
            c.feed(&buf[..n]);
            // A grammar error is final: nothing more is written. The rest is still decoded (and
            // counted), so that a bomb is told it is too large whatever its bytes, as when
            // bodies were decoded whole before they were parsed.
            if c.error().is_some() {
                continue;
            }
        }
        enc.write_all(&buf[..n]).map_err(write_error)?;
    }
    let facts = check.map(EnvelopeStream::finish).transpose()?;
    let encoding = enc.encoding();
    let mut out = enc.finish().map_err(write_error)?;
    out.flush().map_err(write_error)?;
    let len = out.written;
    drop(out);
    Ok(Streamed { file: temp.finish(len), encoding, facts, decoded_len: total as u64 })
}

/// Wire pieces from the async side, read by the pipeline on its blocking thread; each piece's
/// budget is given back once the pipeline has consumed it, and a decoder slot is held only
/// while there is a piece to work on.
struct ChannelReader {
    rx: mpsc::Receiver<(Bytes, Hold)>,
    cur: Bytes,
    cur_hold: Hold,
    slots: Arc<Semaphore>,
    slot: Option<OwnedSemaphorePermit>,
    rt: tokio::runtime::Handle,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.cur.is_empty() {
            self.cur_hold = Hold::default();
            // Waiting for the network: the decoder slot is for others meanwhile.
            self.slot = None;
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some((b, h)) => (self.cur, self.cur_hold) = (b, h),
            }
            self.slot = self.rt.block_on(self.slots.clone().acquire_owned()).ok();
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

/// Streams a body to a file: `prefix` (read already) then the rest of `rest`, through the
/// pipeline of `plan` on the blocking pool, decoder slots from `slots`, each piece paid from
/// `budget` while it waits.
pub async fn stream(
    prefix: Bytes,
    mut rest: Rest,
    plan: Plan,
    gauge: Arc<DiskGauge>,
    slots: Arc<Semaphore>,
    budget: &Budget,
) -> Result<Streamed, StreamError> {
    let (tx, rx) = mpsc::channel(CHANNEL_PIECES);
    let reader = ChannelReader {
        rx,
        cur: prefix,
        cur_hold: Hold::default(),
        slots,
        slot: None,
        rt: tokio::runtime::Handle::current(),
    };
    let worker = tokio::task::spawn_blocking(move || run(Box::new(reader), &plan, gauge));
    let mut failed = None;
    loop {
        let data = match rest.next().await {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(e) => {
                failed = Some(e);
                break;
            }
        };
        let mut hold = Hold::default();
        if let Err(e) = budget.take(&mut hold, data.len(), false).await {
            failed = Some(e.into());
            break;
        }
        // The pipeline stopped early (it found the body bad): its error is the answer.
        if tx.send((data, hold)).await.is_err() {
            break;
        }
    }
    drop(tx);
    // Waited for even when reading failed, so that its file is gone before the answer.
    let done = worker.await.map_err(|e| BodyError::Read(e.to_string()))?;
    match failed {
        Some(e) => Err(e.into()),
        None => done,
    }
}

/// Streams a body held in memory (small on the wire, large once decoded) to a file. Its decoder
/// runs only with a slot of the pool, as every in-memory decode does, so the number of decoders
/// alive is bounded by the slots (each up to a 16 MiB brotli window, as before); the compressor
/// and buffers are paid from `budget` once the slot is taken, so that bombs queued for a slot
/// hold nothing.
pub async fn stream_whole(
    wire: Bytes,
    plan: Plan,
    gauge: Arc<DiskGauge>,
    slots: Arc<Semaphore>,
    budget: &Budget,
    hold: &mut Hold,
) -> Result<Streamed, StreamError> {
    let slot = slots.acquire_owned().await.map_err(|e| BodyError::Read(e.to_string()))?;
    budget.take(hold, plan.encoder_bytes(), false).await.map_err(BodyError::from)?;
    tokio::task::spawn_blocking(move || {
        let out = run(Box::new(std::io::Cursor::new(wire)), &plan, gauge);
        drop(slot);
        out
    })
    .await
    .map_err(|e| BodyError::Read(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dir: &std::path::Path, codings: &[&str], limit: usize) -> Plan {
        Plan {
            dir: dir.to_owned(),
            codings: codings.iter().map(|c| (*c).to_owned()).collect(),
            decoded_limit: limit,
            envelope: true,
            algo: Encoding::Gzip,
            level: 1,
            now_ms: 1,
            reserve: 0,
        }
    }

    fn files(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |d| d.count())
    }

    #[test]
    fn a_body_streams_to_a_file_within_its_limits_or_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let bodies = dir.path().join("bodies");
        let mut env =
            b"{\"event_id\":\"9ec79c33ec9942ab8353589fcb2e04dc\"}\n{\"type\":\"attachment\",\"length\":2000000}\n"
                .to_vec();
        env.extend(std::iter::repeat_n(b'z', 2_000_000));
        let gauge = Arc::new(DiskGauge::new(1 << 30, None));
        let zs = zstd::stream::encode_all(&env[..], 3).unwrap();
        let s =
            run(Box::new(std::io::Cursor::new(zs.clone())), &plan(&bodies, &["zstd"], 4 << 20), gauge.clone()).unwrap();
        assert_eq!(s.encoding, Encoding::Gzip);
        let facts = s.facts.clone().unwrap();
        assert_eq!(
            (facts.event_id.as_deref(), &facts.item_types[..]),
            (Some("9ec79c33ec9942ab8353589fcb2e04dc"), &["attachment".to_owned()][..])
        );
        let stored = std::fs::read(s.file.path()).unwrap();
        assert_eq!(Encoding::Gzip.decode(&Bytes::from(stored), 4 << 20).unwrap(), env);
        assert_eq!(gauge.in_flight(), 0, "given back once written");
        drop(s);
        assert_eq!(files(&bodies), 0, "a file nobody took is removed");
        // Past the decoded limit: 413, no file.
        let err = run(Box::new(std::io::Cursor::new(zs.clone())), &plan(&bodies, &["zstd"], 1 << 20), gauge.clone());
        assert!(matches!(err, Err(StreamError::Body(BodyError::TooLarge(_)))), "{err:?}");
        // Past the bound for files in flight: refused, no file, nothing left counted.
        let small = Arc::new(DiskGauge::new(1000, None));
        let err = run(Box::new(std::io::Cursor::new(env.clone())), &plan(&bodies, &[], 4 << 20), small.clone());
        assert!(matches!(err, Err(StreamError::Spool(SpoolError::Full))), "{err:?}");
        let reserved = Plan { reserve: 2000, ..plan(&bodies, &[], 4 << 20) };
        let err = run(Box::new(std::io::Cursor::new(env.clone())), &reserved, small.clone());
        assert!(matches!(err, Err(StreamError::Spool(SpoolError::Full))), "refused at once by its length");
        assert_eq!(small.in_flight(), 0);
        // Not an envelope: 400, no file; a corrupt stream likewise.
        let mut bad = env.clone();
        bad[78] = b'9';
        let err = run(Box::new(std::io::Cursor::new(bad)), &plan(&bodies, &[], 4 << 20), gauge.clone());
        assert!(matches!(err, Err(StreamError::Envelope(_))), "{err:?}");
        let err =
            run(Box::new(std::io::Cursor::new(zs[..zs.len() / 2].to_vec())), &plan(&bodies, &["zstd"], 4 << 20), gauge);
        assert!(matches!(err, Err(StreamError::Body(BodyError::Corrupt("zstd", _)))), "{err:?}");
        assert_eq!(files(&bodies), 0);
    }
}
