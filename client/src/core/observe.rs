//! Watching a key with `RESERVE.OBSERVE`, without I/O: the leader-change
//! feed (it keeps the last token seen, so a change is never missed, not
//! even one that happened while its connection was down) and the lost
//! watcher of a held reservation (OBSERVE with the reservation's own
//! token: any answer but a timeout means the grant is gone).
//!
//! OBSERVE is a watch with no lost wake-ups: it answers at once when the
//! key's grant token differs from the one given, and otherwise blocks until
//! it does. So both loops only have to remember a token, never to compare
//! snapshots or to poll. The managers own the connections, threads, tasks
//! and sleeps, and ask this module what to send and what answers mean.

use std::time::Duration;

use log::Level;
use redis::Value;

use crate::core::grant::Grant;
use crate::core::lost::LostReason;
use crate::core::protocol::{self, Access, Leader, MAX_TOKEN, WAIT_SLACK};
use crate::core::settings::Settings;
use crate::core::wait::{backoff, Attempt};
use crate::error::{is_transient, Error};

/// How long one OBSERVE of the leader feed blocks before it is re-issued
/// with the same token. The read timeout is this plus `WAIT_SLACK`, so a
/// connection that died silently is found within that.
pub(crate) const FEED_POLL: Duration = Duration::from_secs(30);

/// How long one OBSERVE of a lost watcher blocks. Our own release wakes
/// it at once; this bounds how long a watcher outlives its reservation
/// when nothing does (a release that failed, a lost reservation whose
/// key never changed again).
pub(crate) const WATCH_POLL: Duration = Duration::from_secs(5);

/// A run of failures counts from zero again once a connection has worked
/// this long.
const STABLE: Duration = Duration::from_secs(1);

/// What the leader feed reports: the new leader, or `None` for "no
/// leader" (the key holds no grant, or is in its lock-delay).
pub(crate) type Change = Option<Leader>;

/// An OBSERVE that asks for a key's current state: with a token the key
/// does not have, it answers at once. First with [`MAX_TOKEN`] (which
/// no key has in practice, so even an old library's lock, token 0, is
/// reported); if that times out the key has exactly that token, and a
/// second one with token 0 tells its holder. The timeout only bounds the
/// wait for that case.
pub(crate) fn current_cmd(key: &str, probe: u64) -> redis::Cmd {
    protocol::observe(key, probe, Some(Duration::from_millis(1)))
}

/// What [`current_cmd`]`(key, probe)` answered: `Ok(Some(state))` (who
/// holds the key; `None`: no one, or its lock-delay runs), or `Ok(None)`
/// to ask again with token 0 (the key's token is `probe`).
pub(crate) fn current_reply(value: Value, probe: u64) -> Result<Option<Change>, Error> {
    match protocol::observe_reply(value) {
        Ok(Some(now)) => Ok(Some(now)),
        // Token 0 is "no grant" (or an old library's lock, which a probe
        // with MAX_TOKEN has reported already).
        Ok(None) if probe == 0 => Ok(Some(None)),
        Ok(None) => Ok(None),
        Err(e) => Err(Error::Redis(e)),
    }
}

/// The leader-change feed of one key.
pub(crate) struct Feed {
    key: String,
    /// The token of the last state reported (0: no leader); `None` before
    /// the first, so the first OBSERVE reports the current state at once.
    last: Option<u64>,
    failures: u32,
    /// A permanent error was reported: the feed is over.
    ended: bool,
}

impl Feed {
    pub(crate) fn new(key: String) -> Feed {
        Feed {
            key,
            last: None,
            failures: 0,
            ended: false,
        }
    }

    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    pub(crate) fn ended(&self) -> bool {
        self.ended
    }

    /// The next OBSERVE, with the last token seen.
    pub(crate) fn attempt(&self, settings: &Settings) -> Attempt {
        Attempt {
            connect_timeout: settings.connect_timeout,
            read_timeout: Some(FEED_POLL + WAIT_SLACK),
            cmd: protocol::observe(&self.key, self.last.unwrap_or(MAX_TOKEN), Some(FEED_POLL)),
        }
    }

