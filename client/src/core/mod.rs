//! The client's core, without I/O: settings, the wire protocol (command
//! builders and reply decoders), holder identities, claims and grants, the
//! lost-lock state, the heartbeat's schedule, the wait loop's decisions and
//! the OBSERVE loops' (leader changes, the lost watcher).
//!
//! The blocking manager (`manager.rs`) and the async one
//! (`asynchronous.rs`) own the connections, threads, tasks and sleeps, and
//! ask this module what to send and what an answer means, so the two stay
//! the same by construction. Nothing here imports from outside `core`
//! except the error type.

pub(crate) mod clock;
pub(crate) mod grant;
pub(crate) mod heartbeat;
pub(crate) mod identity;
pub(crate) mod logger;
pub(crate) mod lost;
pub(crate) mod observe;
pub(crate) mod protocol;
pub(crate) mod settings;
pub(crate) mod wait;
