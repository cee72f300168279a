//! A peer that does not play by the rules, speaking the proto to a node on 127.0.0.1: it cannot replace another
//! request, make the node drop the layers running requests use, take more than its share of requests or KV cache
//! memory, send tokens to an address of its choosing, or hang an origin by accepting a Begin and never answering.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use exo_cluster::proto::peer_server::{Peer, PeerServer};
use exo_cluster::proto::{self, Activation, BeginRequest};
use exo_cluster::tls::PeerTls;
use exo_cluster::transport::{plan_to_wire, sampling_to_wire};
use exo_cluster::{Candidate, ClusterError, Plan, RingRequest};
use exo_engine::sampler::SamplingParams;
use support::*;
use tonic::{Code, Request, Response, Status};

fn client(address: &str) -> exo_cluster::proto::peer_client::PeerClient<tonic::transport::Channel> {
    exo_cluster::transport::client(&PeerTls::open(), address).unwrap()
}

fn begin(request_id: u64, plan: &Plan, stage: usize, origin_id: &str, context: u32) -> BeginRequest {
    BeginRequest {
        request_id,
        plan: Some(plan_to_wire(plan)),
        stage: stage as u32,
        origin: "203.0.113.7:1".into(),
        origin_id: origin_id.into(),
        context,
        max_tokens: 1,
        sampling: Some(sampling_to_wire(&SamplingParams::default(), 1)),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_replace_requests_evict_layers_or_take_more_than_its_share() {
    // 300 MiB: the weights (98 MiB) and KV caches of 4 requests of 2,048 positions (47 MiB each), not 5.
    let cluster = start_node("solo", model_store("exo-hostile-test"), Vec::new(), None, Some(300 << 20)).await;
    let address = format!("127.0.0.1:{}", cluster.info().peer_port);
    let me = Candidate { id: "solo".into(), address: address.clone(), usable: 1 << 40, ..Default::default() };
    let whole = Plan::new(&model_name(), 30, 1 << 20, std::slice::from_ref(&me)).unwrap();
    let mut peer = client(&address);
    peer.begin(begin(1, &whole, 0, "solo", 64)).await.unwrap();

    // The same request id again: refused, and the first request is untouched.
    let again = peer.begin(begin(1, &whole, 0, "solo", 64)).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert!(again.message().contains("already running"), "{}", again.message());

    // A plan that would have this node load other layers, while request 1 runs on these: refused.
    let other = Candidate { id: "other".into(), address: "127.0.0.1:1".into(), usable: 1 << 40, ..Default::default() };
    let split = Plan::new(&model_name(), 30, 1 << 20, &[me.clone(), other]).unwrap();
    let stage = split.stage_of("solo").unwrap();
    let evict = peer.begin(begin(2, &split, stage, "solo", 64)).await.unwrap_err();
    assert_eq!(evict.code(), Code::ResourceExhausted, "{evict:?}");
    assert!(evict.message().contains("loads other layers when they end"), "{}", evict.message());
    let token = Activation { request_id: 1, plan_id: whole.id, seq: 1, tokens: vec![1], ..Default::default() };
    peer.forward(token).await.expect("request 1 still runs on its layers");

    // An origin this node does not know (tokens would go wherever the message says): refused.
    let stranger = peer.begin(begin(3, &whole, 0, "stranger", 64)).await.unwrap_err();
    assert_eq!(stranger.code(), Code::FailedPrecondition, "{stranger:?}");
    assert!(stranger.message().contains("not a peer of this node"), "{}", stranger.message());

    // A history longer than the context it asks for.
    let mut long = begin(4, &whole, 0, "solo", 64);
    long.history = vec![1; 65];
    let refused = peer.begin(long).await.unwrap_err();
    assert!(refused.message().contains("history of 65 tokens"), "{}", refused.message());

    // KV caches that could outgrow the memory left: four of 2,048 positions fit, the fifth does not.
    for id in 10..14 {
        peer.begin(begin(id, &whole, 0, "solo", 2048)).await.unwrap_or_else(|e| panic!("request {id}: {e:?}"));
    }
    let full = peer.begin(begin(14, &whole, 0, "solo", 2048)).await.unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    assert!(full.message().contains("KV caches"), "{}", full.message());

    // Requests of one origin: at most 16 at once (small caches, so the count is what binds).
    for id in 20..31 {
        peer.begin(begin(id, &whole, 0, "solo", 16)).await.unwrap_or_else(|e| panic!("request {id}: {e:?}"));
    }
    let many = peer.begin(begin(31, &whole, 0, "solo", 16)).await.unwrap_err();
    assert_eq!(many.code(), Code::ResourceExhausted, "{many:?}");
    assert!(many.message().contains("16 per origin"), "{}", many.message());
    cluster.shut_down();
}

/// A peer that answers heartbeats with plenty of memory (so plans give it layers), and takes a Begin but never
/// answers it.
struct Silent {
    port: u16,
}

#[tonic::async_trait]
impl Peer for Silent {
    async fn hello(&self, _: Request<proto::NodeDescription>) -> Result<Response<proto::NodeDescription>, Status> {
        Ok(Response::new(proto::NodeDescription {
            id: "silent".into(),
            addresses: vec!["127.0.0.1".into()],
            peer_port: self.port as u32,
            memory_total: 64 << 30,
            memory_available: 64 << 30,
            memory_usable: 64 << 30,
            protocol: exo_cluster::topology::PROTOCOL,
            ..Default::default()
        }))
    }
    async fn begin(&self, _: Request<BeginRequest>) -> Result<Response<proto::Ack>, Status> {
        std::future::pending().await
    }
    async fn forward(&self, _: Request<Activation>) -> Result<Response<proto::Ack>, Status> {
        std::future::pending().await
    }
    async fn emit(&self, _: Request<proto::TokenEvent>) -> Result<Response<proto::Ack>, Status> {
        std::future::pending().await
    }
    async fn end(&self, _: Request<proto::EndRequest>) -> Result<Response<proto::Ack>, Status> {
        Ok(Response::new(proto::Ack {}))
    }
    async fn file_held(&self, _: Request<proto::FileKey>) -> Result<Response<proto::FileHeldReply>, Status> {
        Ok(Response::new(proto::FileHeldReply::default()))
    }
    async fn read_file(&self, _: Request<proto::ReadFileRequest>) -> Result<Response<proto::FileBytes>, Status> {
        Err(Status::not_found("nothing"))
    }
    async fn probe(&self, _: Request<proto::ProbeBytes>) -> Result<Response<proto::Ack>, Status> {
        Ok(Response::new(proto::Ack {}))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_takes_a_begin_and_never_answers_does_not_hang_the_origin() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PeerServer::new(Silent { port }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let silent = SocketAddr::from(([127, 0, 0, 1], port)).to_string();
    let origin = start_node("origin", model_store("exo-hostile-origin"), vec![silent.clone()], None, None).await;
    let joined = Instant::now();
    while !origin.nodes().iter().any(|n| n.description.id == "silent") {
        assert!(joined.elapsed() < Duration::from_secs(10), "the silent peer never joined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let plan = origin.plan(&model_name(), 30, 1 << 20, 576).unwrap();
    assert!(plan.stage_of("silent").is_some(), "{plan:?}");

    let started = Instant::now();
    let ring = origin.clone();
    let result = tokio::task::spawn_blocking(move || {
        let request = RingRequest {
            plan: &plan,
            prompt: &[1, 2, 3],
            sampling: SamplingParams { seed: Some(1), ..SamplingParams::default() },
            max_tokens: 4,
            context: 64,
            eog: Vec::new(),
            top_logprobs: None,
            grammar: None,
        };
        ring.run(request, |_| std::ops::ControlFlow::Continue(()))
    })
    .await
    .unwrap();
    let took = started.elapsed();
    match result {
        Err(ClusterError::NodeFailed { node, message }) => {
            assert_eq!(node, "silent");
            assert!(message.contains("not been working on it"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(took < Duration::from_secs(15), "{took:?}");
    origin.shut_down();
}
