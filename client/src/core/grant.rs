//! A claim (one attempt at a resource: its key and fresh holder identity)
//! and a grant (a held reservation: token and lost flag), with what each
//! server answer means for them. Both managers drive these; neither
//! builds a RESERVE.* command or words a log line about a grant itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use log::Level;
use redis::Cmd;

use crate::core::lost::{LostFlag, LostReason, LostReservation};
use crate::core::protocol::{self, Access};
use crate::core::settings::Settings;
use crate::error::Error;

/// One attempt to take a resource (or, for `lock_all`/`wait_all`, several:
/// the first in `resource`/`key`, the others in `more`).
pub(crate) struct Claim {
    pub(crate) resource: String,
    pub(crate) key: String,
    /// Unique to this attempt, so a release by holder alone is safe.
    pub(crate) holder: String,
    pub(crate) access: Access,
    /// Further (resource, key) pairs taken all at once with the first.
    pub(crate) more: Vec<(String, String)>,
}

impl Claim {
    /// An exclusive claim (the mutex).
    #[cfg(test)]
    pub(crate) fn new(settings: &Settings, resource: &str) -> Claim {
        Claim::with_access(settings, resource, Access::Exclusive)
    }

    pub(crate) fn with_access(settings: &Settings, resource: &str, access: Access) -> Claim {
        Claim {
            resource: resource.to_string(),
            key: settings.key_for(resource),
            holder: settings.new_holder(),
            access,
            more: Vec::new(),
        }
    }

    /// Every resource at once, each exclusive (`lock_all`, `wait_all`);
    /// `resources` is not empty.
    pub(crate) fn all(settings: &Settings, resources: &[&str]) -> Claim {
        let mut claim = Claim::with_access(settings, resources[0], Access::Exclusive);
        claim.more = resources[1..]
            .iter()
            .map(|r| (r.to_string(), settings.key_for(r)))
            .collect();
        claim
    }

    /// Its keys, the first one first.
    pub(crate) fn keys(&self) -> Vec<&str> {
        std::iter::once(self.key.as_str())
            .chain(self.more.iter().map(|(_, k)| k.as_str()))
            .collect()
    }

    pub(crate) fn lock_cmd(&self, settings: &Settings) -> Cmd {
        if self.more.is_empty() {
            protocol::lock(
                &self.key,
                &self.holder,
                settings.lock_ttl,
                self.access,
                settings.lock_delay,
            )
        } else {
            protocol::lock_all(&self.keys(), &self.holder, settings.lock_ttl)
        }
    }

    pub(crate) fn wait_cmd(&self, settings: &Settings, timeout: Option<Duration>) -> Cmd {
        if self.more.is_empty() {
            protocol::wait(
                &self.key,
                &self.holder,
                settings.lock_ttl,
                timeout,
                self.access,
                settings.lock_delay,
            )
        } else {
            protocol::wait_all(&self.keys(), &self.holder, settings.lock_ttl, timeout)
        }
    }

    /// Undoes a grant that may have happened, key by key (`tokens` `None`:
    /// whatever this holder has, for a grant whose reply was lost).
    pub(crate) fn release_cmds(&self, tokens: Option<&[u64]>) -> Vec<Cmd> {
        self.keys()
            .iter()
            .enumerate()
            .map(|(i, key)| protocol::release(key, &self.holder, tokens.map(|t| t[i])))
            .collect()
    }

    /// LOCK's (LOCKALL's) answer: the tokens, or `None` when not granted.
    pub(crate) fn lock_reply(
        &self,
        settings: &Settings,
        tokens: Option<Vec<u64>>,
    ) -> Option<Vec<u64>> {
        if tokens.is_none() {
            settings.log(
                Level::Debug,
                &format!("{} is held by someone else", self.key),
            );
        }
        tokens
    }

    /// The server granted it with `tokens` (one per key, in key order).
    pub(crate) fn granted(self, settings: &Settings, tokens: &[u64]) -> Grant {
        let token = tokens[0];
        settings.log(
            Level::Info,
            &format!("reserved {} as {} (token {token})", self.key, self.holder),
        );
        Grant {
            resource: self.resource,
            key: self.key,
            holder: self.holder,
            access: self.access,
            token,
            more: self
                .more
                .into_iter()
                .zip(tokens[1..].iter().copied())
                .map(|((_, key), t)| (key, t))
                .collect(),
            lost: LostFlag::new(),
            releasing: AtomicBool::new(false),
        }
    }
}

/// `Err(Error::ReplicaAck)` (and a warning) when fewer replicas than asked
/// for acknowledged the grant of `key`; the caller then releases it.
pub(crate) fn replica_verdict(settings: &Settings, key: &str, got: usize) -> Result<(), Error> {
    match settings.replica_ack {
        Some((wanted, _)) if got < wanted => {
            settings.log(
                Level::Warn,
                &format!(
                    "{key}: only {got} of {wanted} replicas acknowledged the grant; releasing it"
                ),
            );
            Err(Error::ReplicaAck { wanted, got })
        }
        _ => Ok(()),
    }
}

