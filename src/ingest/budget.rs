//! The one memory budget for request bytes held in memory, across all connections: wire bytes as
//! body pieces are read, and decoded bytes once a body is decoded.
//!
//! It is a semaphore of bytes, split in two: a shared part any request may draw from, and a
//! reserve only small requests may use, so that errors, sessions and check-ins keep flowing while
//! large uploads wait. A request that cannot get its bytes stops being read (hyper stops reading
//! its socket: back-pressure) and, after [`Budget::wait`], is refused (503 with `Retry-After`).
//! What a request holds is given back when its [`Hold`] is dropped, after the spool append.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Requests this small (by `Content-Length`, or by what has been read so far) may draw from the
/// reserve: every error, session and check-in an SDK sends is well under it.
pub const SMALL_BYTES: usize = 256 * 1024;

/// The part of the budget kept for small requests: a sixth (8 MiB of the default 48 MiB).
const RESERVE_SHARE: usize = 6;

/// No budget for the bytes: within the wait (the sidecar is overloaded; a retry may pass), or
/// ever (the body alone needs more than the budget: retrying cannot help).
#[derive(Debug, thiserror::Error)]
pub enum Overloaded {
    /// The budget stayed used up for the whole wait.
    #[error("the sidecar has {0} bytes of request bodies in memory already; retry later")]
    Busy(usize),
    /// More than the part of the budget this request may ever draw from.
    #[error("the body needs {need} bytes in memory, more than the in-flight budget allows one request ({room} bytes; --max-inflight-bytes)")]
    NeverFits {
        /// Bytes the request needs.
        need: usize,
        /// The most it could ever get.
        room: usize,
    },
}

/// The shared budget of request bytes in memory.
#[derive(Debug)]
pub struct Budget {
    shared: Arc<Semaphore>,
    reserve: Arc<Semaphore>,
    total: usize,
    shared_total: usize,
    wait: Duration,
}

/// The bytes one request holds; given back on drop.
#[derive(Debug, Default)]
pub struct Hold {
    shared: Option<OwnedSemaphorePermit>,
    reserve: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

impl Hold {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn add(slot: &mut Option<OwnedSemaphorePermit>, permit: OwnedSemaphorePermit) {
        match slot {
            Some(p) => p.merge(permit),
            None => *slot = Some(permit),
        }
    }
}

impl Budget {
    /// A budget of `total` bytes, a sixth of it kept for small requests; a request waits at most
    /// `wait` for its next piece of budget.
    pub fn new(total: usize, wait: Duration) -> Budget {
        // tokio's semaphore counts up to `usize::MAX >> 3` permits.
        let total = total.clamp(RESERVE_SHARE, usize::MAX >> 4);
        let reserve = total / RESERVE_SHARE;
        Budget {
            shared: Arc::new(Semaphore::new(total - reserve)),
            reserve: Arc::new(Semaphore::new(reserve)),
            total,
            shared_total: total - reserve,
            wait,
        }
    }

    /// How long a request waits for budget before it is refused.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// Bytes held by all requests now.
    pub fn in_use(&self) -> usize {
        self.total - self.shared.available_permits() - self.reserve.available_permits()
    }

