//! CPU time spent inside one kind of work, for the benchmarks: a future
//! whose polls are timed with the thread's own CPU clock, so time spent
//! waiting (for the store, for other tasks on a busy runtime) is not
//! counted — what is, is work done in this task.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// A future that adds the CPU time of its polls to a counter.
pub(crate) struct Metered<'a, F> {
    inner: Pin<Box<F>>,
    counter: &'a AtomicU64,
}

impl<'a, F: Future> Metered<'a, F> {
    pub(crate) fn new(inner: F, counter: &'a AtomicU64) -> Self {
        Metered {
            inner: Box::pin(inner),
            counter,
        }
    }
}

impl<F: Future> Future for Metered<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let started = thread_cpu();
        let polled = self.inner.as_mut().poll(cx);
        let spent = thread_cpu().saturating_sub(started);
        self.counter
            .fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
        polled
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

    #[tokio::test]
    async fn counts_work_in_polls_not_waiting() {
        let counter = AtomicU64::new(0);
        Metered::new(
            async {
                tokio::time::sleep(Duration::from_millis(50)).await;
            },
            &counter,
        )
        .await;
        let waited = Duration::from_nanos(counter.load(Ordering::Relaxed));
        assert!(
            waited < Duration::from_millis(25),
            "waiting counted: {waited:?}"
        );
        Metered::new(
            async {
                let mut x = 0u64;
                for i in 0..3_000_000u64 {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
                }
                std::hint::black_box(x);
            },
            &counter,
        )
        .await;
        assert!(Duration::from_nanos(counter.load(Ordering::Relaxed)) > waited);
    }
}
