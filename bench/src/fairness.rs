//! Section 4: fairness under contention. Ten worker threads, one key; each
//! worker loops: acquire, hold it 2 ms, release, and at once try again (the
//! strongest contention: a worker with a queue of jobs). The run stops
//! after a fixed number of acquisitions in total.
//!
//! Counted per worker: acquisitions, requests that did not acquire (a
//! polled `SET NX` that found the key held, a WAIT that timed out), and the
//! wait from starting to want the lock to holding it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{self, Sizes, LUA_RELEASE};
use crate::resp::RawConn;
use crate::stats::{fmt_us, jain, max, percentile};

pub const WORKERS: usize = 10;
const HOLD: Duration = Duration::from_millis(2);
const POLL: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Recipe {
    Wait,
    Poll10,
}

impl Recipe {
    pub fn name(self) -> &'static str {
        match self {
            Recipe::Wait => "RESERVE.WAIT",
            Recipe::Poll10 => "polling SET NX every 10 ms",
        }
    }
}

#[derive(Default)]
struct Worker {
    acquisitions: u64,
    wasted: u64,
    waits: Vec<f64>,
    /// A wait still going on when the run stopped.
    unfinished: Option<f64>,
}

pub struct FairResult {
    pub recipe: Recipe,
    pub per_worker: Vec<u64>,
    pub jain: f64,
    pub wasted: u64,
    pub acquisitions: u64,
    pub wait_p50: f64,
    pub wait_p99: f64,
    pub wait_max: f64,
    pub longest_unfinished: f64,
    pub elapsed: Duration,
}

/// What the workers share.
struct Shared {
    recipe: Recipe,
    port: u16,
    target: u64,
    total: AtomicU64,
    stop: AtomicBool,
    start: Barrier,
    sha: String,
}

fn worker(sh: &Shared, idx: usize) -> Worker {
    let (recipe, target, total, stop, sha) = (sh.recipe, sh.target, &sh.total, &sh.stop, &sh.sha);
    let key = "fair:lock";
    let holder = common::holder("worker", idx as u64);
    let mut c = RawConn::connect(sh.port);
    let mut w = Worker::default();
    sh.start.wait();
    'outer: while !stop.load(Ordering::SeqCst) {
        let t = Instant::now();
        loop {
            let acquired = match recipe {
                Recipe::Wait => {
                    let r = c.call(&["RESERVE.WAIT", key, &holder, "10", "2"]);
                    r.int("WAIT") > 0
                }
                Recipe::Poll10 => c.call(&["SET", key, &holder, "NX", "PX", "10000"]).is_ok(),
            };
            if acquired {
                break;
            }
            if stop.load(Ordering::SeqCst) {
                w.unfinished = Some(t.elapsed().as_secs_f64() * 1e6);
                break 'outer;
            }
            w.wasted += 1;
            if recipe == Recipe::Poll10 {
                thread::sleep(POLL);
            }
        }
        let wait = t.elapsed().as_secs_f64() * 1e6;
        let n = total.fetch_add(1, Ordering::SeqCst);
        if n < target && !stop.load(Ordering::SeqCst) {
            w.acquisitions += 1;
            w.waits.push(wait);
            thread::sleep(HOLD);
        } else {
            stop.store(true, Ordering::SeqCst);
        }
        let released = match recipe {
            Recipe::Wait => c.call(&["RESERVE.RELEASE", key, &holder]).int("RELEASE"),
            Recipe::Poll10 => c.call(&["EVALSHA", sha, "1", key, &holder]).int("release"),
        };
        assert_eq!(released, 1, "worker {idx} lost the lock it held");
    }
    w
}

fn run_one(recipe: Recipe, port: u16, sha: &str, target: u64, deadline: Duration) -> FairResult {
    let shared = Arc::new(Shared {
        recipe,
        port,
        target,
        total: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        start: Barrier::new(WORKERS + 1),
        sha: sha.to_string(),
    });
    let handles: Vec<_> = (0..WORKERS)
        .map(|i| {
            let sh = shared.clone();
            thread::spawn(move || worker(&sh, i))
        })
        .collect();
    shared.start.wait();
    let t0 = Instant::now();
    while !shared.stop.load(Ordering::SeqCst) && t0.elapsed() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    shared.stop.store(true, Ordering::SeqCst);
    let elapsed = t0.elapsed();
    let workers: Vec<Worker> = handles
        .into_iter()
        .map(|h| h.join().expect("worker thread"))
        .collect();
    let per_worker: Vec<u64> = workers.iter().map(|w| w.acquisitions).collect();
    let waits: Vec<f64> = workers.iter().flat_map(|w| w.waits.clone()).collect();
    FairResult {
        recipe,
        jain: jain(&per_worker),
        acquisitions: per_worker.iter().sum(),
        per_worker,
        wasted: workers.iter().map(|w| w.wasted).sum(),
        wait_p50: percentile(&waits, 50.0),
        wait_p99: percentile(&waits, 99.0),
        wait_max: max(&waits),
        longest_unfinished: workers
            .iter()
            .filter_map(|w| w.unfinished)
            .fold(0.0, f64::max),
        elapsed,
    }
}

pub fn run(sizes: &Sizes, log: &mut dyn FnMut(&str)) -> Vec<FairResult> {
    let server = common::start_server();
    let mut ctl = server.conn();
    let sha = common::script_load(&mut ctl, LUA_RELEASE);
    let deadline = if sizes.quick {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(60)
    };
    let mut out = Vec::new();
    for recipe in [Recipe::Wait, Recipe::Poll10] {
        log(&format!("  {}", recipe.name()));
        let _: () = redis::cmd("FLUSHALL").query(&mut ctl).expect("FLUSHALL");
        out.push(run_one(
            recipe,
            server.port(),
            &sha,
            sizes.fair_acquisitions,
            deadline,
        ));
    }
    out
}

pub fn report(results: &[FairResult]) -> String {
    let mut md = format!(
        "{WORKERS} workers, one key; each acquires, holds {} ms, releases and asks again at \
         once. Wasted = requests that did not acquire (polls that found the key held, WAITs that \
         timed out).\n\n\
         | recipe | acquisitions | per worker | Jain's index | wasted requests | wasted per \
         acquisition | wait p50 | wait p99 | wait max | longest wait still unfinished at the end | run time |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        HOLD.as_millis()
    );
    for r in results {
        let per: Vec<String> = r.per_worker.iter().map(u64::to_string).collect();
        md.push_str(&format!(
            "| {} | {} | {} | {:.2} | {} | {:.2} | {} | {} | {} | {} | {:.1} s |\n",
            r.recipe.name(),
            r.acquisitions,
            per.join(" "),
            r.jain,
            r.wasted,
            r.wasted as f64 / r.acquisitions.max(1) as f64,
            fmt_us(r.wait_p50),
            fmt_us(r.wait_p99),
            fmt_us(r.wait_max),
            if r.longest_unfinished > 0.0 {
                fmt_us(r.longest_unfinished)
            } else {
                "none".into()
            },
            r.elapsed.as_secs_f64()
        ));
    }
    md
}
