//! Executed documentation: every `redis-cli` transcript in `README.md` and
//! `docs/*.md` is replayed against a real server with the module, and every
//! Rust snippet is checked against the client example it comes from, which
//! is then built and run. The docs cannot drift from the code.
//!
//! # The convention for transcripts
//!
//! A fenced block tagged `redis-cli` is a session as `redis-cli` shows it:
//!
//! ````text
//! ```redis-cli
//! 127.0.0.1:6379> RESERVE.LOCK job:a worker-a 30
//! (integer) 1883017396092928
//! 127.0.0.1:6379> PTTL job:a
//! (integer) ~29984
//! ```
//! ````
//!
//! - A line starting with the prompt `127.0.0.1:6379> ` (or
//!   `127.0.0.1:6379(TX)> ` inside `MULTI`) is a command, typed as in
//!   redis-cli (quotes allowed). The lines after it, up to the next prompt
//!   or terminal switch, are its reply exactly as `redis-cli` prints it.
//! - `# terminal N` (anything may follow on the line) switches to another
//!   redis-cli session, N a number; sessions start in `# terminal 1`. A
//!   command followed directly by a switch shows no reply yet: it must block
//!   (the test waits until the server counts one more blocked client). When
//!   the block switches back to that terminal, the lines shown there are the
//!   reply that arrived meanwhile (or pub/sub messages).
//! - `$ redis-cli OPTIONS [COMMAND ...]`, as the first line of a terminal,
//!   starts that session with those options (`-3` for RESP3) or runs that
//!   one command (`PSUBSCRIBE ...`) and shows its output. The test adds
//!   `-p PORT --no-raw`.
//! - Patterns in replies, for what differs from run to run:
//!   - a 16-digit integer is a fencing token (tokens start from the clock):
//!     it matches any integer >= 1, the same doc number must stand for the
//!     same token throughout the block (also in later commands, where it is
//!     replaced by the real one), and tokens keep the doc's order (a
//!     larger doc number is a larger token);
//!   - `~N` (a TTL, a timestamp) matches an integer within 10% of N.
//!
//!   Everything else must match exactly.
//! - Not shown in the docs, and skipped: the `(1.00s)` line redis-cli
//!   prints after a command that took half a second or more, and its
//!   colours (`help`).
//! - Each block runs on a fresh server with the module, in order, so blocks
//!   do not depend on each other. Every session must have seen all its
//!   output by the end of the block, and nothing more may follow.
//!
//! # Rust snippets
//!
//! A fenced `rust` block starts with a comment naming the client example it
//! is taken from, `// client/examples/NAME.rs`; its other non-blank lines
//! must appear in that file in the same order (indentation aside). Each
//! example named so is then run (`cargo run --release -p
//! redis-reservation-client --features tokio --example NAME`) with
//! `REDIS_URL` set to a fresh server, and must exit 0.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use testkit::redis;
use testkit::{Server, DEADLINE};

/// How long one reply line may take to arrive (a WAIT with a timeout of a
/// few seconds answers well within it).
const LINE_DEADLINE: Duration = Duration::from_secs(15);

const PROMPT: &str = "127.0.0.1:6379> ";
const PROMPT_TX: &str = "127.0.0.1:6379(TX)> ";

// ----- finding blocks -----

/// One fenced block: where it is and its lines (fence indentation removed).
#[derive(Debug)]
struct Block {
    file: String,
    line: usize,
    lines: Vec<String>,
}

