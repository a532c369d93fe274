//! Reading an upstream's answer for one record: the counters and log lines each kind of answer
//! moves, the rate limits it announces, and the [`Verdict`] `decide` turns into what the spool
//! does with the record.

use super::*;

impl Dispatcher {
    /// Counts and logs the upstream's answer, applies the rate limits it announced, and says what
    /// it means for the record.
    pub(super) fn verdict(
        &self,
        state: &UpstreamState,
        outcome: Outcome,
        scoping: Scoping<'_>,
        q: &Queued,
        now: u64,
    ) -> Verdict {
        let rec = &q.record;
        let upstream = scoping.upstream.as_str();
        match outcome {
            Outcome::Delivered { limits } => {
                let hot = t::hot();
                hot.attempts_2xx.increment(1);
                hot.delivered.increment(1);
                self.limits.apply(scoping, &limits, now);
                Verdict::Delivered
            }
            Outcome::Rejected { status, detail, limits } => {
                counter!(t::UPSTREAM_ATTEMPTS, "result" => "4xx").increment(1);
                counter!(t::FORWARDED, "outcome" => "rejected").increment(1);
                self.limits.apply(scoping, &limits, now);
                for c in rec.categories.iter() {
                    counter!(t::DROPPED, "reason" => "upstream_rejected", "category" => c.name()).increment(1);
                }
                tracing::warn!(
                    status,
                    detail = detail.as_deref().unwrap_or("-"),
                    project = rec.project_id,
                    event_id = rec.event_id.as_deref().unwrap_or("-"),
                    upstream,
                    "upstream rejected the envelope for good; dropped"
                );
                Verdict::Rejected
            }
            Outcome::RateLimited { retry_after, limits } => {
                counter!(t::UPSTREAM_ATTEMPTS, "result" => "429").increment(1);
                if limits.is_empty() {
                    self.limits.apply_all(scoping, now + ms(retry_after));
                } else {
                    self.limits.apply(scoping, &limits, now);
                }
                let until = self.limits.blocked_until(scoping, rec.categories, now).unwrap_or(now + ms(retry_after));
                if let Some(answers) = lock(&state.limited_log).hit(now) {
                    tracing::info!(
                        upstream,
                        retry_after_ms = until.saturating_sub(now),
                        answers,
                        "rate limited by the upstream (429 answers since the last line)"
                    );
                }
                Verdict::UpstreamLimited { until }
            }
            Outcome::Refused { reason } => {
                counter!(t::UPSTREAM_ATTEMPTS, "result" => "refused").increment(1);
                tracing::debug!(reason, upstream, attempts = q.attempts, "upstream did not process it");
                Verdict::Refused
            }
            Outcome::Transient { failure, reason } => {
                let label = if matches!(failure, Failure::Http5xx | Failure::Http408) { "5xx" } else { "error" };
                counter!(t::UPSTREAM_ATTEMPTS, "result" => label).increment(1);
                counter!(t::UPSTREAM_FAILURES, "reason" => failure.label()).increment(1);
                tracing::debug!(
                    reason = failure.label(),
                    detail = reason,
                    upstream,
                    attempts = q.attempts,
                    "transient upstream failure"
                );
                Verdict::Failed
            }
        }
    }
}
