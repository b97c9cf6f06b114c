//! How much CPU this process spends *checking* labels: the sender's
//! clearance, ceiling and reply checks, the SMTP gate's, the receiver's
//! inner/outer comparison and own-clearance check, and the store reads they
//! make (statements, clearances, the policy) — not the label's bytes being
//! carried, stored and shown, which cost what any header of that size costs.
//!
//! `pouch bench --workload --labels` reads [`spent`] before and after the
//! measured mails to say what share of the CPU per mail the checks are
//! (issue 13's target: under 5 %). The time is the thread's own CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`), so a thread preempted inside a check on a
//! busy machine does not count the other threads' work; nested checks count
//! once (the outermost).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static SPENT_NS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// The CPU time spent in label checks by this process so far.
pub fn spent() -> Duration {
    Duration::from_nanos(SPENT_NS.load(Ordering::Relaxed))
}

/// Counts the CPU time until it is dropped (when no check is being
/// counted on this thread already).
pub(crate) struct Metered {
    started: Option<Duration>,
}

pub(crate) fn start() -> Metered {
    let outermost = DEPTH.with(|d| {
        d.set(d.get() + 1);
        d.get() == 1
    });
    Metered {
        started: outermost.then(thread_cpu),
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        if let Some(started) = self.started {
            let spent = thread_cpu().saturating_sub(started);
            SPENT_NS.fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
        }
    }
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_outermost_check_once() {
        let before = spent();
        {
            let _outer = start();
            let _inner = start();
            // Work: the thread's CPU time moves.
            let mut x = 0u64;
            for i in 0..2_000_000u64 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
            }
            std::hint::black_box(x);
        }
        assert!(spent() > before, "a check that worked was counted");
        assert_eq!(DEPTH.with(|d| d.get()), 0, "every check ended");
    }

    #[test]
    fn sleeping_is_not_cpu() {
        let t0 = thread_cpu();
        std::thread::sleep(Duration::from_millis(50));
        assert!(thread_cpu() - t0 < Duration::from_millis(25));
    }
}
