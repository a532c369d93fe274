//! How commands reach the writer thread and answers come back: once per scheduler tick, not one
//! by one.
//!
//! Waking the thread for each command made it preempt the runtime after every request on a single
//! core (groups of one, two context switches per envelope). A command is queued, and the first one
//! of a tick spawns a task that yields once (so it runs after every task that is ready now) and
//! then sends the whole queue in one message. The answers go back the same way: the writer sends
//! them to that task in one piece and it answers the callers on the runtime thread (one
//! cross-thread wake-up per tick, not one per command).
//!
//! Acks need not be quick (a delivered record only has to leave the spool before the next start):
//! [`SqliteSpool::call_lazy`] queues one without a hand-off of its own, so it rides with the next
//! append, or goes after [`LAZY`] if none comes. At a few envelopes a second that halves the
//! writer's wake-ups and commits per envelope.
//!
//! Each hand-off carries the time it was sent, read from the spool's clock on the sending side.
//! The writer is an OS thread of its own, where tokio's clock (paused in tests) does not apply,
//! so it reads no clock and goes by the times it is handed.

use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use super::{lock, SqliteSpool};
use crate::clock::Clock;
use crate::spool::{BoxFuture, Queued, Record, Reschedule, SpoolError};

/// Longest a lazy command waits for another hand-off to ride with.
pub(super) const LAZY: Duration = Duration::from_millis(250);

/// Where a command's answer goes.
pub(super) type Reply<T> = oneshot::Sender<Result<T, SpoolError>>;

/// Answers for one hand-off, sent back in one piece, plus whether dispatch has new work.
pub(super) type Answers = (Vec<(Cmd, Out)>, bool);

/// One tick's commands. With `relay`, the writer sends every answer back through it in one wake
/// and the runtime thread answers the callers: one cross-thread wake-up (an `eventfd` write on
/// a current-thread runtime) per tick instead of one per command.
pub(super) struct Handoff {
    /// The commands, in the order they were queued.
    pub(super) cmds: Vec<Cmd>,
    /// Where the answers go back in one piece (`None`: answered one by one from the writer).
    pub(super) relay: Option<oneshot::Sender<Answers>>,
    /// The spool clock's time when the hand-off was sent (unix ms).
    pub(super) now: u64,
}

/// An operation for the writer, with where its answer goes.
pub(super) enum Cmd {
    Append(Vec<Arc<Record>>, Reply<()>),
    Read {
        max: usize,
        max_bytes: usize,
        now: u64,
        reply: Reply<Vec<Queued>>,
    },
    Ack(Vec<u64>, Reply<()>),
    Reschedule(Vec<Reschedule>, Reply<()>),
    /// Added by the writer to a group with appends while dispatch waits for records: leases up
    /// to `max` due records for [`crate::spool::Spool::take_fresh`]. Nobody waits on an answer.
    Offer {
        max: usize,
    },
}

/// A command's outcome, before it is sent to its caller.
pub(super) enum Out {
    Unit(Result<(), SpoolError>),
    Batch(Result<Vec<Queued>, SpoolError>),
}

/// Commands waiting for this tick's hand-off to the writer thread.
pub(super) struct Submit {
    queue: Vec<Cmd>,
    /// `None` once the spool is closed.
    tx: Option<mpsc::Sender<Handoff>>,
    /// A task will send the queue this tick.
    scheduled: bool,
    /// A task will send the queue after [`LAZY`] unless a tick's hand-off takes it first.
    timer: bool,
    /// Hand-offs sent so far (for tests).
    pub(super) sent: u64,
}

impl Submit {
    /// A queue that hands off to `tx`.
    pub(super) fn new(tx: mpsc::Sender<Handoff>) -> Submit {
        Submit { queue: Vec::new(), tx: Some(tx), scheduled: false, timer: false, sent: 0 }
    }

    /// Sends what is queued, stamped `now`.
    fn flush(&mut self, relay: Option<oneshot::Sender<Answers>>, now: u64) {
        self.scheduled = false;
        if let (Some(tx), false) = (&self.tx, self.queue.is_empty()) {
            // A send fails only when the writer is gone; the dropped replies then answer Closed.
            let _ = tx.send(Handoff { cmds: std::mem::take(&mut self.queue), relay, now });
            self.sent += 1;
        }
    }

