//! A redis-benchmark-like load generator: one thread, N connections, each
//! writes a pipeline of P requests and reads their P replies before it
//! writes the next, until it has sent its share.
//!
//! Why not redis-benchmark itself: its `__rand_int__` keys are random, so a
//! RELEASE, a compare-and-delete script or a DEL would find most keys
//! already gone after the first pass and measure the cheap failing path.
//! Here every request is generated per client and per sequence number, so
//! a release row releases keys that client really holds, exactly once, and
//! every reply is checked. redis-benchmark still runs next to it as a
//! reference (section 1 prints both for PING and SET NX).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::resp::{skim, Kind};

/// What one run measured.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub requests: u64,
    pub elapsed: Duration,
    /// Replies the check accepted.
    pub expected: u64,
    /// The first reply the check refused, for the report.
    pub first_unexpected: Option<Kind>,
}

impl Outcome {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn all_expected(&self) -> bool {
        self.expected == self.requests
    }
}

/// How a request is made: client index, its sequence number (0..per
/// client), that client's random generator, and the buffer to append it to.
pub type Gen<'a> = dyn Fn(usize, u64, &mut SmallRng, &mut Vec<u8>) + 'a;

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    sent: u64,
    received: u64,
    rng: SmallRng,
}

/// Runs `per_client` requests on each of `clients` connections, `pipeline`
/// at a time. `check` says whether a reply is the one the row means to
/// measure.
pub fn run(
    port: u16,
    clients: usize,
    pipeline: usize,
    per_client: u64,
    gen: &Gen<'_>,
    check: &dyn Fn(Kind) -> bool,
) -> Outcome {
    let mut conns: Vec<Client> = (0..clients)
        .map(|c| {
            let stream = TcpStream::connect(("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
            stream.set_nodelay(true).expect("TCP_NODELAY");
            Client {
                stream,
                buf: Vec::with_capacity(64 * 1024),
                start: 0,
                sent: 0,
                received: 0,
                rng: SmallRng::seed_from_u64(0x5eed_0000 + c as u64),
            }
        })
        .collect();
    let mut pollfds: Vec<libc::pollfd> = conns
        .iter()
        .map(|c| libc::pollfd {
            fd: c.stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut out = Vec::with_capacity(pipeline * 128);
    let mut expected = 0u64;
    let mut first_unexpected = None;
    let mut done = 0usize;

    let send_batch = |idx: usize, conns: &mut [Client], out: &mut Vec<u8>| {
        let c = &mut conns[idx];
        out.clear();
        let n = (per_client - c.sent).min(pipeline as u64);
        for i in 0..n {
            gen(idx, c.sent + i, &mut c.rng, out);
        }
        c.sent += n;
        c.stream.write_all(out).expect("write requests");
    };

    let start = Instant::now();
    for idx in 0..clients {
        if per_client == 0 {
            done += 1;
        } else {
            send_batch(idx, &mut conns, &mut out);
        }
    }
    while done < clients {
        // SAFETY: pollfds is a valid array of `len` pollfd structs that
        // outlives the call.
        let ready =
            unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, 20_000) };
        if ready < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            panic!("poll: {err}");
        }
        assert!(ready > 0, "load generator: no reply for 20 s");
        for idx in 0..clients {
            if pollfds[idx].revents == 0 {
                continue;
            }
            pollfds[idx].revents = 0;
            let c = &mut conns[idx];
            if c.start > 0 && c.start == c.buf.len() {
                c.buf.clear();
                c.start = 0;
            }
            let len = c.buf.len();
            c.buf.resize(len + 64 * 1024, 0);
            let n = c.stream.read(&mut c.buf[len..]).expect("read replies");
            assert!(n > 0, "server closed a load generator connection");
            c.buf.truncate(len + n);
            while let Some((kind, used)) = skim(&c.buf[c.start..]).expect("parse reply") {
                c.start += used;
                c.received += 1;
                if check(kind) {
                    expected += 1;
                } else if first_unexpected.is_none() {
                    first_unexpected = Some(kind);
                }
            }
            if c.start > 0 {
                c.buf.drain(..c.start);
                c.start = 0;
            }
            if c.received == c.sent {
                if c.sent < per_client {
                    send_batch(idx, &mut conns, &mut out);
                } else {
                    done += 1;
                    // A negative fd is ignored by poll (no HUP reports).
                    pollfds[idx].fd = -1;
                }
            }
        }
    }
    Outcome {
        requests: per_client * clients as u64,
        elapsed: start.elapsed(),
        expected,
        first_unexpected,
    }
}
