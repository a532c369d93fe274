//! The end of an upstream's rate limit: one envelope probes, the rest wait for its answer.
//!
//! When a `Retry-After` or `X-Sentry-Rate-Limits` deadline passes, every envelope held for it is
//! due at once; sent together they are a burst of requests an upstream that still limits answers
//! 429 each. So a scope (project and key) with a limit learnt from the upstream gets a gate: once
//! the deadline has passed, the first envelope goes alone and the others are held; if it is
//! accepted, the gate goes and they are released; if it gets 429 again, the new deadline holds
//! them (they go back through the rate-limit table, which knows it).
//!
//! Plain state with `now` passed in (unix ms), kept per upstream beside the circuit.

/// How long an envelope held behind a probe waits if the probe's answer never releases it.
const HELD_WAIT_MS: u64 = 5_000;

/// A gate is forgotten this long after its deadline if nothing of its scope came to probe.
const STALE_MS: u64 = 3_600_000;

/// What the gate says about sending one envelope now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admit {
    /// Send it (no gate, the deadline is ahead and the table let it through, or it is the probe).
    Send,
    /// Hold it until this time (unix ms), or until the probe's answer releases it.
    Hold(u64),
}

/// How a probe's attempt ended, as far as the gate cares.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// Accepted (or any answer without a new limit): the limit is over.
    Accepted,
    /// Limited again, until this time (unix ms).
    Limited(u64),
    /// No answer (a failure or a refusal): the next envelope probes.
    None,
}

#[derive(Debug)]
struct Gate {
    project: u64,
    key: String,
    until: u64,
    probe: Option<u64>,
    held: Vec<u64>,
}

/// The gates of one upstream.
#[derive(Debug, Default)]
pub(super) struct Gates {
    gates: Vec<Gate>,
}

impl Gates {
    /// Whether no scope is gated (the common case, checked without a search).
    pub(super) fn is_empty(&self) -> bool {
        self.gates.is_empty()
    }

    fn find(&mut self, project: u64, key: &str) -> Option<usize> {
        self.gates.iter().position(|g| g.project == project && g.key == key)
    }

    /// Whether envelope `id` of scope (`project`, `key`) may be sent at `now`.
    pub(super) fn admit(&mut self, project: u64, key: &str, id: u64, now: u64) -> Admit {
        let Some(i) = self.find(project, key) else { return Admit::Send };
        let g = &mut self.gates[i];
        if now < g.until || g.probe == Some(id) {
            return Admit::Send;
        }
        if g.probe.is_none() {
            if now.saturating_sub(g.until) > STALE_MS {
                self.gates.swap_remove(i);
                return Admit::Send;
            }
            g.probe = Some(id);
            return Admit::Send;
        }
        if !g.held.contains(&id) {
            g.held.push(id);
        }
        Admit::Hold(now + HELD_WAIT_MS)
    }

    /// The upstream limited scope (`project`, `key`) until `until`: gate it (or move its deadline).
    pub(super) fn limited(&mut self, project: u64, key: &str, until: u64) {
        match self.find(project, key) {
            Some(i) => self.gates[i].until = self.gates[i].until.max(until),
            None => self.gates.push(Gate { project, key: key.to_owned(), until, probe: None, held: Vec::new() }),
        }
    }

    /// Envelope `id` of the scope got `answer`; returns the held envelopes to release now.
    pub(super) fn answered(&mut self, project: u64, key: &str, id: u64, answer: Answer) -> Vec<u64> {
        let Some(i) = self.find(project, key) else { return Vec::new() };
        let g = &mut self.gates[i];
        match answer {
            Answer::Accepted if g.probe == Some(id) || g.probe.is_none() && g.held.is_empty() => {
                self.gates.swap_remove(i).held
            }
            // An envelope sent before the deadline passed, answered after: not the probe.
            Answer::Accepted => Vec::new(),
            Answer::Limited(until) => {
                g.until = g.until.max(until);
                if g.probe == Some(id) {
                    g.probe = None;
                }
                // Back through the rate-limit table, which holds them until the new deadline.
                std::mem::take(&mut g.held)
            }
            Answer::None => {
                if g.probe == Some(id) {
                    g.probe = None;
                }
                Vec::new()
            }
        }
    }

    /// Envelope `id` was admitted as a probe but not sent (held by the circuit, or shutdown).
    pub(super) fn abandon(&mut self, id: u64) {
        for g in &mut self.gates {
            if g.probe == Some(id) {
                g.probe = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_000_000;

    #[test]
    fn one_probes_after_the_deadline_and_the_rest_follow_its_acceptance() {
        let mut g = Gates::default();
        assert_eq!(g.admit(1, "k", 1, T), Admit::Send, "no gate");
        g.limited(1, "k", T + 30_000);
        assert_eq!(g.admit(1, "k", 2, T + 1_000), Admit::Send, "before the deadline the table decides");
        assert_eq!(g.admit(1, "k", 3, T + 30_000), Admit::Send, "the probe");
        for id in 4..10 {
            assert_eq!(g.admit(1, "k", id, T + 30_001), Admit::Hold(T + 30_001 + HELD_WAIT_MS));
        }
        assert_eq!(g.admit(2, "k", 50, T + 30_001), Admit::Send, "other scopes are not gated");
        assert_eq!(g.answered(1, "k", 3, Answer::Accepted), vec![4, 5, 6, 7, 8, 9]);
        assert!(g.is_empty());
        assert_eq!(g.admit(1, "k", 10, T + 30_002), Admit::Send);
    }

    #[test]
    fn a_probe_limited_again_moves_the_deadline_and_hands_the_held_back_to_the_table() {
        let mut g = Gates::default();
        g.limited(1, "k", T);
        assert_eq!(g.admit(1, "k", 1, T), Admit::Send);
        assert!(matches!(g.admit(1, "k", 2, T), Admit::Hold(_)));
        assert_eq!(g.answered(1, "k", 1, Answer::Limited(T + 60_000)), vec![2]);
        // Until the new deadline the table holds them; after it, one probes again.
        assert_eq!(g.admit(1, "k", 3, T + 60_000), Admit::Send);
        assert!(matches!(g.admit(1, "k", 4, T + 60_000), Admit::Hold(_)));
    }

    #[test]
    fn a_probe_without_an_answer_lets_the_next_one_probe() {
        let mut g = Gates::default();
        g.limited(1, "k", T);
        assert_eq!(g.admit(1, "k", 1, T), Admit::Send);
        assert!(matches!(g.admit(1, "k", 2, T), Admit::Hold(_)));
        assert_eq!(g.answered(1, "k", 1, Answer::None), Vec::<u64>::new());
        assert_eq!(g.admit(1, "k", 2, T + 1), Admit::Send, "the next probe");
        g.abandon(2);
        assert_eq!(g.admit(1, "k", 3, T + 2), Admit::Send, "an abandoned probe is no probe");
        // An answer to an envelope sent before the deadline is not the probe's.
        assert_eq!(g.answered(1, "k", 99, Answer::Accepted), Vec::<u64>::new());
        assert!(!g.is_empty());
    }
}