    /// OBSERVE answered `value`: `Ok(Some(change))` to report,
    /// `Ok(None)` to observe again (it timed out: nothing changed). A
    /// reply that makes no sense ends the feed with an error rather than
    /// spin on it.
    pub(crate) fn reply(&mut self, value: Value) -> Result<Option<Change>, Error> {
        let now = match protocol::observe_reply(value) {
            Ok(Some(now)) => now,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.ended = true;
                return Err(Error::Redis(e));
            }
        };
        let token = now.as_ref().map_or(0, |l| l.token);
        if self.last == Some(token) {
            // OBSERVE answers at once only when the token differs:
            // answering the same one would make this loop spin.
            self.ended = true;
            return Err(Error::Redis(redis::RedisError::from((
                redis::ErrorKind::TypeError,
                "RESERVE.OBSERVE answered the token it was given",
                token.to_string(),
            ))));
        }
        self.last = Some(token);
        Ok(Some(now))
    }

    /// After a failed connect (`ran_for` `None`) or an OBSERVE that failed
    /// after `ran_for`: the backoff before reconnecting, or the error to
    /// report. A permanent error (WRONGTYPE, no module, NOPERM) ends the
    /// feed; after `reconnect_attempts` failed attempts in a row the
    /// connection error is reported and the feed goes on (the next call
    /// starts a new run of attempts).
    pub(crate) fn retry(
        &mut self,
        settings: &Settings,
        err: redis::RedisError,
        ran_for: Option<Duration>,
    ) -> Result<Duration, Error> {
        if !is_transient(&err) {
            self.ended = true;
            return Err(Error::from_redis(err));
        }
        if ran_for.is_some_and(|t| t >= STABLE) {
            self.failures = 0;
        }
        self.failures += 1;
        let failures = self.failures;
        let key = &self.key;
        if failures > settings.reconnect_attempts {
            settings.log(
                Level::Error,
                &format!("watching {key}: {failures} failed attempts in a row: {err}"),
            );
            self.failures = 0;
            return Err(Error::from_redis(err));
        }
        let delay = backoff(failures, settings.max_backoff, rand::random());
        settings.log(
            Level::Warn,
            &format!(
                "watching {key}: {err}; reconnecting in {delay:?} (attempt {failures} of {})",
                settings.reconnect_attempts
            ),
        );
        Ok(delay)
    }
}

/// What a lost watcher does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Watching {
    /// OBSERVE again now.
    Again,
    /// Reconnect (or OBSERVE again) after this pause.
    Pause(Duration),
    /// The watcher's work is done: the reservation is lost or released,
    /// or the server cannot be watched.
    Stop,
}

/// The lost watcher of one held reservation: `RESERVE.OBSERVE key token`
/// in a loop on a connection of its own, so a deleted, expired or
/// taken-over key is reported within a round trip instead of at the next
/// heartbeat.
pub(crate) struct LostWatch {
    failures: u32,
}

impl LostWatch {
    /// A watcher for `grant`, when OBSERVE can tell its loss: only for an
    /// exclusive reservation of one key. OBSERVE reports a key's oldest
    /// grant, which for a shared grant or a permit may be another
    /// holder's while ours lives on; those (and `lock_all`'s sets) rely
    /// on the heartbeat alone.
    pub(crate) fn for_grant(grant: &Grant) -> Option<LostWatch> {
        (grant.access == Access::Exclusive && grant.more.is_empty())
            .then_some(LostWatch { failures: 0 })
    }

    /// Nothing left to watch: the reservation is lost or being released.
    pub(crate) fn done(grant: &Grant) -> bool {
        grant.is_lost() || grant.is_releasing()
    }

