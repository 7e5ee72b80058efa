//! Model test of shared and counted grants (SPEC section 9): seeded random
//! LOCK, WAIT, RENEW, RELEASE and DEL with SHARED, LIMIT and PERMITS from
//! several clients, each reply and each key's grants and queue compared
//! with a plain model written from the SPEC's rules (not from the module's
//! code). Besides equality, the model itself checks the invariants: never
//! two exclusive grants or one beside a shared grant, never more permits
//! than the limit, FIFO grants, tokens strictly increasing.
//!
//! TTLs are long, so nothing expires during a run (expiry has its own
//! tests in tests/shared.rs). `RESERVATION_MODEL_OPS` sets the length.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testkit::cmd::{command, to_reply, Reply};
use testkit::redis::{Connection, Value};
use testkit::{client_id, wait_until, Server, DEADLINE};

const KEYS: [&str; 2] = ["m:a", "m:b"];
const HOLDERS: usize = 5;
/// In the model's grant order, the command's own grant (not a waiter's).
const OWN: usize = usize::MAX;
/// In the model's grant order, a RESERVE.WAITALL granted all its keys.
const GROUP: usize = usize::MAX - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Exclusive,
    Shared,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ask {
    mode: Mode,
    permits: u32,
    limit: Option<u32>,
}

impl Ask {
    const EXCLUSIVE: Ask = Ask {
        mode: Mode::Exclusive,
        permits: 1,
        limit: None,
    };

    fn args(&self) -> Vec<String> {
        let mut v = Vec::new();
        match (self.mode, self.limit) {
            (Mode::Exclusive, _) => {}
            (Mode::Shared, None) => v.push("SHARED".into()),
            (Mode::Shared, Some(n)) => {
                v.extend(["LIMIT".into(), n.to_string()]);
                if self.permits != 1 {
                    v.extend(["PERMITS".into(), self.permits.to_string()]);
                }
            }
        }
        v
    }
}

#[derive(Clone, Debug)]
struct Grant {
    holder: usize,
    token: i64,
    mode: Mode,
    permits: u32,
}

#[derive(Default, Debug)]
struct Key {
    grants: Vec<Grant>, // oldest first
    limit: u32,
    queue: VecDeque<(usize, Ask)>,
    /// The latest LIMIT given while anyone waits (a LIMIT counts from when
    /// it arrives): what waiters are judged by when the key holds nothing.
    queue_limit: Option<u32>,
}

impl Key {
    /// Stored as a grant set (not a plain mutex): only then does a LIMIT
    /// on a request become the key's before deciding.
    fn is_set(&self) -> bool {
        let plain_mutex =
            matches!(self.grants.as_slice(), [g] if g.mode == Mode::Exclusive) && self.limit == 0;
        !self.grants.is_empty() && !plain_mutex
    }
    fn used(&self) -> u64 {
        self.grants.iter().map(|g| u64::from(g.permits)).sum()
    }
    fn fits(&self, ask: &Ask, without: Option<usize>) -> bool {
        let others: Vec<&Grant> = self
            .grants
            .iter()
            .filter(|g| Some(g.holder) != without)
            .collect();
        match ask.mode {
            Mode::Exclusive => others.is_empty(),
            Mode::Shared => {
                let limit = ask.limit.unwrap_or(self.limit);
                let used: u64 = others.iter().map(|g| u64::from(g.permits)).sum();
                others.iter().all(|g| g.mode == Mode::Shared)
                    && (limit == 0 || used + u64::from(ask.permits) <= u64::from(limit))
            }
        }
    }
    /// Whether a queued request fits: its own LIMIT already counted when
    /// it arrived, so the key's (or, on an empty key, the queue's) applies.
    fn fits_queued(&self, ask: &Ask) -> bool {
        let limit = if self.grants.is_empty() {
            self.queue_limit.unwrap_or(0)
        } else {
            self.limit
        };
        let ask = Ask {
            limit: Some(limit),
            ..*ask
        };
        self.fits(&ask, None)
    }

    /// The key is `h`'s plain mutex (what LOCKALL/WAITALL re-acquire).
    fn plain_mutex_of(&self, h: usize) -> bool {
        matches!(self.grants.as_slice(), [g] if g.holder == h && g.mode == Mode::Exclusive)
            && self.limit == 0
    }

