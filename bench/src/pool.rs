//! Many connections read by one thread through epoll: section 6's crowds of
//! 1,000 to 10,000 watchers on one key. Every socket is non-blocking and
//! registered once; [`Pool::next`] hands out one reply at a time, tagged with
//! its connection and the instant it was read, so the caller can answer a
//! reply (send the next PING, a follow-up read) before it reads the next.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::resp::{parse, Reply};

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

pub struct Pool {
    conns: Vec<Conn>,
    epfd: libc::c_int,
    events: Vec<libc::epoll_event>,
    ready: VecDeque<(usize, Reply, Instant)>,
    /// One read buffer for all: 10,000 connections keep only what they
    /// have not parsed yet.
    scratch: Vec<u8>,
}

/// How long a write may find a full socket buffer before the benchmark
/// gives up (the requests are small: it never should).
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

impl Pool {
    pub fn new() -> Pool {
        // SAFETY: creates a descriptor this struct owns and closes on drop.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(epfd >= 0, "epoll_create1: {}", io::Error::last_os_error());
        Pool {
            conns: Vec::new(),
            epfd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 1024],
            ready: VecDeque::new(),
            scratch: vec![0; 64 * 1024],
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Opens connections until there are `n`.
    pub fn grow(&mut self, port: u16, n: usize) {
        while self.conns.len() < n {
            let stream = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| {
                panic!(
                    "connection {} to 127.0.0.1:{port}: {e} (open files limit?)",
                    self.conns.len()
                )
            });
            stream.set_nodelay(true).expect("TCP_NODELAY");
            stream.set_nonblocking(true).expect("O_NONBLOCK");
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: self.conns.len() as u64,
            };
            // SAFETY: both descriptors are open; ev outlives the call.
            let rc = unsafe {
                libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_ADD, stream.as_raw_fd(), &mut ev)
            };
            assert_eq!(rc, 0, "epoll_ctl: {}", io::Error::last_os_error());
            self.conns.push(Conn {
                stream,
                buf: Vec::new(),
                start: 0,
            });
        }
    }

    /// Writes already encoded commands on connection `i`.
    pub fn write(&mut self, i: usize, bytes: &[u8]) {
        let deadline = Instant::now() + WRITE_DEADLINE;
        let mut at = 0;
        while at < bytes.len() {
            match self.conns[i].stream.write(&bytes[at..]) {
                Ok(0) => panic!("connection {i}: write returned 0"),
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(
                        Instant::now() < deadline,
                        "connection {i}: socket buffer full for {WRITE_DEADLINE:?}"
                    );
                    std::thread::sleep(Duration::from_micros(100));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("connection {i}: write: {e}"),
            }
        }
    }

    /// The next reply on any connection: `(connection, reply, when read)`,
    /// or `None` once `deadline` passes.
    pub fn next(&mut self, deadline: Instant) -> Option<(usize, Reply, Instant)> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let ms = (deadline - now).as_millis().clamp(1, 1000) as libc::c_int;
            // SAFETY: events is a valid buffer of its length.
            let n = unsafe {
                libc::epoll_wait(
                    self.epfd,
                    self.events.as_mut_ptr(),
                    self.events.len() as libc::c_int,
                    ms,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                assert_eq!(err.kind(), io::ErrorKind::Interrupted, "epoll_wait: {err}");
                continue;
            }
            // Lower indices first: the caller puts its measured connections
            // (the change, the PING) there.
            let mut idx: Vec<usize> = self.events[..n as usize]
                .iter()
                .map(|e| {
                    let data = e.u64;
                    data as usize
                })
                .collect();
            idx.sort_unstable();
            for i in idx {
                self.drain(i);
            }
        }
    }

    /// Reads what connection `i` has and queues the complete replies.
    fn drain(&mut self, i: usize) {
        let c = &mut self.conns[i];
        // One read per readiness report, unless it filled the buffer
        // (level-triggered: what is left is reported again), so a small
        // reply costs one system call, not a second one for EAGAIN.
        loop {
            match c.stream.read(&mut self.scratch) {
                Ok(0) => panic!("server closed pool connection {i}"),
                Ok(n) => {
                    c.buf.extend_from_slice(&self.scratch[..n]);
                    if n < self.scratch.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("pool connection {i}: read: {e}"),
            }
        }
        let at = Instant::now();
        loop {
            match parse(&c.buf[c.start..]) {
                Ok(Some((reply, used))) => {
                    c.start += used;
                    self.ready.push_back((i, reply, at));
                }
                Ok(None) => break,
                Err(e) => panic!("pool connection {i}: protocol error: {e}"),
            }
        }
        if c.start > 0 {
            c.buf.drain(..c.start);
            c.start = 0;
        }
    }

    /// Sends `cmd` on connections `range` and reads one reply from each that
    /// `done` accepts (other replies, such as pub/sub messages still in
    /// flight, are skipped and counted). Returns the count skipped.
    pub fn call_each(
        &mut self,
        range: std::ops::Range<usize>,
        cmd: &[u8],
        done: &dyn Fn(&Reply) -> bool,
    ) -> usize {
        for i in range.clone() {
            self.write(i, cmd);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut pending = vec![false; self.conns.len()];
        for p in &mut pending[range.clone()] {
            *p = true;
        }
        let mut left = range.len();
        let mut skipped = 0;
        while left > 0 {
            let (i, r, _) = self
                .next(deadline)
                .unwrap_or_else(|| panic!("{left} replies missing after 60 s"));
            if pending[i] && done(&r) {
                pending[i] = false;
                left -= 1;
            } else {
                skipped += 1;
            }
        }
        skipped
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.epfd) };
    }
}