impl Block {
    fn at(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

fn doc_files() -> Vec<PathBuf> {
    let root = testkit::workspace_root();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// Every block fenced with ```` ```tag ```` in `path`.
fn blocks(path: &Path, tag: &str) -> Vec<Block> {
    let text = std::fs::read_to_string(path).expect("read doc");
    let name = path
        .strip_prefix(testkit::workspace_root())
        .unwrap_or(path)
        .display()
        .to_string();
    let mut out = Vec::new();
    let mut current: Option<(usize, usize, Vec<String>)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match current.as_mut() {
            None => {
                if trimmed.starts_with("```") && trimmed[3..].trim() == tag {
                    current = Some((i + 1, indent, Vec::new()));
                }
            }
            Some((_, _, _)) if trimmed == "```" => {
                let (start, _, lines) = current.take().expect("open block");
                out.push(Block {
                    file: name.clone(),
                    line: start,
                    lines,
                });
            }
            Some((_, ind, lines)) => {
                let cut = line
                    .char_indices()
                    .take_while(|(j, c)| *j < *ind && *c == ' ')
                    .count();
                lines.push(line[cut..].to_string());
            }
        }
    }
    assert!(current.is_none(), "{name}: unclosed ```{tag} block");
    out
}

// ----- matching a reply line -----

enum Piece {
    Text(String),
    /// A doc token, by its doc number.
    Token(u64),
    /// About this number (within 10%).
    About(u64),
}

/// Splits an expected line into literal text, tokens and `~N` numbers.
fn pieces(expected: &str) -> Vec<Piece> {
    let b = expected.as_bytes();
    let mut out = Vec::new();
    let mut text = String::new();
    let mut i = 0;
    while i < b.len() {
        let digits_from = |j: usize| {
            let mut k = j;
            while k < b.len() && b[k].is_ascii_digit() {
                k += 1;
            }
            k
        };
        let boundary_before = i == 0 || !b[i - 1].is_ascii_alphanumeric();
        if b[i] == b'~' && i + 1 < b.len() && b[i + 1].is_ascii_digit() {
            let end = digits_from(i + 1);
            out.push(Piece::Text(std::mem::take(&mut text)));
            out.push(Piece::About(expected[i + 1..end].parse().expect("~N")));
            i = end;
        } else if b[i].is_ascii_digit() && boundary_before {
            let end = digits_from(i);
            let boundary_after = end == b.len() || !b[end].is_ascii_alphanumeric();
            if end - i == 16 && boundary_after {
                out.push(Piece::Text(std::mem::take(&mut text)));
                out.push(Piece::Token(expected[i..end].parse().expect("token")));
            } else {
                text.push_str(&expected[i..end]);
            }
            i = end;
        } else {
            let ch = expected[i..].chars().next().expect("char");
            text.push(ch);
            i += ch.len_utf8();
        }
    }
    out.push(Piece::Text(text));
    out
}

/// Doc token number → real token, for one block.
#[derive(Default)]
struct Tokens(BTreeMap<u64, u64>);

impl Tokens {
    fn bind(&mut self, doc: u64, real: u64) -> Result<(), String> {
        if real == 0 {
            return Err(format!("token {doc} matched 0, tokens are >= 1"));
        }
        if let Some(&known) = self.0.get(&doc) {
            return if known == real {
                Ok(())
            } else {
                Err(format!(
                    "doc token {doc} stands for {known} earlier in the block, here {real}"
                ))
            };
        }
        for (&d, &r) in &self.0 {
            if (d < doc) != (r < real) || r == real {
                return Err(format!(
                    "doc tokens {d} and {doc} are in the other order than real tokens {r} and {real}"
                ));
            }
        }
        self.0.insert(doc, real);
        Ok(())
    }

    /// A command with every doc token replaced by the real one.
    fn substitute(&self, command: &str) -> Result<String, String> {
        let mut out = String::new();
        for piece in pieces(command) {
            match piece {
                Piece::Text(t) => out.push_str(&t),
                Piece::Token(doc) => match self.0.get(&doc) {
                    Some(real) => out.push_str(&real.to_string()),
                    None => return Err(format!("token {doc} used before a reply showed it")),
                },
                Piece::About(n) => return Err(format!("~{n} in a command")),
            }
        }
        Ok(out)
    }
}

/// The docs show Redis's own texts; Valkey (`make test-valkey`) words a
/// few of Redis's errors differently. Each such pair is listed here, so a
/// doc line still has to match one server's text exactly.
const VALKEY_TEXTS: &[(&str, &str)] = &[
    (
        "NOPERM this user has no permissions to access one of the keys used as arguments",
        "NOPERM No permissions to access a key",
    ),
    (
        "NOPERM this user has no permissions to run the",
        "NOPERM User worker has no permissions to run the",
    ),
];

fn for_this_server(expected: &str) -> String {
    if !testkit::server_binary().contains("valkey") {
        return expected.to_string();
    }
    VALKEY_TEXTS
        .iter()
        .fold(expected.to_string(), |line, (redis, valkey)| {
            line.replace(redis, valkey)
        })
}

/// Does `actual` match the expected line? Binds tokens on success.
fn match_line(expected: &str, actual: &str, tokens: &mut Tokens) -> Result<(), String> {
    let ps = pieces(expected);
    let mut rest = actual;
    let mut bound = Vec::new();
    for (i, piece) in ps.iter().enumerate() {
        match piece {
            Piece::Text(t) => {
                if i == ps.len() - 1 {
                    // redis-cli ends some lines with a space (`=> ` before a
                    // nested map) that a markdown file does not keep.
                    if rest.trim_end() != t.trim_end() {
                        return Err(String::new());
                    }
                    rest = "";
                } else {
                    rest = rest.strip_prefix(t.as_str()).ok_or_else(String::new)?;
                }
            }
            Piece::Token(_) | Piece::About(_) => {
                let n = rest.bytes().take_while(u8::is_ascii_digit).count();
                let value: u64 = rest[..n].parse().map_err(|_| String::new())?;
                rest = &rest[n..];
                match piece {
                    Piece::Token(doc) => bound.push((*doc, value)),
                    Piece::About(about) => {
                        let slack = about / 10;
                        if value.abs_diff(*about) > slack {
                            return Err(format!("{value} is not within 10% of {about}"));
                        }
                    }
                    Piece::Text(_) => unreachable!(),
                }
            }
        }
    }
    for (doc, real) in bound {
        tokens.bind(doc, real)?;
    }
    Ok(())
}

// ----- replaying a transcript -----

/// One redis-cli process.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Ran one command given on its command line (no stdin to feed).
    one_shot: bool,
}

impl Session {
    fn start(port: u16, options: &[String]) -> Session {
        let one_shot = options.iter().any(|o| !o.starts_with('-'));
        // Line-buffered: redis-cli does not flush some output (`help`) into
        // a pipe until it exits.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "redis-cli", "-p", &port.to_string(), "--no-raw"])
            .args(options)
            .stdin(if one_shot {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start redis-cli");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let line = strip_ansi(&line);
                if is_timing(&line) {
                    continue;
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Session {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            one_shot,
        }
    }

    fn send(&mut self, command: &str) -> Result<(), String> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or("this session ran one command from its command line")?;
        writeln!(stdin, "{command}").map_err(|e| format!("write to redis-cli: {e}"))
    }

    fn next_line(&self) -> Result<String, String> {
        match self.lines.recv_timeout(LINE_DEADLINE) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => Err(format!("no output within {LINE_DEADLINE:?}")),
            Err(RecvTimeoutError::Disconnected) => Err("redis-cli ended".into()),
        }
    }

    /// Closes stdin and collects whatever else it prints before it exits.
    fn finish(mut self) -> Result<Vec<String>, String> {
        if self.one_shot {
            // A subscriber never ends by itself.
            let _ = self.child.kill();
            let _ = self.child.wait();
            return Ok(Vec::new());
        }
        drop(self.stdin.take());
        let start = Instant::now();
        let mut extra = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => extra.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) if start.elapsed() > LINE_DEADLINE => {
                    return Err(format!(
                        "redis-cli did not end (a command still waiting?); output so far: {extra:?}"
                    ));
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        let _ = self.child.wait();
        Ok(extra)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// redis-cli's `(1.00s)` after a command that took half a second or more.
fn is_timing(line: &str) -> bool {
    line.strip_prefix('(')
        .and_then(|l| l.strip_suffix("s)"))
        .is_some_and(|t| t.parse::<f64>().is_ok() && t.contains('.'))
}

/// The line without terminal colour codes (`help` prints them even into
/// a pipe).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn blocked_clients(c: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query(c)
        .expect("INFO clients");
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("blocked_clients in INFO clients")
}

/// What a line of a transcript is.
enum Line<'a> {
    Switch(String),
    Start(Vec<String>),
    Command(&'a str),
    Output(&'a str),
}

fn classify(line: &str) -> Line<'_> {
    if let Some(rest) = line.strip_prefix("# terminal ") {
        let name: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !name.is_empty() {
            return Line::Switch(name);
        }
    }
    if let Some(args) = line.strip_prefix("$ redis-cli") {
        return Line::Start(shell_words(args));
    }
    if let Some(cmd) = line
        .strip_prefix(PROMPT)
        .or_else(|| line.strip_prefix(PROMPT_TX))
    {
        return Line::Command(cmd);
    }
    Line::Output(line)
}

/// Splits shell arguments with simple single/double quoting.
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Replays one transcript on a fresh server. `Err` says which line failed.
fn replay(block: &Block) -> Result<usize, String> {
    let server = Server::start();
    let mut control = server.conn();
    let mut sessions: BTreeMap<String, Session> = BTreeMap::new();
    let mut tokens = Tokens::default();
    let mut current = "1".to_string();
    let mut commands = 0;
    // The last command sent in the current terminal that has shown no
    // reply yet, with the blocked-client count from before it was sent.
    let mut unanswered: Option<(usize, u64)> = None;

    let at = |i: usize| format!("{}:{}", block.file, block.line + 1 + i);
    let check_unanswered = |unanswered: &mut Option<(usize, u64)>,
                            control: &mut redis::Connection| {
        if let Some((i, before)) = unanswered.take() {
            let start = Instant::now();
            while blocked_clients(control) <= before {
                if start.elapsed() > DEADLINE {
                    return Err(format!(
                        "{}: the command shows no reply, but it did not block",
                        at(i)
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    };

    for (i, raw) in block.lines.iter().enumerate() {
        match classify(raw) {
            Line::Switch(name) => {
                check_unanswered(&mut unanswered, &mut control)?;
                current = name;
            }
            Line::Start(options) => {
                if sessions.contains_key(&current) {
                    return Err(format!("{}: terminal {current} already started", at(i)));
                }
                sessions.insert(current.clone(), Session::start(server.port(), &options));
            }
            Line::Command(cmd) => {
                if let Some((j, _)) = unanswered.take() {
                    return Err(format!("{}: the command shows no reply", at(j)));
                }
                let cmd = tokens
                    .substitute(cmd)
                    .map_err(|e| format!("{}: {e}", at(i)))?;
                let before = blocked_clients(&mut control);
                let session = sessions
                    .entry(current.clone())
                    .or_insert_with(|| Session::start(server.port(), &[]));
                session.send(&cmd).map_err(|e| format!("{}: {e}", at(i)))?;
                unanswered = Some((i, before));
                commands += 1;
            }
            Line::Output(expected) => {
                unanswered = None;
                let session = sessions.get(&current).ok_or_else(|| {
                    format!(
                        "{}: output shown before any command in this terminal",
                        at(i)
                    )
                })?;
                let actual = session
                    .next_line()
                    .map_err(|e| format!("{}: expected {expected:?}: {e}", at(i)))?;
                let expected = &for_this_server(expected);
                match_line(expected, &actual, &mut tokens).map_err(|why| {
                    format!(
                        "{}: redis-cli printed\n    {actual:?}\n  the doc shows\n    {expected:?}{}",
                        at(i),
                        if why.is_empty() {
                            String::new()
                        } else {
                            format!("\n  ({why})")
                        }
                    )
                })?;
            }
        }
    }
    if let Some((j, _)) = unanswered {
        return Err(format!(
            "{}: the block ends before this command shows its reply",
            at(j)
        ));
    }
    for (name, session) in std::mem::take(&mut sessions) {
        let extra = session
            .finish()
            .map_err(|e| format!("{}: terminal {name}: {e}", block.at()))?;
        if !extra.is_empty() {
            return Err(format!(
                "{}: terminal {name} printed more than the doc shows: {extra:?}",
                block.at()
            ));
        }
    }
    Ok(commands)
}

#[test]
fn redis_cli_transcripts_in_the_docs_replay() {
    let mut failures = Vec::new();
    let (mut replayed, mut commands) = (0, 0);
    for file in doc_files() {
        for block in blocks(&file, "redis-cli") {
            match replay(&block) {
                Ok(n) => {
                    replayed += 1;
                    commands += n;
                }
                Err(e) => failures.push(e),
            }
        }
    }
    eprintln!("replayed {replayed} transcripts, {commands} commands");
    assert!(
        failures.is_empty(),
        "{} of {} transcripts differ from the server:\n\n{}",
        failures.len(),
        replayed + failures.len(),
        failures.join("\n\n")
    );
    assert!(replayed >= 20, "only {replayed} transcripts found");
}

// ----- Rust snippets -----

#[test]
fn rust_snippets_come_from_client_examples_that_run() {
    let root = testkit::workspace_root();
    let mut examples = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    for file in doc_files() {
        for block in blocks(&file, "rust") {
            let Some(path) = block
                .lines
                .first()
                .and_then(|l| l.strip_prefix("// "))
                .filter(|p| p.starts_with("client/examples/") && p.ends_with(".rs"))
            else {
                failures.push(format!(
                    "{}: a rust block must start with `// client/examples/NAME.rs`",
                    block.at()
                ));
                continue;
            };
            let source = std::fs::read_to_string(root.join(path))
                .unwrap_or_else(|e| panic!("{}: read {path}: {e}", block.at()));
            let mut file_lines = source.lines().map(str::trim);
            for (i, line) in block.lines.iter().enumerate().skip(1) {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                if !file_lines.any(|l| l == line) {
                    failures.push(format!(
                        "{}:{}: {line:?} is not in {path} (in this order)",
                        block.file,
                        block.line + 1 + i
                    ));
                    break;
                }
            }
            examples.insert(
                path.trim_start_matches("client/examples/")
                    .trim_end_matches(".rs")
                    .to_string(),
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(!examples.is_empty(), "no rust snippets found");

    for example in &examples {
        let server = Server::start();
        let out = Command::new(env!("CARGO"))
            .args([
                "run",
                "--release",
                "--quiet",
                "-p",
                "redis-reservation-client",
                "--features",
                "tokio",
                "--example",
                example,
            ])
            .env("REDIS_URL", server.url())
            .current_dir(&root)
            .output()
            .expect("cargo run");
        assert!(
            out.status.success(),
            "example {example} failed: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ----- the matcher itself -----

#[test]
fn patterns_match_what_they_say() {
    let mut t = Tokens::default();
    assert!(match_line("(integer) 1", "(integer) 1", &mut t).is_ok());
    assert!(match_line("(integer) 1", "(integer) 12", &mut t).is_err());
    assert!(match_line("(integer) 1883017396092928", "(integer) 7", &mut t).is_ok());
    assert!(match_line("(integer) 1883017396092928", "(integer) 8", &mut t).is_err());
    assert!(match_line("(integer) 1883017396092929", "(integer) 6", &mut t).is_err());
    assert!(match_line("(integer) 1883017396092929", "(integer) 9", &mut t).is_ok());
    assert!(match_line("(integer) 1883017396092927", "(integer) 0", &mut t).is_err());
    assert!(match_line("4) (integer) ~30000", "4) (integer) 29001", &mut t).is_ok());
    assert!(match_line("4) (integer) ~30000", "4) (integer) 20000", &mut t).is_err());
    assert!(match_line("(error) ERR invalid ttl", "(error) ERR invalid ttl", &mut t).is_ok());
    assert!(match_line("(nil)", "(integer) 0", &mut t).is_err());
    assert_eq!(
        t.substitute("RESERVE.RENEW k h 1 TOKEN 1883017396092929")
            .unwrap(),
        "RESERVE.RENEW k h 1 TOKEN 9"
    );
    assert!(t.substitute("X 1883017396092999").is_err());
    assert!(is_timing("(0.50s)") && is_timing("(12.03s)"));
    assert!(!is_timing("(integer) 1") && !is_timing("(5s)"));
    assert_eq!(strip_ansi("\x1b[33msince:\x1b[0m 1.0.0"), "since: 1.0.0");
    assert_eq!(
        shell_words(" -3 PSUBSCRIBE '__keyevent@0__:reserve.*'"),
        ["-3", "PSUBSCRIBE", "__keyevent@0__:reserve.*"]
    );
}
