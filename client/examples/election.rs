//! Leader election: run one process per candidate; the first to campaign
//! leads, the others follow and print every change of leader they see,
//! and when the leader dies another one takes over.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run -p redis-reservation-client --example election -- NAME [--election E] [--ttl-ms N] [--delay-ms N]
//! ```
//!
//! `NAME` names the candidate (its holder identity starts with it); the
//! election is `E` (default `election`, key `reservation-election`). A
//! leader that dies (kill -9) keeps its key until its TTL (`--ttl-ms`,
//! default 2000) runs out; then nobody leads for the lock-delay
//! (`--delay-ms`, default 500), so whatever the dead leader had in flight
//! can drain, and the oldest follower leads. A leader runs until killed.
//!
//! Every line on stdout starts with `NAME`:
//!
//! ```text
//! b sees leader a-vm-4242-1f2e3d4c (token 1883017396092928)
//! b sees no leader
//! b sees leader b-vm-4243-5a6b7c8d (token 1883017398190080)
//! b leads (holder b-vm-4243-5a6b7c8d, token 1883017398190080)
//! ```

use std::time::Duration;

use redis_reservation_client::{Error, Level, ReservationManager};

struct Args {
    name: String,
    election: String,
    ttl: Duration,
    delay: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut name = None;
    let mut election = "election".to_string();
    let mut ttl = Duration::from_millis(2000);
    let mut delay = Duration::from_millis(500);
    let ms = |v: Option<String>, flag: &str| -> Result<Duration, String> {
        v.and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .ok_or_else(|| format!("{flag} needs a number of milliseconds"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--election" => election = args.next().ok_or("--election needs a name")?,
            "--ttl-ms" => ttl = ms(args.next(), "--ttl-ms")?,
            "--delay-ms" => delay = ms(args.next(), "--delay-ms")?,
            _ if name.is_none() && !arg.starts_with("--") => name = Some(arg),
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    Ok(Args {
        name: name.ok_or("usage: election NAME [--election E] [--ttl-ms N] [--delay-ms N]")?,
        election,
        ttl,
        delay,
    })
}

fn main() -> Result<(), Error> {
    let args = parse_args().map_err(Error::InvalidConfig)?;
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let me = args.name.clone();
    let manager = ReservationManager::builder(args.name.as_str())
        .url(url)
        .lock_ttl(args.ttl)
        .lock_delay(args.delay)
        .logger(|level, msg| {
            if level <= Level::Info {
                eprintln!("[{level}] {msg}");
            }
        })
        .build()?;

    // A follower's view: every change of leader, in order. The thread
    // lives as long as the process.
    let follower = manager.clone();
    let election = args.election.clone();
    let who = me.clone();
    std::thread::spawn(move || {
        for change in follower.leader_changes(&election) {
            match change {
                Ok(Some(leader)) => {
                    println!(
                        "{who} sees leader {} (token {})",
                        leader.holder, leader.token
                    )
                }
                Ok(None) => println!("{who} sees no leader"),
                Err(e) => eprintln!("{who} cannot watch the election: {e}"),
            }
        }
    });

    loop {
        let leadership = match manager.campaign(&args.election) {
            Ok(l) => l,
            Err(e) if e.is_connection_error() => {
                eprintln!("{me} cannot campaign: {e}; trying again");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            Err(e) => return Err(e),
        };
        println!(
            "{me} leads (holder {}, token {})",
            leadership.holder(),
            leadership.token()
        );
        // Lead (a real leader would work here, fencing its writes with
        // leadership.token()) until the leadership is lost; then stop
        // acting as leader and campaign again.
        let lost = leadership.lost_receiver().recv();
        println!("{me} lost the leadership ({lost:?})");
    }
}
