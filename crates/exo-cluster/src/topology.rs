//! `Topology`: the peers this node knows, with their descriptions, the address it reaches each at, when each last
//! answered and how long that took; and the addresses still to try (static peers, mDNS, gossip). A peer silent for
//! longer than [`PEER_TIMEOUT`] is dropped. A node speaking another version of the peer protocol ([`PROTOCOL`])
//! is not joined, and which versions differ is said once per peer.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::proto::NodeDescription;

/// The version of the peer protocol (`proto/exo.proto` and what its messages mean) this node speaks: bumped when
/// a change would make nodes of the two versions misread each other. Nodes join only peers of the same version.
pub const PROTOCOL: u32 = 1;
/// The exo release this node runs, said in the hello beside [`PROTOCOL`].
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A peer that has not answered (nor called) for this long is dropped.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(3);
/// Most peers a node keeps, and most addresses to try.
pub const MAX_PEERS: usize = 256;
/// Most devices a peer's description lists.
pub const MAX_DEVICES: usize = 16;
/// Most memory a peer may say it has (1 PiB): claims above it are taken as this.
pub const MAX_MEMORY_CLAIM: u64 = 1 << 50;
/// Most bytes per second a peer may say it computes or reads at (64 TiB/s, over ten times the fastest memory made
/// today): a claim above it is not believed, and the peer counts as not measured.
pub const MAX_SPEED_CLAIM: u64 = 1 << 46;

/// What [`Topology::seen`] made of a peer's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A peer not known before.
    New,
    Known,
    /// Refused, and why: its id is another live peer's, it is malformed, or the topology is full.
    Refused(String),
}

#[derive(Debug, Clone)]
pub struct Peer {
    pub description: NodeDescription,
    /// host:port of its peer server, as this node reaches it.
    pub address: String,
    pub last_seen: Instant,
    /// Round trip of the last heartbeat this node sent it.
    pub rtt: Option<Duration>,
    /// Throughput of this node's link to it, bytes per second, from the last probe (`None`: not measured yet).
    pub link_bytes_per_s: Option<u64>,
    /// When this node last probed the link.
    pub probed: Option<Instant>,
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
    /// Peers (id and what they speak) whose protocol differs, already said.
    mismatched: Mutex<HashSet<(String, String, u32)>>,
}

impl Topology {
    /// Whether `description` speaks this node's [`PROTOCOL`]. The first time a peer does not (at each version it
    /// says), `me` says so on standard error, naming both sides' versions: a node that is not joined would
    /// otherwise only be missing from the plans.
    pub fn speaks_our_protocol(&self, me: &str, description: &NodeDescription, address: &str) -> bool {
        if description.protocol == PROTOCOL {
            return true;
        }
        let version: String = description.version.chars().filter(|c| !c.is_control()).take(64).collect();
        let id: String = description.id.chars().filter(|c| !c.is_control()).take(128).collect();
        let first = self
            .mismatched
            .lock()
            .map(|mut m| m.insert((id.clone(), version.clone(), description.protocol)))
            .unwrap_or(false);
        if first {
            let theirs = if version.is_empty() {
                "an exo from before versions were said".to_string()
            } else {
                format!("exo {version}")
            };
            eprintln!(
                "node {me}: not joining node {id} at {address}: it speaks peer protocol {} ({theirs}), this node \
                 protocol {PROTOCOL} (exo {VERSION}); run the same exo release on every node",
                description.protocol
            );
        }
        false
    }