    /// Adds `n` bytes to `hold`, waiting at most [`Budget::wait`] for them. A `small` request takes
    /// from the reserve when the shared part is used up; a large one only ever waits for the shared
    /// part. No single piece may be larger than the shared part (body pieces are far smaller).
    pub async fn take(&self, hold: &mut Hold, n: usize, small: bool) -> Result<(), Overloaded> {
        if n == 0 {
            return Ok(());
        }
        // More than the shared part could ever give: waiting would not help.
        let fits = n <= self.shared_total || small && n <= self.total - self.shared_total;
        let room = self.shared_total;
        let permits = u32::try_from(n).ok().filter(|_| fits).ok_or(Overloaded::NeverFits { need: n, room })?;
        if let Ok(p) = self.shared.clone().try_acquire_many_owned(permits) {
            Hold::add(&mut hold.shared, p);
        } else if let Some(p) = small.then(|| self.reserve.clone().try_acquire_many_owned(permits).ok()).flatten() {
            Hold::add(&mut hold.reserve, p);
        } else {
            // Whichever part frees up first; the acquire that loses the race is dropped unfilled.
            let shared = self.shared.clone().acquire_many_owned(permits);
            let reserve = async {
                if small {
                    self.reserve.clone().acquire_many_owned(permits).await
                } else {
                    std::future::pending().await
                }
            };
            let got = tokio::time::timeout(self.wait, async {
                tokio::select! {
                    p = shared => p.map(|p| (true, p)),
                    p = reserve => p.map(|p| (false, p)),
                }
            })
            .await;
            match got {
                Ok(Ok((true, p))) => Hold::add(&mut hold.shared, p),
                Ok(Ok((false, p))) => Hold::add(&mut hold.reserve, p),
                _ => return Err(Overloaded::Busy(self.in_use())),
            }
        }
        hold.bytes += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(1500);

    #[tokio::test(start_paused = true)]
    async fn holds_are_given_back_on_drop_and_large_requests_never_take_the_reserve() {
        let budget = Budget::new(600, WAIT);
        let mut large = Hold::default();
        budget.take(&mut large, 500, false).await.unwrap();
        assert_eq!((large.bytes(), budget.in_use()), (500, 500));
        // The shared part (500) is used up; the reserve (100) is not for a large request.
        let mut other = Hold::default();
        let started = tokio::time::Instant::now();
        assert!(budget.take(&mut other, 1, false).await.is_err());
        assert_eq!(started.elapsed(), WAIT, "refused after the wait, not at once");
        // A small one still gets its bytes, at once, from the reserve.
        let mut small = Hold::default();
        budget.take(&mut small, 60, true).await.unwrap();
        assert_eq!(budget.in_use(), 560);
        assert!(budget.take(&mut small, 60, true).await.is_err(), "the reserve has 40 left");
        drop(large);
        assert_eq!(budget.in_use(), 60);
        budget.take(&mut other, 500, false).await.unwrap();
        drop((other, small));
        assert_eq!(budget.in_use(), 0);
    }

    /// A body larger than the budget could ever hold is refused at once, as never fitting (the
    /// client gets a 413, not a 503 it would retry forever); one that fits but finds the budget
    /// used up is refused after the wait, as busy.
    #[tokio::test(start_paused = true)]
    async fn what_can_never_fit_is_refused_at_once_and_told_apart_from_busy() {
        let budget = Budget::new(600, WAIT);
        let mut h = Hold::default();
        let started = tokio::time::Instant::now();
        let err = budget.take(&mut h, 501, false).await.unwrap_err();
        assert!(matches!(err, Overloaded::NeverFits { need: 501, room: 500 }), "{err}");
        assert_eq!(started.elapsed(), Duration::ZERO);
        budget.take(&mut h, 500, false).await.unwrap();
        let mut other = Hold::default();
        assert!(matches!(budget.take(&mut other, 10, false).await, Err(Overloaded::Busy(500))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_request_gets_its_bytes_when_another_gives_them_back() {
        let budget = Arc::new(Budget::new(600, WAIT));
        let mut first = Hold::default();
        budget.take(&mut first, 500, false).await.unwrap();
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let mut h = Hold::default();
                budget.take(&mut h, 300, false).await.map(|()| h.bytes())
            })
        };
        tokio::time::sleep(WAIT / 2).await;
        drop(first);
        assert_eq!(waiter.await.unwrap().unwrap(), 300);
        // A small request waiting on both parts takes whichever frees first.
        let mut big = Hold::default();
        budget.take(&mut big, 500, false).await.unwrap();
        let mut reserve = Hold::default();
        budget.take(&mut reserve, 100, true).await.unwrap();
        let small = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.take(&mut Hold::default(), 50, true).await.is_ok() })
        };
        tokio::time::sleep(WAIT / 2).await;
        drop(reserve);
        assert!(small.await.unwrap());
        assert_eq!(budget.in_use(), 500);
    }
}