    /// Sends what is queued and lets go of the writer, which then stops.
    pub(super) fn close(&mut self, now: u64) {
        self.flush(None, now);
        self.tx = None;
    }
}

impl SqliteSpool {
    /// Queues a command for this tick's hand-off and waits for its answer.
    pub(super) fn call<T: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<T>) -> Cmd,
    ) -> BoxFuture<'_, Result<T, SpoolError>> {
        self.queue(make, false)
    }

    /// Queues a command for whichever hand-off comes next, or one after [`LAZY`], and waits for
    /// its answer.
    pub(super) fn call_lazy<T: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<T>) -> Cmd,
    ) -> BoxFuture<'_, Result<T, SpoolError>> {
        self.queue(make, true)
    }

    fn queue<T: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<T>) -> Cmd,
        lazy: bool,
    ) -> BoxFuture<'_, Result<T, SpoolError>> {
        let (reply, rx) = oneshot::channel();
        let rt = tokio::runtime::Handle::try_current().ok();
        let (open, spawn) = {
            let mut s = lock(&self.submit);
            let open = s.tx.is_some();
            if open {
                s.queue.push(make(reply));
            }
            let spawn = match (open, lazy, &rt) {
                (false, ..) => None,
                // Without a runtime (the writer's own tests) every command goes at once.
                (true, _, None) => {
                    let now = self.clock.now_ms();
                    s.flush(None, now);
                    None
                }
                (true, false, Some(_)) if !s.scheduled => {
                    s.scheduled = true;
                    Some(false)
                }
                (true, true, Some(_)) if !s.scheduled && !s.timer => {
                    s.timer = true;
                    Some(true)
                }
                _ => None,
            };
            (open, spawn)
        };
        if let (Some(lazy), Some(rt)) = (spawn, rt) {
            let (submit, notify, clock) = (self.submit.clone(), self.notify.clone(), self.clock);
            rt.spawn(async move {
                if lazy {
                    tokio::time::sleep(LAZY).await;
                    let mut s = lock(&submit);
                    s.timer = false;
                    // A tick's hand-off took the queue, or will.
                    if s.scheduled || s.queue.is_empty() {
                        return;
                    }
                } else {
                    // Runs after every task that is ready now, so their commands go too.
                    tokio::task::yield_now().await;
                }
                relay(&submit, &notify, clock).await;
            });
        }
        Box::pin(async move {
            if !open {
                return Err(SpoolError::Closed);
            }
            rx.await.unwrap_or(Err(SpoolError::Closed))
        })
    }
}

/// Sends the queue to the writer and answers the callers from its one reply, on this thread.
async fn relay(submit: &Mutex<Submit>, notify: &Notify, clock: Clock) {
    let (relay, answers) = oneshot::channel();
    let now = clock.now_ms();
    lock(submit).flush(Some(relay), now);
    if let Ok((answers, wake)) = answers.await {
        for (cmd, out) in answers {
            answer(cmd, out);
        }
        if wake {
            notify.notify_one();
        }
    }
}

/// Sends a command's outcome to its caller.
pub(super) fn answer(cmd: Cmd, out: Out) {
    match (cmd, out) {
        (Cmd::Append(_, r) | Cmd::Ack(_, r) | Cmd::Reschedule(_, r), Out::Unit(res)) => {
            let _ = r.send(res);
        }
        (Cmd::Read { reply, .. }, Out::Batch(res)) => {
            let _ = reply.send(res);
        }
        (Cmd::Append(_, r) | Cmd::Ack(_, r) | Cmd::Reschedule(_, r), Out::Batch(_)) => {
            let _ = r.send(Err(SpoolError::Closed));
        }
        (Cmd::Read { reply, .. }, Out::Unit(_)) => {
            let _ = reply.send(Err(SpoolError::Closed));
        }
        // The writer keeps an offer's records itself (`writer`); none reach here.
        (Cmd::Offer { .. }, _) => {}
    }
}
