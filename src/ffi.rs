//! Thin, safe-ish wrappers over the raw Redis module API.
//!
//! Everything that dereferences a raw pointer handed over by Redis lives
//! here or in the callback files, each `unsafe` block with its reason. Keys
//! and strings are RAII guards, so no path forgets to close or free them.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr::{self, NonNull};

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

/// Set while `OpenKey::delete` runs (main thread only).
static OWN_DELETE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the module itself is deleting a key right now.
pub fn in_own_delete() -> bool {
    OWN_DELETE.load(std::sync::atomic::Ordering::Relaxed)
}

/// What a key holds, seen from this module.
pub enum KeyKind {
    Empty,
    /// A value of our type: the pointer `Reservation::into_raw` made.
    Reservation(NonNull<c_void>),
    /// A plain string: an old library's reservation (value = holder).
    LegacyString,
    Other,
}

/// An open key, closed on drop.
pub struct OpenKey {
    ptr: *mut raw::RedisModuleKey,
}

pub fn reservation_type() -> *mut raw::RedisModuleType {
    *crate::datatype::RESERVATION_TYPE.raw_type.borrow()
}

impl OpenKey {
    /// Opens `name` for reading and writing. On a master this applies lazy
    /// expiry first, which may fire keyspace notifications: never call it
    /// while holding the module state lock.
    pub fn write(ctx: Ctx, name: RString) -> Self {
        let mode = (raw::REDISMODULE_READ | raw::REDISMODULE_WRITE) as c_int;
        // SAFETY: ctx and name are live for this call; the key handle is
        // closed in Drop.
        let ptr = unsafe { rm!(RedisModule_OpenKey)(ctx, name, mode) }.cast();
        OpenKey { ptr }
    }

    pub fn read(ctx: Ctx, name: RString) -> Self {
        // SAFETY: as for `write`.
        let ptr =
            unsafe { rm!(RedisModule_OpenKey)(ctx, name, raw::REDISMODULE_READ as c_int) }.cast();
        OpenKey { ptr }
    }

    pub fn kind(&self) -> KeyKind {
        if self.ptr.is_null() {
            return KeyKind::Empty;
        }
        // SAFETY: self.ptr is an open key.
        let key_type = unsafe { rm!(RedisModule_KeyType)(self.ptr) } as isize;
        match key_type {
            raw::REDISMODULE_KEYTYPE_EMPTY => KeyKind::Empty,
            raw::REDISMODULE_KEYTYPE_STRING => KeyKind::LegacyString,
            raw::REDISMODULE_KEYTYPE_MODULE => {
                // SAFETY: the key holds a module value.
                let t = unsafe { rm!(RedisModule_ModuleTypeGetType)(self.ptr) };
                if t != reservation_type() {
                    return KeyKind::Other;
                }
                // SAFETY: the key holds a value of our type.
                let v = unsafe { rm!(RedisModule_ModuleTypeGetValue)(self.ptr) };
                match NonNull::new(v) {
                    Some(r) => KeyKind::Reservation(r),
                    None => KeyKind::Other,
                }
            }
            _ => KeyKind::Other,
        }
    }

    /// The value of a plain-string key (an old library's holder).
    pub fn string_value(&self) -> &[u8] {
        let mut len = 0usize;
        // SAFETY: only called on a string key opened for reading; DMA in
        // READ mode does not modify it.
        let p = unsafe {
            rm!(RedisModule_StringDMA)(self.ptr, &mut len, raw::REDISMODULE_READ as c_int)
        };
        if p.is_null() {
            return &[];
        }
        // SAFETY: DMA returns `len` readable bytes, valid while the key
        // stays open and unmodified (we only read them right away).
        unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }
    }

    /// Stores a new mutex as the key's value (replacing whatever was there;
    /// the old value is freed by Redis through our free callback).
    pub fn set_reservation(&self, r: crate::reservation::Reservation) -> bool {
        self.set_value(crate::value::Value::Mutex(r))
    }

    /// Stores a value of the module's type, replacing the key's value.
    pub fn set_value(&self, v: crate::value::Value) -> bool {
        crate::datatype::count_created(v.view());
        let value = v.into_raw();
        // SAFETY: key open for writing; ownership of `value` passes to Redis.
        let status =
            unsafe { rm!(RedisModule_ModuleTypeSetValue)(self.ptr, reservation_type(), value) };
        if status != raw::REDISMODULE_OK as c_int {
            if let Some(value) = NonNull::new(value) {
                // SAFETY: Redis did not take it, so we still own it.
                let v = unsafe { crate::value::Value::from_raw(value) };
                crate::datatype::count_freed(v.view());
            }
            return false;
        }
        true
    }

    /// Absolute expiry in unix ms, or None when the key has none.
    pub fn abs_expire(&self) -> Option<i64> {
        if self.ptr.is_null() {
            return None;
        }
        // SAFETY: open key.
        let t = unsafe { rm!(RedisModule_GetAbsExpire)(self.ptr) };
        (t >= 0).then_some(t)
    }

    pub fn set_abs_expire(&self, at_ms: i64) {
        // SAFETY: open key with a value.
        unsafe { rm!(RedisModule_SetAbsExpire)(self.ptr, at_ms) };
    }

    /// Deletes the key. The module's own deletions (RELEASE) hand off in
    /// the same step, so the unlink callback need not schedule a check.
    pub fn delete(&self) {
        OWN_DELETE.store(true, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: open key for writing.
        unsafe { rm!(RedisModule_DeleteKey)(self.ptr) };
        OWN_DELETE.store(false, std::sync::atomic::Ordering::Relaxed);
        // A deletion of ours is never an expiry.
        crate::datatype::forget_unlinked();
    }
}

impl Drop for OpenKey {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: opened by OpenKey and closed exactly once, here.
            unsafe { rm!(RedisModule_CloseKey)(self.ptr) };
        }
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
