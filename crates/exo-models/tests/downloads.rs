//! Downloads against a stand-in hub on 127.0.0.1: whole files, resumption, hash checks, the hub's refusals,
//! offline mode, reuse of an existing Hugging Face cache, one shard's ranges only, split models, and ranges from a
//! peer instead of the hub; and what a hostile hub or peer cannot do: name paths outside the cache with a commit
//! or ETag, get the token sent to another host, stall the client with an endless error body.

#[path = "support/stand_in_hub.rs"]
mod stand_in_hub;
#[path = "support/tiny_gguf.rs"]
mod tiny_gguf;

use std::path::PathBuf;
use std::sync::Arc;

use exo_engine::gguf::GgufHeader;
use exo_engine::{Gguf, Shard};
use exo_models::ranges::RangeSet;
use exo_models::store::BoxFuture;
use exo_models::{FileKey, HfCache, HubConfig, ModelStore, ModelsError, Need, RangeSource, RemoteFile, StoreConfig};
use stand_in_hub::{sha256_hex, StandInHub, COMMIT};

/// Every path under `dir`, at any depth.
fn tree(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            out.push(e.path());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    out
}

const REPO: &str = "tester/tiny-GGUF";
const FILE: &str = "tiny-Q8_0.gguf";
const REF: &str = "hf:tester/tiny-GGUF/tiny-Q8_0.gguf";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("exo-models-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn store_with(dir: &std::path::Path, hub: Option<&StandInHub>, tweak: impl FnOnce(&mut HubConfig)) -> ModelStore {
    let mut config = HubConfig {
        endpoint: hub.map_or("http://127.0.0.1:9".into(), |h| h.endpoint()),
        token: None,
        offline: hub.is_none(),
        connections: 4,
        retries: 3,
    };
    tweak(&mut config);
    ModelStore::new(StoreConfig {
        models_dir: None,
        cache: HfCache::new(dir.join("hf")),
        downloads_dir: dir.join("exo/downloads"),
        hub: config,
    })
    .unwrap()
}

fn store(dir: &std::path::Path, hub: &StandInHub) -> ModelStore {
    store_with(dir, Some(hub), |_| {})
}

