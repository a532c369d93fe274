//! The story of a backlog at info level, in three kinds of line: when it starts draining (how
//! many wait, how old the oldest is), at most one progress line per [`PROGRESS_MS`] while it
//! drains, and when it is done (how many were sent, how long it took).
//!
//! Before, a backlog drained without a word, and an operator could not tell a recovering sidecar
//! from a stuck one without a dashboard. The start is told with the first batch read, as that
//! batch's oldest envelope is the oldest waiting (delivery is oldest first by default) and costs
//! nothing to know; a backlog is drained, as for the pacer, once no more than a batch is left.
//!
//! Plain state with `now` passed in (unix ms): the loop logs the [`Line`]s it returns.

/// Least time between two progress lines of one drain.
pub(super) const PROGRESS_MS: u64 = 30_000;

/// A line to log.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Line {
    /// A backlog started draining.
    Started {
        /// Envelopes waiting when it started.
        waiting: u64,
        /// The age of the oldest envelope of the first batch (ms).
        oldest_age_ms: Option<u64>,
    },
    /// Still draining.
    Progress {
        /// Envelopes left.
        left: u64,
        /// Envelopes sent (delivered or dropped for good) since the start.
        sent: u64,
        /// Since the start (ms).
        elapsed_ms: u64,
    },
    /// Drained.
    Done {
        /// Envelopes sent since the start.
        sent: u64,
        /// How long it took (ms).
        elapsed_ms: u64,
    },
}

#[derive(Debug)]
struct Run {
    started: u64,
    waiting: u64,
    sent: u64,
    announced: bool,
    last_line: u64,
}

/// The drain in progress, if any.
#[derive(Debug, Default)]
pub(super) struct Drain {
    run: Option<Run>,
}

impl Drain {
    /// A backlog of `waiting` envelopes starts draining at `now` (no-op while one drains).
    pub(super) fn start(&mut self, now: u64, waiting: u64) {
        if self.run.is_none() {
            self.run = Some(Run { started: now, waiting, sent: 0, announced: false, last_line: now });
        }
    }

    /// A batch was read at `now`, its oldest envelope received at `oldest_ms`: the first of a
    /// drain tells its start.
    pub(super) fn read(&mut self, now: u64, oldest_ms: Option<u64>) -> Option<Line> {
        let run = self.run.as_mut().filter(|r| !r.announced)?;
        run.announced = true;
        run.last_line = now;
        Some(Line::Started { waiting: run.waiting, oldest_age_ms: oldest_ms.map(|t| now.saturating_sub(t)) })
    }

    /// `n` envelopes were sent for good.
    pub(super) fn sent(&mut self, n: usize) {
        if let Some(run) = &mut self.run {
            run.sent += n as u64;
        }
    }

    /// At `now`, `left` envelopes wait: done once no more than `batch` are left, else a progress
    /// line when one is due.
    pub(super) fn tick(&mut self, now: u64, left: u64, batch: u64) -> Option<Line> {
        let run = self.run.as_mut()?;
        if left <= batch {
            let run = self.run.take()?;
            // Over before its first read (nothing to tell of): no line either.
            return run.announced.then(|| Line::Done { sent: run.sent, elapsed_ms: now.saturating_sub(run.started) });
        }
        if !run.announced || now.saturating_sub(run.last_line) < PROGRESS_MS {
            return None;
        }
        run.last_line = now;
        Some(Line::Progress { left, sent: run.sent, elapsed_ms: now.saturating_sub(run.started) })
    }

    /// Logs `line` (the dispatch loop's side of it).
    pub(super) fn log(line: Line) {
        match line {
            Line::Started { waiting, oldest_age_ms } => match oldest_age_ms {
                Some(ms) => tracing::info!(waiting, oldest_age_s = ms / 1000, "backlog draining"),
                None => tracing::info!(waiting, "backlog draining"),
            },
            Line::Progress { left, sent, elapsed_ms } => {
                tracing::info!(left, sent, elapsed_s = elapsed_ms / 1000, "backlog still draining")
            }
            Line::Done { sent, elapsed_ms } => tracing::info!(sent, took_ms = elapsed_ms, "backlog drained"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000;

    #[test]
    fn a_start_at_the_first_read_a_line_per_30_s_and_one_at_the_end() {
        let mut d = Drain::default();
        assert_eq!(d.tick(0, 500, 10), None, "nothing drains");
        assert_eq!(d.read(0, Some(0)), None);
        d.start(100 * SEC, 500);
        d.start(101 * SEC, 900);
        assert_eq!(d.tick(101 * SEC, 490, 10), None, "not told before its first read");
        assert_eq!(
            d.read(101 * SEC, Some(41 * SEC)),
            Some(Line::Started { waiting: 500, oldest_age_ms: Some(60 * SEC) })
        );
        assert_eq!(d.read(102 * SEC, Some(41 * SEC)), None, "told once");
        d.sent(200);
        assert_eq!(d.tick(130 * SEC, 300, 10), None, "less than 30 s since the last line");
        assert_eq!(d.tick(131 * SEC, 300, 10), Some(Line::Progress { left: 300, sent: 200, elapsed_ms: 31 * SEC }));
        assert_eq!(d.tick(140 * SEC, 200, 10), None);
        d.sent(300);
        assert_eq!(d.tick(150 * SEC, 10, 10), Some(Line::Done { sent: 500, elapsed_ms: 50 * SEC }));
        assert_eq!(d.tick(151 * SEC, 0, 10), None, "told once");
        // A drain over before its first read says nothing.
        d.start(200 * SEC, 20);
        assert_eq!(d.tick(200 * SEC, 5, 10), None);
        assert_eq!(d.read(201 * SEC, None), None);
    }
}
