//! `client/examples/election.rs` as it is meant to run: three candidate
//! processes against one server. Exactly one leads and the others follow;
//! when the leader is killed (SIGKILL: no resignation, its key stays until
//! its TTL runs out, then the lock-delay), another one leads within TTL +
//! delay (plus a margin), and the followers print the change.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::{wait_until, Server, DEADLINE};

const TTL: Duration = Duration::from_millis(3000);
const DELAY: Duration = Duration::from_millis(500);
/// For a loaded machine: process start-up, scheduling, reconnects.
const MARGIN: Duration = Duration::from_secs(10);

/// Builds the example with the profile and features of this test and
/// returns its path. Examples have no `CARGO_BIN_EXE_*`; this test's own
/// executable sits in `<target>/<profile>/deps/`, and the example goes to
/// `<target>/<profile>/examples/`.
fn election_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("<target>/<profile>/deps/<test>")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("<target>/<profile>");
    let mut features = Vec::new();
    if cfg!(feature = "tokio") {
        features.push("tokio");
    }
    if cfg!(feature = "cluster") {
        features.push("cluster");
    }
    if cfg!(feature = "cluster-async") {
        features.push("cluster-async");
    }
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args([
            "build",
            "--quiet",
            "-p",
            "redis-reservation-client",
            "--example",
            "election",
        ])
        .current_dir(testkit::workspace_root())
        .env("CARGO_TARGET_DIR", target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cargo.arg("--release");
    }
    if !features.is_empty() {
        cargo.arg("--features").arg(features.join(","));
    }
    let status = cargo.status().expect("run cargo build");
    assert!(status.success(), "building the election example failed");
    let path = profile_dir.join("examples").join("election");
    assert!(path.exists(), "no example at {}", path.display());
    path
}

/// The candidate processes and every line they printed; killed on drop.
struct Candidates {
    names: Vec<String>,
    children: Vec<Option<Child>>,
    /// stdout lines per candidate, in order.
    out: Arc<Mutex<Vec<Vec<String>>>>,
    /// stderr lines of all of them, for failure messages.
    err: Arc<Mutex<Vec<String>>>,
}

impl Candidates {
    fn start(server: &Server, names: &[&str]) -> Candidates {
        let binary = election_binary();
        let out = Arc::new(Mutex::new(vec![Vec::new(); names.len()]));
        let err = Arc::new(Mutex::new(Vec::new()));
        let mut candidates = Candidates {
            names: names.iter().map(|n| n.to_string()).collect(),
            children: Vec::new(),
            out: out.clone(),
            err: err.clone(),
        };
        for (i, name) in names.iter().enumerate() {
            let mut child = Command::new(&binary)
                .args([name, "--election", "e"])
                .args(["--ttl-ms", &TTL.as_millis().to_string()])
                .args(["--delay-ms", &DELAY.as_millis().to_string()])
                .env("REDIS_URL", server.url())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start the election example");
            let stdout = child.stdout.take().expect("piped");
            let stderr = child.stderr.take().expect("piped");
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    out.lock().unwrap()[i].push(line);
                }
            });
            let err = err.clone();
            let name = name.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    err.lock().unwrap().push(format!("{name}: {line}"));
                }
            });
            candidates.children.push(Some(child));
        }
        candidates
    }

    fn lines(&self, i: usize) -> Vec<String> {
        self.out.lock().unwrap()[i].clone()
    }

    /// Who printed "leads", with the holder it printed.
    fn leaders(&self) -> Vec<(usize, String)> {
        (0..self.names.len())
            .flat_map(|i| {
                let prefix = format!("{} leads (holder ", self.names[i]);
                self.lines(i)
                    .into_iter()
                    .filter_map(move |l| {
                        let rest = l.strip_prefix(&prefix)?;
                        Some((i, rest.split(',').next()?.to_string()))
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Has candidate `i` printed that it sees `holder` lead (after its
    /// first `skip` lines)?
    fn sees(&self, i: usize, skip: usize, holder: &str) -> bool {
        let want = format!("{} sees leader {holder} ", self.names[i]);
        self.lines(i)[skip..].iter().any(|l| l.starts_with(&want))
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn report(&self) -> String {
        let mut text = String::new();
        for (i, name) in self.names.iter().enumerate() {
            text.push_str(&format!(
                "--- {name} stdout:\n{}\n",
                self.lines(i).join("\n")
            ));
        }
        text.push_str(&format!(
            "--- stderr:\n{}\n",
            self.err.lock().unwrap().join("\n")
        ));
        text
    }
}

impl Drop for Candidates {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

#[test]
fn three_candidates_one_leader_and_a_takeover_when_it_dies() {
    let server = Server::start();
    let mut c = server.conn();
    let mut candidates = Candidates::start(&server, &["cand-a", "cand-b", "cand-c"]);

    wait_until(DEADLINE + MARGIN, "one candidate leads", || {
        !candidates.leaders().is_empty()
    });
    let leaders = candidates.leaders();
    assert_eq!(leaders.len(), 1, "{leaders:?}\n{}", candidates.report());
    let (first, first_holder) = leaders[0].clone();
    assert!(first_holder.starts_with(&format!("{}-", candidates.names[first])));
    assert_eq!(
        common::holder_of(&mut c, "reservation-e").as_deref(),
        Some(first_holder.as_str())
    );
    let followers: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    for &f in &followers {
        wait_until(DEADLINE, "each follower sees the leader", || {
            candidates.sees(f, 0, &first_holder)
        });
    }
    assert_eq!(candidates.leaders().len(), 1, "{}", candidates.report());

    let printed: HashMap<usize, usize> = followers
        .iter()
        .map(|&f| (f, candidates.lines(f).len()))
        .collect();
    candidates.kill(first);
    let killed = Instant::now();
    let bound = TTL + DELAY + MARGIN;
    wait_until(bound, "another candidate leads", || {
        candidates.leaders().len() == 2
    });
    assert!(killed.elapsed() <= bound);
    let leaders = candidates.leaders();
    let (second, second_holder) = leaders
        .iter()
        .find(|(i, _)| *i != first)
        .cloned()
        .unwrap_or_else(|| panic!("{leaders:?}\n{}", candidates.report()));
    assert!(followers.contains(&second));
    assert_eq!(
        common::holder_of(&mut c, "reservation-e").as_deref(),
        Some(second_holder.as_str())
    );

    // Every survivor printed the change: first that nobody leads (the
    // dead leader's TTL ran out and the lock-delay began), then the new
    // leader.
    for &f in &followers {
        wait_until(DEADLINE, "the survivors see the new leader", || {
            candidates.sees(f, printed[&f], &second_holder)
        });
        let after: Vec<String> = candidates.lines(f)[printed[&f]..].to_vec();
        let name = &candidates.names[f];
        let vacant = after
            .iter()
            .position(|l| *l == format!("{name} sees no leader"));
        let new = after
            .iter()
            .position(|l| l.starts_with(&format!("{name} sees leader {second_holder} ")));
        assert!(
            matches!((vacant, new), (Some(v), Some(n)) if v < n),
            "{name} after the kill: {after:?}"
        );
    }
    assert_eq!(candidates.leaders().len(), 2, "{}", candidates.report());
}
