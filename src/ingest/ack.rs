//! Acknowledgements in arrival order. MQTT (3.1.1 and 5, §4.6 "Message ordering") requires a
//! receiver to send its PUBACKs in the order the PUBLISH packets arrived. Processing finishes out
//! of order — presence events are stored by concurrent writers, impressions are only buffered —
//! so each connection keeps an [`AckOrder`]: every message takes a [`Ticket`] when the poll loop
//! receives it, and an acknowledgement is sent only once every message received before it on
//! the connection has been acknowledged too.
//!
//! Mosquitto and AWS IoT Core tolerate acknowledgements out of order; rumqttd (the demo's
//! embedded broker) drops the connection on the first one, which is how we found out.
//!
//! Contract:
//! - acks leave in ticket order, each exactly once, whatever order tickets complete in;
//! - a ticket that never completes (a presence event abandoned at shutdown, to be redelivered)
//!   holds back the acks after it: the broker redelivers them all, which ingest tolerates
//!   (every store is idempotent);
//! - a new connection ([`AckOrder::reset`]) starts afresh: tickets of the previous connection
//!   are ignored when they complete (the broker redelivers what they stood for).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::AsyncClient;

/// The pure part: which completed messages may be acknowledged now.
#[derive(Debug, Default)]
pub struct Order<T> {
    generation: u64,
    next: u64,
    head: u64,
    ready: BTreeMap<u64, T>,
}

impl<T> Order<T> {
    /// The next message's place: (generation, sequence).
    pub fn take(&mut self) -> (u64, u64) {
        self.next += 1;
        (self.generation, self.next - 1)
    }

    /// Message `seq` of `generation` is done; what may be acknowledged now, in order.
    pub fn complete(&mut self, generation: u64, seq: u64, item: T) -> Vec<T> {
        if generation != self.generation || seq < self.head {
            return Vec::new();
        }
        self.ready.insert(seq, item);
        let mut out = Vec::new();
        while let Some(item) = self.ready.remove(&self.head) {
            out.push(item);
            self.head += 1;
        }
        out
    }

    /// A new connection: forget everything pending.
    pub fn reset(&mut self) {
        self.generation += 1;
        self.next = 0;
        self.head = 0;
        self.ready.clear();
    }

    /// Completed messages waiting behind an earlier one.
    pub fn waiting(&self) -> usize {
        self.ready.len()
    }
}

/// One connection's acknowledgement order.
pub struct AckOrder {
    client: AsyncClient,
    order: Mutex<Order<Publish>>,
}

/// A received message's place in its connection's order.
pub struct Ticket {
    order: Arc<AckOrder>,
    generation: u64,
    seq: u64,
}

impl AckOrder {
    pub fn new(client: AsyncClient) -> Arc<AckOrder> {
        Arc::new(AckOrder {
            client,
            order: Mutex::new(Order::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Order<Publish>> {
        self.order.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next received message's ticket (call in arrival order).
    pub fn ticket(self: &Arc<Self>) -> Ticket {
        let (generation, seq) = self.lock().take();
        Ticket {
            order: self.clone(),
            generation,
            seq,
        }
    }

    /// The connection was (re)established.
    pub fn reset(&self) {
        self.lock().reset();
    }
}

impl Ticket {
    /// Acknowledge `publish` as soon as everything before it is. Never blocks: the request
    /// channel is sized so that this only fails when the connection is gone, and then the
    /// broker redelivers, which is harmless.
    pub fn ack(&self, publish: &Publish) {
        let mut order = self.order.lock();
        // Sent under the lock, so that two completing tickets cannot interleave their acks.
        for p in order.complete(self.generation, self.seq, publish.clone()) {
            if let Err(e) = self.order.client.try_ack(&p) {
                tracing::debug!(error = %e, "could not acknowledge; the broker will redeliver");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_late_completion_holds_back_the_ones_after_it() {
        let mut o = Order::default();
        let t: Vec<_> = (0..4).map(|_| o.take()).collect();
        assert!(o.complete(t[1].0, t[1].1, 'b').is_empty());
        assert!(o.complete(t[3].0, t[3].1, 'd').is_empty());
        assert_eq!(o.waiting(), 2);
        assert_eq!(o.complete(t[0].0, t[0].1, 'a'), ['a', 'b']);
        assert_eq!(o.complete(t[2].0, t[2].1, 'c'), ['c', 'd']);
        // twice is once
        assert!(o.complete(t[2].0, t[2].1, 'c').is_empty());
    }

    #[test]
    fn a_new_connection_ignores_the_old_tickets() {
        let mut o = Order::default();
        let old = o.take();
        o.reset();
        let new = o.take();
        assert!(o.complete(old.0, old.1, 1).is_empty());
        assert_eq!(o.complete(new.0, new.1, 2), [2]);
    }

    proptest! {
        /// Any completion order releases everything, once, in ticket order; with one ticket
        /// never completed, exactly the ones before it.
        #[test]
        fn released_in_ticket_order(perm in Just((0..40u64).collect::<Vec<_>>()).prop_shuffle(), missing in proptest::option::of(0..40u64)) {
            let mut o = Order::default();
            let tickets: Vec<_> = (0..40).map(|_| o.take()).collect();
            let mut released = Vec::new();
            for &i in &perm {
                if Some(i) == missing {
                    continue;
                }
                let (g, s) = tickets[i as usize];
                released.extend(o.complete(g, s, i));
            }
            let want: Vec<u64> = (0..missing.unwrap_or(40)).collect();
            prop_assert_eq!(released, want);
        }
    }
}
