//! Section 1: throughput, redis-benchmark style.
//!
//! 50 clients, pipeline 1 and 16, several rounds. Every row of a round runs
//! on the same server, one after the other, and the ratios (LOCK to SET NX,
//! RENEW and RELEASE to their Lua scripts) are taken within the round, then
//! the median over rounds is reported, so a noisy neighbour that slows one
//! round down slows both sides of its ratios.
//!
//! Key distribution: client `c` works on its own keys `bench:cc:iiiiiii`
//! with its own holder. The acquire rows take fresh keys (every reply is a
//! grant); the held rows hit random keys of the client that another holder
//! owns (every reply is a refusal); renew rows hit random keys the client
//! holds; release rows release each held key exactly once, so every
//! release really releases. The string recipes and the module's commands
//! run on the same key names and the same number of keys (the string group
//! ends with an empty database before the module group starts, and the
//! order of the two groups alternates between rounds).

use std::collections::BTreeMap;
use std::process::Command;

use rand::rngs::SmallRng;
use rand::Rng;

use crate::common::{self, Sizes, LUA_RELEASE, LUA_RENEW};
use crate::loadgen::{self, Gen, Outcome};
use crate::resp::{push_num, push_padded, Kind};
use crate::stats::{fmt_rps, median};

pub const CLIENTS: usize = 50;
pub const PIPELINES: [usize; 2] = [1, 16];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Row {
    Ping,
    RbPing,
    SetNx,
    RbSetNx,
    Lock,
    SetNxHeld,
    LockHeld,
    LuaRenew,
    Renew,
    LuaRelease,
    Release,
    Del,
    /// The same SET NX and DEL rows on a server without the module.
    PlainSetNx,
    PlainDel,
}

impl Row {
    pub fn label(self) -> &'static str {
        match self {
            Row::Ping => "PING",
            Row::RbPing => "PING (redis-benchmark)",
            Row::SetNx => "`SET k v NX EX 30`, key free",
            Row::RbSetNx => "`SET k v NX EX 30` (redis-benchmark, -r 1e8)",
            Row::Lock => "`RESERVE.LOCK k h 30`, key free",
            Row::SetNxHeld => "`SET k v NX EX 30`, key held",
            Row::LockHeld => "`RESERVE.LOCK k h 30`, key held by another",
            Row::LuaRenew => "EVALSHA compare-and-pexpire (renew)",
            Row::Renew => "`RESERVE.RENEW k h 30`",
            Row::LuaRelease => "EVALSHA compare-and-delete (release)",
            Row::Release => "`RESERVE.RELEASE k h`",
            Row::Del => "`DEL k` (old libraries' release)",
            Row::PlainSetNx => "`SET k v NX EX 30`, key free, server without the module",
            Row::PlainDel => "`DEL k`, server without the module",
        }
    }

    /// What every reply of the row is (checked).
    pub fn path(self) -> &'static str {
        match self {
            Row::Ping | Row::RbPing => "PONG: the server's per-command ceiling",
            Row::SetNx => "OK: acquires a fresh key",
            Row::RbSetNx => "random keys in 1e8: almost all fresh (not checked)",
            Row::Lock => "a token: acquires a fresh key",
            Row::SetNxHeld => "nil: key exists",
            Row::LockHeld => "0: another holder has it",
            Row::LuaRenew => "1: holder matches, TTL set",
            Row::Renew => "1: holder matches, TTL set",
            Row::LuaRelease => "1: holder matches, key deleted (each key once)",
            Row::Release => "1: holder matches, released (each key once)",
            Row::Del => "1: key existed and is deleted (each key once)",
            Row::PlainSetNx => "OK: acquires a fresh key",
            Row::PlainDel => "1: key existed and is deleted (each key once)",
        }
    }
}

/// One pipeline depth: requests per second per row per round, and the
/// ratios taken within each round.
pub struct PipelineResult {
    pub pipeline: usize,
    pub requests: u64,
    pub rps: BTreeMap<Row, Vec<f64>>,
    pub ratios: Vec<Ratio>,
    /// Rows where a reply was not the one the row measures.
    pub problems: Vec<String>,
}

