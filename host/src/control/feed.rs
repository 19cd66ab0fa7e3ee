//! One publisher per node for a state that many clients follow as Server-Sent Events (the
//! now-playing events, the dashboard's state): the publisher builds the state once per period,
//! and only while someone follows it; each subscriber wakes only when it changed. Idle
//! subscribers cost nothing but their connection, and one address may hold at most
//! [`PER_ADDRESS`] of them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::sync::Locked;

/// Most subscriptions one client address (an IPv6 /64) holds at once on one feed.
pub const PER_ADDRESS: usize = 8;

/// A state many follow: the latest value (`None` until first published).
pub struct Feed<T> {
    tx: watch::Sender<Option<Arc<T>>>,
    subscribers: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl<T: PartialEq> Default for Feed<T> {
    fn default() -> Feed<T> {
        Feed {
            tx: watch::Sender::new(None),
            subscribers: Arc::default(),
        }
    }
}

impl<T: PartialEq> Feed<T> {
    /// Whether anyone follows the feed (the publisher builds nothing otherwise).
    pub fn followed(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Publishes `value`; subscribers wake only if it differs from the last one.
    pub fn publish(&self, value: T) {
        self.tx.send_if_modified(|current| {
            if current.as_deref() == Some(&value) {
                return false;
            }
            *current = Some(Arc::new(value));
            true
        });
    }

    /// A subscription for a client at `client`, or `None` when that address holds
    /// [`PER_ADDRESS`] already.
    pub fn subscribe(&self, client: IpAddr) -> Option<Subscription<T>> {
        let key = crate::limits::client_key(client);
        {
            let mut subscribers = self.subscribers.locked();
            let n = subscribers.entry(key).or_default();
            if *n >= PER_ADDRESS {
                return None;
            }
            *n += 1;
        }
        let mut rx = self.tx.subscribe();
        // The current value counts as new: a subscriber starts from it.
        rx.mark_changed();
        Some(Subscription {
            rx,
            slot: Slot {
                subscribers: self.subscribers.clone(),
                key,
            },
        })
    }
}

/// One follower of a [`Feed`]; gives its address's place back when dropped.
pub struct Subscription<T> {
    rx: watch::Receiver<Option<Arc<T>>>,
    #[allow(dead_code)] // held for its Drop
    slot: Slot,
}

impl<T> Subscription<T> {
    /// The next value: the current one first, then each change (`None`: the feed is gone).
    pub async fn next(&mut self) -> Option<Arc<T>> {
        loop {
            self.rx.changed().await.ok()?;
            if let Some(v) = self.rx.borrow_and_update().clone() {
                return Some(v);
            }
        }
    }
}

struct Slot {
    subscribers: Arc<Mutex<HashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut subscribers = self.subscribers.locked();
        if let Some(n) = subscribers.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                subscribers.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_changes_once_and_each_address_has_a_cap() {
        let feed: Feed<u32> = Feed::default();
        assert!(!feed.followed());
        let a: IpAddr = "203.0.113.9".parse().unwrap();
        let mut subs: Vec<_> = (0..PER_ADDRESS)
            .map(|_| feed.subscribe(a).unwrap())
            .collect();
        assert!(feed.subscribe(a).is_none(), "the address's cap");
        assert!(feed.followed());
        feed.publish(1);
        assert_eq!(*subs[0].next().await.unwrap(), 1);
        feed.publish(1);
        feed.publish(2);
        assert_eq!(
            *subs[0].next().await.unwrap(),
            2,
            "an equal value wakes nobody"
        );
        subs.pop();
        assert!(feed.subscribe(a).is_some(), "a place given back");
        let other = feed.subscribe("198.51.100.1".parse().unwrap());
        assert_eq!(
            *other.unwrap().next().await.unwrap(),
            2,
            "starts from the current"
        );
    }
}
