//! redis-reservation: distributed reservations (locks that expire) as
//! native Redis commands.
//!
//! Plain Rust, no FFI: `args` (parsing), `reservation` (state machine and
//! fencing tokens), `waitqueue` (per-key FIFO queues).
//! Redis glue: `commands` (handlers), `blocking` (RESERVE.WAIT, handoff,
//! timers), `datatype` (RDB/AOF/digest callbacks), `events` (keyspace and
//! server events), `config`, `info`, `registration`, `ffi`, `state`.

pub mod args;
mod blocking;
mod cluster;
mod commands;
mod config;
mod datatype;
pub mod errors;
mod events;
mod ffi;
mod granting;
pub mod grants;
mod info;
mod notify;
mod registration;
pub mod reservation;
mod state;
pub mod value;
pub mod waitqueue;

use redis_module::{redis_module, Context, RedisString, Status};

use crate::datatype::RESERVATION_TYPE;

// Unit tests run without a server, so they cannot use Redis's allocator.
#[cfg(not(test))]
type Allocator = redis_module::alloc::RedisAlloc;
#[cfg(not(test))]
const ALLOCATOR: Allocator = redis_module::alloc::RedisAlloc;
#[cfg(test)]
type Allocator = std::alloc::System;
#[cfg(test)]
const ALLOCATOR: Allocator = std::alloc::System;

fn on_load(ctx: &Context, args: &[RedisString]) -> Status {
    match registration::load(ctx.ctx, args) {
        Ok(()) => Status::Ok,
        Err(msg) => {
            ctx.log_warning(&format!("reservation: cannot load: {msg}"));
            Status::Err
        }
    }
}

redis_module! {
    name: "reservation",
    version: 1,
    allocator: (Allocator, ALLOCATOR),
    data_types: [RESERVATION_TYPE],
    init: on_load,
}
