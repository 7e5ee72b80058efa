//! Thin, safe-ish wrappers over the raw Redis module API.
//!
//! Everything that dereferences a raw pointer handed over by Redis lives
//! here or in the callback files, each `unsafe` block with its reason. Keys
//! and strings are RAII guards, so no path forgets to close or free them.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;

use redis_module::raw;

/// Calls a Redis module API function by name. Every function used here is
/// checked for presence when the module loads (`init::check_api`), so the
/// `expect` cannot fire afterwards.
macro_rules! rm {
    ($name:ident) => {{
        // SAFETY: the API table is filled by RedisModule_Init before
        // any module code runs and never changes afterwards.
        #[allow(unused_unsafe)]
        let f = unsafe { redis_module::raw::$name }.expect(concat!(stringify!($name), " missing"));
        f
    }};
}
pub(crate) use rm;

pub type Ctx = *mut raw::RedisModuleCtx;
pub type RString = *mut raw::RedisModuleString;

/// The bytes of a Redis string, borrowed for as long as Redis keeps it.
pub fn string_bytes<'a>(s: *const raw::RedisModuleString) -> &'a [u8] {
    if s.is_null() {
        return &[];
    }
    let mut len: usize = 0;
    // SAFETY: `s` is a live RedisModuleString (an argv entry or one we
    // created); StringPtrLen returns a pointer valid while it lives.
    let p = unsafe { rm!(RedisModule_StringPtrLen)(s, &mut len) };
    if p.is_null() {
        return &[];
    }
    // SAFETY: Redis guarantees `len` readable bytes at `p`.
    unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }
}

/// A RedisModuleString we created and must free.
pub struct OwnedString {
    ctx: Ctx,
    ptr: RString,
}

impl OwnedString {
    pub fn new(ctx: Ctx, bytes: &[u8]) -> Self {
        // SAFETY: CreateString copies `bytes`.
        let ptr = unsafe { rm!(RedisModule_CreateString)(ctx, bytes.as_ptr().cast(), bytes.len()) };
        OwnedString { ctx, ptr }
    }
    pub fn as_ptr(&self) -> RString {
        self.ptr
    }
}

impl Drop for OwnedString {
    fn drop(&mut self) {
        // SAFETY: created by CreateString with the same context.
        unsafe { rm!(RedisModule_FreeString)(self.ctx, self.ptr) };
    }
}

/// Wall-clock unix time in ms (the clock Redis uses for key expiry).
pub fn now_ms() -> i64 {
    // SAFETY: no arguments.
    unsafe { rm!(RedisModule_Milliseconds)() }
}

/// The same wall clock in microseconds (what module timers run on), or 0
/// if the system clock is unreadable.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(0))
}

pub fn context_flags(ctx: Ctx) -> u32 {
    // SAFETY: ctx is live.
    (unsafe { rm!(RedisModule_GetContextFlags)(ctx) }) as u32
}

pub fn selected_db(ctx: Ctx) -> i32 {
    // SAFETY: ctx is live.
    unsafe { rm!(RedisModule_GetSelectedDb)(ctx) }
}

pub fn select_db(ctx: Ctx, db: i32) {
    // SAFETY: ctx is live; an invalid db leaves the selection unchanged.
    unsafe { rm!(RedisModule_SelectDb)(ctx, db) };
}

/// This server is a master (only masters grant, time out and expire).
pub fn is_master(ctx: Ctx) -> bool {
    context_flags(ctx) & raw::REDISMODULE_CTX_FLAGS_MASTER != 0
}

// ----- replies -----

pub fn reply_integer(ctx: Ctx, v: i64) {
    // SAFETY: ctx is a command/reply context.
    unsafe { rm!(RedisModule_ReplyWithLongLong)(ctx, v) };
}

pub fn reply_error(ctx: Ctx, msg: &str) {
    // Reply text must be NUL-terminated; messages are our own constants,
    // never client bytes, so they contain no NUL.
    let mut buf = Vec::with_capacity(msg.len() + 1);
    buf.extend_from_slice(msg.as_bytes());
    buf.push(0);
    let text = CStr::from_bytes_until_nul(&buf).unwrap_or(c"ERR internal error");
    // SAFETY: ctx is live; text is NUL-terminated.
    unsafe { rm!(RedisModule_ReplyWithError)(ctx, text.as_ptr()) };
}

pub fn reply_bulk(ctx: Ctx, bytes: &[u8]) {
    // SAFETY: ctx is live; the buffer is copied.
    unsafe { rm!(RedisModule_ReplyWithStringBuffer)(ctx, bytes.as_ptr().cast(), bytes.len()) };
}

pub fn reply_null(ctx: Ctx) {
    // SAFETY: ctx is live.
    unsafe { rm!(RedisModule_ReplyWithNull)(ctx) };
}

pub fn reply_map(ctx: Ctx, pairs: usize) {
    // SAFETY: ctx is live; a RESP2 client gets a flat array of 2*pairs.
    unsafe { rm!(RedisModule_ReplyWithMap)(ctx, pairs as _) };
}

pub fn reply_array(ctx: Ctx, len: usize) {
    // SAFETY: ctx is live.
    unsafe { rm!(RedisModule_ReplyWithArray)(ctx, len as _) };
}

pub fn reply_wrong_arity(ctx: Ctx) {
    // SAFETY: ctx is live.
    unsafe { rm!(RedisModule_WrongArity)(ctx) };
}

// ----- replication -----