    /// The next OBSERVE, with the reservation's own token.
    pub(crate) fn attempt(&self, settings: &Settings, grant: &Grant) -> Attempt {
        Attempt {
            connect_timeout: settings.connect_timeout,
            read_timeout: Some(WATCH_POLL + WAIT_SLACK),
            cmd: protocol::observe(&grant.key, grant.token, Some(WATCH_POLL)),
        }
    }

    /// OBSERVE answered `value`. Any state but our own token means the
    /// grant is gone (deleted, expired, in its lock-delay, or someone
    /// else's): it is marked lost, unless our own release is under way.
    pub(crate) fn reply(&mut self, settings: &Settings, grant: &Grant, value: Value) -> Watching {
        if Self::done(grant) {
            return Watching::Stop;
        }
        let key = &grant.key;
        match protocol::observe_reply(value) {
            Ok(None) => {
                self.failures = 0;
                Watching::Again
            }
            Ok(Some(Some(now))) if now.token == grant.token => {
                // OBSERVE answers at once only when the token differs;
                // do not spin on a server that says otherwise.
                self.failures += 1;
                Watching::Pause(backoff(self.failures, settings.max_backoff, rand::random()))
            }
            Ok(Some(now)) => {
                let who = match now {
                    Some(l) => format!("held by {} (token {})", l.holder, l.token),
                    None => "held by no one".to_string(),
                };
                settings.log(Level::Debug, &format!("{key} is now {who}"));
                grant.mark_lost(settings, LostReason::NotHeld);
                Watching::Stop
            }
            Err(e) => {
                settings.log(
                    Level::Warn,
                    &format!("stopped watching {key} (the heartbeat still does): {e}"),
                );
                Watching::Stop
            }
        }
    }

