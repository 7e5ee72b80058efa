//! When the heartbeat renews, when it retries, and when it gives a
//! reservation up as lost. Time comes in as an argument, so the tests run
//! it on a fake clock.

use std::time::Duration;

use log::Level;

use crate::core::clock::Moment;
use crate::core::grant::Grant;
use crate::core::lost::LostReason;
use crate::core::settings::Settings;

/// What a renewal attempt came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Beat {
    /// Renewed; the next renewal is an interval away.
    Renewed,
    /// No answer; try again soon (before the TTL runs out).
    Retry,
    /// Stop: it is lost.
    Lost(LostReason),
}

/// The heartbeat's schedule.
pub(crate) struct Schedule<I> {
    interval: Duration,
    ttl: Duration,
    /// The last moment the server surely had the reservation alive for a
    /// whole TTL after (a reply received then was processed before it).
    last_ok: I,
    next: I,
}

impl<I: Moment> Schedule<I> {
    pub(crate) fn new(settings: &Settings, granted_at: I) -> Schedule<I> {
        Schedule {
            interval: settings.heartbeat_interval,
            ttl: settings.lock_ttl,
            last_ok: granted_at,
            next: granted_at + settings.heartbeat_interval,
        }
    }

    /// When to renew next.
    pub(crate) fn next(&self) -> I {
        self.next
    }

    /// The decision after a RENEW: `Some(held)` is its answer, `None` no
    /// answer at all (an error), seen at `now`.
    pub(crate) fn decide(&mut self, held: Option<bool>, now: I) -> Beat {
        match held {
            Some(true) => {
                self.last_ok = now;
                self.next = now + self.interval;
                Beat::Renewed
            }
            Some(false) => Beat::Lost(LostReason::NotHeld),
            None if now - self.last_ok >= self.ttl => Beat::Lost(LostReason::NotRenewedInTime),
            None => {
                // Retry sooner than a full interval, but not in a tight loop.
                let retry_in = (self.interval / 4)
                    .max(Duration::from_millis(10))
                    .min(self.interval);
                self.next = (now + retry_in).min(self.last_ok + self.ttl);
                Beat::Retry
            }
        }
    }

    /// Applies a RENEW's `outcome` to `grant`: logs, marks it lost when it
    /// is. Returns whether the heartbeat goes on.
    pub(crate) fn observe<E: std::fmt::Display>(
        &mut self,
        settings: &Settings,
        grant: &Grant,
        outcome: Result<bool, E>,
        now: I,
    ) -> bool {
        let held = outcome.as_ref().ok().copied();
        match self.decide(held, now) {
            Beat::Renewed => {
                settings.log(Level::Debug, &format!("renewed {}", grant.key));
                true
            }
            Beat::Retry => {
                if let Err(e) = outcome {
                    settings.log(
                        Level::Warn,
                        &format!("could not renew {}: {e}; retrying", grant.key),
                    );
                }
                true
            }
            Beat::Lost(reason) => {
                grant.mark_lost(settings, reason);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::grant::Claim;
    use std::sync::{Arc, Mutex};

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    /// A 3 s TTL renewed every second; the fake clock is a `Duration`.
    fn schedule() -> Schedule<Duration> {
        Schedule::new(&Settings::for_tests(Arc::default()), Duration::ZERO)
    }

    #[test]
    fn renews_every_interval_after_the_last_success() {
        let mut hb = schedule();
        assert_eq!(hb.next(), S);
        assert_eq!(hb.decide(Some(true), S + 50 * MS), Beat::Renewed);
        assert_eq!(hb.next(), 2 * S + 50 * MS);
    }

    #[test]
    fn not_held_is_lost_at_once() {
        let mut hb = schedule();
        assert_eq!(hb.decide(Some(false), S), Beat::Lost(LostReason::NotHeld));
    }

    #[test]
    fn failures_retry_at_a_quarter_interval_until_the_ttl_is_spent() {
        let mut hb = schedule();
        assert_eq!(hb.decide(None, S), Beat::Retry);
        assert_eq!(hb.next(), S + 250 * MS);
        // The last retry lands exactly when the TTL runs out ...
        assert_eq!(hb.decide(None, 3 * S - 100 * MS), Beat::Retry);
        assert_eq!(hb.next(), 3 * S);
        // ... and failing then means it has expired on the server.
        assert_eq!(
            hb.decide(None, 3 * S),
            Beat::Lost(LostReason::NotRenewedInTime)
        );
    }

    #[test]
    fn a_success_restarts_the_ttl_window() {
        let mut hb = schedule();
        assert_eq!(hb.decide(None, S), Beat::Retry);
        assert_eq!(hb.decide(Some(true), 2 * S), Beat::Renewed);
        assert_eq!(hb.decide(None, 4 * S), Beat::Retry);
        assert_eq!(
            hb.decide(None, 5 * S),
            Beat::Lost(LostReason::NotRenewedInTime)
        );
    }

    #[test]
    fn retries_are_never_a_tight_loop() {
        let mut s = Settings::for_tests(Arc::default());
        s.heartbeat_interval = 20 * MS;
        let mut hb = Schedule::new(&s, Duration::ZERO);
        assert_eq!(hb.decide(None, 20 * MS), Beat::Retry);
        assert_eq!(hb.next(), 30 * MS);
        s.heartbeat_interval = 4 * MS;
        let mut hb = Schedule::new(&s, Duration::ZERO);
        assert_eq!(hb.decide(None, 4 * MS), Beat::Retry);
        assert_eq!(hb.next(), 8 * MS, "at most an interval");
    }

    #[test]
    fn observe_logs_and_marks_lost() {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let s = Settings::for_tests(logs.clone());
        let grant = Claim::new(&s, "job").granted(&s, &[3]);
        let mut hb = Schedule::new(&s, Duration::ZERO);
        assert!(hb.observe(&s, &grant, Ok::<_, String>(true), S));
        assert!(hb.observe(&s, &grant, Err("refused"), 2 * S));
        assert!(!grant.is_lost());
        assert!(!hb.observe(&s, &grant, Err("refused"), 4 * S));
        assert!(grant.is_lost());
        let logs = logs.lock().unwrap();
        assert!(logs.iter().any(|l| l.contains("renewed reservation-job")));
        assert!(logs
            .iter()
            .any(|l| l.contains("could not renew reservation-job: refused")));
        assert!(logs
            .iter()
            .any(|l| l.contains("no renewal succeeded within its TTL")));
    }
}
