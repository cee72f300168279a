//! mDNS discovery: a node advertises itself as `_exo._tcp.local.` (instance name = node id; TXT records `id`,
//! `peer_port`, `api_port`) and browses for others; every address it resolves becomes a candidate for the
//! heartbeats, which do the rest.

use std::sync::Arc;

use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};

use crate::node::NodeInfo;
use crate::topology::{Source, Topology};

pub const SERVICE: &str = "_exo._tcp.local.";

/// The running advertisement and browser; both stop when dropped.
pub struct Mdns {
    daemon: ServiceDaemon,
}

impl Mdns {
    pub fn start(info: &NodeInfo, topology: Arc<Topology>) -> Result<Mdns, mdns_sd::Error> {
        let daemon = ServiceDaemon::new()?;
        let properties = [
            ("id", info.id.clone()),
            ("peer_port", info.peer_port.to_string()),
            ("api_port", info.api_port.to_string()),
        ];
        let host = format!("exo-{}.local.", info.id);
        let service =
            ServiceInfo::new(SERVICE, &info.id, &host, "", info.peer_port, &properties[..])?.enable_addr_auto();
        daemon.register(service)?;
        let events = daemon.browse(SERVICE)?;
        let me = info.id.clone();
        std::thread::Builder::new()
            .name("exo-mdns".into())
            .spawn(move || {
                while let Ok(event) = events.recv() {
                    if let ServiceEvent::ServiceResolved(found) = event {
                        let id = found.get_property_val_str("id").unwrap_or_default().to_string();
                        if id == me {
                            continue;
                        }
                        for ip in found.get_addresses() {
                            let address = std::net::SocketAddr::new(ip.to_ip_addr(), found.get_port()).to_string();
                            tracing::info!("mDNS: node {id} at {address}");
                            topology.add_candidate(address, Source::Found);
                        }
                    }
                }
            })
            .map_err(|e| mdns_sd::Error::Msg(e.to_string()))?;
        Ok(Mdns { daemon })
    }
}

impl Drop for Mdns {
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}
