//! The lost-lock state: why a reservation is lost, the notification, and
//! the flag that flips once and tells every listener.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex, PoisonError};

use log::Level;

use crate::core::logger::Logger;

pub(crate) type LostFn = dyn Fn(&LostReservation) + Send + Sync;

/// Why a reservation was reported lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LostReason {
    /// The server answered that this holder no longer holds it (`RESERVE.RENEW`
    /// or `RESERVE.RELEASE` answered 0): it expired, was deleted, or someone
    /// else has it now.
    NotHeld,
    /// No renewal succeeded for a whole TTL (the server was unreachable), so
    /// it has certainly expired on the server.
    NotRenewedInTime,
}

/// The notification sent when a reservation is lost (to the
/// [`on_lost`](crate::ReservationManagerBuilder::on_lost) callback and to every
/// `lost_receiver()`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostReservation {
    /// The resource name given to `lock`/`wait_until_lock`.
    pub resource: String,
    /// The Redis key (prefix + resource).
    pub key: String,
    /// The holder identity this reservation was taken with.
    pub holder: String,
    /// Its fencing token.
    pub token: u64,
    /// Why it is considered lost.
    pub reason: LostReason,
}

/// A reservation's lost flag and everyone to tell when it flips.
pub(crate) struct LostFlag {
    lost: AtomicBool,
    receivers: Mutex<Vec<mpsc::Sender<LostReservation>>>,
    event: Mutex<Option<LostReservation>>,
    #[cfg(feature = "tokio")]
    watch: tokio::sync::watch::Sender<bool>,
}

impl LostFlag {
    pub(crate) fn new() -> LostFlag {
        LostFlag {
            lost: AtomicBool::new(false),
            receivers: Mutex::new(Vec::new()),
            event: Mutex::new(None),
            #[cfg(feature = "tokio")]
            watch: tokio::sync::watch::Sender::new(false),
        }
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Flips the flag; the first time, tells the log, every receiver and
    /// the callback (in that order). Returns whether this call flipped it.
    pub(crate) fn mark(
        &self,
        logger: &Logger,
        on_lost: Option<&LostFn>,
        event: LostReservation,
    ) -> bool {
        if self.lost.swap(true, Ordering::SeqCst) {
            return false;
        }
        let why = match event.reason {
            LostReason::NotHeld => "the server says it is no longer held by us",
            LostReason::NotRenewedInTime => "no renewal succeeded within its TTL",
        };
        logger.log(
            Level::Warn,
            &format!(
                "reservation {} lost: {why} (holder {}, token {})",
                event.key, event.holder, event.token
            ),
        );
        *self.event.lock().unwrap_or_else(PoisonError::into_inner) = Some(event.clone());
        for tx in self
            .receivers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = tx.send(event.clone());
        }
        #[cfg(feature = "tokio")]
        self.watch.send_replace(true);
        if let Some(cb) = on_lost {
            let _ = catch_unwind(AssertUnwindSafe(|| cb(&event)));
        }
        true
    }

    /// A channel that gets one message when the reservation is lost
    /// (right away if it already is).
    pub(crate) fn receiver(&self) -> mpsc::Receiver<LostReservation> {
        let (tx, rx) = mpsc::channel();
        let mut receivers = self
            .receivers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.is_lost() {
            if let Some(event) = self
                .event
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
            {
                let _ = tx.send(event);
            }
        } else {
            receivers.push(tx);
        }
        rx
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.watch.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    fn event() -> LostReservation {
        LostReservation {
            resource: "job".into(),
            key: "reservation-job".into(),
            holder: "w-h-1-0000000a".into(),
            token: 7,
            reason: LostReason::NotHeld,
        }
    }

    #[test]
    fn flips_once_and_tells_everyone_once() {
        let flag = LostFlag::new();
        let early = flag.receiver();
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let on_lost = move |e: &LostReservation| {
            assert_eq!(e.token, 7);
            seen.fetch_add(1, Ordering::SeqCst);
        };
        assert!(!flag.is_lost());
        assert!(flag.mark(&Logger::Log, Some(&on_lost), event()));
        assert!(!flag.mark(&Logger::Log, Some(&on_lost), event()));
        assert!(flag.is_lost());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(early.try_recv(), Ok(event()));
        assert!(
            early.try_recv().is_err(),
            "told once, then the sender is gone"
        );
        // A receiver made after the fact hears about it right away.
        assert_eq!(flag.receiver().try_recv(), Ok(event()));
    }

    #[test]
    fn a_panicking_callback_is_contained() {
        let flag = LostFlag::new();
        let on_lost = |_: &LostReservation| panic!("user callback");
        assert!(flag.mark(&Logger::Log, Some(&on_lost), event()));
        assert!(flag.is_lost());
    }
}
