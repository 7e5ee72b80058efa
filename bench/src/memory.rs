//! Section 5: memory per held reservation against the old libraries'
//! `SET key holder NX EX ttl`, same key and holder lengths, each kind on a
//! fresh server of its own: `used_memory` after minus before, divided by
//! the count, and `MEMORY USAGE` of one key.

use crate::common::{self, info_u64, wait_for_clients, Sizes};
use crate::loadgen;
use crate::resp::{encode, Kind};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind2 {
    Reservation,
    PlainString,
}

pub struct MemResult {
    pub kind: Kind2,
    pub count: u64,
    pub used_before: u64,
    pub used_after: u64,
    pub memory_usage_one: i64,
}

impl MemResult {
    pub fn per_key(&self) -> f64 {
        (self.used_after as f64 - self.used_before as f64) / self.count as f64
    }
}

fn key(i: u64) -> String {
    format!("lock:{i:010}")
}

fn measure(kind: Kind2, count: u64) -> MemResult {
    let server = common::start_server();
    let mut ctl = server.conn();
    wait_for_clients(&mut ctl, 1);
    let used_before = info_u64(&mut ctl, "memory", "used_memory");
    let clients = 50usize;
    let per = count / clients as u64;
    let gen = |c: usize, i: u64, _: &mut rand::rngs::SmallRng, out: &mut Vec<u8>| {
        let n = c as u64 * per + i;
        let k = key(n);
        let h = common::holder("worker", n);
        match kind {
            Kind2::Reservation => encode(&["RESERVE.LOCK", &k, &h, "3600"], out),
            Kind2::PlainString => encode(&["SET", &k, &h, "NX", "EX", "3600"], out),
        }
    };
    let check = |k: Kind| match kind {
        Kind2::Reservation => matches!(k, Kind::Int(t) if t > 0),
        Kind2::PlainString => k == Kind::Ok,
    };
    let o = loadgen::run(server.port(), clients, 64, per, &gen, &check);
    assert!(o.all_expected(), "populating {count} keys: {o:?}");
    wait_for_clients(&mut ctl, 1);
    let used_after = info_u64(&mut ctl, "memory", "used_memory");
    let dbsize: u64 = redis::cmd("DBSIZE").query(&mut ctl).expect("DBSIZE");
    assert_eq!(dbsize, per * clients as u64, "every key is there");
    let memory_usage_one: i64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key(0))
        .query(&mut ctl)
        .expect("MEMORY USAGE");
    MemResult {
        kind,
        count: per * clients as u64,
        used_before,
        used_after,
        memory_usage_one,
    }
}

pub fn run(sizes: &Sizes, log: &mut dyn FnMut(&str)) -> Vec<MemResult> {
    log(&format!("  {} reservations", sizes.memory_keys));
    let a = measure(Kind2::Reservation, sizes.memory_keys);
    log(&format!("  {} plain SET keys", sizes.memory_keys));
    let b = measure(Kind2::PlainString, sizes.memory_keys);
    vec![a, b]
}

pub fn report(results: &[MemResult]) -> String {
    let mut md = String::from(
        "Each kind on a fresh server with the module loaded; keys `lock:NNNNNNNNNN` (15 bytes), \
         holders of 32 bytes (`worker-benchhost-NNNNNN-xxxxxxxx`), TTL one hour.\n\n\
         | kind | keys | used_memory before | after | bytes per key | `MEMORY USAGE` of one |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {} |\n",
            match r.kind {
                Kind2::Reservation => "`RESERVE.LOCK k holder 3600`",
                Kind2::PlainString => "`SET k holder NX EX 3600`",
            },
            crate::stats::fmt_int(r.count),
            crate::stats::fmt_int(r.used_before),
            crate::stats::fmt_int(r.used_after),
            r.per_key(),
            r.memory_usage_one
        ));
    }
    if let [a, b] = results {
        md.push_str(&format!(
            "\nA reservation costs **{:.2}x** the plain string key ({:.1} vs {:.1} bytes).\n",
            a.per_key() / b.per_key(),
            a.per_key(),
            b.per_key()
        ));
    }
    md
}
