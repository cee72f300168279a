//! The peer transport as another node sees it, over a real gRPC connection to a node on 127.0.0.1: activations
//! are accepted only for a request the node was told to begin, under the plan it began it with.

mod support;

use exo_cluster::proto::{Activation, BeginRequest, EndRequest};
use exo_cluster::tls::PeerTls;
use exo_cluster::transport::{plan_to_wire, sampling_to_wire};
use exo_cluster::{Candidate, Plan};
use exo_engine::sampler::SamplingParams;
use support::*;
use tonic::Code;

fn client(address: &str) -> exo_cluster::proto::peer_client::PeerClient<tonic::transport::Channel> {
    exo_cluster::transport::client(&PeerTls::open(), address).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_for_a_stale_plan_or_an_unknown_request_are_rejected_over_the_wire() {
    let cluster = start("solo", model_store("exo-transport-test")).await;
    let address = format!("127.0.0.1:{}", cluster.info().peer_port);
    let me = [Candidate { id: "solo".into(), address: address.clone(), usable: 1 << 40, ..Default::default() }];
    let plan = Plan::new(&model_name(), 30, 1 << 20, &me).unwrap();
    let mut peer = client(&address);
    let begin = |plan: &Plan| BeginRequest {
        request_id: 7,
        plan: Some(plan_to_wire(plan)),
        stage: 0,
        origin: address.clone(),
        origin_id: "solo".into(),
        context: 64,
        max_tokens: 1,
        sampling: Some(sampling_to_wire(&SamplingParams::default(), 1)),
        ..Default::default()
    };

    // A plan whose id does not match its stages is refused before anything is loaded.
    let mut forged = begin(&plan);
    forged.plan.as_mut().unwrap().id ^= 1;
    let refused = peer.begin(forged).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    peer.begin(begin(&plan)).await.unwrap();

    let activation =
        |request_id, plan_id| Activation { request_id, plan_id, seq: 1, tokens: vec![1], ..Default::default() };
    let stale = peer.forward(activation(7, plan.id ^ 1)).await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale:?}");
    assert!(stale.message().contains("stale plan"), "{}", stale.message());
    let unknown = peer.forward(activation(8, plan.id)).await.unwrap_err();
    assert_eq!(unknown.code(), Code::FailedPrecondition, "{unknown:?}");
    assert!(unknown.message().contains("holds no request 8"), "{}", unknown.message());
    // The request's own plan is accepted; once the request has ended, it is unknown again.
    peer.forward(activation(7, plan.id)).await.unwrap();
    peer.end(EndRequest { request_id: 7 }).await.unwrap();
    let ended = peer.forward(activation(7, plan.id)).await.unwrap_err();
    assert!(ended.message().contains("holds no request 7"), "{}", ended.message());
    cluster.shut_down();
}

/// A node serves the bytes of hub files it holds to its peers, and nothing else: not a byte it lacks, not a read
/// over the size limit, not a path outside its cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_read_only_the_model_bytes_a_node_holds() {
    use exo_cluster::proto::{FileKey, ReadFileRequest};
    let dir = std::env::temp_dir().join(format!("exo-transport-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cache = exo_models::HfCache::new(dir.join("hf"));
    // A GGUF file as far as its magic goes (a node serves nothing else).
    let mut content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    content[..4].copy_from_slice(b"GGUF");
    std::fs::write(dir.join("m.gguf"), &content).unwrap();
    let key = exo_models::FileKey::new("owner/repo", "main", "m.gguf");
    let etag = "5".repeat(64);
    cache.insert(&key, "0123456789abcdef0123456789abcdef01234567", &etag, &dir.join("m.gguf")).unwrap();
    std::fs::write(dir.join("secret"), b"not a model").unwrap();
    let mut hub = exo_models::HubConfig::from_vars(|_| None);
    hub.offline = true;
    let store = exo_models::StoreConfig { models_dir: None, cache, downloads_dir: dir.join("downloads"), hub };
    let cluster = start("files", store).await;
    let mut peer = client(&format!("127.0.0.1:{}", cluster.info().peer_port));
    let wire = |repo: &str, file: &str| FileKey { repo: repo.into(), revision: "main".into(), file: file.into() };

    let held = peer.file_held(wire("owner/repo", "m.gguf")).await.unwrap().into_inner();
    assert!(held.present);
    assert_eq!((held.size, held.etag.as_str(), held.ranges), (100_000, etag.as_str(), vec![0, 100_000]));
    assert!(!peer.file_held(wire("owner/repo", "other.gguf")).await.unwrap().into_inner().present);

    let read = |file: &str, offset, length| ReadFileRequest { key: Some(wire("owner/repo", file)), offset, length };
    let bytes = peer.read_file(read("m.gguf", 1000, 5000)).await.unwrap().into_inner().data;
    assert_eq!(bytes, content[1000..6000]);
    let beyond = peer.read_file(read("m.gguf", 99_000, 5000)).await.unwrap_err();
    assert_eq!(beyond.code(), Code::NotFound, "{beyond:?}");
    let too_much = peer.read_file(read("m.gguf", 0, 5 << 20)).await.unwrap_err();
    assert_eq!(too_much.code(), Code::InvalidArgument, "{too_much:?}");
    for (repo, file) in [("owner/repo", "../../../../secret"), ("..", "secret"), ("owner/repo", "/etc/passwd")] {
        let request = ReadFileRequest { key: Some(wire(repo, file)), offset: 0, length: 4 };
        let refused = peer.read_file(request).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{repo} {file}: {refused:?}");
        let refused = peer.file_held(wire(repo, file)).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{repo} {file}: {refused:?}");
    }
}

/// A node speaking another protocol version is not joined: its hello is answered with this node's description
/// (version and protocol, so that it can say which differ), and it is not among this node's peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_protocol_is_not_joined() {
    let cluster = start("solo", model_store("exo-protocol-test")).await;
    let address = format!("127.0.0.1:{}", cluster.info().peer_port);
    let mut peer = client(&address);
    let hello = |id: &str, protocol: u32| exo_cluster::proto::NodeDescription {
        id: id.into(),
        peer_port: 9,
        version: "0.0.1".into(),
        protocol,
        ..Default::default()
    };
    let reply = peer.hello(hello("old", exo_cluster::topology::PROTOCOL + 1)).await.unwrap().into_inner();
    assert_eq!((reply.id.as_str(), reply.protocol), ("solo", exo_cluster::topology::PROTOCOL));
    assert_eq!(reply.version, env!("CARGO_PKG_VERSION"));
    // One from before versions were said (protocol 0) neither; one of this protocol joins.
    peer.hello(hello("older", 0)).await.unwrap();
    peer.hello(hello("same", exo_cluster::topology::PROTOCOL)).await.unwrap();
    let ids: Vec<String> = cluster.nodes().into_iter().map(|n| n.description.id).collect();
    assert!(ids.contains(&"same".to_string()), "{ids:?}");
    assert!(!ids.iter().any(|id| id == "old" || id == "older"), "{ids:?}");
    cluster.shut_down();
}