pub struct Ratio {
    pub name: &'static str,
    pub num: Row,
    pub den: Row,
    pub per_round: Vec<f64>,
}

impl Ratio {
    pub fn median(&self) -> f64 {
        median(&self.per_round)
    }
}

impl PipelineResult {
    pub fn median_rps(&self, row: Row) -> f64 {
        self.rps.get(&row).map_or(f64::NAN, |v| median(v))
    }

    pub fn ratio(&self, name: &str) -> f64 {
        self.ratios
            .iter()
            .find(|r| r.name == name)
            .map_or(f64::NAN, Ratio::median)
    }
}

pub const RATIOS: [(&str, Row, Row); 7] = [
    ("LOCK / SET NX (free key)", Row::Lock, Row::SetNx),
    ("LOCK / SET NX (held key)", Row::LockHeld, Row::SetNxHeld),
    ("RENEW / Lua renew", Row::Renew, Row::LuaRenew),
    ("RELEASE / Lua release", Row::Release, Row::LuaRelease),
    ("RELEASE / DEL", Row::Release, Row::Del),
    (
        "SET NX with the module loaded / without",
        Row::SetNx,
        Row::PlainSetNx,
    ),
    (
        "DEL with the module loaded / without",
        Row::Del,
        Row::PlainDel,
    ),
];

/// `bench:cc:iiiiiii` (16 bytes)
fn push_key(out: &mut Vec<u8>, c: usize, i: u64) {
    out.extend_from_slice(b"$16\r\nbench:");
    if c < 10 {
        out.push(b'0');
    }
    push_num(out, c as u64);
    out.push(b':');
    push_padded(out, i, 7);
    out.extend_from_slice(b"\r\n");
}

