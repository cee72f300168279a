//! `Topology`: the peers this node knows, with their descriptions, the address it reaches each at, when each last
//! answered and how long that took; and the addresses still to try (static peers, mDNS, gossip). A peer silent for
//! longer than [`PEER_TIMEOUT`] is dropped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::proto::NodeDescription;

/// A peer that has not answered (nor called) for this long is dropped.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct Peer {
    pub description: NodeDescription,
    /// host:port of its peer server, as this node reaches it.
    pub address: String,
    pub last_seen: Instant,
    /// Round trip of the last heartbeat this node sent it.
    pub rtt: Option<Duration>,
}

/// Where an address to try came from: static peers are tried for as long as the node runs; others are forgotten
/// after failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Static,
    Found,
}

#[derive(Debug, Default)]
pub struct Topology {
    peers: Mutex<HashMap<String, Peer>>,
    candidates: Mutex<HashMap<String, Source>>,
}

impl Topology {
    /// Records that peer `description.id` answered or called from `address`. Returns true for a peer not known
    /// before.
    pub fn seen(&self, description: NodeDescription, address: String, rtt: Option<Duration>) -> bool {
        let Ok(mut peers) = self.peers.lock() else { return false };
        let id = description.id.clone();
        let rtt = rtt.or_else(|| peers.get(&id).and_then(|p| p.rtt));
        peers.insert(id, Peer { description, address, last_seen: Instant::now(), rtt }).is_none()
    }

    /// Drops peers silent for longer than `timeout`; returns their ids.
    pub fn expire(&self, timeout: Duration) -> Vec<String> {
        let Ok(mut peers) = self.peers.lock() else { return Vec::new() };
        let gone: Vec<String> =
            peers.iter().filter(|(_, p)| p.last_seen.elapsed() > timeout).map(|(id, _)| id.clone()).collect();
        for id in &gone {
            peers.remove(id);
        }
        gone
    }

    /// Drops peer `id` at once (it failed a request and does not answer).
    pub fn remove(&self, id: &str) -> bool {
        self.peers.lock().is_ok_and(|mut p| p.remove(id).is_some())
    }

    /// Live peers, by id.
    pub fn peers(&self) -> Vec<Peer> {
        let mut peers: Vec<Peer> = self.peers.lock().map(|p| p.values().cloned().collect()).unwrap_or_default();
        peers.sort_by(|a, b| a.description.id.cmp(&b.description.id));
        peers
    }

    pub fn is_alive(&self, id: &str) -> bool {
        self.peers.lock().is_ok_and(|p| p.get(id).is_some_and(|p| p.last_seen.elapsed() <= PEER_TIMEOUT))
    }

    /// Adds an address to try.
    pub fn add_candidate(&self, address: String, source: Source) {
        if let Ok(mut c) = self.candidates.lock() {
            let entry = c.entry(address).or_insert(source);
            if source == Source::Static {
                *entry = Source::Static;
            }
        }
    }

    /// Addresses to say hello to: every candidate and every live peer's.
    pub fn addresses(&self) -> Vec<String> {
        let mut all: Vec<String> = self.candidates.lock().map(|c| c.keys().cloned().collect()).unwrap_or_default();
        all.extend(self.peers().into_iter().map(|p| p.address));
        all.sort();
        all.dedup();
        all
    }

    /// An address that did not answer: forgotten unless it is a static peer.
    pub fn failed(&self, address: &str) {
        if let Ok(mut c) = self.candidates.lock() {
            if c.get(address) == Some(&Source::Found) {
                c.remove(address);
            }
        }
    }

    /// An address that turned out to be this node: never tried again.
    pub fn is_me(&self, address: &str) {
        if let Ok(mut c) = self.candidates.lock() {
            c.remove(address);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn description(id: &str) -> NodeDescription {
        NodeDescription { id: id.into(), ..Default::default() }
    }

    #[test]
    fn peers_come_and_go() {
        let t = Topology::default();
        assert!(t.seen(description("b"), "10.0.0.2:1".into(), Some(Duration::from_micros(300))));
        assert!(!t.seen(description("b"), "10.0.0.2:1".into(), None));
        assert!(t.seen(description("a"), "10.0.0.1:1".into(), None));
        let peers = t.peers();
        assert_eq!(peers.iter().map(|p| p.description.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        // The round trip is kept when a call brings none.
        assert_eq!(peers[1].rtt, Some(Duration::from_micros(300)));
        assert!(t.is_alive("a") && !t.is_alive("c"));
        assert!(t.expire(Duration::from_secs(60)).is_empty());
        std::thread::sleep(Duration::from_millis(5));
        let mut gone = t.expire(Duration::from_millis(1));
        gone.sort();
        assert_eq!(gone, ["a", "b"]);
        assert!(t.peers().is_empty());
    }

    #[test]
    fn found_addresses_are_forgotten_when_they_fail_static_ones_are_not() {
        let t = Topology::default();
        t.add_candidate("s:1".into(), Source::Static);
        t.add_candidate("f:1".into(), Source::Found);
        t.add_candidate("me:1".into(), Source::Found);
        t.failed("s:1");
        t.failed("f:1");
        t.is_me("me:1");
        assert_eq!(t.addresses(), ["s:1"]);
    }
}
