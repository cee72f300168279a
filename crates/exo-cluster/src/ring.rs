//! Running one request around the ring, from its origin: Begin on every stage of the plan, the prompt to stage 0,
//! then tokens as the last stage samples them, until the caller has enough or a stage fails. A stage that fails,
//! and a node of the plan that stops answering heartbeats, end the request with an error; End frees every
//! stage's state however the request ends.

use std::ops::ControlFlow;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use exo_engine::constraint::Grammar;
use exo_engine::sampler::SamplingParams;
use tokio::sync::oneshot;

use crate::error::{ClusterError, Result};
use crate::host::Job;
use crate::plan::Plan;
use crate::proto;
use crate::transport::{client, plan_to_wire, sampling_to_wire, Dest};
use crate::Cluster;

/// How often the origin looks at the plan's nodes while it waits for a token.
const WATCH: Duration = Duration::from_millis(200);
/// How long End may take on a peer.
const END_TIMEOUT: Duration = Duration::from_secs(2);
/// A stage whose heartbeats say it is not working on any Begin this long after it was sent one has dropped it.
const BEGIN_UNCLAIMED: Duration = Duration::from_secs(5);
/// A request fails when, this long, no token came and no node of its plan reported any progress (a stage that
/// answers heartbeats but does no work). Generous: a big model's prefill chunk or layer download takes a while.
pub const STALL: Duration = Duration::from_secs(300);

