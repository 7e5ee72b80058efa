//! redis-reservation: distributed reservations (locks that expire) as
//! native Redis commands.
//!
//! Two folders: `engine` is plain Rust with no Redis in it (arguments,
//! errors, the mutex and the grant engine, tokens, the wait queue), unit
//! tested with a fake clock; `glue` is the thin Redis side (commands, the
//! data type, blocked clients, timers, events, replication), with `ffi` at
//! its bottom. Nothing in `engine` imports `glue`, and no file imports one
//! that imports it back.

pub mod engine;
mod glue;

use redis_module::{redis_module, Context, RedisString, Status};

use crate::glue::datatype::RESERVATION_TYPE;

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
    match glue::registration::load(ctx.ctx, args) {
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