fn push_arg(out: &mut Vec<u8>, arg: &[u8]) {
    out.push(b'$');
    push_num(out, arg.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(arg);
    out.extend_from_slice(b"\r\n");
}

fn push_head(out: &mut Vec<u8>, argc: usize) {
    out.push(b'*');
    push_num(out, argc as u64);
    out.extend_from_slice(b"\r\n");
}

#[derive(Clone)]
struct Env {
    port: u16,
    holders: Vec<Vec<u8>>,
    rivals: Vec<Vec<u8>>,
    sha_release: Vec<u8>,
    sha_renew: Vec<u8>,
}

impl Env {
    fn run(
        &self,
        pipeline: usize,
        per_client: u64,
        gen: &Gen<'_>,
        check: &dyn Fn(Kind) -> bool,
    ) -> Outcome {
        loadgen::run(self.port, CLIENTS, pipeline, per_client, gen, check)
    }

    /// One row: build its generator and check, run it.
    fn row(&self, row: Row, pipeline: usize, per: u64) -> Outcome {
        let h = &self.holders;
        let rv = &self.rivals;
        let rel = &self.sha_release;
        let ren = &self.sha_renew;
        let random_own = |rng: &mut SmallRng| rng.gen_range(0..per);
        match row {
            Row::Ping => self.run(
                pipeline,
                per,
                &|_, _, _, out| out.extend_from_slice(b"*1\r\n$4\r\nPING\r\n"),
                &|k| k == Kind::Simple,
            ),
            Row::SetNx => self.run(
                pipeline,
                per,
                &|c, i, _, out| {
                    push_head(out, 6);
                    push_arg(out, b"SET");
                    push_key(out, c, i);
                    push_arg(out, &h[c]);
                    push_arg(out, b"NX");
                    push_arg(out, b"EX");
                    push_arg(out, b"30");
                },
                &|k| k == Kind::Ok,
            ),
            Row::Lock => self.run(
                pipeline,
                per,
                &|c, i, _, out| {
                    push_head(out, 4);
                    push_arg(out, b"RESERVE.LOCK");
                    push_key(out, c, i);
                    push_arg(out, &h[c]);
                    push_arg(out, b"30");
                },
                &|k| matches!(k, Kind::Int(t) if t > 0),
            ),
            Row::SetNxHeld => self.run(
                pipeline,
                per,
                &|c, _, rng, out| {
                    push_head(out, 6);
                    push_arg(out, b"SET");
                    push_key(out, c, random_own(rng));
                    push_arg(out, &rv[c]);
                    push_arg(out, b"NX");
                    push_arg(out, b"EX");
                    push_arg(out, b"30");
                },
                &|k| k == Kind::Nil,
            ),
            Row::LockHeld => self.run(
                pipeline,
                per,
                &|c, _, rng, out| {
                    push_head(out, 4);
                    push_arg(out, b"RESERVE.LOCK");
                    push_key(out, c, random_own(rng));
                    push_arg(out, &rv[c]);
                    push_arg(out, b"30");
                },
                &|k| k == Kind::Int(0),
            ),
            Row::LuaRenew => self.run(
                pipeline,
                per,
                &|c, _, rng, out| {
                    push_head(out, 6);
                    push_arg(out, b"EVALSHA");
                    push_arg(out, ren);
                    push_arg(out, b"1");
                    push_key(out, c, random_own(rng));
                    push_arg(out, &h[c]);
                    push_arg(out, b"30000");
                },
                &|k| k == Kind::Int(1),
            ),
            Row::Renew => self.run(
                pipeline,
                per,
                &|c, _, rng, out| {
                    push_head(out, 4);
                    push_arg(out, b"RESERVE.RENEW");
                    push_key(out, c, random_own(rng));
                    push_arg(out, &h[c]);
                    push_arg(out, b"30");
                },
                &|k| k == Kind::Int(1),
            ),
            Row::LuaRelease => self.run(
                pipeline,
                per,
                &|c, i, _, out| {
                    push_head(out, 5);
                    push_arg(out, b"EVALSHA");
                    push_arg(out, rel);
                    push_arg(out, b"1");
                    push_key(out, c, i);
                    push_arg(out, &h[c]);
                },
                &|k| k == Kind::Int(1),
            ),
            Row::Release => self.run(
                pipeline,
                per,
                &|c, i, _, out| {
                    push_head(out, 3);
                    push_arg(out, b"RESERVE.RELEASE");
                    push_key(out, c, i);
                    push_arg(out, &h[c]);
                },
                &|k| k == Kind::Int(1),
            ),
            Row::Del => self.run(
                pipeline,
                per,
                &|c, i, _, out| {
                    push_head(out, 2);
                    push_arg(out, b"DEL");
                    push_key(out, c, i);
                },
                &|k| k == Kind::Int(1),
            ),
            Row::PlainSetNx => self.row(Row::SetNx, pipeline, per),
            Row::PlainDel => self.row(Row::Del, pipeline, per),
            Row::RbPing | Row::RbSetNx => unreachable!("redis-benchmark rows run elsewhere"),
        }
    }
}

/// redis-benchmark's rps for one command line (`--csv`), if it is installed.
fn redis_benchmark(port: u16, pipeline: usize, requests: u64, args: &[&str]) -> Option<f64> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", &CLIENTS.to_string(), "-P", &pipeline.to_string()])
        .args(["-n", &requests.to_string(), "--csv"])
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rfind(|l| !l.starts_with("\"test\""))?;
    line.split(',')
        .nth(1)?
        .trim_matches('"')
        .parse::<f64>()
        .ok()
}