/// What the ring needs to run a request.
/// Waits for a stage's answer to Begin while watching its heartbeats: the wait ends early (with why) when the
/// stage stops answering them, says for [`BEGIN_UNCLAIMED`] that it is working on no Begin (it accepted the call
/// and dropped it), or reports no progress at all for [`STALL`]. Loading layers may take long (a download); a
/// stage that does so keeps saying it is working.
async fn watch_begin<T>(
    call: impl std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    topology: &crate::topology::Topology,
    node: &str,
) -> std::result::Result<std::result::Result<T, tonic::Status>, String> {
    tokio::pin!(call);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut unclaimed: Option<std::time::Instant> = None;
    let mut progress: (Option<u64>, std::time::Instant) = (None, std::time::Instant::now());
    loop {
        tokio::select! {
            answer = &mut call => return Ok(answer),
            _ = tick.tick() => {
                let Some(peer) = topology.get(node).filter(|_| topology.is_alive(node)) else {
                    return Err("it stopped answering heartbeats".into());
                };
                let d = &peer.description;
                if d.begins == 0 {
                    if unclaimed.get_or_insert_with(std::time::Instant::now).elapsed() > BEGIN_UNCLAIMED {
                        return Err(format!(
                            "it took the request but has not been working on it for {} s",
                            BEGIN_UNCLAIMED.as_secs()
                        ));
                    }
                } else {
                    unclaimed = None;
                }
                if progress.0 != Some(d.progress) {
                    progress = (Some(d.progress), std::time::Instant::now());
                } else if progress.1.elapsed() > STALL {
                    return Err(format!("no progress loading its layers for {} s", STALL.as_secs()));
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct RingRequest<'a> {
    pub plan: &'a Plan,
    pub prompt: &'a [u32],
    /// `seed` must be set: every stage must draw the same way.
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    /// Positions the KV caches may hold.
    pub context: usize,
    pub eog: Vec<u32>,
    pub top_logprobs: Option<usize>,
    /// What the output must match, if anything: the last stage masks what would leave it.
    pub grammar: Option<&'a Grammar>,
}

impl Cluster {
    /// Runs `r` around the ring, handing each sampled token to `on_token` until it breaks or the last stage
    /// says generation is over; while no token comes, `on_token(None)` is called now and then so the caller can
    /// stop (its client went away). Blocking: call it from a thread of its own, not the async runtime.
    pub fn run(
        &self,
        r: RingRequest<'_>,
        mut on_token: impl FnMut(Option<&proto::TokenEvent>) -> ControlFlow<()>,
    ) -> Result<()> {
        let inner = &self.inner;
        let id: u64 = rand::random();
        let tokens = inner.router.register(id);
        let result = self.drive(id, &r, &tokens, &mut on_token);
        inner.router.remove(id);
        let result = match result {
            Err(e @ ClusterError::NodeFailed { .. }) => Err(self.diagnose(r.plan, e)),
            other => other,
        };
        self.end_everywhere(id, r.plan);
        result
    }

    /// After a stage failed: says hello to every peer of the plan, drops those that do not answer from the
    /// topology at once (so the next request is planned over the survivors), and names the first of them.
    fn diagnose(&self, plan: &Plan, error: ClusterError) -> ClusterError {
        let inner = &self.inner;
        let me = self.describe();
        let dead: Vec<String> = inner.runtime.block_on(async {
            let mut calls = tokio::task::JoinSet::new();
            for stage in plan.stages.iter().filter(|s| s.node_id != inner.info.id) {
                let (id, address, me) = (stage.node_id.clone(), stage.address.clone(), me.clone());
                let tls = inner.tls.clone();
                calls.spawn(async move { (id, crate::transport::hello(&tls, &address, me).await.is_ok()) });
            }
            let mut dead = Vec::new();
            while let Some(Ok((id, alive))) = calls.join_next().await {
                if !alive {
                    dead.push(id);
                }
            }
            dead.sort();
            dead
        });
        for id in &dead {
            if inner.topology.remove(id) {
                eprintln!("node {}: peer {id} left (it failed a request and does not answer)", inner.info.id);
            }
        }
        match (dead.first(), error) {
            (Some(id), ClusterError::NodeFailed { node, message }) if *id != node => ClusterError::NodeFailed {
                node: id.clone(),
                message: format!("it does not answer ({message}, reported by node {node})"),
            },
            (_, error) => error,
        }
    }

    fn dest(&self, node_id: &str, address: &str) -> Dest {
        if node_id == self.inner.info.id {
            Dest::Local
        } else {
            Dest::Remote(address.to_string())
        }
    }

    fn drive(
        &self,
        id: u64,
        r: &RingRequest<'_>,
        tokens: &std::sync::mpsc::Receiver<proto::TokenEvent>,
        on_token: &mut impl FnMut(Option<&proto::TokenEvent>) -> ControlFlow<()>,
    ) -> Result<()> {
        let inner = &self.inner;
        let plan = r.plan;
        let s = &r.sampling;
        let seed = s.seed.ok_or_else(|| ClusterError::Engine("a ring request needs a seed".into()))?;
        let wire_plan = plan_to_wire(plan);
        let grammar = r.grammar.map(Grammar::to_wire);
        let begin = |stage: usize| proto::BeginRequest {
            request_id: id,
            plan: Some(wire_plan.clone()),
            stage: stage as u32,
            origin: self.peer_address(),
            origin_id: inner.info.id.clone(),
            context: r.context as u32,
            sampling: Some(sampling_to_wire(s, seed)),
            history: if stage + 1 == plan.stages.len() { r.prompt.to_vec() } else { Vec::new() },
            max_tokens: r.max_tokens as u32,
            eog: r.eog.clone(),
            top_logprobs: r.top_logprobs.map(|k| k as u32),
            grammar: if stage + 1 == plan.stages.len() { grammar.clone() } else { None },
        };
        // Every stage gets ready (loading its layers if the plan is new to it) at the same time.
        let begun: Vec<Result<()>> = inner.runtime.block_on(async {
            let mut calls = tokio::task::JoinSet::new();
            for (i, stage) in plan.stages.iter().enumerate() {
                let b = begin(i);
                let node = stage.node_id.clone();
                let dest = self.dest(&stage.node_id, &stage.address);
                let host = inner.host.clone();
                let tls = inner.tls.clone();
                let topology = inner.topology.clone();
                calls.spawn(async move {
                    let failed = |message: String| ClusterError::NodeFailed { node: node.clone(), message };
                    match dest {
                        Dest::Local => {
                            let (done, result) = oneshot::channel();
                            host.send(Job::Begin(Box::new(b), done))
                                .map_err(|_| failed("the host thread stopped".into()))?;
                            result.await.map_err(|_| failed("the host thread dropped the request".into()))?
                        }
                        Dest::Remote(address) => {
                            let mut c = client(&tls, &address)?;
                            match watch_begin(c.begin(b), &topology, &node).await {
                                Ok(Ok(_)) => Ok(()),
                                Ok(Err(status)) => Err(failed(status.message().to_string())),
                                Err(why) => Err(failed(why)),
                            }
                        }
                    }
                });
            }
            let mut results = Vec::new();
            while let Some(joined) = calls.join_next().await {
                results.push(joined.unwrap_or_else(|e| Err(ClusterError::Engine(e.to_string()))));
            }
            results
        });
        for b in begun {
            b?;
        }

        let first = &plan.stages[0];
        let prompt = proto::Activation {
            request_id: id,
            plan_id: plan.id,
            position: 0,
            tokens: r.prompt.to_vec(),
            hidden: Default::default(),
            seq: r.prompt.len() as u32,
            sample: true,
        };
        inner.outbox.forward(&self.dest(&first.node_id, &first.address), prompt, &Dest::Local);
        let mut progress = (self.plan_progress(plan), std::time::Instant::now());
        loop {
            match tokens.recv_timeout(WATCH) {
                Ok(event) if !event.error.is_empty() => {
                    return Err(ClusterError::NodeFailed { node: event.node, message: event.error })
                }
                Ok(event) => {
                    if event.plan_id != plan.id {
                        continue;
                    }
                    progress.1 = std::time::Instant::now();
                    if on_token(Some(&event)).is_break() || event.finished {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if inner.stopping.load(std::sync::atomic::Ordering::Acquire) {
                        return Err(ClusterError::ShuttingDown);
                    }
                    for stage in &plan.stages {
                        if stage.node_id != inner.info.id && !inner.topology.is_alive(&stage.node_id) {
                            return Err(ClusterError::NodeFailed {
                                node: stage.node_id.clone(),
                                message: "it stopped answering heartbeats".into(),
                            });
                        }
                    }
                    let now = self.plan_progress(plan);
                    if now != progress.0 {
                        progress = (now, std::time::Instant::now());
                    } else if progress.1.elapsed() > STALL {
                        let stage = plan.stages.iter().find(|s| s.node_id != inner.info.id).unwrap_or(first);
                        return Err(ClusterError::NodeFailed {
                            node: stage.node_id.clone(),
                            message: format!("no token and no work on any node of the plan for {} s", STALL.as_secs()),
                        });
                    }
                    // The caller may want to stop while the prompt is still on its way (client gone).
                    if on_token(None).is_break() {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(ClusterError::Engine("the token router closed".into()))
                }
            }
        }
    }

    /// The progress counters of the plan's nodes as last heard, folded into one value that changes when any does.
    fn plan_progress(&self, plan: &Plan) -> u64 {
        let inner = &self.inner;
        plan.stages.iter().fold(0u64, |acc, s| {
            let p = if s.node_id == inner.info.id {
                inner.shared.progress.load(std::sync::atomic::Ordering::Relaxed)
            } else {
                inner.topology.get(&s.node_id).map_or(0, |p| p.description.progress)
            };
            acc.rotate_left(17) ^ p
        })
    }

    /// Frees the request's state on every stage; this node's before returning, peers' with a time limit.
    fn end_everywhere(&self, id: u64, plan: &Plan) {
        let inner = &self.inner;
        inner.runtime.block_on(async {
            let mut calls = tokio::task::JoinSet::new();
            for stage in &plan.stages {
                let dest = self.dest(&stage.node_id, &stage.address);
                let host = inner.host.clone();
                if dest == Dest::Local {
                    inner.shared.ending(id);
                }
                let tls = inner.tls.clone();
                calls.spawn(async move {
                    match dest {
                        Dest::Local => {
                            let (done, result) = oneshot::channel();
                            if host.send(Job::End(id, done)).is_ok() {
                                let _ = result.await;
                            }
                        }
                        Dest::Remote(address) => {
                            if let Ok(mut c) = client(&tls, &address) {
                                let _ = tokio::time::timeout(END_TIMEOUT, c.end(proto::EndRequest { request_id: id }))
                                    .await;
                            }
                        }
                    }
                });
            }
            while calls.join_next().await.is_some() {}
        });
    }
}
