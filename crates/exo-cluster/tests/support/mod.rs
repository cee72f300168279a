//! What the cluster's gRPC tests share: the test model, and a node alone on 127.0.0.1 in this process.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use exo_cluster::{Cluster, ClusterConfig, ClusterKey, Discovery, ModelStore};
use exo_engine::calibration::Speed;
use exo_engine::KvType;

/// SmolLM2-135M-Instruct Q4_1, where `scripts/fetch-models.sh` puts it (or `EXO_TEST_MODEL`).
pub fn model_path() -> PathBuf {
    let path = match std::env::var_os("EXO_TEST_MODEL") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("EXO_MODELS_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/exo/models"))
            .join("SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    assert!(path.exists(), "test model {} is missing: run scripts/fetch-models.sh", path.display());
    path
}

/// A node alone on 127.0.0.1 (ports the OS picks) with models from `store`.
pub async fn start(id: &str, store: exo_models::StoreConfig) -> Cluster {
    start_node(id, store, Vec::new(), None, None).await
}

/// A node on 127.0.0.1 with static `peers`, and if given a cluster key and a memory limit.
pub async fn start_node(
    id: &str,
    store: exo_models::StoreConfig,
    peers: Vec<String>,
    cluster_key: Option<ClusterKey>,
    memory_limit: Option<u64>,
) -> Cluster {
    start_measured(id, store, peers, cluster_key, memory_limit, Speed::default()).await
}

/// [`start_node`], advertising `speed` as its measured speed.
pub async fn start_measured(
    id: &str,
    store: exo_models::StoreConfig,
    peers: Vec<String>,
    cluster_key: Option<ClusterKey>,
    memory_limit: Option<u64>,
    speed: Speed,
) -> Cluster {
    Cluster::start(ClusterConfig {
        id: id.into(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        api_port: 0,
        threads: 1,
        memory_limit,
        kv_type: KvType::F16,
        store: ModelStore::new(store).unwrap(),
        peers,
        discovery: Discovery::None,
        cluster_key,
        speed,
        devices: vec![],
    })
    .await
    .unwrap()
}

/// A store serving the models folder the test model is in.
pub fn model_store(home: &str) -> exo_models::StoreConfig {
    let model = model_path();
    exo_models::StoreConfig::from_env(Some(model.parent().unwrap().to_path_buf()), &std::env::temp_dir().join(home))
}

/// The test model's name in its models folder.
pub fn model_name() -> String {
    model_path().file_stem().unwrap().to_str().unwrap().to_string()
}
