//! The clock the core's decisions are written against: any `Moment`, so
//! the blocking thread (std `Instant`), the tokio task (tokio `Instant`,
//! which a paused test runtime moves) and the unit tests (a `Duration` as
//! a fake clock) run the same code.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time on some clock.
pub(crate) trait Moment:
    Copy + Ord + Add<Duration, Output = Self> + Sub<Output = Duration>
{
}

impl<T> Moment for T where T: Copy + Ord + Add<Duration, Output = T> + Sub<Output = Duration> {}
