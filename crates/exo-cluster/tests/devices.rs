//! A node whose stage runs on several devices of its machine: each device holds the layers the plan gives it, the
//! hidden states pass between them in memory, and the answer is the one the whole model gives on one device. No
//! GPU is needed: the two "GPUs" here are named devices that compute on the CPU, so what is checked is the plan,
//! the parts and the passing of hidden states, not a GPU's kernels (scripts/gpu-check.sh does that on one).

mod support;

use std::net::SocketAddr;
use std::ops::ControlFlow;

use exo_cluster::memory::model_needs;
use exo_cluster::{Cluster, ClusterConfig, ClusterError, Discovery, ModelStore, RingRequest};
use exo_engine::sampler::{argmax, SamplingParams};
use exo_engine::{Device, DeviceInfo, FoundDevice, Gguf, KvType, ShardChain};
use support::{model_name, model_path, model_store};

const MIB: u64 = 1 << 20;
/// What a node keeps free on each GPU beyond what it offers (node.rs's GPU_RESERVE).
const GPU_RESERVE: u64 = 512 * MIB;

/// A device named `name` offering `usable` bytes for layers, computing on the CPU.
fn device(name: &str, usable: u64) -> FoundDevice {
    FoundDevice {
        info: DeviceInfo {
            name: name.into(),
            description: "test GPU on the CPU".into(),
            memory_total: usable + GPU_RESERVE,
            memory_free: usable + GPU_RESERVE,
            compute_capability: Some("9.0".into()),
            matvec_bytes_per_s: 0,
        },
        device: Device::Cpu,
    }
}

async fn start_on(id: &str, devices: Vec<FoundDevice>) -> Cluster {
    Cluster::start(ClusterConfig {
        id: id.into(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        api_port: 0,
        threads: 1,
        memory_limit: None,
        kv_type: KvType::F16,
        store: ModelStore::new(model_store(&format!("exo-devices-{id}"))).unwrap(),
        peers: vec![],
        discovery: Discovery::None,
        cluster_key: None,
        speed: Default::default(),
        devices,
    })
    .await
    .unwrap()
}

/// Greedy tokens of `prompt` through `plan` on `node`.
async fn generate(
    node: &Cluster,
    plan: exo_cluster::Plan,
    prompt: Vec<u32>,
    n: usize,
) -> Result<Vec<u32>, ClusterError> {
    let node = node.clone();
    tokio::task::spawn_blocking(move || {
        let mut tokens = Vec::new();
        let request = RingRequest {
            plan: &plan,
            prompt: &prompt,
            sampling: SamplingParams { temperature: 0.0, seed: Some(1), ..SamplingParams::default() },
            max_tokens: n,
            context: CONTEXT,
            eog: Vec::new(),
            top_logprobs: None,
            grammar: None,
        };
        node.run(request, |event| {
            if let Some(e) = event {
                tokens.push(e.token);
            }
            ControlFlow::Continue(())
        })?;
        Ok(tokens)
    })
    .await
    .unwrap()
}

const CONTEXT: usize = 8192;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_over_two_gpus_and_the_cpu_answers_as_the_whole_model_does() {
    let gguf = Gguf::open(model_path()).unwrap();
    let needs = model_needs(&gguf, CONTEXT, KvType::F16).unwrap();
    let n_layers = exo_engine::ModelConfig::from_gguf(&gguf).unwrap().n_layers;
    // Each "GPU" holds a third of the model; the CPU after them (--cpu-layers auto) the rest.
    let third = needs / 3 + MIB;
    let node = start_on("box", vec![device("cuda:0", third), device("cuda:1", third), FoundDevice::cpu()]).await;
    let plan = node.plan(&model_name(), n_layers, needs, 576).unwrap();
    let parts: Vec<(&str, usize, usize)> =
        plan.stages[0].parts.iter().map(|p| (p.device.as_str(), p.start, p.end)).collect();
    assert_eq!(plan.stages.len(), 1, "{plan:?}");
    assert_eq!(parts, [("cuda:0", 0, 9), ("cuda:1", 10, 19), ("cpu", 20, 29)], "{plan:?}");

    let prompt = vec![1u32, 504, 3575, 282, 4649, 314];
    let got = generate(&node, plan.clone(), prompt.clone(), 12).await.unwrap();
    let mut whole = ShardChain::load_whole(&gguf, 256, &Device::Cpu).unwrap();
    let mut want = Vec::new();
    let mut logits = whole.forward(&prompt).unwrap();
    for _ in 0..12 {
        want.push(argmax(&logits));
        logits = whole.forward(&[*want.last().unwrap()]).unwrap();
    }
    assert_eq!(got, want);

    // The node says which device holds which layers.
    let d = node.describe();
    let held: Vec<(&str, u32, u32)> = d.shards[0].parts.iter().map(|p| (p.device.as_str(), p.start, p.end)).collect();
    assert_eq!(held, [("cuda:0", 0, 9), ("cuda:1", 10, 19), ("cpu", 20, 29)]);
    let offered: Vec<(&str, u64)> = d.devices.iter().map(|v| (v.name.as_str(), v.usable)).collect();
    assert_eq!(&offered[..2], [("cuda:0", third), ("cuda:1", third)]);
    node.shut_down();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_naming_a_device_the_node_lacks_is_refused_with_what_it_has() {
    let gguf = Gguf::open(model_path()).unwrap();
    let needs = model_needs(&gguf, CONTEXT, KvType::F16).unwrap();
    let node = start_on("one-gpu", vec![device("cuda:0", 4 * needs)]).await;
    // A peer's idea of this node: a GPU it does not have.
    let me = exo_cluster::Candidate {
        id: "one-gpu".into(),
        address: node.peer_address(),
        usable: 4 * needs,
        rtt: Some(std::time::Duration::ZERO),
        devices: vec![exo_cluster::Slot { device: "cuda:7".into(), usable: 4 * needs, speed: 0 }],
        ..Default::default()
    };
    let plan = exo_cluster::Plan::new(&model_name(), 30, needs, &[me]).unwrap();
    let err = generate(&node, plan, vec![1, 2, 3], 2).await.unwrap_err().to_string();
    assert!(err.contains("puts layers 0-29 on cuda:7, which this node does not compute on (cuda:0)"), "{err}");
    node.shut_down();
}
