//! What the numbers were measured on: the machine, its load, the server.

use std::process::Command;

/// The first `model name` in /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// MemTotal from /proc/meminfo, in GiB.
pub fn memory_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0 / 1024.0)
}

pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Busy and total jiffies of all CPUs (from the first line of /proc/stat).
pub fn cpu_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        return (0, 0);
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The commit the module was built from (`abc1234`, `+dirty` when src/
/// has uncommitted changes), if this is a git checkout.
pub fn module_commit() -> String {
    let root = testkit::workspace_root();
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(&root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let Some(head) = head else {
        return "unknown (not a git checkout)".to_string();
    };
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--", "src", "Cargo.toml"])
        .current_dir(&root)
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    if dirty {
        format!("{head}+dirty")
    } else {
        head
    }
}

/// `redis_version` (and the server binary's name) from INFO server.
pub fn redis_version(conn: &mut redis::Connection) -> String {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(conn)
        .unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let version = field("redis_version:").unwrap_or_else(|| "unknown".into());
    match field("valkey_version:") {
        Some(v) => format!("Valkey {v} (redis_version {version})"),
        None => format!("Redis {version}"),
    }
}

/// Raises RLIMIT_NOFILE so this process (5,000+ idle waiters) and the
/// servers it starts (they inherit it: maxclients 10000) have descriptors.
pub fn raise_fd_limit(want: libc::rlim_t) -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        let target = want;
        if lim.rlim_cur < target {
            let mut new = lim;
            new.rlim_cur = target.min(lim.rlim_max.max(target));
            new.rlim_max = lim.rlim_max.max(target);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &new) != 0 {
                // Not root: go as far as the hard limit allows.
                new.rlim_cur = lim.rlim_max;
                new.rlim_max = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &new);
            }
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// CPU ticks used by this process and the children it has reaped (the
/// servers and redis-benchmark runs of finished sections).
pub fn own_cpu_ticks() -> u64 {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let Some((_, rest)) = text.rsplit_once(") ") else {
        return 0;
    };
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime, stime, cutime, cstime are fields 14..=17 of the whole line;
    // `rest` starts at field 3.
    f.get(11..15).map_or(0, |v| v.iter().sum())
}