    fn find(&self, h: usize) -> Option<&Grant> {
        self.grants.iter().find(|g| g.holder == h)
    }
    fn check_invariants(&self) {
        let exclusive = self
            .grants
            .iter()
            .filter(|g| g.mode == Mode::Exclusive)
            .count();
        assert!(
            exclusive == 0 || self.grants.len() == 1,
            "exclusive beside others: {self:?}"
        );
        assert!(self.grants.windows(2).all(|w| w[0].token < w[1].token));
    }
}

/// What the model expects from one command.
#[derive(Debug, PartialEq)]
enum Expect {
    /// A fresh token (the next one granted).
    NewToken,
    Int(i64),
    Err(&'static str),
    Blocks,
}

struct Model {
    keys: Vec<Key>,
    /// Grants the model made whose tokens the server has not told yet, in
    /// grant order: (key, holder) for waiters, (OWN, holder) for the
    /// command's own.
    pending_waiters: Vec<(usize, usize)>,
    /// Holders blocked in RESERVE.WAITALL, with their keys in order.
    groups: HashMap<usize, [usize; 2]>,
    /// For a WAITALL granted: each key in order, and the holder's own token
    /// when it already held that key (re-acquired) rather than a new one.
    group_grants: HashMap<usize, Vec<(usize, Option<i64>)>>,
}

impl Model {
    fn grant(&mut self, k: usize, holder: usize, ask: Ask) {
        let key = &mut self.keys[k];
        key.grants.retain(|g| g.holder != holder);
        if let Some(l) = ask.limit {
            key.limit = l;
        }
        key.grants.push(Grant {
            holder,
            token: 0,
            mode: ask.mode,
            permits: ask.permits,
        });
    }

    /// A new grant (not a change, which may keep more than a lowered
    /// limit): never more permits than the limit at that moment.
    fn check_new_grant(&self, k: usize) {
        let key = &self.keys[k];
        if key.limit > 0 && key.grants.iter().all(|g| g.mode == Mode::Shared) {
            assert!(
                key.used() <= u64::from(key.limit),
                "granted over the limit: {key:?}"
            );
        }
    }

    /// The admission rule: oldest first while the head fits.
    fn admit(&mut self, k: usize) {
        let key = &self.keys[k];
        let limit = if key.grants.is_empty() {
            key.queue_limit.unwrap_or(0)
        } else {
            key.limit
        };
        loop {
            let key = &self.keys[k];
            let Some(&(h, ask)) = key.queue.front() else {
                break;
            };
            if let Some(&order) = self.groups.get(&h) {
                // All its keys at once, or none: it must be the oldest
                // waiter on each, and each free for it.
                let ready = order.iter().all(|&i| {
                    let key = &self.keys[i];
                    key.queue.front().is_some_and(|&(front, _)| front == h)
                        && (key.grants.is_empty() || key.plain_mutex_of(h))
                });
                if !ready {
                    break;
                }
                self.groups.remove(&h);
                let mut grants = Vec::new();
                for &i in &order {
                    self.keys[i].queue.pop_front();
                    let own = self.keys[i].find(h).map(|g| g.token);
                    if own.is_none() {
                        self.keys[i].limit = 0;
                        self.grant(i, h, Ask::EXCLUSIVE);
                    }
                    if self.keys[i].queue.is_empty() {
                        self.keys[i].queue_limit = None;
                    }
                    grants.push((i, own));
                }
                self.group_grants.insert(h, grants);
                self.pending_waiters.push((GROUP, h));
                break;
            }
            if !key.fits_queued(&ask) {
                break;
            }
            let exclusive_alone = ask.mode == Mode::Exclusive;
            self.keys[k].queue.pop_front();
            // An exclusive grant on an empty key is a plain mutex.
            let ask = Ask {
                limit: if exclusive_alone { None } else { Some(limit) },
                ..ask
            };
            if exclusive_alone {
                self.keys[k].limit = 0;
            }
            self.grant(k, h, ask);
            self.check_new_grant(k);
            self.pending_waiters.push((k, h));
        }
        if self.keys[k].queue.is_empty() {
            self.keys[k].queue_limit = None;
        }
    }

