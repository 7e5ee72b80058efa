//! Holder identities: `<by>-<hostname>-<pid>-<random>`, one per attempt, so
//! that releasing by holder alone can never free someone else's grant.

use std::sync::OnceLock;

/// `<by>-<hostname>-<pid>-<8 hex digits>`: unique per reservation.
pub(crate) fn new_holder(by: &str) -> String {
    format!(
        "{by}-{}-{}-{:08x}",
        hostname(),
        std::process::id(),
        rand::random::<u32>()
    )
}

/// The machine's name, read once: `/proc/sys/kernel/hostname`, else
/// `$HOSTNAME`, else `localhost`.
pub(crate) fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let from_proc = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        from_proc
            .or_else(|| {
                std::env::var("HOSTNAME")
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "localhost".to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_are_unique_and_shaped() {
        let a = new_holder("w");
        let b = new_holder("w");
        assert_ne!(a, b);
        let prefix = format!("w-{}-{}-", hostname(), std::process::id());
        assert!(a.starts_with(&prefix), "{a}");
        let suffix = &a[prefix.len()..];
        assert_eq!(suffix.len(), 8);
        assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
    }
}
