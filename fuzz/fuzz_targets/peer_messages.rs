//! Bytes from a peer, decoded as the message the peer service receives (the first byte says which), and what a
//! node does with each that needs no network and no loaded layers: a Begin's plan, stage and sampler (run on the
//! peer's history), the origin's handling of a token event (routing, text, log-probabilities), a Hello's effect on
//! the topology, on planning and on `/v1/topology`, file keys, a FileHeld reply's ranges and cache names, and reads
//! of the store.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use exo_cluster::proto::{
    Activation, BeginRequest, EndRequest, FileHeldReply, FileKey, NodeDescription, ReadFileRequest, TokenEvent,
};
use exo_cluster::topology::Source;
use exo_cluster::transport::{plan_from_wire, plan_to_wire, sampling_from_wire, MAX_FILE_READ};
use exo_cluster::{Candidate, NodeView, Plan, Topology};
use exo_engine::constraint::{Grammar, Vocabulary};
use exo_engine::generation::{Generation, GenerationParams};
use exo_engine::sampler::{log_softmax, Sampler, SamplingParams};
use exo_engine::Shard;
use exo_fuzz::{stays_inside, store, tokenizer};
use exo_models::hf_cache::{check_commit, check_etag};
use exo_models::ranges::RangeSet;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// The node the messages arrive at.
const ME: &str = "fuzz-node";

fuzz_target!(init: { tokenizer(); store(); }, |data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    match which % 8 {
        0 => BeginRequest::decode(bytes).map(begin),
        1 => Activation::decode(bytes).map(activation),
        2 => TokenEvent::decode(bytes).map(token_event),
        3 => NodeDescription::decode(bytes).map(hello),
        4 => FileKey::decode(bytes).map(file_held),
        5 => FileHeldReply::decode(bytes).map(held_reply),
        6 => ReadFileRequest::decode(bytes).map(read_file),
        _ => EndRequest::decode(bytes).map(drop),
    }
    .unwrap_or_default();
});

/// What `host.rs` does with a Begin before it loads layers, and the last stage's sampling.
fn begin(b: BeginRequest) {
    if let Some(wire) = b.plan {
        if let Ok(plan) = plan_from_wire(wire) {
            assert_eq!(plan_from_wire(plan_to_wire(&plan)).ok().as_ref(), Some(&plan), "a plan survives the wire");
            if let Some(stage) = plan.stages.get(b.stage as usize) {
                let _ = stage.node_id == ME;
                let shard = Shard::new(stage.start, stage.end, plan.n_layers);
                assert!(shard.is_ok(), "a checked plan's stage {stage:?} of {} layers is a shard", plan.n_layers);
                let _ = stage.n_layers();
            }
            let _ = plan.stage_of(ME);
        }
    }
    // A peer's grammar is read and compiled over the test model's vocabulary (llguidance bounds that work), and
    // masks one step of logits: an error or a mask, never a panic.
    if let Some(Ok(grammar)) = b.grammar.as_deref().map(Grammar::from_wire) {
        assert!(Grammar::from_wire(&grammar.to_wire()).is_ok(), "a grammar survives the wire");
        static VOCABULARY: OnceLock<Vocabulary> = OnceLock::new();
        let vocabulary = VOCABULARY.get_or_init(|| Vocabulary::new(tokenizer()).expect("the test model's vocabulary"));
        if let Ok(mut constraint) = vocabulary.constrain(&grammar) {
            let mut logits = vec![0.0f32; tokenizer().vocab_size() + 7];
            if constraint.mask(&mut logits).is_ok() {
                assert!(logits.iter().any(|l| l.is_finite()), "a mask that allows nothing is an error, not a mask");
                assert!(logits[tokenizer().vocab_size()..].iter().all(|l| *l == f32::NEG_INFINITY));
            }
        }
    }
    let Ok(mut sampler) = Sampler::new(sampling_from_wire(b.sampling.unwrap_or_default())) else { return };
    // Logits of a small vocabulary; the end-of-generation ids the peer sent also plant arbitrary floats (NaN,
    // infinities) in them.
    let mut logits: Vec<f32> = (0..512u32).map(|i| (i.wrapping_mul(2_654_435_761) % 1000) as f32 / 100.0).collect();
    let n = logits.len();
    for &e in &b.eog {
        logits[e as usize % n] = f32::from_bits(e);
    }
    let logprobs = b.top_logprobs.map(|k| (log_softmax(&logits), k as usize));
    let token = sampler.sample(&mut logits, &b.history, &[]);
    assert!((token as usize) < n, "sampled token {token} outside a vocabulary of {n}");
    if let Some((lp, k)) = logprobs {
        assert_eq!(lp.len(), n);
        let _ = (lp.get(token as usize), k.min(n));
    }
    let _ = b.eog.contains(&token) || b.max_tokens as usize <= 1;
}

