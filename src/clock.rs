//! Wall-clock time as the spool and dispatch see it: unix milliseconds, for due times, ages and
//! `received_ms`.
//!
//! It is a value passed in rather than a free function so that their timing tests can run on
//! tokio's paused clock: [`Clock::tokio`] follows `tokio::time::Instant`, which a paused test
//! runtime advances at once instead of sleeping. Production uses [`Clock::system`].

use std::time::{SystemTime, UNIX_EPOCH};

/// A source of "now" in unix milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    kind: Kind,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    System,
    Tokio { base_ms: u64, start: tokio::time::Instant },
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Clock {
        Clock { kind: Kind::System }
    }

    /// A clock that reads `base_ms` now and then moves with tokio's clock (so with a paused test
    /// runtime it jumps when the runtime auto-advances). Read it on the runtime's threads: elsewhere
    /// tokio's clock is the real one.
    pub fn tokio(base_ms: u64) -> Clock {
        Clock { kind: Kind::Tokio { base_ms, start: tokio::time::Instant::now() } }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match self.kind {
            Kind::System => now_ms(),
            Kind::Tokio { base_ms, start } => {
                base_ms.saturating_add(u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX / 4))
            }
        }
    }
}

/// Milliseconds since the Unix epoch, by the system's clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_moves_with_paused_time() {
        let c = Clock::tokio(1_000);
        assert_eq!(c.now_ms(), 1_000);
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(c.now_ms(), 91_000);
    }

    #[test]
    fn the_system_clock_is_after_2020() {
        assert!(Clock::system().now_ms() > 1_577_836_800_000);
    }
}
