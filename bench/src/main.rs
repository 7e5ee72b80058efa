//! `make bench`: the reservation module against the client-side recipes it
//! replaces, side by side on the same server in the same run, so the ratios
//! hold on a noisy machine. Prints one markdown report and writes it, with
//! a chart of the handoff latencies, to `bench/results/`.
//!
//! Sections: 1 throughput, 2 handoff latency, 3 expiry-to-grant latency,
//! 4 fairness, 5 memory, 6 following a leader (RESERVE.OBSERVE against
//! keyspace notifications). See bench/README.md.

mod chart;
mod common;
mod expiry;
mod fairness;
mod handoff;
mod loadgen;
mod machine;
mod memory;
mod observe;
mod pool;
mod resp;
mod stats;
mod throughput;

use std::path::PathBuf;
use std::time::Instant;

use common::Sizes;
use stats::{fmt_us, percentile};

const USAGE: &str = "\
usage: cargo run --release -p bench -- [--quick] [--only 1,2,3,4,5,6] [--out DIR]

  --quick     CI-sized run (under 2 minutes): fewer rounds, trials and keys
  --only L    run only these sections (1 throughput, 2 handoff, 3 expiry,
              4 fairness, 5 memory, 6 observe: following a leader); the
              report goes to bench/results/tmp/
  --queued N  idle waiters queued behind the measured one in section 2
              (default 5000; the server allows 10,000 clients)
  --out DIR   write REPORT.md and handoff-latency.png there
              (default bench/results, or bench/results/tmp with --only)
";

struct Opts {
    sizes: Sizes,
    only: Vec<u8>,
    out: PathBuf,
    args: String,
}

fn parse_args() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut quick = false;
    let mut only: Vec<u8> = vec![1, 2, 3, 4, 5, 6];
    let mut partial = false;
    let mut out = None;
    let mut queued = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--full" => quick = false,
            "--only" => {
                let list = it.next().unwrap_or_else(|| die("--only needs a list"));
                only = list
                    .split(',')
                    .map(|s| match s.trim().parse::<u8>() {
                        Ok(n @ 1..=6) => n,
                        _ => die(&format!("--only: no section {s:?}")),
                    })
                    .collect();
                partial = true;
            }
            "--out" => {
                out = Some(PathBuf::from(
                    it.next().unwrap_or_else(|| die("--out needs a directory")),
                ))
            }
            "--queued" => {
                queued = Some(
                    it.next()
                        .and_then(|n| n.parse::<usize>().ok())
                        .unwrap_or_else(|| die("--queued needs a number")),
                )
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => die(&format!("unknown argument {other:?}")),
        }
    }
    let results = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results");
    let out = out.unwrap_or_else(|| {
        if partial {
            results.join("tmp")
        } else {
            results
        }
    });
    let mut sizes = if quick { Sizes::quick() } else { Sizes::full() };
    if let Some(n) = queued {
        sizes.queued_waiters = n;
    }
    Opts {
        sizes,
        only,
        out,
        args: args.join(" "),
    }
}

fn die(msg: &str) -> ! {
    eprintln!("bench: {msg}\n\n{USAGE}");
    std::process::exit(2);
}

fn log(msg: &str) {
    eprintln!("{msg}");
}

/// Load on the machine while one section ran: the whole machine's busy CPU
/// minus this benchmark's own (its threads, its servers, redis-benchmark).
struct Load {
    busy0: (u64, u64),
    own0: u64,
    avg0: String,
    t0: Instant,
}

impl Load {
    fn start() -> Load {
        Load {
            busy0: machine::cpu_jiffies(),
            own0: machine::own_cpu_ticks(),
            avg0: machine::loadavg(),
            t0: Instant::now(),
        }
    }

    /// `(seconds, other processes' CPU in cores, loadavg at start, at end)`
    fn finish(&self) -> (f64, f64, String, String) {
        let (b1, t1) = machine::cpu_jiffies();
        let own1 = machine::own_cpu_ticks();
        let busy = b1.saturating_sub(self.busy0.0) as f64;
        let total = t1.saturating_sub(self.busy0.1) as f64;
        let own = own1.saturating_sub(self.own0) as f64;
        let cores = machine::nproc() as f64;
        let other = if total > 0.0 {
            ((busy - own).max(0.0) / total) * cores
        } else {
            f64::NAN
        };
        (
            self.t0.elapsed().as_secs_f64(),
            other,
            self.avg0.clone(),
            machine::loadavg(),
        )
    }
}

struct Target {
    what: String,
    goal: String,
    measured: String,
    met: bool,
}

