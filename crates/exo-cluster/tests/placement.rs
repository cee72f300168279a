//! Two nodes of different speeds on 127.0.0.1: the plan gives the faster more layers where its memory allows, and
//! both nodes compute the same plan from what they tell each other.

mod support;

use std::time::{Duration, Instant};

use exo_cluster::Cluster;
use exo_engine::calibration::Speed;
use support::{model_store, start_measured};

const GIB: u64 = 1 << 30;

fn speed(gb_per_s: u64) -> Speed {
    Speed { matvec_bytes_per_s: gb_per_s * 1_000_000_000, memory_bytes_per_s: 2 * gb_per_s * 1_000_000_000 }
}

async fn until_both_see_each_other(a: &Cluster, b: &Cluster) {
    let started = Instant::now();
    while a.nodes().len() < 2 || b.nodes().len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(10), "the nodes never met");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn layers(plan: &exo_cluster::Plan, id: &str) -> usize {
    plan.stage_of(id).map_or(0, |i| plan.stages[i].n_layers())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_faster_node_gets_the_layers_its_memory_holds_and_both_nodes_agree() {
    // fast: 1 GiB at 8 GB/s; slow: 2 GiB at 2 GB/s. 30 layers needing 1.5 GiB: fast holds at most 20.
    let fast = start_measured("fast", model_store("exo-place-fast"), vec![], None, Some(GIB), speed(8)).await;
    let slow =
        start_measured("slow", model_store("exo-place-slow"), vec![fast.peer_address()], None, Some(2 * GIB), speed(2))
            .await;
    until_both_see_each_other(&fast, &slow).await;
    let needs = 3 * GIB / 2;
    let plan = fast.plan("m", 30, needs, 576).unwrap();
    // By memory alone fast would get 10 and slow 20.
    assert_eq!((layers(&plan, "fast"), layers(&plan, "slow")), (20, 10), "{plan:?}");
    assert_eq!(slow.plan("m", 30, needs, 576).unwrap(), plan);
    let (_, placement) = fast.placed_plans().into_iter().next().unwrap();
    assert!(placement.speed_aware());
    let memory_split: Vec<usize> = placement.stages.iter().map(|s| s.memory_layers).collect();
    assert_eq!(memory_split, [20, 10], "{placement:?}"); // slow first in ring order (more memory)
                                                         // With room for everything, fast keeps all but slow's one layer.
    let roomy = fast.plan("small", 30, GIB / 4, 576).unwrap();
    assert_eq!((layers(&roomy, "fast"), layers(&roomy, "slow")), (29, 1), "{roomy:?}");
    fast.shut_down();
    slow.shut_down();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_measures_its_links_throughput_and_refuses_an_oversized_probe() {
    let a = start_measured("link-a", model_store("exo-link-a"), vec![], None, None, speed(8)).await;
    let b = start_measured("link-b", model_store("exo-link-b"), vec![a.peer_address()], None, None, speed(8)).await;
    until_both_see_each_other(&a, &b).await;
    let started = Instant::now();
    let rate = loop {
        let peer = a.nodes().into_iter().find(|n| !n.is_self).unwrap();
        if let Some(rate) = peer.link_bytes_per_s {
            break rate;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the link was never measured");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // 1 MiB over loopback: at least 10 MB/s even on a loaded machine.
    assert!(rate > 10_000_000, "{rate}");
    let mut c = exo_cluster::transport::client(&exo_cluster::tls::PeerTls::open(), &b.peer_address()).unwrap();
    let e = c.probe(exo_cluster::proto::ProbeBytes { data: vec![0; 3 << 20] }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("at most 2097152"), "{e:?}");
    a.shut_down();
    b.shut_down();
}