fn hub_with_model() -> (StandInHub, Arc<Vec<u8>>) {
    let hub = StandInHub::start();
    let bytes = Arc::new(tiny_gguf::model());
    hub.add(REPO, FILE, bytes.clone());
    (hub, bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn whole_download_equals_the_file_and_lands_in_the_hf_cache() {
    let dir = temp_dir("whole");
    let (hub, bytes) = hub_with_model();
    let local = store(&dir, &hub).fetch(REF, Need::Whole, &[]).await.unwrap();
    assert_eq!(std::fs::read(&local.path).unwrap(), *bytes);
    let sha = sha256_hex(&bytes);
    let expected = dir.join("hf/models--tester--tiny-GGUF/snapshots").join(COMMIT).join(FILE);
    assert_eq!(local.path, expected);
    assert_eq!(std::fs::read_link(&expected).unwrap(), PathBuf::from("../../blobs").join(&sha));
    assert_eq!(std::fs::read_to_string(dir.join("hf/models--tester--tiny-GGUF/refs/main")).unwrap(), COMMIT);
    // Fetched once (the header first, then the rest), nothing twice; no partial download left behind.
    assert_eq!(hub.bytes_sent(), bytes.len() as u64);
    assert_eq!(local.from_hub, bytes.len() as u64);
    assert!(!dir.join("exo/downloads/models--tester--tiny-GGUF/main").join(format!("{FILE}.ranges")).exists());
    // Asked again: from the cache, nothing fetched.
    let again = store(&dir, &hub).fetch(REF, Need::Whole, &[]).await.unwrap();
    assert_eq!((again.path, again.from_hub, hub.bytes_sent()), (expected, 0, bytes.len() as u64));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_connection_resumes_where_it_stopped() {
    let dir = temp_dir("resume");
    let (hub, bytes) = hub_with_model();
    let size = bytes.len() as u64;
    // Within one download: the transfer is resumed from the byte it reached.
    hub.drop_once_after(size / 2);
    let local = store(&dir, &hub).fetch(REF, Need::Whole, &[]).await.unwrap();
    assert_eq!(std::fs::read(&local.path).unwrap(), *bytes);
    let sent = hub.bytes_sent();
    eprintln!("resumed within a download: {sent} bytes sent for a {size}-byte file");
    assert!(sent < size + size / 10, "{sent} bytes sent for a {size}-byte file");

    // Across runs: a download that gives up keeps what arrived, and the next run fetches only the rest.
    let dir = temp_dir("resume-later");
    let (hub, bytes) = hub_with_model();
    hub.drop_once_after(size / 2);
    let e = store_with(&dir, Some(&hub), |c| c.retries = 0).fetch(REF, Need::Whole, &[]).await.unwrap_err();
    assert!(matches!(e, ModelsError::Network { .. }), "{e}");
    assert!(e.to_string().contains("closed after"), "{e}");
    let first = hub.bytes_sent();
    let local = store(&dir, &hub).fetch(REF, Need::Whole, &[]).await.unwrap();
    assert_eq!(std::fs::read(&local.path).unwrap(), *bytes);
    eprintln!("resumed in a second run: {first} then {} bytes for a {size}-byte file", local.from_hub);
    assert!(local.from_hub < size - size / 3, "the second run fetched {} of {size} bytes", local.from_hub);
    assert!(hub.bytes_sent() < size + size / 10, "{} bytes sent in all", hub.bytes_sent());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hash_mismatch_discards_the_file_and_retries_once() {
    let dir = temp_dir("hash");
    let hub = StandInHub::start();
    let bytes = Arc::new(tiny_gguf::model());
    hub.add_with_wrong_hash(REPO, FILE, bytes.clone());
    let e = store(&dir, &hub).fetch(REF, Need::Whole, &[]).await.unwrap_err();
    assert!(matches!(e, ModelsError::HashMismatch { .. }), "{e}");
    assert!(e.to_string().contains("discarded") && e.to_string().contains(&sha256_hex(&bytes)), "{e}");
    // Two whole attempts, then nothing kept anywhere.
    assert_eq!(hub.bytes_sent(), 2 * bytes.len() as u64);
    assert!(HfCache::new(dir.join("hf")).find(&FileKey::new(REPO, "main", FILE)).is_none());
    assert!(!dir.join("exo/downloads/models--tester--tiny-GGUF/main").join(FILE).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hubs_refusals_say_what_to_do() {
    let dir = temp_dir("refusals");
    let (hub, _) = hub_with_model();
    let s = store(&dir, &hub);
    let e = s.fetch("hf:tester/tiny-GGUF/missing.gguf", Need::Header, &[]).await.unwrap_err();
    assert!(matches!(e, ModelsError::NotFound { .. }), "{e}");
    assert!(
        e.to_string().contains("the file missing.gguf in tester/tiny-GGUF") && e.to_string().contains("not found"),
        "{e}"
    );
    let e = s.fetch("hf:nobody/nothing/m.gguf", Need::Header, &[]).await.unwrap_err();
    assert!(e.to_string().contains("the repository nobody/nothing was not found"), "{e}");

    hub.add("gated/model", FILE, Arc::new(tiny_gguf::model()));
    hub.gate("gated/model", "hf_secret");
    let e = s.fetch("hf:gated/model/tiny-Q8_0.gguf", Need::Header, &[]).await.unwrap_err();
    assert!(matches!(e, ModelsError::Unauthorized { status: 401, .. }), "{e}");
    assert!(e.to_string().contains("gated or private") && e.to_string().contains("HF_TOKEN"), "{e}");
    assert!(e.to_string().contains("no token was sent"), "{e}");
    let wrong = store_with(&dir, Some(&hub), |c| c.token = Some("hf_wrong".into()));
    let e = wrong.fetch("hf:gated/model/tiny-Q8_0.gguf", Need::Header, &[]).await.unwrap_err();
    assert!(matches!(e, ModelsError::Unauthorized { status: 403, .. }), "{e}");
    assert!(e.to_string().contains("is not allowed"), "{e}");
    let right = store_with(&dir, Some(&hub), |c| c.token = Some("hf_secret".into()));
    right.fetch("hf:gated/model/tiny-Q8_0.gguf", Need::Whole, &[]).await.unwrap();

    // Unknown names and malformed references never reach the hub.
    let requests = hub.requests();
    assert!(matches!(s.fetch("no-such-model", Need::Header, &[]).await, Err(ModelsError::Unknown(_))));
    assert!(matches!(s.fetch("hf:just-a-repo", Need::Header, &[]).await, Err(ModelsError::InvalidReference { .. })));
    assert_eq!(hub.requests(), requests);
    // An unreachable hub.
    let down = store_with(&dir, None, |c| {
        c.offline = false;
        c.endpoint = "http://127.0.0.1:9".into()
    });
    let e = down.fetch(REF, Need::Header, &[]).await.unwrap_err();
    assert!(matches!(e, ModelsError::Network { .. }) && e.to_string().contains("cannot reach the hub"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_uses_the_cache_or_says_it_cannot() {
    let dir = temp_dir("offline");
    let e = store_with(&dir, None, |_| {}).fetch(REF, Need::Header, &[]).await.unwrap_err();
    assert!(matches!(e, ModelsError::Offline { .. }), "{e}");
    assert!(e.to_string().contains("offline") && e.to_string().contains(&dir.join("hf").display().to_string()), "{e}");

    let (hub, bytes) = hub_with_model();
    store(&dir, &hub).fetch(REF, Need::Whole, &[]).await.unwrap();
    let sent = hub.bytes_sent();
    let local = store_with(&dir, None, |_| {}).fetch(REF, Need::Whole, &[]).await.unwrap();
    assert_eq!(std::fs::read(local.path).unwrap(), *bytes);
    assert_eq!(hub.bytes_sent(), sent);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_already_in_the_hf_cache_is_used_with_nothing_fetched() {
    let dir = temp_dir("existing-cache");
    let (hub, bytes) = hub_with_model();
    // The layout huggingface_hub writes.
    let repo_dir = dir.join("hf/models--tester--tiny-GGUF");
    let sha = sha256_hex(&bytes);
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    std::fs::create_dir_all(repo_dir.join("snapshots").join(COMMIT)).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("blobs").join(&sha), &*bytes).unwrap();
    std::os::unix::fs::symlink(format!("../../blobs/{sha}"), repo_dir.join("snapshots").join(COMMIT).join(FILE))
        .unwrap();
    std::fs::write(repo_dir.join("refs/main"), COMMIT).unwrap();

    for need in [Need::Header, Need::Layers(Shard::new(0, 1, 4).unwrap()), Need::Whole] {
        let local = store(&dir, &hub).fetch(REF, need, &[]).await.unwrap();
        assert_eq!(local.path, repo_dir.join("snapshots").join(COMMIT).join(FILE));
    }
    assert_eq!((hub.bytes_sent(), hub.requests()), (0, 0));
}

/// Byte ranges of `bytes` that a shard of `layers` needs, by the tensor table.
fn needed_bytes(bytes: &[u8], shard: Shard) -> u64 {
    let h = GgufHeader::parse(bytes, bytes.len() as u64, std::path::Path::new("m")).unwrap();
    let tied = !h.tensors.contains_key("output.weight");
    h.data_start + h.tensors.values().filter(|t| shard.needs_tensor(&t.name, tied)).map(|t| t.size).sum::<u64>()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_fetches_only_its_ranges_and_a_complete_file_is_promoted() {
    let dir = temp_dir("shard");
    let (hub, bytes) = hub_with_model();
    let size = bytes.len() as u64;
    let s = store(&dir, &hub);
    let first = Shard::new(0, 1, 4).unwrap();
    let local = s.fetch(REF, Need::Layers(first), &[]).await.unwrap();
    let partial = dir.join("exo/downloads/models--tester--tiny-GGUF/main").join(FILE);
    assert_eq!(local.path, partial);
    // The sparse file is the file's length and opens as the model; the shard's tensors are the hub's bytes.
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), size);
    let g = Gguf::open(&partial).unwrap();
    for t in g.tensors.values().filter(|t| first.needs_tensor(&t.name, true)) {
        assert_eq!(g.read_tensor(t).unwrap(), bytes[t.offset as usize..(t.offset + t.size) as usize], "{}", t.name);
    }
    let sent = hub.bytes_sent();
    eprintln!("layers 0-1 of 4: {sent} of {size} bytes fetched");
    // The header is fetched in a first guess of 1 MiB: that and the shard's own tensors, nothing else.
    assert!(sent <= needed_bytes(&bytes, first).max(1 << 20) + (1 << 20), "{sent} of {size}");
    assert!(sent < size * 3 / 4, "{sent} of {size}");
    assert!(dir.join("exo/downloads/models--tester--tiny-GGUF/main").join(format!("{FILE}.ranges")).exists());
    assert!(HfCache::new(dir.join("hf")).find(&FileKey::new(REPO, "main", FILE)).is_none());

    // A later plan with more layers fetches only what is missing; with every byte there, the file is checked and
    // moved into the cache.
    let local = s.fetch(REF, Need::Layers(Shard::new(0, 3, 4).unwrap()), &[]).await.unwrap();
    assert_eq!(hub.bytes_sent(), size, "every byte exactly once");
    assert_eq!(local.path, dir.join("hf/models--tester--tiny-GGUF/snapshots").join(COMMIT).join(FILE));
    assert_eq!(std::fs::read(&local.path).unwrap(), *bytes);
    assert!(!partial.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_split_model_downloads_as_one() {
    let dir = temp_dir("split");
    let hub = StandInHub::start();
    let tensors = tiny_gguf::model_tensors(4, 256 * 1024);
    let (a, b) = tensors.split_at(3);
    let parts = tiny_gguf::split_model(&[a.to_vec(), b.to_vec()]);
    let names = ["Q8_0/tiny-Q8_0-00001-of-00002.gguf", "Q8_0/tiny-Q8_0-00002-of-00002.gguf"];
    for (name, bytes) in names.iter().zip(&parts) {
        hub.add(REPO, name, Arc::new(bytes.clone()));
    }
    let s = store(&dir, &hub);
    let reference = format!("hf:{REPO}/{}", names[0]);
    // Layers 2-3 live in the second part only (with the norm); the first part gives its header.
    let local = s.fetch(&reference, Need::Layers(Shard::new(2, 3, 4).unwrap()), &[]).await.unwrap();
    let g = Gguf::open(&local.path).unwrap();
    assert_eq!(g.tensors.len(), tensors.len());
    let t = &g.tensors["blk.3.attn_q.weight"];
    assert_eq!(t.part, 1);
    let second = &parts[1];
    assert_eq!(g.read_tensor(t).unwrap(), second[t.offset as usize..(t.offset + t.size) as usize]);
    let whole = s.fetch(&reference, Need::Whole, &[]).await.unwrap();
    let g = Gguf::open(&whole.path).unwrap();
    for (name, _) in &tensors {
        let t = &g.tensors[name];
        let part = &parts[t.part];
        assert_eq!(g.read_tensor(t).unwrap(), part[t.offset as usize..(t.offset + t.size) as usize]);
    }
    assert_eq!(hub.bytes_sent(), (parts[0].len() + parts[1].len()) as u64);
    // Naming a later part is refused with what to do.
    let e = s.fetch(&format!("hf:{REPO}/{}", names[1]), Need::Header, &[]).await.unwrap_err();
    assert!(e.to_string().contains("first part"), "{e}");
}

/// A peer that is another store on this machine.
struct LocalPeer(ModelStore);

impl RangeSource for LocalPeer {
    fn name(&self) -> String {
        "local peer".into()
    }
    fn held<'a>(&'a self, key: &'a FileKey) -> BoxFuture<'a, Option<(RemoteFile, RangeSet)>> {
        Box::pin(async move { self.0.held_local(key) })
    }
    fn read<'a>(&'a self, key: &'a FileKey, offset: u64, len: u64) -> BoxFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move { self.0.read_local(key, offset, len) })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ranges_come_from_a_peer_before_the_hub() {
    let (hub, bytes) = hub_with_model();
    let size = bytes.len() as u64;
    // A peer holding only the first half of the layers: those come from it, the rest from the hub.
    let peer_dir = temp_dir("peer");
    let peer = store(&peer_dir, &hub);
    let first = Shard::new(0, 1, 4).unwrap();
    peer.fetch(REF, Need::Layers(first), &[]).await.unwrap();
    let peer_sent = hub.bytes_sent();
    let peers: Vec<Arc<dyn RangeSource>> = vec![Arc::new(LocalPeer(peer))];
    let dir = temp_dir("from-peer");
    let local = store(&dir, &hub).fetch(REF, Need::Whole, &peers).await.unwrap();
    assert_eq!(std::fs::read(&local.path).unwrap(), *bytes);
    eprintln!("from the peer {} bytes, from the hub {}", local.from_peers, local.from_hub);
    assert_eq!(local.from_peers + local.from_hub, size);
    assert!(local.from_peers >= needed_bytes(&bytes, first), "{}", local.from_peers);
    assert_eq!(hub.bytes_sent() - peer_sent, local.from_hub);

    // Offline with nothing cached: everything from a peer that has the whole file.
    let whole_dir = temp_dir("peer-whole");
    store(&whole_dir, &hub).fetch(REF, Need::Whole, &[]).await.unwrap();
    let sent = hub.bytes_sent();
    let peers: Vec<Arc<dyn RangeSource>> = vec![Arc::new(LocalPeer(store_with(&whole_dir, None, |_| {})))];
    let dir = temp_dir("offline-from-peer");
    let offline = store_with(&dir, None, |_| {});
    let local = offline.fetch(REF, Need::Layers(Shard::new(2, 3, 4).unwrap()), &peers).await.unwrap();
    assert_eq!(hub.bytes_sent(), sent);
    assert!(local.from_peers > 0 && local.from_hub == 0);
    // A peer that lacks the rest: offline says so.
    let lacking: Vec<Arc<dyn RangeSource>> =
        vec![Arc::new(LocalPeer(store_with(&temp_dir("empty-peer"), None, |_| {})))];
    let e =
        store_with(&temp_dir("offline-nothing"), None, |_| {}).fetch(REF, Need::Header, &lacking).await.unwrap_err();
    assert!(e.to_string().contains("nor on any peer"), "{e}");
}

/// Whether this process runs as root (it may mount a small tmpfs).
fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_reported_with_what_the_download_needs() {
    if !is_root() {
        eprintln!("skipped: mounting a 2 MiB tmpfs needs root");
        return;
    }
    let dir = temp_dir("disk-full");
    let small = dir.join("small");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "mount -t tmpfs failed");
    let (hub, bytes) = hub_with_model();
    let s = ModelStore::new(StoreConfig {
        models_dir: None,
        cache: HfCache::new(dir.join("hf")),
        downloads_dir: small.clone(),
        hub: HubConfig { endpoint: hub.endpoint(), token: None, offline: false, connections: 4, retries: 3 },
    })
    .unwrap();
    let result = s.fetch(REF, Need::Whole, &[]).await;
    let _ = std::process::Command::new("umount").arg(&small).status();
    let e = result.unwrap_err();
    assert!(matches!(e, ModelsError::DiskFull { .. }), "{e}");
    let message = e.to_string();
    assert!(message.contains("out of disk space") && message.contains("MiB more"), "{message}");
    let needed = match e {
        ModelsError::DiskFull { needed_mib, .. } => needed_mib,
        _ => unreachable!(),
    };
    // The file is 4.3 MB and at most 2 MiB of it fits: the rest is what it needs.
    assert!((2..=4).contains(&needed), "{message}");
    assert!(bytes.len() > 4 << 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hubs_commit_or_etag_that_is_not_a_hash_names_no_path() {
    for (commit, etag) in [
        // Each would land inside `dir` if it became a path (snapshots/../../escaped, blobs/../escaped).
        (Some("../../escaped"), None),
        (Some("5d1f5e8a0c3b4e2f9a7d6c5b4a3928170f1e2d3/"), None),
        (None, Some("\"../escaped\"")),
        (None, Some("abc-123")),
    ] {
        let dir = temp_dir("bad-commit");
        let (hub, _) = hub_with_model();
        if let Some(c) = commit {
            hub.say_commit(c);
        }
        if let Some(e) = etag {
            hub.say_etag(e);
        }
        let e = store(&dir, &hub).fetch(REF, Need::Whole, &[]).await.unwrap_err();
        assert!(matches!(e, ModelsError::BadCacheName { .. }), "{commit:?} {etag:?}: {e}");
        // Refused before any byte was fetched or any folder made.
        assert_eq!(hub.bytes_sent(), 0);
        assert!(tree(&dir).iter().all(|p| !p.to_string_lossy().contains("escaped")), "{:?}", tree(&dir));
        assert!(!dir.join("hf").exists() && !dir.join("exo").exists(), "{:?}", tree(&dir));
    }
}

/// A peer whose every answer is chosen by the test.
struct LyingPeer {
    info: RemoteFile,
    bytes: Arc<Vec<u8>>,
}

impl RangeSource for LyingPeer {
    fn name(&self) -> String {
        "lying peer".into()
    }
    fn held<'a>(&'a self, _: &'a FileKey) -> BoxFuture<'a, Option<(RemoteFile, RangeSet)>> {
        Box::pin(async move { Some((self.info.clone(), RangeSet::from_ranges([(0, self.info.size)]))) })
    }
    fn read<'a>(&'a self, _: &'a FileKey, offset: u64, len: u64) -> BoxFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move { self.bytes.get(offset as usize..(offset + len) as usize).map(<[u8]>::to_vec) })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peers_commit_or_etag_that_is_not_a_hash_is_not_used() {
    let bytes = Arc::new(tiny_gguf::model());
    let size = bytes.len() as u64;
    let sha = sha256_hex(&bytes);
    for (commit, etag) in
        [("../../escaped", sha.clone()), (COMMIT, "../escaped".to_string()), (COMMIT, format!("{sha}/../../escaped"))]
    {
        let dir = temp_dir("lying-peer");
        let info = RemoteFile { size, etag: Some(etag.clone()), commit: Some(commit.into()) };
        let peers: Vec<Arc<dyn RangeSource>> = vec![Arc::new(LyingPeer { info, bytes: bytes.clone() })];
        let e = store_with(&dir, None, |_| {}).fetch(REF, Need::Whole, &peers).await.unwrap_err();
        assert!(matches!(e, ModelsError::Offline { asked_peers: true, .. }), "{commit} {etag}: {e}");
        assert!(tree(&dir).iter().all(|p| !p.to_string_lossy().contains("escaped")), "{:?}", tree(&dir));
    }
    // The same peer with a true commit and ETag is used.
    let dir = temp_dir("honest-peer");
    let info = RemoteFile { size, etag: Some(format!("\"{}\"", sha.to_uppercase())), commit: Some(COMMIT.into()) };
    let peers: Vec<Arc<dyn RangeSource>> = vec![Arc::new(LyingPeer { info, bytes: bytes.clone() })];
    let local = store_with(&dir, None, |_| {}).fetch(REF, Need::Whole, &peers).await.unwrap();
    assert_eq!(local.path, dir.join("hf/models--tester--tiny-GGUF/snapshots").join(COMMIT).join(FILE));
    assert_eq!(std::fs::read_link(&local.path).unwrap(), PathBuf::from("../../blobs").join(&sha));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_is_not_sent_to_another_host() {
    // The endpoint sends every request on to a second stand-in on another port, as a renamed repository or a CDN
    // on another host would: the file comes from there, the token stays with the endpoint.
    let dir = temp_dir("token-redirect");
    let endpoint = StandInHub::start();
    let (other, bytes) = hub_with_model();
    endpoint.forward_to(&other);
    let s = store_with(&dir, Some(&endpoint), |c| c.token = Some("hf_secret".into()));
    let local = s.fetch(REF, Need::Whole, &[]).await.unwrap();
    assert_eq!(std::fs::read(&local.path).unwrap(), *bytes);
    assert!(endpoint.authorized_requests() >= 2, "the endpoint gets the token on HEAD and GET");
    assert!(other.requests() >= 2);
    assert_eq!(other.authorized_requests(), 0, "the other host saw Authorization: {:?}", other.paths());
}

#[tokio::test(flavor = "multi_thread")]
async fn file_names_are_requested_percent_encoded() {
    let dir = temp_dir("encoded");
    let hub = StandInHub::start();
    let bytes = Arc::new(tiny_gguf::model());
    let name = "dir with space/m #1?x=2%.gguf";
    hub.add(REPO, name, bytes.clone());
    let local = store(&dir, &hub).fetch(&format!("hf:{REPO}/{name}"), Need::Whole, &[]).await.unwrap();
    assert_eq!(std::fs::read(&local.path).unwrap(), *bytes);
    assert!(local.path.ends_with(name), "{}", local.path.display());
    let resolve = "/tester/tiny-GGUF/resolve/main/dir%20with%20space/m%20%231%3Fx%3D2%25.gguf";
    assert!(hub.paths().iter().any(|p| p == resolve), "{:?}", hub.paths());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_body_is_read_only_up_to_a_limit() {
    let dir = temp_dir("endless-error");
    let (hub, _) = hub_with_model();
    hub.fail_with_endless_body();
    let s = store_with(&dir, Some(&hub), |c| c.retries = 0);
    let e = tokio::time::timeout(std::time::Duration::from_secs(30), s.fetch(REF, Need::Whole, &[]))
        .await
        .expect("an endless error body is not read to its end")
        .unwrap_err();
    assert!(matches!(e, ModelsError::Http { status: 500, .. }), "{e}");
    assert!(e.to_string().len() < 1000, "{e}");
}
