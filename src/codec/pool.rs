//! Where inbound decoding runs: on tokio's blocking pool, never on an async thread, and a few at a
//! time.
//!
//! A decoder is pure CPU until it reaches its limit: a 16 KB brotli bomb runs to the decoded limit
//! however small its input, so even a small body must not be decoded where `/healthz` is served.
//! The semaphore keeps a burst of bombs from taking every core (and the blocking pool's threads);
//! the rest wait their turn, holding only their compressed input.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Semaphore;

use super::decode::{decode_codings, DecodeError};

/// Runs decoders off the async threads, at most a fixed number at once.
#[derive(Debug, Clone)]
pub struct DecodePool {
    permits: Arc<Semaphore>,
}

impl DecodePool {
    /// A pool running at most `concurrency` decoders at once (at least one).
    pub fn new(concurrency: usize) -> DecodePool {
        DecodePool { permits: Arc::new(Semaphore::new(concurrency.max(1))) }
    }

    /// One decoder per core, up to four: enough to keep up with honest traffic on a small host
    /// without letting a flood of bombs take more than that.
    pub fn sized_for_host() -> DecodePool {
        DecodePool::new(std::thread::available_parallelism().map_or(2, |n| n.get()).min(4))
    }

    /// The semaphore of decoders: a body decoded as it arrives holds a permit only while it has
    /// input to decode, not while it waits for the network.
    pub fn permits(&self) -> Arc<Semaphore> {
        self.permits.clone()
    }

    /// Like [`DecodePool::decode`], handing `body` back as well (no copy), for a body to be
    /// decoded another way when this one stops at the limit; `None` only if the decoding thread
    /// went away.
    pub async fn decode_keeping(
        &self,
        codings: Vec<String>,
        body: Bytes,
        limit: usize,
    ) -> (Result<Bytes, DecodeError>, Option<Bytes>) {
        let permit = match self.permits.clone().acquire_owned().await {
            Ok(p) => p,
            Err(e) => return (Err(DecodeError::Interrupted(e.to_string())), Some(body)),
        };
        let job = tokio::task::spawn_blocking(move || {
            let out = super::decode::decode_slice(&codings, &body, limit);
            drop(permit);
            (out, body)
        });
        match job.await {
            Ok((out, body)) => (out, Some(body)),
            Err(e) => (Err(DecodeError::Interrupted(e.to_string())), None),
        }
    }

    /// Undoes `codings` (see [`super::codings`]) off the async threads, producing at most `limit`
    /// bytes; waits for a free decoder first.
    pub async fn decode(&self, codings: Vec<String>, body: Bytes, limit: usize) -> Result<Bytes, DecodeError> {
        if codings.is_empty() {
            return Ok(body);
        }
        let permit = self.permits.clone().acquire_owned().await.map_err(|e| DecodeError::Interrupted(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let out = decode_codings(&codings, body, limit);
            drop(permit);
            out
        })
        .await
        .map_err(|e| DecodeError::Interrupted(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bombs decode on other threads: the runtime's one thread keeps ticking meanwhile.
    #[tokio::test(flavor = "current_thread")]
    async fn bombs_do_not_block_the_runtime() {
        let pool = DecodePool::new(1);
        let bomb = Bytes::from_static(include_bytes!("../../tests/data/zeros_1gib.br"));
        let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let t = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                t.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        });
        let jobs: Vec<_> = (0..3)
            .map(|_| {
                let (p, b) = (pool.clone(), bomb.clone());
                tokio::spawn(async move { p.decode(vec!["br".into()], b, 64 << 20).await })
            })
            .collect();
        for j in jobs {
            assert!(matches!(j.await.unwrap(), Err(DecodeError::TooLarge(_))));
        }
        ticker.abort();
        assert!(ticks.load(std::sync::atomic::Ordering::Relaxed) > 1, "the runtime thread was blocked");
        assert_eq!(pool.decode(vec![], Bytes::from_static(b"x"), 1).await.unwrap(), "x");
    }
}
