//! A minimal RESP2 client for the measured paths (it also parses the RESP3
//! replies section 6's watchers get after `HELLO 3`).
//!
//! The `redis` crate sets servers up and reads INFO; the latencies are taken
//! on [`RawConn`], which writes a request with one `write` and reads replies
//! into its own buffer. Two reasons: a request can be sent on one connection
//! and its reply read later while another connection is read first (the
//! releaser sends, the waiter's socket is read), and a read timeout never
//! loses or skips a reply (the `redis` crate's connection drops the next
//! reply after a timed-out read).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One reply, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The integer of an integer reply, or a panic naming the context.
    pub fn int(&self, what: &str) -> i64 {
        match self {
            Reply::Int(n) => *n,
            other => panic!("{what}: expected an integer reply, got {other:?}"),
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Reply::Simple(s) if s == "OK")
    }

    pub fn is_nil(&self) -> bool {
        matches!(self, Reply::Bulk(None) | Reply::Array(None))
    }

    /// The bulk strings of an array reply (pub/sub messages, BLPOP).
    pub fn strings(&self) -> Vec<Vec<u8>> {
        match self {
            Reply::Array(Some(items)) => items
                .iter()
                .map(|r| match r {
                    Reply::Bulk(Some(b)) => b.clone(),
                    Reply::Simple(s) => s.as_bytes().to_vec(),
                    Reply::Int(n) => n.to_string().into_bytes(),
                    _ => Vec::new(),
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Appends one command in RESP to `out`.
pub fn encode<A: AsRef<[u8]>>(args: &[A], out: &mut Vec<u8>) {
    out.push(b'*');
    push_num(out, args.len() as u64);
    out.extend_from_slice(b"\r\n");
    for a in args {
        let a = a.as_ref();
        out.push(b'$');
        push_num(out, a.len() as u64);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Decimal digits without going through `fmt` (the load generator encodes
/// a million commands a second on the core the server does not use).
pub fn push_num(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `n` zero-padded to `width` digits.
pub fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut tmp = Vec::with_capacity(20);
    push_num(&mut tmp, n);
    for _ in tmp.len()..width {
        out.push(b'0');
    }
    out.extend_from_slice(&tmp);
}

fn line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let pos = buf.windows(2).position(|w| w == b"\r\n")?;
    Some((&buf[..pos], pos + 2))
}

fn parse_int(bytes: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad integer in reply: {:?}", String::from_utf8_lossy(bytes)))
}

/// Parses one reply from the front of `buf`: `Ok(None)` when incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let Some(&tag) = buf.first() else {
        return Ok(None);
    };
    let Some((head, used)) = line(&buf[1..]) else {
        return Ok(None);
    };
    let used = used + 1;
    match tag {
        b'+' => Ok(Some((
            Reply::Simple(String::from_utf8_lossy(head).into_owned()),
            used,
        ))),
        b'-' => Ok(Some((
            Reply::Error(String::from_utf8_lossy(head).into_owned()),
            used,
        ))),
        b':' => Ok(Some((Reply::Int(parse_int(head)?), used))),
        b'$' => {
            let n = parse_int(head)?;
            if n < 0 {
                return Ok(Some((Reply::Bulk(None), used)));
            }
            let n = n as usize;
            if buf.len() < used + n + 2 {
                return Ok(None);
            }
            Ok(Some((
                Reply::Bulk(Some(buf[used..used + n].to_vec())),
                used + n + 2,
            )))
        }
        // RESP3 (after `HELLO 3`): null, boolean, double, big number.
        b'_' => Ok(Some((Reply::Bulk(None), used))),
        b'#' => Ok(Some((Reply::Int(i64::from(head == b"t")), used))),
        b',' | b'(' => Ok(Some((Reply::Bulk(Some(head.to_vec())), used))),
        // Verbatim string and blob error: sized like a bulk string.
        b'=' | b'!' => {
            let n = usize::try_from(parse_int(head)?).map_err(|_| "negative length")?;
            if buf.len() < used + n + 2 {
                return Ok(None);
            }
            let body = buf[used..used + n].to_vec();
            let reply = if tag == b'!' {
                Reply::Error(String::from_utf8_lossy(&body).into_owned())
            } else {
                Reply::Bulk(Some(body))
            };
            Ok(Some((reply, used + n + 2)))
        }
        // Array, and RESP3's push (pub/sub messages), set and map (its
        // keys and values flattened, as RESP2 sends them).
        b'*' | b'>' | b'~' | b'%' => {
            let n = parse_int(head)?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), used)));
            }
            let n = if tag == b'%' { n * 2 } else { n };
            let mut items = Vec::with_capacity(n as usize);
            let mut at = used;
            for _ in 0..n {
                match parse(&buf[at..])? {
                    Some((item, len)) => {
                        items.push(item);
                        at += len;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        other => Err(format!("unexpected RESP type byte {other:#x}")),
    }
}

/// What the load generator needs to know about a reply, without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `+OK`
    Ok,
    /// any other simple string (`+PONG`)
    Simple,
    Int(i64),
    Nil,
    Bulk,
    Error,
    Array,
}

/// Like [`parse`] but only classifies the reply.
pub fn skim(buf: &[u8]) -> Result<Option<(Kind, usize)>, String> {
    let Some(&tag) = buf.first() else {
        return Ok(None);
    };
    let Some((head, used)) = line(&buf[1..]) else {
        return Ok(None);
    };
    let used = used + 1;
    match tag {
        b'+' if head == b"OK" => Ok(Some((Kind::Ok, used))),
        b'+' => Ok(Some((Kind::Simple, used))),
        b'-' => Ok(Some((Kind::Error, used))),
        b':' => Ok(Some((Kind::Int(parse_int(head)?), used))),
        b'$' => {
            let n = parse_int(head)?;
            if n < 0 {
                return Ok(Some((Kind::Nil, used)));
            }
            let end = used + n as usize + 2;
            if buf.len() < end {
                return Ok(None);
            }
            Ok(Some((Kind::Bulk, end)))
        }
        b'*' => Ok(parse(buf)?.map(|(r, len)| {
            let kind = if r.is_nil() { Kind::Nil } else { Kind::Array };
            (kind, len)
        })),
        other => Err(format!("unexpected RESP type byte {other:#x}")),
    }
}

/// One plain TCP connection speaking RESP2.
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    timeout: Option<Duration>,
    out: Vec<u8>,
}

/// How long any single reply may take before the benchmark gives up.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(20);

impl RawConn {
    pub fn connect(port: u16) -> RawConn {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        RawConn {
            stream,
            buf: Vec::with_capacity(4096),
            start: 0,
            timeout: None,
            out: Vec::with_capacity(256),
        }
    }

    /// Writes one command; does not wait for its reply.
    pub fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        self.out.clear();
        encode(args, &mut self.out);
        self.stream.write_all(&self.out).expect("write a command");
    }

    /// Writes already encoded commands.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write commands");
    }

    /// The next reply, or `None` when `timeout` passes first (nothing is
    /// lost: a reply that arrives later is returned by the next call).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<Reply> {
        let deadline = Instant::now() + timeout;
        loop {
            match parse(&self.buf[self.start..]) {
                Ok(Some((reply, used))) => {
                    self.start += used;
                    if self.start == self.buf.len() {
                        self.buf.clear();
                        self.start = 0;
                    }
                    return Some(reply);
                }
                Ok(None) => {}
                Err(e) => panic!("protocol error: {e}"),
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let left = (deadline - now).max(Duration::from_micros(100));
            // Only touch the socket option when it changes by more than a
            // millisecond: one setsockopt less on the measured path.
            let stale = match self.timeout {
                Some(t) => {
                    let diff = if t > left { t - left } else { left - t };
                    diff > Duration::from_millis(1)
                }
                None => true,
            };
            if stale {
                self.stream
                    .set_read_timeout(Some(left))
                    .expect("set read timeout");
                self.timeout = Some(left);
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let len = self.buf.len();
            self.buf.resize(len + 16 * 1024, 0);
            match self.stream.read(&mut self.buf[len..]) {
                Ok(0) => panic!("server closed the connection"),
                Ok(n) => self.buf.truncate(len + n),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    self.buf.truncate(len);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.buf.truncate(len),
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The next reply; panics after [`REPLY_DEADLINE`].
    pub fn recv(&mut self) -> Reply {
        self.recv_timeout(REPLY_DEADLINE)
            .unwrap_or_else(|| panic!("no reply within {REPLY_DEADLINE:?}"))
    }

    /// Sends one command and waits for its reply.
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Reply {
        self.send(args);
        self.recv()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_reply_type() {
        let buf = b"+OK\r\n-ERR x\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\na\r\n:1\r\n*-1\r\n";
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((r, used)) = parse(&buf[at..]).unwrap() {
            got.push(r);
            at += used;
        }
        assert_eq!(at, buf.len());
        assert_eq!(
            got,
            vec![
                Reply::Simple("OK".into()),
                Reply::Error("ERR x".into()),
                Reply::Int(42),
                Reply::Bulk(Some(b"abc".to_vec())),
                Reply::Bulk(None),
                Reply::Array(Some(vec![Reply::Bulk(Some(b"a".to_vec())), Reply::Int(1)])),
                Reply::Array(None),
            ]
        );
    }

    #[test]
    fn parses_resp3_replies() {
        let buf = b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n%1\r\n+a\r\n_\r\n#t\r\n,1.5\r\n=7\r\ntxt:abc\r\n";
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((r, used)) = parse(&buf[at..]).unwrap() {
            got.push(r);
            at += used;
        }
        assert_eq!(at, buf.len());
        assert_eq!(
            got[0].strings(),
            vec![b"message".to_vec(), b"c".to_vec(), b"x".to_vec()]
        );
        assert_eq!(
            got[1],
            Reply::Array(Some(vec![Reply::Simple("a".into()), Reply::Bulk(None)]))
        );
        assert_eq!(got[2], Reply::Int(1));
        assert_eq!(got[3], Reply::Bulk(Some(b"1.5".to_vec())));
        assert_eq!(got[4], Reply::Bulk(Some(b"txt:abc".to_vec())));
        assert_eq!(parse(b"%1\r\n+a\r\n").unwrap(), None);
    }

    #[test]
    fn incomplete_replies_wait_for_more() {
        assert_eq!(parse(b"$3\r\nab").unwrap(), None);
        assert_eq!(parse(b"*2\r\n:1\r\n").unwrap(), None);
        assert_eq!(skim(b"$3\r\nab").unwrap(), None);
        assert_eq!(skim(b":7\r\n").unwrap(), Some((Kind::Int(7), 4)));
        assert_eq!(skim(b"+OK\r\n").unwrap(), Some((Kind::Ok, 5)));
        assert_eq!(skim(b"$-1\r\n").unwrap(), Some((Kind::Nil, 5)));
    }

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode(&["SET", "k", "v"], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
        let mut n = Vec::new();
        push_padded(&mut n, 42, 5);
        push_num(&mut n, 0);
        assert_eq!(n, b"000420");
    }
}