/// Propagates `cmd` with byte-string arguments to replicas and the AOF.
pub fn replicate(ctx: Ctx, cmd: &CStr, args: &[&[u8]]) {
    let owned: Vec<OwnedString> = args.iter().map(|a| OwnedString::new(ctx, a)).collect();
    let mut ptrs: Vec<RString> = owned.iter().map(OwnedString::as_ptr).collect();
    // SAFETY: "v" passes an array of RedisModuleString pointers and its
    // length; Redis retains what it needs before we free ours.
    unsafe {
        rm!(RedisModule_Replicate)(
            ctx,
            cmd.as_ptr(),
            c"v".as_ptr(),
            ptrs.as_mut_ptr(),
            ptrs.len(),
        )
    };
}

// ----- a context for callbacks that get none -----

static DETACHED: std::sync::atomic::AtomicPtr<raw::RedisModuleCtx> =
    std::sync::atomic::AtomicPtr::new(ptr::null_mut());

/// Creates the module's detached context once, at load.
pub fn init_detached_ctx(ctx: Ctx) {
    // SAFETY: ctx is the OnLoad context; the detached context lives for
    // the rest of the process.
    let detached = unsafe { rm!(RedisModule_GetDetachedThreadSafeContext)(ctx) };
    DETACHED.store(detached, std::sync::atomic::Ordering::Relaxed);
}

/// A module context for main-thread callbacks that receive none (timer
/// creation only needs the module it belongs to). Null before load.
pub fn detached_ctx() -> Ctx {
    DETACHED.load(std::sync::atomic::Ordering::Relaxed)
}

// ----- timers -----

pub type TimerCallback = unsafe extern "C" fn(ctx: Ctx, data: *mut c_void);

pub fn create_timer(ctx: Ctx, period_ms: i64, cb: TimerCallback, data: *mut c_void) -> u64 {
    // SAFETY: ctx is live; `data` is handed back to `cb` or to stop_timer.
    unsafe { rm!(RedisModule_CreateTimer)(ctx, period_ms, Some(cb), data) }
}

pub type OneShot = unsafe extern "C" fn(data: *mut c_void);

/// Runs `cb(data)` on the main thread at the next turn of the event loop
/// (Redis wakes its loop through the module pipe). False when it could not
/// be queued: the caller still owns `data`.
pub fn on_next_turn(cb: OneShot, data: *mut c_void) -> bool {
    // SAFETY: Redis keeps `data` for `cb` and calls it once, on the main
    // thread.
    unsafe { rm!(RedisModule_EventLoopAddOneShot)(Some(cb), data) == raw::REDISMODULE_OK as c_int }
}

/// What to ask a module timer for so that it fires at `fire_at_ms` or
/// just before: the milliseconds until then from the microsecond clock,
/// rounded down, less one, because Redis's event loop rounds its sleep up
/// to whole milliseconds (`epoll_wait`) and would wake up to one late. A
/// timer that finds its instant not yet come re-arms with 0, which fires
/// on the next turn of the event loop (when armed from outside a timer
/// callback: from inside one Redis runs it a millisecond later, hence
/// `on_next_turn` in `blocking.rs`): so the work happens within a turn
/// of the instant, at the cost of spinning for under two milliseconds.
/// `now_ms` is the clock the instant was compared with; `now_us` the same
/// clock in µs when available (0 otherwise).
pub fn timer_delay(fire_at_ms: i64, now_ms: i64, now_us: i64) -> i64 {
    let delay = if now_us > 0 {
        (fire_at_ms.saturating_mul(1000) - now_us) / 1000
    } else {
        fire_at_ms.saturating_sub(now_ms)
    };
    (delay - 1).max(0)
}

/// Stops a timer and returns its data pointer when it was still pending.
pub fn stop_timer(ctx: Ctx, id: u64) -> Option<*mut c_void> {
    let mut data: *mut c_void = ptr::null_mut();
    // SAFETY: ctx is live; StopTimer only writes `data` on success.
    let status = unsafe { rm!(RedisModule_StopTimer)(ctx, id, &mut data) };
    (status == raw::REDISMODULE_OK as c_int).then_some(data)
}

// ----- logging -----

pub fn log_warning(ctx: Ctx, msg: &str) {
    log(ctx, c"warning", msg);
}

/// Logs from a data type callback, which has an RDB I/O handle instead of
/// a context.
pub fn log_io_warning(io: *mut raw::RedisModuleIO, msg: &str) {
    let text = log_text(msg);
    if let Ok(text) = CStr::from_bytes_with_nul(&text) {
        // SAFETY: io is the handle Redis passed to the callback; "%s" with
        // a NUL-terminated string.
        unsafe {
            rm!(RedisModule_LogIOError)(
                io,
                c"warning".as_ptr(),
                c"%s".as_ptr(),
                text.as_ptr() as *const c_char,
            )
        };
    }
}

/// `msg` as a NUL-terminated C string with no NUL or `%` inside.
fn log_text(msg: &str) -> Vec<u8> {
    let mut text: Vec<u8> = msg.bytes().filter(|&b| b != 0 && b != b'%').collect();
    text.push(0);
    text
}

fn log(ctx: Ctx, level: &CStr, msg: &str) {
    let text = log_text(msg);
    if let Ok(text) = CStr::from_bytes_with_nul(&text) {
        // SAFETY: "%s" with a NUL-terminated string; ctx may be null (the
        // log then names no module), which Redis accepts.
        unsafe {
            rm!(RedisModule_Log)(
                ctx,
                level.as_ptr(),
                c"%s".as_ptr(),
                text.as_ptr() as *const c_char,
            )
        };
    }
}

pub fn reply_ok(ctx: Ctx) {
    // SAFETY: ctx is live; the text is a static C string.
    unsafe { rm!(RedisModule_ReplyWithSimpleString)(ctx, c"OK".as_ptr()) };
}
