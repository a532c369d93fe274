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
//! Each hand-off carries the time it was sent, read from the spool's clock on the sending side.
//! The writer is an OS thread of its own, where tokio's clock (paused in tests) does not apply,
//! so it reads no clock and goes by the times it is handed.

use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

use super::{lock, SqliteSpool};
use crate::spool::{BoxFuture, Queued, Record, Reschedule, SpoolError};

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
    Read { max: usize, max_bytes: usize, now: u64, reply: Reply<Vec<Queued>> },
    Ack(Vec<u64>, Reply<()>),
    Reschedule(Vec<Reschedule>, Reply<()>),
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
}

impl Submit {
    /// A queue that hands off to `tx`.
    pub(super) fn new(tx: mpsc::Sender<Handoff>) -> Submit {
        Submit { queue: Vec::new(), tx: Some(tx) }
    }

    /// Sends what is queued, stamped `now`.
    fn flush(&mut self, relay: Option<oneshot::Sender<Answers>>, now: u64) {
        if let (Some(tx), false) = (&self.tx, self.queue.is_empty()) {
            // A send fails only when the writer is gone; the dropped replies then answer Closed.
            let _ = tx.send(Handoff { cmds: std::mem::take(&mut self.queue), relay, now });
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
        let (reply, rx) = oneshot::channel();
        let (open, first) = {
            let mut s = lock(&self.submit);
            let open = s.tx.is_some();
            if open {
                s.queue.push(make(reply));
            }
            (open, s.queue.len() == 1)
        };
        if open && first {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let submit = self.submit.clone();
                    let notify = self.notify.clone();
                    let clock = self.clock;
                    rt.spawn(async move {
                        tokio::task::yield_now().await;
                        let (relay, answers) = oneshot::channel();
                        let now = clock.now_ms();
                        lock(&submit).flush(Some(relay), now);
                        if let Ok((answers, wake)) = answers.await {
                            for (cmd, out) in answers {
                                answer(cmd, out);
                            }
                            if wake {
                                notify.notify_one();
                            }
                        }
                    });
                }
                Err(_) => {
                    let now = self.clock.now_ms();
                    lock(&self.submit).flush(None, now);
                }
            }
        }
        Box::pin(async move {
            if !open {
                return Err(SpoolError::Closed);
            }
            rx.await.unwrap_or(Err(SpoolError::Closed))
        })
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
    }
}