    /// Records that peer `description.id` answered or called from `address`. A description is believed only as
    /// far as it is consistent: an id must be plain and not another live peer's (at another address), and memory
    /// claims are capped by the peer's own total (so a peer cannot take every layer by claiming more than it has
    /// said it has).
    pub fn seen(&self, mut description: NodeDescription, address: String, rtt: Option<Duration>) -> Seen {
        let id = description.id.clone();
        if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_graphic()) {
            return Seen::Refused(format!("a malformed node id from {address}"));
        }
        let d = &mut description;
        d.memory_total = d.memory_total.min(MAX_MEMORY_CLAIM);
        d.memory_available = d.memory_available.min(d.memory_total);
        d.devices.truncate(MAX_DEVICES);
        for dev in &mut d.devices {
            dev.memory_total = dev.memory_total.min(MAX_MEMORY_CLAIM);
            dev.memory_free = dev.memory_free.min(dev.memory_total);
            // A device offers at most its own memory, or the machine's when it has none of its own (the CPU).
            dev.usable = dev.usable.min(if dev.memory_total > 0 { dev.memory_total } else { d.memory_total });
            if dev.matvec_bytes_per_s > MAX_SPEED_CLAIM {
                dev.matvec_bytes_per_s = 0;
            }
            for text in [&mut dev.name, &mut dev.description, &mut dev.compute_capability] {
                if text.len() > 128 || text.chars().any(char::is_control) {
                    *text = text.chars().filter(|c| !c.is_control()).take(128).collect();
                }
            }
        }
        // Layers go to device memory on GPU nodes: that may be more than the machine's own.
        let gpu_total = d.devices.iter().fold(0u64, |sum, dev| sum.saturating_add(dev.memory_total));
        let bound = d.memory_total.saturating_add(gpu_total).min(MAX_MEMORY_CLAIM);
        d.memory_usable = d.memory_usable.min(bound).min(d.memory_limit.unwrap_or(u64::MAX));
        d.peers.truncate(MAX_PEERS);
        // A speed claim cannot be checked against anything the peer said, only against what a machine can do: an
        // absurd one is dropped, not capped, so lying high earns no more than saying nothing. A matrix-vector
        // product reads its weights from memory and can be no faster than plain reads.
        if d.matvec_bytes_per_s > MAX_SPEED_CLAIM || d.memory_bytes_per_s > MAX_SPEED_CLAIM {
            (d.matvec_bytes_per_s, d.memory_bytes_per_s) = (0, 0);
        }
        if d.memory_bytes_per_s > 0 && d.matvec_bytes_per_s > d.memory_bytes_per_s.saturating_mul(2) {
            d.matvec_bytes_per_s = 0;
        }
        let Ok(mut peers) = self.peers.lock() else { return Seen::Refused("the topology is poisoned".into()) };
        match peers.get(&id) {
            Some(p) if p.address != address && p.last_seen.elapsed() <= PEER_TIMEOUT => {
                return Seen::Refused(format!("node {id} at {address} claims the id of the live node at {}", p.address))
            }
            None if peers.len() >= MAX_PEERS => {
                return Seen::Refused(format!("this node already knows {MAX_PEERS} peers"))
            }
            _ => {}
        }
        let old = peers.get(&id).filter(|p| p.address == address);
        let rtt = rtt.or_else(|| old.and_then(|p| p.rtt));
        let (link_bytes_per_s, probed) = old.map_or((None, None), |p| (p.link_bytes_per_s, p.probed));
        let peer = Peer { description, address, last_seen: Instant::now(), rtt, link_bytes_per_s, probed };
        match peers.insert(id, peer) {
            None => Seen::New,
            Some(_) => Seen::Known,
        }
    }

    /// Whether the link to peer `id` is due a probe (never probed, or not for `every`); if so, marks it probed now,
    /// so that one probe runs at a time.
    pub fn probe_due(&self, id: &str, every: Duration) -> bool {
        let Ok(mut peers) = self.peers.lock() else { return false };
        match peers.get_mut(id) {
            Some(p) if p.probed.is_none_or(|t| t.elapsed() >= every) => {
                p.probed = Some(Instant::now());
                true
            }
            _ => false,
        }
    }

    /// Records the throughput a probe of the link to peer `id` measured.
    pub fn link_measured(&self, id: &str, bytes_per_s: u64) {
        if let Ok(mut peers) = self.peers.lock() {
            if let Some(p) = peers.get_mut(id) {
                p.link_bytes_per_s = Some(bytes_per_s);
            }
        }
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

    /// Live peer `id`, if known.
    pub fn get(&self, id: &str) -> Option<Peer> {
        self.peers.lock().ok().and_then(|p| p.get(id).cloned())
    }

    pub fn is_alive(&self, id: &str) -> bool {
        self.peers.lock().is_ok_and(|p| p.get(id).is_some_and(|p| p.last_seen.elapsed() <= PEER_TIMEOUT))
    }

    /// Adds an address to try.
    pub fn add_candidate(&self, address: String, source: Source) {
        let plain = address.len() <= 255
            && address.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !plain {
            return;
        }
        if let Ok(mut c) = self.candidates.lock() {
            if c.len() >= MAX_PEERS && !c.contains_key(&address) && source == Source::Found {
                return;
            }
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
    fn a_peer_of_another_protocol_is_refused_and_said_once() {
        let t = Topology::default();
        let mut d = description("old");
        assert!(!t.speaks_our_protocol("me", &d, "127.0.0.1:1"), "protocol 0 (before versions were said)");
        assert!(!t.speaks_our_protocol("me", &d, "127.0.0.1:1"));
        d.protocol = PROTOCOL + 1;
        d.version = "9.9.9".into();
        assert!(!t.speaks_our_protocol("me", &d, "127.0.0.1:1"));
        // Said once per peer and version: two entries, not three.
        assert_eq!(t.mismatched.lock().unwrap().len(), 2);
        d.protocol = PROTOCOL;
        assert!(t.speaks_our_protocol("me", &d, "127.0.0.1:1"));
    }

    #[test]
    fn peers_come_and_go() {
        let t = Topology::default();
        assert_eq!(t.seen(description("b"), "10.0.0.2:1".into(), Some(Duration::from_micros(300))), Seen::New);
        assert_eq!(t.seen(description("b"), "10.0.0.2:1".into(), None), Seen::Known);
        assert_eq!(t.seen(description("a"), "10.0.0.1:1".into(), None), Seen::New);
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
    fn a_peer_cannot_take_another_live_peers_id_or_claim_more_memory_or_speed_than_it_has() {
        let t = Topology::default();
        assert_eq!(t.seen(description("a"), "10.0.0.1:1".into(), None), Seen::New);
        let Seen::Refused(why) = t.seen(description("a"), "10.0.0.9:1".into(), None) else { panic!("accepted") };
        assert!(why.contains("claims the id"), "{why}");
        assert_eq!(t.peers()[0].address, "10.0.0.1:1");
        for bad in ["", "a b", &"x".repeat(129)] {
            assert!(matches!(t.seen(description(bad), "10.0.0.3:1".into(), None), Seen::Refused(_)), "{bad:?}");
        }
        let greedy = NodeDescription {
            id: "g".into(),
            memory_total: 8 << 30,
            memory_available: 1 << 60,
            memory_usable: u64::MAX,
            memory_limit: Some(4 << 30),
            ..Default::default()
        };
        t.seen(greedy, "10.0.0.4:1".into(), None);
        let g = t.get("g").unwrap().description;
        assert_eq!((g.memory_available, g.memory_usable), (8 << 30, 4 << 30));
        let huge =
            NodeDescription { id: "h".into(), memory_total: u64::MAX, memory_usable: u64::MAX, ..Default::default() };
        t.seen(huge, "10.0.0.5:1".into(), None);
        assert_eq!(t.get("h").unwrap().description.memory_usable, MAX_MEMORY_CLAIM);
        // Speeds: absurd claims count as not measured; plausible ones are kept.
        let fast = |id: &str, matvec: u64, memory: u64| NodeDescription {
            id: id.into(),
            matvec_bytes_per_s: matvec,
            memory_bytes_per_s: memory,
            ..Default::default()
        };
        t.seen(fast("s1", u64::MAX, 10 << 30), "10.0.0.6:1".into(), None);
        t.seen(fast("s2", 100 << 30, 10 << 30), "10.0.0.7:1".into(), None);
        t.seen(fast("s3", 8 << 30, 10 << 30), "10.0.0.8:1".into(), None);
        let speed = |id: &str| {
            let d = t.get(id).unwrap().description;
            (d.matvec_bytes_per_s, d.memory_bytes_per_s)
        };
        assert_eq!(speed("s1"), (0, 0));
        assert_eq!(speed("s2"), (0, 10 << 30));
        assert_eq!(speed("s3"), (8 << 30, 10 << 30));
        // A GPU node may offer more than its own memory, but no more than its devices hold; its device list is
        // capped and its strings cleaned.
        let gpu = |total: u64, free: u64| crate::proto::Device {
            name: "cuda:0\u{1b}[2J".into(),
            description: "x".repeat(1000),
            memory_total: total,
            memory_free: free,
            compute_capability: "9.0".into(),
            usable: 100 << 30,
            matvec_bytes_per_s: u64::MAX,
        };
        let gpus = NodeDescription {
            id: "gpus".into(),
            memory_total: 16 << 30,
            memory_usable: 200 << 30,
            devices: vec![gpu(80 << 30, 90 << 30); 40],
            ..Default::default()
        };
        t.seen(gpus, "10.0.0.6:1".into(), None);
        let g = t.get("gpus").unwrap().description;
        assert_eq!((g.devices.len(), g.memory_usable), (MAX_DEVICES, 200 << 30));
        assert_eq!((g.devices[0].memory_free, g.devices[0].name.as_str()), (80 << 30, "cuda:0[2J"));
        assert_eq!(g.devices[0].description.len(), 128);
        // Each device offers at most its own memory, and an absurd speed is dropped.
        assert_eq!((g.devices[0].usable, g.devices[0].matvec_bytes_per_s), (80 << 30, 0));
        let one = NodeDescription {
            id: "one".into(),
            memory_total: 16 << 30,
            memory_usable: 200 << 30,
            devices: vec![gpu(24 << 30, 20 << 30)],
            ..Default::default()
        };
        t.seen(one, "10.0.0.7:1".into(), None);
        // Its GPU and, for the layers that GPU cannot hold, its machine's memory.
        assert_eq!(t.get("one").unwrap().description.memory_usable, 40 << 30);
        // Gossip that is not host:port is not tried.
        t.add_candidate("nonsense".into(), Source::Found);
        t.add_candidate("h:99999".into(), Source::Found);
        assert!(!t.addresses().iter().any(|a| a == "nonsense" || a == "h:99999"));
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