    /// A waiter that leaves every queue without a grant (CLIENT UNBLOCK):
    /// the server then looks at those keys again.
    fn leave(&mut self, h: usize) {
        self.groups.remove(&h);
        for k in 0..self.keys.len() {
            let before = self.keys[k].queue.len();
            self.keys[k].queue.retain(|&(w, _)| w != h);
            if self.keys[k].queue.len() != before {
                if self.keys[k].queue.is_empty() {
                    self.keys[k].queue_limit = None;
                }
                self.admit(k);
            }
        }
    }

    fn after_removal(&mut self, k: usize) {
        if self.keys[k].grants.is_empty() {
            self.keys[k].limit = 0; // the key is gone, and its limit with it
        }
        self.admit(k);
    }

    fn acquire(&mut self, k: usize, h: usize, ask: Ask, wait: bool) -> Expect {
        if let Some(l) = ask.limit {
            if self.keys[k].is_set() {
                self.keys[k].limit = l;
            }
            if !self.keys[k].queue.is_empty() {
                self.keys[k].queue_limit = Some(l);
            }
        }
        for _ in 0..2 {
            let key = &self.keys[k];
            if let Some(mine) = key.find(h).cloned() {
                if mine.mode == ask.mode && mine.permits == ask.permits {
                    self.admit(k);
                    return Expect::Int(mine.token);
                }
                let needs_more = match (mine.mode, ask.mode) {
                    (Mode::Exclusive, _) => false,
                    (Mode::Shared, Mode::Exclusive) => true,
                    (Mode::Shared, Mode::Shared) => ask.permits > mine.permits,
                };
                if !needs_more || (key.queue.is_empty() && key.fits(&ask, Some(h))) {
                    self.grant(k, h, ask);
                    self.pending_waiters.push((OWN, h));
                    self.admit(k);
                    return Expect::NewToken;
                }
                // Refused, but a LIMIT raised on arrival may let waiters in.
                self.admit(k);
                return if wait {
                    Expect::Err("ERR holder already holds this reservation")
                } else {
                    Expect::Int(0)
                };
            }
            if let Some((_, head)) = key.queue.front() {
                if key.fits_queued(head) {
                    self.admit(k);
                    continue;
                }
                return self.held(k, h, ask, wait);
            }
            if key.fits(&ask, None) {
                self.grant(k, h, ask);
                self.check_new_grant(k);
                self.pending_waiters.push((OWN, h));
                return Expect::NewToken;
            }
            return self.held(k, h, ask, wait);
        }
        self.held(k, h, ask, wait)
    }

