//! Test harness shared by the module's and the client crate's integration
//! tests: real `redis-server` processes (or `valkey-server`, chosen with
//! `RESERVATION_SERVER=valkey-server`) with the freshly built module, each
//! on a free loopback port in its own temp dir, killed on drop, plus the
//! server-level waits (a replica in sync, an AOF rewrite done). Helpers by
//! topic: [`cmd`] (sending commands, typed replies), [`info`] (reading
//! `RESERVE.INFO`), [`dump`] (DUMP payloads and RDB files), [`cluster`].
//!
//! Nothing here sleeps blindly: [`wait_until`] polls a condition against a
//! deadline and fails the test with a message when it never holds.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use redis;

pub mod cluster;
pub mod cmd;
pub mod dump;
pub mod info;
pub use cluster::Cluster;

/// How long a server gets to start or a condition to become true.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `cond` every few milliseconds until it is true; panics with `what`
/// after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The workspace root (the module's Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit sits in the workspace")
        .to_path_buf()
}

/// The module under test: `$RESERVATION_MODULE`, or the release build,
/// built once per test process if it is missing or older than the sources.
pub fn module_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Ok(p) = std::env::var("RESERVATION_MODULE") {
            return PathBuf::from(p);
        }
        let root = workspace_root();
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "redis-reservation",
                "--lib",
            ])
            .current_dir(&root)
            .status()
            .expect("run cargo build for the module");
        assert!(status.success(), "building the module failed");
        let target =
            std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root.join("target"), PathBuf::from);
        let path = target.join("release/libreservation.so");
        assert!(path.exists(), "module not found at {}", path.display());
        path
    })
}

/// The server binary: `$RESERVATION_SERVER` or `redis-server`.
pub fn server_binary() -> String {
    std::env::var("RESERVATION_SERVER").unwrap_or_else(|_| "redis-server".to_string())
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// How to start a server.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Extra `--name value` pairs for redis-server.
    pub args: Vec<(String, String)>,
    /// Arguments after the module path on the loadmodule line.
    pub module_args: Vec<String>,
    /// Do not load the module at all (baseline servers for benchmarks).
    pub without_module: bool,
}

impl Config {
    pub fn arg(mut self, name: &str, value: &str) -> Self {
        self.args.push((name.to_string(), value.to_string()));
        self
    }
    pub fn module_arg(mut self, arg: &str) -> Self {
        self.module_args.push(arg.to_string());
        self
    }
    /// `appendonly yes` with `appendfsync always`.
    pub fn aof(self) -> Self {
        self.arg("appendonly", "yes").arg("appendfsync", "always")
    }
    /// `repl-diskless-sync-delay 0`: as a master, start a replica's initial
    /// sync at once (Redis 7.0 waits 5 s for more replicas to join a
    /// diskless sync by default).
    pub fn quick_sync(self) -> Self {
        self.arg("repl-diskless-sync-delay", "0")
    }
}

/// One running server; killed (SIGKILL) and its directory removed on drop.
pub struct Server {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    config: Config,
}

impl Server {
    pub fn start() -> Server {
        Server::with(Config::default())
    }

    pub fn with(config: Config) -> Server {
        Server::try_with(config)
            .unwrap_or_else(|e| panic!("could not start {}: {e}", server_binary()))
    }