/// A held reservation's identity and lost state.
pub(crate) struct Grant {
    pub(crate) resource: String,
    pub(crate) key: String,
    pub(crate) holder: String,
    pub(crate) access: Access,
    pub(crate) token: u64,
    /// Further keys held with it (`lock_all`), each with its token.
    pub(crate) more: Vec<(String, u64)>,
    pub(crate) lost: LostFlag,
    /// Set before our own RELEASE is sent (by `release()` or the drop):
    /// what the lost watcher sees after that is our own doing.
    releasing: AtomicBool,
}

impl Grant {
    /// Every key held, with its token, the first one first.
    pub(crate) fn keys(&self) -> Vec<(&str, u64)> {
        std::iter::once((self.key.as_str(), self.token))
            .chain(self.more.iter().map(|(k, t)| (k.as_str(), *t)))
            .collect()
    }

    /// One RENEW per key: the heartbeat renews them all.
    pub(crate) fn renew_cmds(&self, settings: &Settings) -> Vec<Cmd> {
        self.keys()
            .into_iter()
            .map(|(key, token)| protocol::renew(key, &self.holder, settings.lock_ttl, token))
            .collect()
    }

    /// One RELEASE per key, each with its token.
    pub(crate) fn release_cmds(&self) -> Vec<Cmd> {
        self.keys()
            .into_iter()
            .map(|(key, token)| protocol::release(key, &self.holder, Some(token)))
            .collect()
    }

    /// `RESERVE.GUARD` of `command` with this grant's key, holder and token.
    pub(crate) fn guard_cmd(&self, command: &Cmd) -> Cmd {
        protocol::guard(&self.key, &self.holder, self.token, command)
    }

    /// What a failed guarded command means: FENCED is the grant gone (it is
    /// marked lost); anything else is the command's own error.
    pub(crate) fn guard_failed(&self, settings: &Settings, e: redis::RedisError) -> Error {
        if e.code() == Some("FENCED") {
            self.mark_lost(settings, LostReason::NotHeld);
            return Error::Lost;
        }
        Error::from_redis(e)
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.is_lost()
    }

