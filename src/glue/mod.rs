//! The Redis side: everything that calls the module API. Each file is thin
//! and sorted by what it touches; `ffi` is at the bottom (it imports no
//! other file of the crate), and the decisions come from `crate::engine`.
//!
//! - `ffi`: safe wrappers over the raw API (strings, replies, timers,
//!   replication, logging);
//! - `state`: the module's process-wide state (token counter, statistics,
//!   wait queues and their bookkeeping, hooks between callbacks);
//! - `unlinks`: telling an expiry from other deletions;
//! - `store`: a key as the module sees it (what it holds, storing, deleting);
//! - `config`: module configs; `observers`: RESERVE.OBSERVE's blocked
//!   clients, woken when a key's current grant changes;
//! - `notify`, `info`: keyspace events (which wake observers), the INFO
//!   section;
//! - `datatype`: the `rsrv-lock` type's callbacks (RDB, AOF, digest, ...);
//! - `granting`: storing a key's grants and propagating them;
//! - `blocking`: RESERVE.WAIT's blocked clients, admission of waiters, timers;
//! - `cluster`: slot ownership for waiters of a moved key;
//! - `events`: keyspace and server events that free keys;
//! - `commands`: the RESERVE.* handlers; `guard`: RESERVE.GUARD, a command
//!   run only for the holder of a token; `registration`: what OnLoad sets up.

pub mod blocking;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod datatype;
pub mod events;
pub mod ffi;
pub mod granting;
pub mod guard;
pub mod info;
pub mod notify;
pub mod observers;
pub mod registration;
pub mod state;
pub mod store;
pub mod unlinks;
