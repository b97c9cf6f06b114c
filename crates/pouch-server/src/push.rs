//! Devices waiting for mail: a long-poll (`GET /v1/queue/wait`) answers as
//! soon as something is queued for the device, so delivery latency is not a
//! sync interval. Waking is in memory, per server node: a device waiting on
//! another node than the one that queued its mail hears of it when its wait
//! times out (at most [`MAX_WAIT`]); the queue itself is in the database and
//! nothing is lost either way.

use pouch_proto::DeviceId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// The longest a wait is held: under common proxies' idle timeouts, and
/// short enough that a device on another node is not left waiting long.
pub const MAX_WAIT: Duration = Duration::from_secs(25);

/// One wake-up bell per device that has a wait open.
#[derive(Default)]
pub struct Waiters {
    bells: Mutex<HashMap<DeviceId, Arc<Notify>>>,
}

impl Waiters {
    /// The device's bell, created for the first waiter.
    pub fn bell(&self, device: &DeviceId) -> Arc<Notify> {
        self.bells
            .lock()
            .expect("not poisoned")
            .entry(device.clone())
            .or_default()
            .clone()
    }

    /// Forgets the device's bell when no other wait holds it.
    pub fn done(&self, device: &DeviceId, bell: Arc<Notify>) {
        let mut bells = self.bells.lock().expect("not poisoned");
        // Ours and the map's: nobody else is waiting.
        if Arc::strong_count(&bell) <= 2 {
            bells.remove(device);
        }
    }

    /// The device's bell, given back when the returned guard drops (also
    /// when the waiting request is dropped because its client went away).
    pub fn hold<'a>(&'a self, device: &'a DeviceId) -> HeldBell<'a> {
        HeldBell {
            waiters: self,
            device,
            bell: Some(self.bell(device)),
        }
    }

    /// Devices with a bell (waiting for mail now), for `/metrics`.
    pub fn count(&self) -> usize {
        self.bells.lock().expect("not poisoned").len()
    }

    /// Whether any device waits at all (else waking costs nothing).
    pub fn any(&self) -> bool {
        !self.bells.lock().expect("not poisoned").is_empty()
    }

    /// Rings the bells of these devices, if they wait.
    pub fn wake<'a>(&self, devices: impl IntoIterator<Item = &'a DeviceId>) {
        let bells = self.bells.lock().expect("not poisoned");
        for d in devices {
            if let Some(bell) = bells.get(d) {
                bell.notify_waiters();
            }
        }
    }
}

/// A bell held by one waiting request.
pub struct HeldBell<'a> {
    waiters: &'a Waiters,
    device: &'a DeviceId,
    bell: Option<Arc<Notify>>,
}

impl HeldBell<'_> {
    pub fn bell(&self) -> &Notify {
        self.bell.as_deref().expect("held until dropped")
    }
}

impl Drop for HeldBell<'_> {
    fn drop(&mut self) {
        if let Some(bell) = self.bell.take() {
            self.waiters.done(self.device, bell);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ring_wakes_only_the_devices_named_and_bells_are_forgotten() {
        let w = Waiters::default();
        let (a, b) = (DeviceId("a".repeat(32)), DeviceId("b".repeat(32)));
        let (bell_a, bell_b) = (w.bell(&a), w.bell(&b));
        {
            let (wait_a, wait_b) = (bell_a.notified(), bell_b.notified());
            tokio::pin!(wait_a);
            tokio::pin!(wait_b);
            wait_a.as_mut().enable();
            wait_b.as_mut().enable();
            w.wake([&a]);
            tokio::time::timeout(Duration::from_secs(5), wait_a)
                .await
                .expect("a was woken");
            assert!(
                tokio::time::timeout(Duration::from_millis(50), wait_b)
                    .await
                    .is_err(),
                "b was not named"
            );
        }
        w.done(&a, bell_a);
        w.done(&b, bell_b);
        assert!(!w.any());
        // A held bell is given back when its holder is dropped mid-wait.
        {
            let held = w.hold(&a);
            let wait = held.bell().notified();
            let _ = tokio::time::timeout(Duration::from_millis(10), wait).await;
            assert!(w.any());
        }
        assert!(!w.any());
    }
}