pub fn run(sizes: &Sizes, log: &mut dyn FnMut(&str)) -> Vec<PipelineResult> {
    let server = common::start_server();
    let mut ctl = server.conn();
    let env = Env {
        port: server.port(),
        holders: (0..CLIENTS)
            .map(|c| common::holder("worker", c as u64).into_bytes())
            .collect(),
        rivals: (0..CLIENTS)
            .map(|c| common::holder("rivals", c as u64).into_bytes())
            .collect(),
        sha_release: common::script_load(&mut ctl, LUA_RELEASE).into_bytes(),
        sha_renew: common::script_load(&mut ctl, LUA_RENEW).into_bytes(),
    };
    // The old libraries' server: no module, so no keyspace-notification
    // subscriber runs on every write.
    let plain_server = testkit::Server::with(
        testkit::Config {
            without_module: true,
            ..Default::default()
        }
        .arg("maxclients", "10100"),
    );
    let mut plain_ctl = plain_server.conn();
    let plain = Env {
        port: plain_server.port(),
        ..env.clone()
    };
    let have_rb = Command::new("redis-benchmark")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());

    let mut results: Vec<PipelineResult> = PIPELINES
        .iter()
        .map(|&p| PipelineResult {
            pipeline: p,
            requests: if p == 1 {
                sizes.requests_p1
            } else {
                sizes.requests_p16
            },
            rps: BTreeMap::new(),
            ratios: RATIOS
                .iter()
                .map(|&(name, num, den)| Ratio {
                    name,
                    num,
                    den,
                    per_round: Vec::new(),
                })
                .collect(),
            problems: Vec::new(),
        })
        .collect();

    let strings = [Row::SetNx, Row::SetNxHeld, Row::LuaRenew, Row::LuaRelease];
    let module = [Row::Lock, Row::LockHeld, Row::Renew, Row::Release];
    for round in 0..sizes.rounds {
        for res in results.iter_mut() {
            let p = res.pipeline;
            let per = res.requests / CLIENTS as u64;
            let mut this_round: BTreeMap<Row, f64> = BTreeMap::new();
            let mut record = |row: Row, o: Outcome, res: &mut PipelineResult| {
                if !o.all_expected() {
                    res.problems.push(format!(
                        "round {}: {}: {} of {} replies as expected (first other: {:?})",
                        round + 1,
                        row.label(),
                        o.expected,
                        o.requests,
                        o.first_unexpected
                    ));
                }
                this_round.insert(row, o.rps());
            };
            let _: () = redis::cmd("FLUSHALL").query(&mut ctl).expect("FLUSHALL");
            let o = env.row(Row::Ping, p, per);
            record(Row::Ping, o, res);
            let groups: [&[Row]; 2] = if round % 2 == 0 {
                [&strings, &module]
            } else {
                [&module, &strings]
            };
            for group in groups {
                for &row in group {
                    let o = env.row(row, p, per);
                    record(row, o, res);
                }
                let n: u64 = redis::cmd("DBSIZE").query(&mut ctl).expect("DBSIZE");
                if n != 0 {
                    res.problems.push(format!(
                        "round {}: {n} keys left after the release row",
                        round + 1
                    ));
                    let _: () = redis::cmd("FLUSHALL").query(&mut ctl).expect("FLUSHALL");
                }
            }
            // DEL needs existing keys: the same string keys, set untimed.
            let fill = env.row(Row::SetNx, 64, per);
            assert!(fill.all_expected(), "populating keys for DEL failed");
            let o = env.row(Row::Del, p, per);
            record(Row::Del, o, res);
            // The same two rows on the server without the module.
            let _: () = redis::cmd("FLUSHALL")
                .query(&mut plain_ctl)
                .expect("FLUSHALL");
            let o = plain.row(Row::PlainSetNx, p, per);
            record(Row::PlainSetNx, o, res);
            let o = plain.row(Row::PlainDel, p, per);
            record(Row::PlainDel, o, res);
            if have_rb {
                let _: () = redis::cmd("FLUSHALL").query(&mut ctl).expect("FLUSHALL");
                if let Some(rps) = redis_benchmark(server.port(), p, res.requests, &["PING"]) {
                    this_round.insert(Row::RbPing, rps);
                }
                let holder = String::from_utf8_lossy(&env.holders[0]).into_owned();
                if let Some(rps) = redis_benchmark(
                    server.port(),
                    p,
                    res.requests,
                    &[
                        "-r",
                        "100000000",
                        "SET",
                        "bench:__rand_int__",
                        &holder,
                        "NX",
                        "EX",
                        "30",
                    ],
                ) {
                    this_round.insert(Row::RbSetNx, rps);
                }
                let _: () = redis::cmd("FLUSHALL").query(&mut ctl).expect("FLUSHALL");
            }
            for ratio in res.ratios.iter_mut() {
                if let (Some(a), Some(b)) = (this_round.get(&ratio.num), this_round.get(&ratio.den))
                {
                    ratio.per_round.push(a / b);
                }
            }
            let mut line = format!("  round {} pipeline {p}:", round + 1);
            for (row, rps) in &this_round {
                res.rps.entry(*row).or_default().push(*rps);
                line.push_str(&format!(" {:?}={}", row, fmt_rps(*rps)));
            }
            log(&line);
        }
    }
    results
}

