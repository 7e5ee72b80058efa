//! The wait loop's decisions: how long each `RESERVE.WAIT` may block, how
//! long to connect for, what its answer means, and after a failure whether
//! to reconnect (after what backoff) or give up.

use std::time::Duration;

use log::Level;
use redis::Cmd;

use crate::core::clock::Moment;
use crate::core::grant::Claim;
#[cfg(test)]
use crate::core::protocol::Access;
use crate::core::protocol::WAIT_SLACK;
use crate::core::settings::Settings;
use crate::error::{is_transient, Error};

/// One `wait_until_lock*` call: the claim it waits with (the same holder
/// across reconnects, so a grant whose reply was lost is picked up) and
/// its run of failures.
pub(crate) struct Wait<I> {
    claim: Claim,
    deadline: Option<I>,
    failures: u32,
}

/// What to do for the next WAIT.
pub(crate) struct Attempt {
    /// For a new connection.
    pub(crate) connect_timeout: Duration,
    /// No read timeout shorter than the wait itself (`None`: none at all).
    pub(crate) read_timeout: Option<Duration>,
    pub(crate) cmd: Cmd,
}

impl<I: Moment> Wait<I> {
    /// `timeout` `None`: wait for as long as it takes.
    #[cfg(test)]
    pub(crate) fn new(
        settings: &Settings,
        resource: &str,
        access: Access,
        timeout: Option<Duration>,
        now: I,
    ) -> Wait<I> {
        Wait::for_claim(
            settings,
            Claim::with_access(settings, resource, access),
            timeout,
            now,
        )
    }

    /// Waiting for an already built claim (`wait_all`'s several keys).
    pub(crate) fn for_claim(
        settings: &Settings,
        claim: Claim,
        timeout: Option<Duration>,
        now: I,
    ) -> Wait<I> {
        settings.log(
            Level::Debug,
            &format!("waiting for {} as {}", claim.key, claim.holder),
        );
        Wait {
            claim,
            deadline: timeout.map(|t| now + t),
            failures: 0,
        }
    }

    /// What is left of the timeout (at least 1 ms: a 0 would wait forever).
    fn remaining(&self, now: I) -> Option<Duration> {
        self.deadline.map(|d| {
            if d > now {
                d - now
            } else {
                Duration::from_millis(1)
            }
        })
    }

    pub(crate) fn attempt(&self, settings: &Settings, now: I) -> Attempt {
        let remaining = self.remaining(now);
        let c = &self.claim;
        Attempt {
            connect_timeout: remaining.map_or(settings.connect_timeout, |r| {
                r.min(settings.connect_timeout)
                    .max(Duration::from_millis(10))
            }),
            read_timeout: remaining.map(|r| r + WAIT_SLACK),
            cmd: c.wait_cmd(settings, remaining),
        }
    }

    /// WAIT's (WAITALL's) answer: the tokens, or `None` (0 or nil: timed
    /// out, or unblocked without a grant when there was no timeout).
    pub(crate) fn reply(&self, settings: &Settings, tokens: Option<Vec<u64>>) -> Option<Vec<u64>> {
        if tokens.is_some() {
            return tokens;
        }
        if self.deadline.is_some() {
            settings.log(
                Level::Debug,
                &format!("gave up waiting for {}", self.claim.key),
            );
        } else {
            settings.log(
                Level::Warn,
                &format!(
                    "RESERVE.WAIT on {} was unblocked without a grant",
                    self.claim.key
                ),
            );
        }
        None
    }

    /// After a failed connect (`ran_for` `None`) or a WAIT that failed
    /// after `ran_for`: how long to back off before trying again, or the
    /// error to give up with (permanent error, attempts used up, deadline
    /// passed).
    pub(crate) fn retry(
        &mut self,
        settings: &Settings,
        err: redis::RedisError,
        ran_for: Option<Duration>,
        now: I,
    ) -> Result<Duration, Error> {
        if !is_transient(&err) {
            return Err(Error::from_redis(err));
        }
        if ran_for.is_some_and(|t| t >= Duration::from_secs(1)) {
            // That connection worked for a while: a new run of failures
            // starts.
            self.failures = 0;
        }
        self.failures += 1;
        let failures = self.failures;
        let key = &self.claim.key;
        let remaining = self
            .deadline
            .map(|d| if d > now { d - now } else { Duration::ZERO });
        if failures > settings.reconnect_attempts || remaining.is_some_and(|r| r.is_zero()) {
            settings.log(
                Level::Error,
                &format!("giving up waiting for {key} after {failures} failed attempts: {err}"),
            );
            return Err(Error::from_redis(err));
        }
        let delay = backoff(failures, settings.max_backoff, rand::random());
        let delay = remaining.map_or(delay, |r| delay.min(r));
        settings.log(
            Level::Warn,
            &format!(
                "waiting for {key}: {err}; reconnecting in {delay:?} (attempt {failures} of {})",
                settings.reconnect_attempts
            ),
        );
        Ok(delay)
    }

    pub(crate) fn into_claim(self) -> Claim {
        self.claim
    }
}