    /// Our own release begins: from now on a change of the key is not a
    /// loss.
    pub(crate) fn begin_release(&self) {
        self.releasing.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_releasing(&self) -> bool {
        self.releasing.load(Ordering::SeqCst)
    }

    /// Marks it lost; the first time, tells the log, receivers and callback.
    pub(crate) fn mark_lost(&self, settings: &Settings, reason: LostReason) -> bool {
        self.lost.mark(
            &settings.logger,
            settings.on_lost.as_deref(),
            LostReservation {
                resource: self.resource.clone(),
                key: self.key.clone(),
                holder: self.holder.clone(),
                token: self.token,
                reason,
            },
        )
    }

    /// Before a renew or release: a lost grant is not asked about again.
    pub(crate) fn ensure_held(&self) -> Result<(), Error> {
        if self.is_lost() {
            Err(Error::Lost)
        } else {
            Ok(())
        }
    }

    /// A RENEW asked for by the user answered `held`.
    pub(crate) fn renewed(&self, settings: &Settings, held: bool) -> Result<(), Error> {
        if held {
            Ok(())
        } else {
            self.mark_lost(settings, LostReason::NotHeld);
            Err(Error::Lost)
        }
    }

    /// `release()`'s RELEASE answered `released`.
    pub(crate) fn released(&self, settings: &Settings, released: bool) -> Result<(), Error> {
        if released {
            settings.log(
                Level::Info,
                &format!(
                    "released {} ({}, token {})",
                    self.key, self.holder, self.token
                ),
            );
            Ok(())
        } else {
            self.mark_lost(settings, LostReason::NotHeld);
            Err(Error::Lost)
        }
    }

    /// Is there anything to release when the handle is dropped?
    pub(crate) fn release_on_drop(&self, finished: bool) -> bool {
        !finished && !self.is_lost()
    }

    /// The release on drop ended with `outcome`: nobody is there to hear
    /// an error, so it is logged.
    pub(crate) fn released_on_drop(&self, settings: &Settings, outcome: Result<bool, Error>) {
        match outcome {
            Ok(true) => settings.log(
                Level::Info,
                &format!(
                    "released {} on drop ({}, token {})",
                    self.key, self.holder, self.token
                ),
            ),
            Ok(false) => {
                self.mark_lost(settings, LostReason::NotHeld);
            }
            Err(e) => settings.log(
                Level::Warn,
                &format!("could not release {} on drop: {e}", self.key),
            ),
        }
    }

    /// The `Debug` output both reservation types share.
    pub(crate) fn fmt_reservation(
        &self,
        name: &str,
        f: &mut std::fmt::Formatter<'_>,
    ) -> std::fmt::Result {
        f.debug_struct(name)
            .field("key", &self.key)
            .field("holder", &self.holder)
            .field("token", &self.token)
            .field("lost", &self.is_lost())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::protocol::args;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[test]
    fn a_claim_names_its_key_and_its_own_holder() {
        let s = Settings::for_tests(Arc::default());
        let a = Claim::new(&s, "job");
        let b = Claim::new(&s, "job");
        assert_eq!(a.key, "reservation-job");
        assert_ne!(a.holder, b.holder);
        assert_eq!(
            args(&a.lock_cmd(&s)),
            ["RESERVE.LOCK", "reservation-job", &a.holder, "3.000"]
        );
        assert_eq!(
            args(&a.release_cmds(None)[0]),
            ["RESERVE.RELEASE", "reservation-job", &a.holder]
        );
    }

    #[test]
    fn a_claim_on_several_resources_takes_them_all_at_once() {
        let s = Settings::for_tests(Arc::default());
        let c = Claim::all(&s, &["a", "b"]);
        let h = c.holder.clone();
        assert_eq!(
            args(&c.lock_cmd(&s)),
            [
                "RESERVE.LOCKALL",
                &h,
                "3.000",
                "reservation-a",
                "reservation-b"
            ]
        );
        assert_eq!(
            args(&c.wait_cmd(&s, Some(Duration::from_millis(20)))),
            [
                "RESERVE.WAITALL",
                &h,
                "3.000",
                "0.020",
                "reservation-a",
                "reservation-b"
            ]
        );
        let undo: Vec<Vec<String>> = c.release_cmds(Some(&[7, 8])).iter().map(args).collect();
        assert_eq!(
            undo,
            [
                vec![
                    "RESERVE.RELEASE".to_string(),
                    "reservation-a".into(),
                    h.clone(),
                    "TOKEN".into(),
                    "7".into()
                ],
                vec![
                    "RESERVE.RELEASE".to_string(),
                    "reservation-b".into(),
                    h.clone(),
                    "TOKEN".into(),
                    "8".into()
                ],
            ]
        );
        let grant = c.granted(&s, &[7, 8]);
        assert_eq!(grant.keys(), [("reservation-a", 7), ("reservation-b", 8)]);
        assert_eq!(grant.renew_cmds(&s).len(), 2);
        assert_eq!(args(&grant.release_cmds()[1])[1], "reservation-b");
        let mut incr = redis::cmd("INCR");
        incr.arg("counter");
        assert_eq!(
            args(&grant.guard_cmd(&incr)),
            ["RESERVE.GUARD", "reservation-a", &h, "7", "INCR", "counter"]
        );
    }

    #[test]
    fn lock_replies_and_replica_verdicts() {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let mut s = Settings::for_tests(logs.clone());
        let claim = Claim::new(&s, "job");
        assert_eq!(claim.lock_reply(&s, None), None);
        assert_eq!(claim.lock_reply(&s, Some(vec![5])), Some(vec![5]));
        assert!(replica_verdict(&s, &claim.key, 0).is_ok(), "not asked for");
        s.replica_ack = Some((2, Duration::from_millis(10)));
        assert!(replica_verdict(&s, &claim.key, 2).is_ok());
        assert!(matches!(
            replica_verdict(&s, &claim.key, 1),
            Err(Error::ReplicaAck { wanted: 2, got: 1 })
        ));
        let logs = logs.lock().unwrap();
        assert!(logs[0].contains("held by someone else"), "{logs:?}");
        assert!(logs[1].contains("only 1 of 2 replicas"), "{logs:?}");
    }

    #[test]
    fn a_grant_is_lost_once_and_then_refuses() {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let s = Settings::for_tests(logs.clone());
        let grant = Claim::new(&s, "job").granted(&s, &[9]);
        assert_eq!(
            args(&grant.renew_cmds(&s)[0]),
            [
                "RESERVE.RENEW",
                "reservation-job",
                &grant.holder,
                "3.000",
                "TOKEN",
                "9"
            ]
        );
        assert!(grant.ensure_held().is_ok());
        assert!(grant.renewed(&s, true).is_ok());
        assert!(grant.release_on_drop(false));
        assert!(!grant.release_on_drop(true));
        assert!(matches!(grant.renewed(&s, false), Err(Error::Lost)));
        assert!(matches!(grant.ensure_held(), Err(Error::Lost)));
        assert!(!grant.release_on_drop(false));
        assert!(!grant.mark_lost(&s, LostReason::NotHeld), "already lost");
        let logs = logs.lock().unwrap();
        assert!(logs[0].contains("reserved reservation-job"), "{logs:?}");
        assert_eq!(logs.iter().filter(|l| l.contains("lost")).count(), 1);
    }
}