/// The section's markdown.
pub fn report(results: &[PipelineResult], sizes: &Sizes) -> String {
    let mut md = String::new();
    md.push_str(&format!(
        "{CLIENTS} clients, one thread driving them (like redis-benchmark), pipeline 1 and 16, \
         {} rounds; {} requests per row at pipeline 1, {} at pipeline 16. \
         Median requests/s over the rounds; ratios are taken inside each round, then the median.\n\n",
        sizes.rounds,
        crate::stats::fmt_int(sizes.requests_p1),
        crate::stats::fmt_int(sizes.requests_p16),
    ));
    md.push_str("| command | every reply is | pipeline 1 (req/s) | pipeline 16 (req/s) |\n");
    md.push_str("|---|---|---:|---:|\n");
    let rows = [
        Row::Ping,
        Row::RbPing,
        Row::SetNx,
        Row::RbSetNx,
        Row::Lock,
        Row::SetNxHeld,
        Row::LockHeld,
        Row::LuaRenew,
        Row::Renew,
        Row::LuaRelease,
        Row::Release,
        Row::Del,
        Row::PlainSetNx,
        Row::PlainDel,
    ];
    for row in rows {
        if results.iter().all(|r| !r.rps.contains_key(&row)) {
            continue;
        }
        md.push_str(&format!("| {} | {} |", row.label(), row.path()));
        for r in results {
            md.push_str(&format!(" {} |", fmt_rps(r.median_rps(row))));
        }
        md.push('\n');
    }
    md.push_str("\n| ratio (median of per-round ratios) |");
    for r in results {
        md.push_str(&format!(" pipeline {} |", r.pipeline));
    }
    md.push_str("\n|---|");
    for _ in results {
        md.push_str("---:|");
    }
    md.push('\n');
    for (name, _, _) in RATIOS {
        md.push_str(&format!("| {name} |"));
        for r in results {
            let ratio = r.ratios.iter().find(|x| x.name == name);
            let per: Vec<String> = ratio
                .map(|x| x.per_round.iter().map(|v| format!("{v:.2}")).collect())
                .unwrap_or_default();
            md.push_str(&format!(
                " **{:.2}x** ({}) |",
                r.ratio(name),
                per.join(", ")
            ));
        }
        md.push('\n');
    }
    let problems: Vec<&String> = results.iter().flat_map(|r| &r.problems).collect();
    if problems.is_empty() {
        md.push_str(
            "\nEvery reply of every row (except the redis-benchmark reference rows) was checked \
             and was the one the row describes.\n",
        );
    } else {
        md.push_str("\nReplies that were not the measured path:\n\n");
        for p in problems {
            md.push_str(&format!("- {p}\n"));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_length_resp_args() {
        let mut out = Vec::new();
        push_key(&mut out, 3, 42);
        assert_eq!(out, b"$16\r\nbench:03:0000042\r\n");
        assert_eq!("bench:03:0000042".len(), 16);
        let mut out = Vec::new();
        push_key(&mut out, 49, 1_234_567);
        assert_eq!(out, b"$16\r\nbench:49:1234567\r\n");
    }
}