fn main() {
    let opts = parse_args();
    let sizes = opts.sizes.clone();
    let started = Instant::now();
    let fd_limit = machine::raise_fd_limit(20_000);
    log(&format!(
        "bench: {} mode, sections {:?}, open files limit {fd_limit}",
        if sizes.quick { "quick" } else { "full" },
        opts.only
    ));
    log("bench: building the module (release)");
    let module = testkit::module_path();
    let version = {
        let s = common::start_server();
        let mut c = s.conn();
        machine::redis_version(&mut c)
    };
    let run_load = Load::start();

    let mut sections: Vec<(u8, String, String)> = Vec::new();
    let mut targets: Vec<Target> = Vec::new();
    let mut load_lines: Vec<String> = Vec::new();
    let note_load = |name: &str, load: &Load, lines: &mut Vec<String>| {
        let (secs, other, a0, a1) = load.finish();
        lines.push(format!(
            "| {name} | {secs:.0} s | {other:.2} | {a0} | {a1} |"
        ));
    };

    if opts.only.contains(&1) {
        log("section 1: throughput");
        let load = Load::start();
        let res = throughput::run(&sizes, &mut |m| log(m));
        note_load("1 throughput", &load, &mut load_lines);
        sections.push((1, "Throughput".into(), throughput::report(&res, &sizes)));
        for r in &res {
            let v = r.ratio("LOCK / SET NX (free key)");
            targets.push(Target {
                what: format!(
                    "RESERVE.LOCK vs `SET NX EX`, free key, pipeline {}",
                    r.pipeline
                ),
                goal: ">= 0.95x".into(),
                measured: format!("{v:.2}x"),
                met: v >= 0.95,
            });
        }
        if let Some(r) = res.iter().find(|r| r.pipeline == 16) {
            for (name, what) in [
                (
                    "RELEASE / Lua release",
                    "RESERVE.RELEASE vs Lua compare-and-delete, pipeline 16",
                ),
                (
                    "RENEW / Lua renew",
                    "RESERVE.RENEW vs Lua compare-and-pexpire, pipeline 16",
                ),
            ] {
                let v = r.ratio(name);
                targets.push(Target {
                    what: what.into(),
                    goal: ">= 1.5x".into(),
                    measured: format!("{v:.2}x"),
                    met: v >= 1.5,
                });
            }
        }
    }

    if opts.only.contains(&2) {
        log("section 2: handoff latency");
        let load = Load::start();
        let series = handoff::run(&sizes, &mut |m| log(m));
        note_load("2 handoff", &load, &mut load_lines);
        std::fs::create_dir_all(&opts.out).expect("create the results directory");
        let png = opts.out.join("handoff-latency.png");
        let charted: Vec<&handoff::Series> = series
            .iter()
            .filter(|s| !s.id.starts_with("ping"))
            .collect();
        let chart_md = match chart::handoff_cdf(
            &charted,
            "Handoff latency: release sent -> waiter holds the lock (CDF)",
            &png,
        ) {
            Ok(()) => "\n![handoff latency CDF](handoff-latency.png)\n".to_string(),
            Err(e) => format!("\n(chart not drawn: {e})\n"),
        };
        let mut md = handoff::report(&series, sizes.handoff_segments);
        md.push_str(&chart_md);
        sections.push((2, "Handoff latency".into(), md));
        let get = |id: &str| series.iter().find(|s| s.id == id);
        let p = |id: &str, q: f64| get(id).map_or(f64::NAN, |s| percentile(&s.samples, q));
        let server = |id: &str| {
            get(id)
                .and_then(|s| s.server_release_us)
                .unwrap_or(f64::NAN)
        };
        for (what, w, b) in [
            ("1 waiter", "wait1", "blpop1"),
            ("5,000 queued", "waitq", "blpopq"),
        ] {
            let (wv, bv) = (p(w, 99.0), p(b, 99.0));
            targets.push(Target {
                what: format!("WAIT handoff p99 vs BLPOP signal list p99, {what}"),
                goal: "<= 0.5x".into(),
                measured: format!("{} vs {}: {:.2}x", fmt_us(wv), fmt_us(bv), wv / bv),
                met: wv <= 0.5 * bv,
            });
        }
        let (c50, c99, q50, q99) = (
            p("waitchain", 50.0),
            p("waitchain", 99.0),
            p("waitq", 50.0),
            p("waitq", 99.0),
        );
        let (sc, sq) = (server("waitchain"), server("waitq"));
        targets.push(Target {
            what: "WAIT handoff flat from 1 to 5,000 waiters (chain without vs with 5,000 idle \
                   waiters behind)"
                .into(),
            goal: "server time per RELEASE within 1.25x, p99 within 1.5x".into(),
            measured: format!(
                "server {sc:.2} -> {sq:.2} µs ({:.2}x); p50 {} -> {} ({:.2}x); p99 {} -> {} ({:.2}x)",
                sq / sc,
                fmt_us(c50),
                fmt_us(q50),
                q50 / c50,
                fmt_us(c99),
                fmt_us(q99),
                q99 / c99
            ),
            met: sq <= 1.25 * sc && q99 <= 1.5 * c99,
        });
    }

    if opts.only.contains(&3) {
        log("section 3: expiry-to-grant latency");
        let load = Load::start();
        let series = expiry::run(&sizes, &mut |m| log(m));
        note_load("3 expiry", &load, &mut load_lines);
        sections.push((3, "Expiry-to-grant latency".into(), expiry::report(&series)));
        for s in series.iter().filter(|s| s.recipe == "RESERVE.WAIT") {
            let p99 = percentile(&s.samples, 99.0);
            targets.push(Target {
                what: format!(
                    "expiry-to-grant p99, RESERVE.WAIT, {} other keys",
                    stats::fmt_int(s.other_keys as u64)
                ),
                goal: "<= 2 ms".into(),
                measured: fmt_us(p99),
                met: p99 <= 2000.0,
            });
        }
    }

    if opts.only.contains(&4) {
        log("section 4: fairness");
        let load = Load::start();
        let res = fairness::run(&sizes, &mut |m| log(m));
        note_load("4 fairness", &load, &mut load_lines);
        sections.push((
            4,
            "Fairness under contention".into(),
            fairness::report(&res),
        ));
        if let Some(r) = res.iter().find(|r| r.recipe == fairness::Recipe::Wait) {
            targets.push(Target {
                what: "fairness, RESERVE.WAIT, 10 workers".into(),
                goal: "Jain's index 1.00, 0 wasted requests".into(),
                measured: format!("{:.3}, {} wasted", r.jain, r.wasted),
                met: r.jain >= 0.995 && r.wasted == 0,
            });
        }
    }

    if opts.only.contains(&5) {
        log("section 5: memory");
        let load = Load::start();
        let res = memory::run(&sizes, &mut |m| log(m));
        note_load("5 memory", &load, &mut load_lines);
        sections.push((
            5,
            "Memory per held reservation".into(),
            memory::report(&res),
        ));
        if let [a, b] = res.as_slice() {
            let ratio = a.per_key() / b.per_key();
            targets.push(Target {
                what: "memory per reservation vs plain `SET k v EX` key".into(),
                goal: "<= 1.15x".into(),
                measured: format!(
                    "{:.1} vs {:.1} bytes: {ratio:.2}x",
                    a.per_key(),
                    b.per_key()
                ),
                met: ratio <= 1.15,
            });
        }
    }

    if opts.only.contains(&6) {
        log("section 6: following a leader (OBSERVE, keyspace notifications)");
        let load = Load::start();
        let res = observe::run(&sizes, &mut |m| log(m));
        note_load("6 observe", &load, &mut load_lines);
        sections.push((
            6,
            "Following a leader: RESERVE.OBSERVE and keyspace notifications".into(),
            observe::report(&res, &sizes),
        ));
    }

    let (_, other_total, avg_start, avg_end) = run_load.finish();
    let mut md = String::new();
    md.push_str("# redis-reservation benchmark report\n\n");
    md.push_str(&format!(
        "`cargo run --release -p bench --{}{}` ({} mode), {} s in total.\n\n",
        if opts.args.is_empty() { "" } else { " " },
        opts.args,
        if sizes.quick { "quick" } else { "full" },
        started.elapsed().as_secs()
    ));
    md.push_str("| machine | |\n|---|---|\n");
    md.push_str(&format!("| CPUs (nproc) | {} |\n", machine::nproc()));
    md.push_str(&format!("| CPU model | {} |\n", machine::cpu_model()));
    md.push_str(&format!("| memory | {:.1} GiB |\n", machine::memory_gib()));
    md.push_str(&format!("| kernel | Linux {} |\n", machine::kernel()));
    md.push_str(&format!(
        "| server | {version}, default config (hz 10, no persistence), loopback |\n"
    ));
    md.push_str(&format!(
        "| module | {} (commit {}) |\n",
        module
            .file_name()
            .map_or("?".into(), |n| n.to_string_lossy().into_owned()),
        machine::module_commit()
    ));
    md.push_str(&format!(
        "| load average (1/5/15 min) | {avg_start} at the start, {avg_end} at the end |\n"
    ));
    md.push_str(&format!(
        "| other processes' CPU during the run | {other_total:.2} cores on average (whole machine busy time minus this benchmark's client and servers) |\n\n"
    ));

    if !targets.is_empty() {
        md.push_str("## Targets (issue 5)\n\n| target | goal | measured | |\n|---|---|---|---|\n");
        for t in &targets {
            md.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                t.what,
                t.goal,
                t.measured,
                if t.met { "met" } else { "**missed**" }
            ));
        }
        md.push('\n');
    }
    for (n, title, body) in &sections {
        md.push_str(&format!("## {n}. {title}\n\n{body}\n"));
    }
    md.push_str(
        "## Load while measuring\n\n| section | time | other processes' CPU (cores) | loadavg at start | at end |\n|---|---:|---:|---|---|\n",
    );
    for l in &load_lines {
        md.push_str(l);
        md.push('\n');
    }
    md.push_str(
        "\n## Reproduce\n\n```\nmake bench                      # full run, < 15 min on 2 cores\nmake bench BENCH_ARGS=--quick   # CI-sized, < 2 min\ncargo run --release -p bench -- --only 2,3   # some sections (report in bench/results/tmp/)\n```\n",
    );

    println!("{md}");
    std::fs::create_dir_all(&opts.out).expect("create the results directory");
    let report = opts.out.join("REPORT.md");
    std::fs::write(&report, &md).expect("write REPORT.md");
    log(&format!(
        "bench: wrote {} ({} s)",
        report.display(),
        started.elapsed().as_secs()
    ));
}
