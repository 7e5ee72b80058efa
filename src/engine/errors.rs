//! Every error text a client can receive, in one place.
//!
//! Each starts with a Redis error code (`ERR`, `WRONGTYPE`) because clients
//! such as redis-rs take the first word as the error kind.

use crate::engine::args::ArgError;

pub const INVALID_TTL: &str = "ERR invalid ttl";
pub const INVALID_TIMEOUT: &str = "ERR invalid timeout";
pub const INVALID_HOLDER: &str = "ERR invalid holder";
pub const INVALID_TOKEN: &str = "ERR invalid token";
pub const INVALID_LIMIT: &str = "ERR invalid limit";
pub const INVALID_PERMITS: &str = "ERR invalid permits";
pub const INVALID_DELAY: &str = "ERR invalid delay (milliseconds, 0 to 3600000)";
pub const SYNTAX: &str = "ERR syntax error";
pub const TOO_MANY_HOLDERS: &str = "ERR too many holders";
pub const ALREADY_HOLDS: &str = "ERR holder already holds this reservation";
pub const INVALID_STATE: &str = "ERR invalid reservation state";
pub const TOO_MANY_KEYS: &str = "ERR too many keys (at most 1000)";
pub const DUPLICATE_KEY: &str = "ERR duplicate key";
pub const FENCED: &str = "FENCED reservation not held by that holder and token";
pub const NOT_IN_GUARD: &str = "ERR command not allowed in RESERVE.GUARD";
pub const UNKNOWN_COMMAND: &str = "ERR unknown command";
pub const GUARD_CALL_FAILED: &str = "ERR the command could not run inside RESERVE.GUARD";
pub const WRONG_ARITY: &str = "ERR wrong number of arguments";
pub const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
pub const TOO_MANY_WAITERS: &str = "ERR too many waiters";
pub const TOKENS_EXHAUSTED: &str =
    "ERR fencing token counter exhausted (2^53-1 reached; see the server log)";
/// Redis's own text for a write sent to a replica.
pub const READONLY: &str = "READONLY You can't write against a read only replica.";
pub const INTERNAL_ONLY: &str =
    "ERR RESERVE.SETSTATE is internal: only replication and AOF loading may send it";
pub const INTERNAL_ONLY_SETGRANTS: &str =
    "ERR RESERVE.SETGRANTS is internal: only replication and AOF loading may send it";
pub const INTERNAL_ONLY_TOKENFLOOR: &str =
    "ERR RESERVE.TOKENFLOOR is internal: only replication and AOF loading may send it";
pub const INTERNAL_PANIC: &str =
    "ERR internal error in the reservation module (see the server log)";
pub const STATE_BUSY: &str = "ERR reservation module state is busy (re-entrant call)";

pub fn arg_error_message(err: ArgError) -> &'static str {
    match err {
        ArgError::Ttl => INVALID_TTL,
        ArgError::Timeout => INVALID_TIMEOUT,
        ArgError::Holder => INVALID_HOLDER,
        ArgError::Token => INVALID_TOKEN,
        ArgError::Limit => INVALID_LIMIT,
        ArgError::Permits => INVALID_PERMITS,
        ArgError::Delay => INVALID_DELAY,
        ArgError::TooManyKeys => TOO_MANY_KEYS,
        ArgError::DuplicateKey => DUPLICATE_KEY,
        ArgError::Syntax => SYNTAX,
        ArgError::WrongArity => WRONG_ARITY,
    }
}