    /// A connect (`ran_for` `None`) or an OBSERVE failed. Connection
    /// trouble is retried with backoff for as long as the reservation is
    /// held (the heartbeat decides when it is lost for want of renewals).
    /// WRONGTYPE means the key was replaced by another type of value: the
    /// reservation is lost. Another permanent error (a module without
    /// OBSERVE, NOPERM) stops the watcher and leaves the heartbeat in
    /// charge.
    pub(crate) fn failed(
        &mut self,
        settings: &Settings,
        grant: &Grant,
        err: redis::RedisError,
        ran_for: Option<Duration>,
    ) -> Watching {
        if Self::done(grant) {
            return Watching::Stop;
        }
        let key = &grant.key;
        if err.code() == Some("WRONGTYPE") {
            // OBSERVE with our own token on a key that now holds another
            // type of value: our reservation is gone.
            settings.log(
                Level::Debug,
                &format!("{key} now holds another type of value"),
            );
            grant.mark_lost(settings, LostReason::NotHeld);
            return Watching::Stop;
        }
        if !is_transient(&err) {
            let level = match Error::from_redis(err) {
                Error::ModuleNotLoaded => Level::Debug,
                _ => Level::Warn,
            };
            settings.log(
                level,
                &format!("cannot watch {key} with RESERVE.OBSERVE; the heartbeat alone checks it"),
            );
            return Watching::Stop;
        }
        if ran_for.is_some_and(|t| t >= STABLE) {
            self.failures = 0;
        }
        self.failures += 1;
        let delay = backoff(self.failures, settings.max_backoff, rand::random());
        settings.log(
            Level::Debug,
            &format!("watching {key}: {err}; again in {delay:?}"),
        );
        Watching::Pause(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::grant::Claim;
    use crate::core::protocol::args;
    use std::sync::{Arc, Mutex};

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn state(holder: Option<&str>, token: i64) -> Value {
        Value::Array(vec![holder.map_or(Value::Nil, bulk), Value::Int(token)])
    }

    fn dropped() -> redis::RedisError {
        redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
    }

    fn leader(holder: &str, token: u64) -> Change {
        Some(Leader {
            holder: holder.into(),
            token,
        })
    }

    #[test]
    fn the_current_state_is_an_observe_with_a_token_the_key_has_not() {
        assert_eq!(
            args(&current_cmd("k", MAX_TOKEN)),
            ["RESERVE.OBSERVE", "k", &MAX_TOKEN.to_string(), "0.001"]
        );
        assert_eq!(
            current_reply(state(None, 0), MAX_TOKEN).unwrap(),
            Some(None)
        );
        assert_eq!(
            current_reply(state(Some("a"), 7), MAX_TOKEN).unwrap(),
            Some(leader("a", 7))
        );
        assert_eq!(
            current_reply(state(Some("old-lib"), 0), MAX_TOKEN).unwrap(),
            Some(leader("old-lib", 0))
        );
        // The key has MAX_TOKEN itself: ask with 0.
        assert_eq!(current_reply(Value::Nil, MAX_TOKEN).unwrap(), None);
        assert_eq!(
            current_reply(state(Some("z"), MAX_TOKEN as i64), 0).unwrap(),
            Some(leader("z", MAX_TOKEN))
        );
        assert_eq!(current_reply(Value::Nil, 0).unwrap(), Some(None));
        assert!(current_reply(Value::Int(7), MAX_TOKEN).is_err());
    }

    #[test]
    fn the_feed_starts_with_the_current_state_then_waits_on_the_last_token() {
        let s = Settings::for_tests(Arc::default());
        let mut f = Feed::new("reservation-e".into());
        let first = f.attempt(&s);
        assert_eq!(
            args(&first.cmd),
            [
                "RESERVE.OBSERVE",
                "reservation-e",
                &MAX_TOKEN.to_string(),
                "30.000"
            ]
        );
        assert_eq!(first.read_timeout, Some(FEED_POLL + WAIT_SLACK));
        assert_eq!(f.reply(state(None, 0)).unwrap(), Some(None));
        assert_eq!(args(&f.attempt(&s).cmd)[2], "0");
        assert_eq!(f.reply(Value::Nil).unwrap(), None, "timed out: again");
        assert_eq!(f.reply(state(Some("a"), 7)).unwrap(), Some(leader("a", 7)));
        assert_eq!(args(&f.attempt(&s).cmd)[2], "7");
        assert_eq!(f.reply(state(Some("b"), 9)).unwrap(), Some(leader("b", 9)));
        assert_eq!(args(&f.attempt(&s).cmd)[2], "9");
        assert!(!f.ended());
    }

    #[test]
    fn the_feed_keeps_its_token_across_reconnects() {
        let s = Settings::for_tests(Arc::default());
        let mut f = Feed::new("k".into());
        f.reply(state(Some("a"), 7)).unwrap();
        for n in 1..=s.reconnect_attempts {
            let delay = f.retry(&s, dropped(), None).unwrap();
            assert!(delay >= backoff(n, s.max_backoff, 0), "{delay:?}");
            assert_eq!(args(&f.attempt(&s).cmd)[2], "7");
        }
        // Attempts used up: the error is reported, and the feed goes on
        // with a new run (still from token 7).
        assert!(matches!(
            f.retry(&s, dropped(), None),
            Err(Error::Connection(_))
        ));
        assert!(!f.ended());
        assert!(f.retry(&s, dropped(), None).is_ok());
        assert_eq!(args(&f.attempt(&s).cmd)[2], "7");
        // A connection that worked a while starts a new run.
        for _ in 0..10 {
            assert!(f.retry(&s, dropped(), Some(STABLE)).is_ok());
        }
    }

    #[test]
    fn the_feed_ends_on_permanent_errors_and_nonsense() {
        let s = Settings::for_tests(Arc::default());
        let mut f = Feed::new("k".into());
        let wrongtype = redis::RedisError::from((redis::ErrorKind::TypeError, "WRONGTYPE"));
        assert!(matches!(f.retry(&s, wrongtype, None), Err(Error::Redis(_))));
        assert!(f.ended());

        let mut f = Feed::new("k".into());
        assert!(f.reply(Value::Int(3)).is_err());
        assert!(f.ended());

        let mut f = Feed::new("k".into());
        f.reply(state(Some("a"), 7)).unwrap();
        assert!(f.reply(state(Some("a"), 7)).is_err(), "no spinning");
        assert!(f.ended());
    }

    fn held(s: &Settings) -> Grant {
        Claim::new(s, "job").granted(s, &[5])
    }

    #[test]
    fn the_watcher_observes_its_own_token_and_marks_any_change_lost() {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let s = Settings::for_tests(logs.clone());
        let g = held(&s);
        let mut w = LostWatch::for_grant(&g).expect("exclusive");
        let a = w.attempt(&s, &g);
        assert_eq!(
            args(&a.cmd),
            ["RESERVE.OBSERVE", "reservation-job", "5", "5.000"]
        );
        assert_eq!(w.reply(&s, &g, Value::Nil), Watching::Again);
        assert!(!g.is_lost());
        assert_eq!(w.reply(&s, &g, state(Some("b"), 6)), Watching::Stop);
        assert!(g.is_lost());
        {
            let logs = logs.lock().unwrap();
            assert!(logs
                .iter()
                .any(|l| l.contains("reservation-job is now held by b (token 6)")));
            assert!(logs.iter().any(|l| l.contains("no longer held by us")));
        }

        let g = held(&s);
        let mut w = LostWatch::for_grant(&g).unwrap();
        assert_eq!(w.reply(&s, &g, state(None, 0)), Watching::Stop);
        assert!(g.is_lost(), "deleted or in its lock-delay");
    }

    #[test]
    fn our_own_release_is_not_a_loss() {
        let s = Settings::for_tests(Arc::default());
        let g = held(&s);
        let mut w = LostWatch::for_grant(&g).unwrap();
        g.begin_release();
        assert_eq!(w.reply(&s, &g, state(None, 0)), Watching::Stop);
        assert!(!g.is_lost());
        assert_eq!(w.failed(&s, &g, dropped(), None), Watching::Stop);
    }

    #[test]
    fn the_watcher_retries_connections_and_stops_on_permanent_errors() {
        let s = Settings::for_tests(Arc::default());
        let g = held(&s);
        let mut w = LostWatch::for_grant(&g).unwrap();
        for _ in 0..50 {
            let Watching::Pause(d) = w.failed(&s, &g, dropped(), None) else {
                panic!("a connection error is retried");
            };
            assert!(d <= s.max_backoff + s.max_backoff / 4, "{d:?}");
        }
        assert!(matches!(
            w.reply(&s, &g, state(Some("same"), 5)),
            Watching::Pause(_)
        ));
        assert!(!g.is_lost());
        let unknown = redis::RedisError::from((
            redis::ErrorKind::ResponseError,
            "An error was signalled by the server",
            "unknown command 'RESERVE.OBSERVE'".to_string(),
        ));
        assert_eq!(w.failed(&s, &g, unknown, None), Watching::Stop);
        assert_eq!(w.reply(&s, &g, Value::Int(1)), Watching::Stop);
        assert!(!g.is_lost());
    }

    #[test]
    fn a_key_of_another_type_is_a_loss() {
        let s = Settings::for_tests(Arc::default());
        let g = held(&s);
        let mut w = LostWatch::for_grant(&g).unwrap();
        let wrongtype = redis::parse_redis_value(
            b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
        )
        .and_then(Value::extract_error)
        .unwrap_err();
        assert_eq!(wrongtype.code(), Some("WRONGTYPE"));
        assert_eq!(w.failed(&s, &g, wrongtype, None), Watching::Stop);
        assert!(g.is_lost());
    }

    #[test]
    fn only_exclusive_single_key_grants_are_watched() {
        let s = Settings::for_tests(Arc::default());
        let shared = Claim::with_access(&s, "job", Access::Shared).granted(&s, &[5]);
        assert!(LostWatch::for_grant(&shared).is_none());
        let set = Claim::all(&s, &["a", "b"]).granted(&s, &[5, 6]);
        assert!(LostWatch::for_grant(&set).is_none());
    }
}
