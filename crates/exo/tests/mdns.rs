//! Two nodes in two network namespaces joined by a veth pair find each other over mDNS, with no peers given.
//! Needs root and `ip` (CI runs as root); elsewhere it says why it did not run. Multicast stays inside the two
//! namespaces.

mod harness;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use harness::common;

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// The namespaces (and with them the veth pair), removed at the end, pass or fail.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            ip(&["netns", "del", ns]);
        }
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn two_nodes_in_two_namespaces_find_each_other_over_mdns() {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root || !ip(&["netns", "list"]) {
        eprintln!("skipped: needs root and `ip netns` (CI has both)");
        return;
    }
    let tag = std::process::id() % 100_000;
    let (a, b) = (format!("exo-mdns-a{tag}"), format!("exo-mdns-b{tag}"));
    let (va, vb) = (format!("exa{tag}"), format!("exb{tag}"));
    let _namespaces = Namespaces(vec![a.clone(), b.clone()]);
    assert!(ip(&["netns", "add", &a]) && ip(&["netns", "add", &b]), "cannot make network namespaces");
    assert!(ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]), "cannot make a veth pair");
    for (ns, dev, addr) in [(&a, &va, "10.201.7.1/24"), (&b, &vb, "10.201.7.2/24")] {
        assert!(ip(&["link", "set", dev, "netns", ns]));
        assert!(ip(&["-n", ns, "addr", "add", addr, "dev", dev]));
        assert!(ip(&["-n", ns, "link", "set", dev, "up"]));
        assert!(ip(&["-n", ns, "link", "set", "lo", "up"]));
        assert!(ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", dev]));
    }

    let model = common::model_path();
    let models = model.parent().unwrap().to_str().unwrap().to_string();
    let (lines_tx, lines) = mpsc::channel();
    let mut nodes = Vec::new();
    for (ns, id, host) in [(&a, "ma", "10.201.7.1"), (&b, "mb", "10.201.7.2")] {
        let home = std::env::temp_dir().join(format!("exo-mdns-{tag}-{id}"));
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_exo")])
            .args(["--node-id", id, "--api-host", host, "--api-port", "0", "--listen-port", "0"])
            .args(["--discovery", "mdns", "--models-dir", &models, "--threads", "1"])
            .env("EXO_HOME", &home)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("exo starts in a namespace");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let tx = lines_tx.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        nodes.push(Killed(child));
    }
    // Each node says so when it finds the other: "node ma: peer mb at 10.201.7.2:PORT joined".
    let mut found = (false, false);
    let mut seen = Vec::new();
    while !(found.0 && found.1) {
        let line =
            lines.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("no discovery in 30 s: {seen:?}"));
        found.0 |= line.contains("node ma: peer mb at 10.201.7.2:");
        found.1 |= line.contains("node mb: peer ma at 10.201.7.1:");
        seen.push(line);
    }
}