    /// Like [`Server::with`], but a server that refuses to start (say, the
    /// module rejects its arguments) is an `Err` with the reason and the
    /// log's tail instead of a panic.
    pub fn try_with(config: Config) -> Result<Server, String> {
        let dir = tempfile::Builder::new()
            .prefix("rsrv-test-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            match spawn(&config, dir.path(), port) {
                Ok(child) => {
                    return Ok(Server {
                        child: Some(child),
                        port,
                        dir,
                        config,
                    });
                }
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("client")
    }

    /// A fresh connection (RESP2).
    pub fn conn(&self) -> redis::Connection {
        self.client().get_connection().expect("connect")
    }

    /// A fresh connection authenticated as an ACL user.
    pub fn conn_as(&self, user: &str, password: &str) -> redis::Connection {
        redis::Client::open(format!(
            "redis://{user}:{password}@127.0.0.1:{}/",
            self.port
        ))
        .expect("client")
        .get_connection()
        .expect("authenticated connection")
    }

    /// A fresh RESP3 connection.
    pub fn conn_resp3(&self) -> redis::Connection {
        redis::Client::open(format!("{}?protocol=resp3", self.url()))
            .expect("client")
            .get_connection()
            .expect("connect")
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again in the same dir on the same port (after kill9 or
    /// shutdown), loading whatever RDB/AOF is there.
    pub fn restart(&mut self) {
        self.kill9();
        let mut last_err = String::new();
        for _ in 0..50 {
            match spawn(&self.config, self.dir.path(), self.port) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) => {
                    last_err = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        panic!("could not restart: {last_err}");
    }

    /// One attempt to start again in the same dir on the same port: `Err`
    /// with the reason and the log's tail when the server refuses to start
    /// (an RDB it will not load, say).
    pub fn try_restart(&mut self) -> Result<(), String> {
        self.kill9();
        self.child = Some(spawn(&self.config, self.dir.path(), self.port)?);
        Ok(())
    }

    /// Makes this server a replica of `master` and waits until the initial
    /// sync is done.
    pub fn replicate_from(&self, master: &Server) {
        let mut c = self.conn();
        let _: () = redis::cmd("REPLICAOF")
            .arg("127.0.0.1")
            .arg(master.port)
            .query(&mut c)
            .expect("REPLICAOF");
        wait_until(DEADLINE, "replica link up", || {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut c)
                .unwrap_or_default();
            info.contains("master_link_status:up")
        });
    }

    /// A master started with `config` (plus [`Config::quick_sync`]) and a
    /// replica of it with the default configuration, its initial sync done.
    pub fn master_and_replica(config: Config) -> (Server, Server) {
        let master = Server::with(config.quick_sync());
        let replica = Server::start();
        replica.replicate_from(&master);
        (master, replica)
    }

    /// Is the process still alive (it did not crash)?
    pub fn is_alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn(config: &Config, dir: &Path, port: u16) -> Result<Child, String> {
    let mut cmd = Command::new(server_binary());
    cmd.arg("--port")
        .arg(port.to_string())
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg("server.log")
        .arg("--save")
        .arg("")
        .arg("--enable-debug-command")
        .arg("yes")
        .arg("--daemonize")
        .arg("no");
    if !config.without_module {
        cmd.arg("--loadmodule").arg(module_path());
        cmd.args(&config.module_args);
    }
    for (name, value) in &config.args {
        cmd.arg(format!("--{name}")).arg(value);
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", server_binary()))?;
    let start = Instant::now();
    let url = format!("redis://127.0.0.1:{port}/");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            let mut err = String::new();
            if let Some(stderr) = child.stderr.take() {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    err.push_str(&line);
                    err.push('\n');
                }
            }
            return Err(format!(
                "server exited with {status}: {err}\n{}",
                tail(&log, 20)
            ));
        }
        if let Ok(client) = redis::Client::open(url.as_str()) {
            if let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200)) {
                // LOADING and other errors mean "not ready yet".
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return Ok(child);
                }
            }
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            return Err("server did not answer PING in time".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `INFO reservation` as name → value (without the `reservation_` prefix).
pub fn reservation_info(conn: &mut redis::Connection) -> std::collections::HashMap<String, u64> {
    let text: String = redis::cmd("INFO")
        .arg("reservation")
        .query(conn)
        .expect("INFO reservation");
    text.lines()
        .filter_map(|l| l.strip_prefix("reservation_"))
        .filter_map(|l| l.split_once(':'))
        .filter_map(|(k, v)| v.trim().parse().ok().map(|v| (k.to_string(), v)))
        .collect()
}

/// `WAIT 1 5000` on a master's connection: one replica has acknowledged
/// every write so far (panics when it has not within 5 s).
pub fn sync_replica(master: &mut redis::Connection) {
    let acked = cmd::int(master, &["WAIT", "1", "5000"]);
    assert_eq!(acked, 1, "the replica did not acknowledge the writes");
}

/// `BGREWRITEAOF`, then waits until the rewrite has finished (none in
/// progress or scheduled).
pub fn rewrite_aof(c: &mut redis::Connection) {
    let _: redis::Value = redis::cmd("BGREWRITEAOF").query(c).expect("BGREWRITEAOF");
    wait_until(DEADLINE, "the AOF rewrite to finish", || {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query(c)
            .expect("INFO persistence");
        info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0")
    });
}

/// The client id of a connection (for CLIENT KILL / UNBLOCK).
pub fn client_id(conn: &mut redis::Connection) -> i64 {
    redis::cmd("CLIENT")
        .arg("ID")
        .query(conn)
        .expect("CLIENT ID")
}

/// A server error as the server wrote it (`CODE detail`, e.g.
/// `ERR invalid ttl` or `WRONGTYPE Operation against ...`), so tests can
/// compare exact texts; other failures (I/O, parse) as their description.
pub fn error_text(err: &redis::RedisError) -> String {
    match (err.code(), err.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => err.to_string(),
    }
}