/// A Forward's payload; the checks that need no layers.
fn activation(a: Activation) {
    let hidden_size = 576usize;
    let seq = a.seq as usize;
    let _ = a.hidden.len() != seq * hidden_size * 4 || seq == 0;
    let _ = (a.request_id, a.plan_id, a.position, a.tokens.len(), a.sample);
}

/// The origin's side of an Emit: the router hands it to the waiting request, which turns the token into text
/// (with stop strings) and its alternatives into text for log-probabilities.
fn token_event(e: TokenEvent) {
    let router = exo_cluster::transport::Router::default();
    let waiting = router.register(e.request_id);
    assert!(router.deliver(e.clone()), "a token for a waiting request is delivered");
    let e = waiting.try_recv().expect("the delivered token is waiting");
    router.remove(e.request_id);
    assert!(!router.deliver(e.clone()), "a token for a request that is over is dropped");

    let t = tokenizer();
    let params = GenerationParams {
        max_tokens: 4,
        sampling: SamplingParams::greedy(),
        stop: vec!["\n\n".into(), "<|im_end|>".into()],
        ignore_eos: false,
        preserved: vec![],
    };
    let mut generation = Generation::new(t, &[1, 2, 3], &params).expect("greedy generation starts");
    let mut text = generation.accept(e.token).text;
    for top in &e.top {
        let _ = String::from_utf8_lossy(t.token_bytes(top.token, true));
        text.push_str(&generation.accept(top.token).text);
    }
    let _ = (e.logprob.unwrap_or(f32::NEG_INFINITY), e.finished, e.error.is_empty(), &e.node);
    assert!(!text.contains("\n\n"), "a stop string was emitted: {text:?}");
}

/// A Hello: the caller's peers become candidates, the caller a peer; the next plan counts its memory; the topology
/// document shows it.
fn hello(d: NodeDescription) {
    let topology = Topology::default();
    for p in d.peers.iter().take(256) {
        topology.add_candidate(p.clone(), Source::Found);
    }
    if d.id != ME {
        topology.seen(d.clone(), "10.0.0.2:52416".into(), None);
    }
    let _ = topology.addresses();
    let mut nodes = vec![NodeView {
        description: NodeDescription { id: ME.into(), memory_usable: 8 << 30, ..Default::default() },
        address: "127.0.0.1:52416".into(),
        rtt: None,
        link_bytes_per_s: None,
        is_self: true,
    }];
    nodes.extend(topology.peers().into_iter().map(|p| NodeView {
        description: p.description,
        address: p.address,
        rtt: Some(Duration::from_millis(1)),
        link_bytes_per_s: p.link_bytes_per_s,
        is_self: false,
    }));
    let candidates: Vec<Candidate> = nodes.iter().map(NodeView::candidate).collect();
    let mut plans = Vec::new();
    for n_layers in [1, 30, 1 + d.threads as usize % 200] {
        if let Ok((plan, placement)) = Plan::placed("m", n_layers, d.memory_available, &candidates) {
            let covered: usize = plan.stages.iter().map(|s| s.n_layers()).sum();
            assert_eq!(covered, n_layers, "a plan covers every layer once: {plan:?}");
            assert_eq!(plan_from_wire(plan_to_wire(&plan)).ok().as_ref(), Some(&plan), "a plan survives the wire");
            assert_eq!(placement.stages.len(), plan.stages.len(), "every stage is explained");
            for s in &plan.stages {
                let held: usize = s.parts.iter().map(|p| p.end + 1 - p.start).sum();
                assert_eq!(held, s.n_layers(), "a stage's devices hold its layers: {plan:?}");
            }
            plans.push((plan, placement));
        }
    }
    let status = exo_api::inference::Status { busy: false, queued: 0, requests: 0, tokens_generated: 0, last: None };
    let _ = exo_api::topology::topology(&nodes, &plans, &status, 0).to_string();
}

