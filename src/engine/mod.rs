//! The grant engine and everything else that is plain Rust: no Redis API,
//! no FFI, unit-tested with a fake clock. The glue (`crate::glue`) asks it
//! what to do and carries that out.
//!
//! - `args`: every command's arguments, parsed into typed values or errors;
//! - `errors`: every error text a client can receive;
//! - `tokens`: fencing tokens and their valid range;
//! - `reservation`: the mutex (one exclusive grant, stored inline in one
//!   allocation) and its decisions;
//! - `grants`: shared grants and semaphores: occupancy, the one admission
//!   rule, acquire decisions, the grant set and its encoding;
//! - `value`: a key's value as one thin pointer (a mutex or a grant set);
//! - `waitqueue`: per-key FIFO queues of waiters.

pub mod args;
pub mod errors;
pub mod grants;
pub mod reservation;
pub mod tokens;
pub mod value;
pub mod waitqueue;