    fn held(&mut self, k: usize, h: usize, ask: Ask, wait: bool) -> Expect {
        if wait {
            self.keys[k].queue.push_back((h, ask));
            if ask.limit.is_some() {
                self.keys[k].queue_limit = ask.limit;
            }
            Expect::Blocks
        } else {
            Expect::Int(0)
        }
    }
}

struct Client {
    conn: Connection,
    /// A WAIT in flight, answered on this channel.
    pending: Option<Receiver<Reply>>,
    /// A WAITALL in flight.
    pending_all: Option<Receiver<Result<Value, String>>>,
    /// The blocked connection's client id (for CLIENT UNBLOCK).
    blocked_id: i64,
}

fn holder_name(h: usize) -> String {
    format!("h{h}")
}

fn random_ask(rng: &mut StdRng) -> Ask {
    match rng.gen_range(0..4) {
        0 => Ask {
            mode: Mode::Exclusive,
            permits: 1,
            limit: None,
        },
        1 => Ask {
            mode: Mode::Shared,
            permits: 1,
            limit: None,
        },
        _ => {
            let limit = rng.gen_range(1..=4);
            Ask {
                mode: Mode::Shared,
                permits: rng.gen_range(1..=limit.min(3)),
                limit: Some(limit),
            }
        }
    }
}

fn reply_int(r: Result<Value, redis::RedisError>) -> Result<i64, String> {
    match r {
        Ok(Value::Int(n)) => Ok(n),
        Ok(other) => Err(format!("{other:?}")),
        Err(e) => Err(testkit::error_text(&e)),
    }
}

use testkit::redis;

/// INFO's holders (name, mode, permits) oldest first, limit, and queue.
fn observed(c: &mut Connection, key: &str) -> (Vec<(String, String, i64)>, i64, Vec<String>) {
    let v: Value = redis::cmd("RESERVE.INFO").arg(key).query(c).unwrap();
    let Value::Array(fields) = v else {
        return (Vec::new(), 0, Vec::new());
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("{other:?}"),
    };
    let get = |name: &str| {
        fields
            .chunks(2)
            .find(|p| text(&p[0]) == name)
            .map(|p| p[1].clone())
            .unwrap()
    };
    let Value::Int(limit) = get("limit") else {
        panic!()
    };
    let Value::Array(queue) = get("queue") else {
        panic!()
    };
    let Value::Array(holders) = get("holders") else {
        panic!()
    };
    let holders = holders
        .iter()
        .map(|h| {
            let Value::Array(p) = h else { panic!() };
            let Value::Int(permits) = p[13] else { panic!() };
            (text(&p[1]), text(&p[11]), permits)
        })
        .collect();
    (holders, limit, queue.iter().map(text).collect())
}

#[test]
fn shared_grants_follow_the_model() {
    let ops: usize = std::env::var("RESERVATION_MODEL_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(1500, |n: usize| n / 2);
    let seed: u64 = std::env::var("RESERVATION_MODEL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5A4E_D001);
    let server = Server::start();
    let mut ctl = server.conn();
    let mut clients: Vec<Client> = (0..HOLDERS)
        .map(|_| {
            let conn = server.conn();
            conn.set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            Client {
                conn,
                pending: None,
                pending_all: None,
                blocked_id: 0,
            }
        })
        .collect();
    let mut model = Model {
        keys: (0..KEYS.len()).map(|_| Key::default()).collect(),
        pending_waiters: Vec::new(),
        groups: HashMap::new(),
        group_grants: HashMap::new(),
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut last_token = 0i64;
    let mut log: VecDeque<String> = VecDeque::new();
    // Successful RESERVE.GUARD INCRs per key: the counter's expected value.
    let mut guarded = [0i64; KEYS.len()];
    let mut fresh = |t: i64, what: &str| {
        assert!(
            t > last_token,
            "{what}: token {t} not above {last_token} (seed {seed})"
        );
        last_token = t;
    };
    // After the random commands, a drain: release every grant, one per
    // step, until nothing is held or queued. A waiter left queued while
    // nothing is held could only be one that can never fit (more permits
    // than the latest LIMIT): it is unblocked; anything else is stuck (a
    // deadlock), and the test fails.
    let drain_steps = ops + 4 * HOLDERS * KEYS.len();
    let mut drained = false;
    // WAITALLs blocked, WAITALLs granted, drain steps: shown at the end.
    let mut counts = (0usize, 0usize, 0usize);
    for step in 0..drain_steps {
        if drained {
            break;
        }
        let k = rng.gen_range(0..KEYS.len());
        let key = KEYS[k];
        let free: Vec<usize> = (0..HOLDERS)
            .filter(|&h| clients[h].pending.is_none() && clients[h].pending_all.is_none())
            .collect();
        let what;
        let mut own_token: Option<(usize, i64)> = None;
        if step >= ops {
            what = drain_step(&mut model, &mut clients, &mut ctl, step);
            drained = what.is_empty();
            counts.2 += 1;
        } else if free.is_empty() || rng.gen_bool(0.08) {
            what = format!("DEL {key}");
            let _: i64 = redis::cmd("DEL").arg(key).query(&mut ctl).unwrap();
            model.keys[k].grants.clear();
            model.after_removal(k);
        } else {
            let h = free[rng.gen_range(0..free.len())];
            let name = holder_name(h);
            let with_token = |model: &Model, rng: &mut StdRng| -> Option<i64> {
                let g = model.keys[k].find(h)?;
                match rng.gen_range(0..3) {
                    0 => None,
                    1 => Some(g.token),
                    _ => Some(g.token + 1),
                }
            };
            match rng.gen_range(0..10) {
                0..=3 => {
                    let ask = random_ask(&mut rng);
                    what = format!("LOCK {key} {name} {:?}", ask.args());
                    let expect = model.acquire(k, h, ask, false);
                    let got = reply_int(
                        command(&["RESERVE.LOCK", key, &name, "600"])
                            .arg(ask.args())
                            .query(&mut clients[h].conn),
                    );
                    match (expect, got) {
                        (Expect::NewToken, Ok(t)) => own_token = Some((k, t)),
                        (Expect::Int(n), Ok(t)) => {
                            assert_eq!(t, n, "step {step}: {what} (seed {seed})")
                        }
                        (e, g) => {
                            panic!("step {step}: {what}: expected {e:?}, got {g:?} (seed {seed})")
                        }
                    }
                }
                5 if rng.gen_bool(0.3) => {
                    // Both keys at once, exclusive, in a random order:
                    // LOCKALL, or WAITALL that blocks when not all are free.
                    let order: [usize; 2] = if rng.gen_bool(0.5) { [0, 1] } else { [1, 0] };
                    let wait = rng.gen_bool(0.5);
                    let verb = if wait {
                        "RESERVE.WAITALL"
                    } else {
                        "RESERVE.LOCKALL"
                    };
                    what = format!("{verb} {name} {} {}", KEYS[order[0]], KEYS[order[1]]);
                    let fits = order.iter().all(|&i| {
                        let key = &model.keys[i];
                        key.plain_mutex_of(h) || (key.grants.is_empty() && key.queue.is_empty())
                    });
                    let mut argv = vec![verb, &name, "600"];
                    if wait {
                        argv.push("0");
                    }
                    argv.extend([KEYS[order[0]], KEYS[order[1]]]);
                    if wait && !fits {
                        clients[h].blocked_id = client_id(&mut clients[h].conn);
                        let mut conn = std::mem::replace(&mut clients[h].conn, server.conn());
                        let cmd = command(&argv);
                        let (tx, rx) = mpsc::channel();
                        std::thread::spawn(move || {
                            let reply = cmd.query::<Value>(&mut conn).map_err(|e| e.to_string());
                            let _ = tx.send(reply);
                        });
                        clients[h].pending_all = Some(rx);
                        for &i in &order {
                            model.keys[i].queue.push_back((h, Ask::EXCLUSIVE));
                        }
                        model.groups.insert(h, order);
                        counts.0 += 1;
                        let queued: usize = model.keys.iter().map(|k| k.queue.len()).sum();
                        wait_until(DEADLINE, &format!("{what} queued"), || {
                            testkit::reservation_info(&mut ctl)["waiters"] == queued as u64
                        });
                    } else {
                        let reply = command(&argv).query::<Value>(&mut clients[h].conn).unwrap();
                        if !fits {
                            assert_eq!(reply, Value::Nil, "step {step}: {what}");
                        } else {
                            let Value::Array(got) = reply else {
                                panic!("step {step}: {what}: {reply:?}")
                            };
                            for (&i, t) in order.iter().zip(got) {
                                let Value::Int(t) = t else { panic!("{t:?}") };
                                match model.keys[i].find(h).map(|g| g.token) {
                                    Some(own) => {
                                        assert_eq!(t, own, "step {step}: {what}: re-acquire")
                                    }
                                    None => {
                                        fresh(t, &what);
                                        model.grant(i, h, Ask::EXCLUSIVE);
                                        if let Some(g) =
                                            model.keys[i].grants.iter_mut().find(|g| g.holder == h)
                                        {
                                            g.token = t;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                4..=5 => {
                    let ask = random_ask(&mut rng);
                    what = format!("WAIT {key} {name} {:?}", ask.args());
                    let expect = model.acquire(k, h, ask, true);
                    let cmd = command(&["RESERVE.WAIT", key, &name, "600", "0"])
                        .arg(ask.args())
                        .clone();
                    match expect {
                        Expect::Blocks => {
                            clients[h].blocked_id = client_id(&mut clients[h].conn);
                            let mut conn = std::mem::replace(&mut clients[h].conn, server.conn());
                            let (tx, rx) = mpsc::channel();
                            std::thread::spawn(move || {
                                let _ = tx.send(to_reply(cmd.query::<Value>(&mut conn)));
                            });
                            clients[h].pending = Some(rx);
                            // INFO is nil on a key with no grant, even
                            // with waiters: count them server-wide.
                            let queued: usize = model.keys.iter().map(|k| k.queue.len()).sum();
                            wait_until(DEADLINE, &format!("{what} queued"), || {
                                testkit::reservation_info(&mut ctl)["waiters"] == queued as u64
                            });
                        }
                        Expect::NewToken => {
                            let t = reply_int(cmd.query(&mut clients[h].conn)).unwrap();
                            own_token = Some((k, t));
                        }
                        Expect::Int(n) => {
                            assert_eq!(
                                reply_int(cmd.query(&mut clients[h].conn)),
                                Ok(n),
                                "step {step}: {what}"
                            )
                        }
                        Expect::Err(e) => {
                            assert_eq!(
                                reply_int(cmd.query(&mut clients[h].conn)),
                                Err(e.to_string()),
                                "step {step}: {what}"
                            )
                        }
                    }
                }
                6 if rng.gen_bool(0.5) => {
                    // A fenced write: runs only for a current grant's token.
                    let token = with_token(&model, &mut rng).unwrap_or(1);
                    what = format!("GUARD {key} {name} {token}");
                    let held = model.keys[k].find(h).is_some_and(|g| g.token == token);
                    let counter = format!("count:{key}");
                    let got = reply_int(
                        command(&[
                            "RESERVE.GUARD",
                            key,
                            &name,
                            &token.to_string(),
                            "INCR",
                            &counter,
                        ])
                        .query(&mut clients[h].conn),
                    );
                    if held {
                        guarded[k] += 1;
                        assert_eq!(got, Ok(guarded[k]), "step {step}: {what}");
                    } else {
                        assert_eq!(
                            got,
                            Err("FENCED reservation not held by that holder and token".to_string()),
                            "step {step}: {what}"
                        );
                    }
                }
                op => {
                    // RENEW (6, 7) or RELEASE: the same check of holder and token.
                    let renew = op <= 7;
                    let token = with_token(&model, &mut rng);
                    let verb = if renew { "RENEW" } else { "RELEASE" };
                    what = format!("{verb} {key} {name} {token:?}");
                    let held = model.keys[k]
                        .find(h)
                        .is_some_and(|g| token.is_none_or(|t| t == g.token));
                    let mut cmd = command(&[&format!("RESERVE.{verb}"), key, &name]);
                    if renew {
                        cmd.arg("600");
                    }
                    if let Some(t) = token {
                        cmd.arg("TOKEN").arg(t);
                    }
                    assert_eq!(
                        reply_int(cmd.query(&mut clients[h].conn)),
                        Ok(i64::from(held)),
                        "step {step}: {what}"
                    );
                    if held && !renew {
                        model.keys[k].grants.retain(|g| g.holder != h);
                        model.after_removal(k);
                    }
                }
            }
        }
        log.push_back(format!("#{step} {what}"));
        if log.len() > 12 {
            log.pop_front();
        }
        // Waiters the model granted, in grant order: each gets a fresh
        // token, higher than every earlier one.
        for (wk, wh) in std::mem::take(&mut model.pending_waiters) {
            if wk == GROUP {
                let rx = clients[wh]
                    .pending_all
                    .take()
                    .unwrap_or_else(|| panic!("step {step}: h{wh} was not in WAITALL"));
                let reply = rx.recv_timeout(DEADLINE);
                let Ok(Ok(Value::Array(items))) = reply else {
                    panic!("step {step}: after {what}: WAITALL of h{wh}: {reply:?} (seed {seed})")
                };
                let grants = model.group_grants.remove(&wh).expect("group grants");
                counts.1 += 1;
                assert_eq!(items.len(), grants.len());
                for ((i, own), item) in grants.into_iter().zip(items) {
                    let Value::Int(t) = item else {
                        panic!("{item:?}")
                    };
                    match own {
                        Some(own) => assert_eq!(t, own, "step {step}: WAITALL re-acquire"),
                        None => {
                            fresh(t, &format!("WAITALL grant to h{wh}"));
                            if let Some(g) =
                                model.keys[i].grants.iter_mut().find(|g| g.holder == wh)
                            {
                                g.token = t;
                            }
                        }
                    }
                }
                continue;
            }
            if wk == OWN {
                let (ok, t) = own_token.take().expect("the command's own token");
                fresh(t, &what);
                if let Some(g) = model.keys[ok].grants.iter_mut().find(|g| g.holder == wh) {
                    g.token = t;
                }
                continue;
            }
            let rx = clients[wh]
                .pending
                .take()
                .unwrap_or_else(|| panic!("step {step}: h{wh} was not waiting"));
            let t = match rx.recv_timeout(DEADLINE) {
                Ok(Reply::Int(t)) if t > 0 => t,
                other => panic!(
                    "step {step}: after {what}: waiter h{wh} on {}: {other:?} (seed {seed})",
                    KEYS[wk]
                ),
            };
            fresh(t, &format!("grant to waiter h{wh}"));
            if let Some(g) = model.keys[wk].grants.iter_mut().find(|g| g.holder == wh) {
                g.token = t;
            }
        }
        for (i, key) in KEYS.iter().enumerate() {
            let m = &model.keys[i];
            m.check_invariants();
            let expected_holders: Vec<(String, String, i64)> = m
                .grants
                .iter()
                .map(|g| {
                    let mode = if g.mode == Mode::Exclusive {
                        "exclusive"
                    } else {
                        "shared"
                    };
                    (
                        holder_name(g.holder),
                        mode.to_string(),
                        i64::from(g.permits),
                    )
                })
                .collect();
            let expected_limit = if m.is_set() { i64::from(m.limit) } else { 0 };
            // RESERVE.INFO is nil for a key with no grant, waiters or not.
            let expected_queue: Vec<String> = if m.grants.is_empty() {
                Vec::new()
            } else {
                m.queue.iter().map(|(h, _)| holder_name(*h)).collect()
            };
            let (holders, limit, queue) = observed(&mut ctl, key);
            assert_eq!(
                (&holders, limit, &queue),
                (&expected_holders, expected_limit, &expected_queue),
                "step {step}: after {what}: {key} (seed {seed}); recent: {log:?}; model: {m:?}"
            );
        }
    }
    assert!(
        drained,
        "the drain did not finish (seed {seed}): {:?}",
        model.keys
    );
    assert_eq!(testkit::reservation_info(&mut ctl)["waiters"], 0);
    eprintln!(
        "model_shared: {ops} steps, {} WAITALLs blocked, {} granted while blocked; {} drain steps (seed {seed})",
        counts.0, counts.1, counts.2
    );
}

/// One drain step: release the oldest grant of the first key that holds
/// one, or unblock a waiter that can never fit when nothing is held.
/// Returns what it did, empty when there is nothing left.
fn drain_step(
    model: &mut Model,
    clients: &mut [Client],
    ctl: &mut Connection,
    step: usize,
) -> String {
    if let Some(i) = (0..KEYS.len()).find(|&i| !model.keys[i].grants.is_empty()) {
        let g = model.keys[i].grants[0].holder;
        let released: i64 = redis::cmd("RESERVE.RELEASE")
            .arg(KEYS[i])
            .arg(holder_name(g))
            .query(ctl)
            .unwrap();
        assert_eq!(released, 1, "step {step}: drain release");
        model.keys[i].grants.retain(|x| x.holder != g);
        model.after_removal(i);
        return format!("drain RELEASE {} {}", KEYS[i], holder_name(g));
    }
    let stuck = (0..KEYS.len()).find_map(|i| {
        let &(h, ask) = model.keys[i].queue.front()?;
        (!model.groups.contains_key(&h) && !model.keys[i].fits_queued(&ask)).then_some(h)
    });
    let Some(h) = stuck else {
        let queued: Vec<_> = model.keys.iter().map(|k| k.queue.clone()).collect();
        assert!(
            queued.iter().all(VecDeque::is_empty),
            "step {step}: nothing held, yet waiters stay queued: {queued:?}"
        );
        return String::new();
    };
    let unblocked: i64 = redis::cmd("CLIENT")
        .arg("UNBLOCK")
        .arg(clients[h].blocked_id)
        .query(ctl)
        .unwrap();
    assert_eq!(unblocked, 1, "step {step}: CLIENT UNBLOCK h{h}");
    let rx = clients[h].pending.take().expect("a blocked WAIT");
    assert!(matches!(rx.recv_timeout(DEADLINE), Ok(Reply::Int(0))));
    model.leave(h);
    format!("drain CLIENT UNBLOCK h{h} (can never fit)")
}