/// A peer's file key as `transport.rs` takes it: refused unless it validates, and then inside the cache.
fn key_from_wire(k: FileKey) -> Option<exo_models::FileKey> {
    let key = exo_models::FileKey { repo: k.repo, revision: k.revision, file: k.file };
    key.validate().ok()?;
    for part in [&key.repo, &key.revision, &key.file] {
        assert!(stays_inside(std::path::Path::new(part)), "a valid key's {part:?} leaves its folder");
    }
    let _ = key.to_string();
    Some(key)
}

/// A FileHeld request: what this node tells the peer it holds.
fn file_held(k: FileKey) {
    let Some(key) = key_from_wire(k) else { return };
    if let Some((info, held)) = store().store.held_local(&key) {
        assert!(held.iter().all(|(_, end)| end <= info.size), "held ranges beyond the file's {} bytes", info.size);
    }
}

/// A FileHeld reply, as `PeerFiles::held` reads it, and what a download does with its ranges. (Inputs are shorter
/// than the cap on the ranges a reply may list.)
fn held_reply(r: FileHeldReply) {
    if !r.present || !r.ranges.len().is_multiple_of(2) {
        return;
    }
    let claimed: Vec<(u64, u64)> = r.ranges.chunks(2).map(|p| (p[0], p[1].min(r.size))).collect();
    let held = RangeSet::from_ranges(claimed.iter().copied());
    let ranges: Vec<(u64, u64)> = held.iter().collect();
    for w in ranges.windows(2) {
        assert!(w[0].1 < w[1].0, "ranges sorted, disjoint and apart: {ranges:?}");
    }
    assert!(ranges.iter().all(|&(a, b)| a < b && b <= r.size), "ranges within the file: {ranges:?}");
    let missing: u64 = held.missing(0, r.size).iter().map(|(a, b)| b - a).sum();
    assert_eq!(held.len() + missing, r.size, "held and missing make the file");
    for &(a, b) in claimed.iter().take(16) {
        if a < b {
            assert!(held.contains(a, b), "a claimed range {a}..{b} is held");
            let _ = held.within(a, b);
        }
    }
    let info = exo_models::RemoteFile {
        size: r.size,
        etag: Some(r.etag.clone()).filter(|e| !e.is_empty()),
        commit: Some(r.commit.clone()).filter(|c| !c.is_empty()),
    };
    if let Some(sha) = info.sha256() {
        assert!(stays_inside(std::path::Path::new(sha)));
    }
    // The commit and ETag become folder and file names of the cache once the file is downloaded.
    let cache = exo_models::HfCache::new(&store().root);
    if let Ok(commit) = check_commit(&r.commit) {
        assert!(stays_inside(std::path::Path::new(&commit)), "the checked commit {commit:?} leaves its folder");
    }
    if let Ok(etag) = check_etag(&r.etag) {
        assert!(stays_inside(std::path::Path::new(&etag)), "the checked ETag {etag:?} leaves its folder");
        let blob = cache.blob("exo-fuzz/cached", &r.etag);
        assert!(blob.is_ok_and(|b| b.starts_with(&store().root)), "the blob of a checked ETag {:?}", r.etag);
    }
}

/// A ReadFile request: the length limit, the key, and the bytes this node reads for it.
fn read_file(r: ReadFileRequest) {
    if r.length > MAX_FILE_READ {
        return;
    }
    let Some(key) = key_from_wire(r.key.unwrap_or_default()) else { return };
    if let Some(data) = store().store.read_local(&key, r.offset, r.length) {
        assert_eq!(data.len() as u64, r.length, "a read of {}+{} of {key}", r.offset, r.length);
    }
}
