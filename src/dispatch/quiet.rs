//! Repeated events logged as one line per interval with a count, not one line each: a 429 for
//! every held envelope, or a spool that fails every ack on a full disk, was hundreds of lines a
//! second that buried everything else.

/// Least time between two lines about the same thing.
pub(super) const INTERVAL_MS: u64 = 10_000;

/// Counts events and says when a line is due.
#[derive(Debug, Default)]
pub(super) struct Quiet {
    count: u64,
    last: Option<u64>,
}

impl Quiet {
    /// Counts one event at `now` (unix ms); returns how many to report if a line is due (the
    /// first at once, then at most one per [`INTERVAL_MS`], covering everything since the last).
    pub(super) fn hit(&mut self, now: u64) -> Option<u64> {
        self.count += 1;
        if self.last.is_some_and(|t| now.saturating_sub(t) < INTERVAL_MS) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_at_once_then_one_line_per_interval_with_the_count() {
        let mut q = Quiet::default();
        assert_eq!(q.hit(5), Some(1));
        for t in 0..128 {
            assert_eq!(q.hit(10 + t), None);
        }
        assert_eq!(q.hit(5 + INTERVAL_MS), Some(129));
        assert_eq!(q.hit(6 + INTERVAL_MS), None);
    }
}