/// Delay before reconnect attempt `n` (1-based): 50 ms doubling up to
/// `max`, plus up to 25 % jitter (from `random`) so a crowd of waiters
/// does not reconnect in lock step.
pub(crate) fn backoff(n: u32, max: Duration, random: u64) -> Duration {
    let base = Duration::from_millis(50)
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(max);
    let jitter_ms = (base.as_millis() as u64 / 4).max(1);
    base + Duration::from_millis(random % jitter_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::protocol::args;
    use std::sync::{Arc, Mutex};

    const MS: Duration = Duration::from_millis(1);

    fn dropped() -> redis::RedisError {
        redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_a_quarter_of_jitter() {
        let max = Duration::from_secs(1);
        assert_eq!(backoff(1, max, 0), 50 * MS);
        assert_eq!(backoff(2, max, 0), 100 * MS);
        assert_eq!(backoff(3, max, 0), 200 * MS);
        assert_eq!(backoff(10, max, 0), max);
        assert_eq!(backoff(u32::MAX, max, 0), max);
        assert_eq!(backoff(1, max, 11), 61 * MS);
        assert_eq!(backoff(1, max, 12), 50 * MS, "jitter below 25 %");
        assert_eq!(backoff(1, MS, 7), MS);
    }

    #[test]
    fn each_wait_blocks_for_what_is_left_and_never_for_zero() {
        let s = Settings::for_tests(Arc::default());
        let w = Wait::new(
            &s,
            "job",
            Access::Exclusive,
            Some(2000 * MS),
            Duration::ZERO,
        );
        let holder = w.claim.holder.clone();
        let a = w.attempt(&s, 500 * MS);
        assert_eq!(
            args(&a.cmd),
            ["RESERVE.WAIT", "reservation-job", &holder, "3.000", "1.500"]
        );
        assert_eq!(a.read_timeout, Some(1500 * MS + WAIT_SLACK));
        assert_eq!(a.connect_timeout, 1500 * MS);
        let late = w.attempt(&s, 3000 * MS);
        assert_eq!(args(&late.cmd)[4], "0.001");
        assert_eq!(late.connect_timeout, 10 * MS);

        let forever = Wait::new(&s, "job", Access::Exclusive, None, Duration::ZERO);
        let a = forever.attempt(&s, 500 * MS);
        assert_eq!(args(&a.cmd)[4], "0");
        assert_eq!(a.read_timeout, None);
        assert_eq!(a.connect_timeout, s.connect_timeout);
    }

    #[test]
    fn a_zero_reply_is_a_timeout_or_an_unblock() {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let s = Settings::for_tests(logs.clone());
        let timed = Wait::new(&s, "job", Access::Exclusive, Some(MS), Duration::ZERO);
        let forever = Wait::new(&s, "job", Access::Exclusive, None, Duration::ZERO);
        assert_eq!(timed.reply(&s, Some(vec![4])), Some(vec![4]));
        assert_eq!(timed.reply(&s, None), None);
        assert_eq!(forever.reply(&s, None), None);
        let logs = logs.lock().unwrap();
        assert!(logs.iter().any(|l| l.contains("gave up waiting")));
        assert!(logs.iter().any(|l| l.contains("unblocked without a grant")));
    }

    #[test]
    fn reconnects_until_the_attempts_are_used_up() {
        let s = Settings::for_tests(Arc::default());
        let mut w = Wait::new(&s, "job", Access::Exclusive, None, Duration::ZERO);
        for n in 1..=s.reconnect_attempts {
            let delay = w.retry(&s, dropped(), None, Duration::ZERO).unwrap();
            assert!(delay >= backoff(n, s.max_backoff, 0), "{delay:?}");
        }
        assert!(matches!(
            w.retry(&s, dropped(), None, Duration::ZERO),
            Err(Error::Connection(_))
        ));
    }

    #[test]
    fn a_connection_that_worked_a_while_starts_a_new_run() {
        let s = Settings::for_tests(Arc::default());
        let mut w = Wait::new(&s, "job", Access::Exclusive, None, Duration::ZERO);
        for _ in 0..10 {
            let ran_for = Some(Duration::from_secs(1));
            assert!(w.retry(&s, dropped(), ran_for, Duration::ZERO).is_ok());
        }
    }

    #[test]
    fn never_backs_off_past_the_deadline() {
        let s = Settings::for_tests(Arc::default());
        let mut w = Wait::new(
            &s,
            "job",
            Access::Exclusive,
            Some(1000 * MS),
            Duration::ZERO,
        );
        let delay = w.retry(&s, dropped(), None, 990 * MS).unwrap();
        assert!(delay <= 10 * MS, "{delay:?}");
        assert!(w.retry(&s, dropped(), None, 1000 * MS).is_err());
    }

    #[test]
    fn permanent_errors_give_up_at_once() {
        let s = Settings::for_tests(Arc::default());
        let mut w = Wait::new(&s, "job", Access::Exclusive, None, Duration::ZERO);
        let wrongtype = redis::RedisError::from((redis::ErrorKind::TypeError, "WRONGTYPE"));
        assert!(matches!(
            w.retry(&s, wrongtype, None, Duration::ZERO),
            Err(Error::Redis(_))
        ));
    }
}
