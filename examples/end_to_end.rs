//! The whole cancellation flow in one process, on testkit's FakeKube and
//! FakeGitHub over real HTTP: GitHub's webhook sender delivers a push to a
//! sensor replica, which records the fact in the task's state and hands it
//! to its coordinator; the saga takes the task's Lease, selects the stale
//! CodeRuns, journals, sends SIGTERM (a graceful delete), verifies the pods
//! gone, moves the PR's labels, records the cancellation and finishes (the
//! saga writes the record, the journal's last steps and its retirement in
//! one state write, after the label move; a step written on its own shows
//! as its own line).
//!
//! It prints the timeline of that one supersession, every time read back
//! from what the fakes recorded — FakeGitHub's delivery log, FakeKube's
//! request log and its write taps (every Lease, state, CodeRun and Pod
//! version, with the fake's clock) — never from the system's own logs or
//! counters; only the label move is observed by polling FakeGitHub's store
//! (it keeps no label history).
//!
//! ```text
//! cargo run --example end_to_end
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use cancel_coordinator::CodeRun;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Resource;
use state_store::{CancellationOutcome, RemediationState, Step, StepStatus};
use support::{Cluster, MOVED, sha};
use testkit::kube::tap::{Write, WriteKind};

/// The task (and PR number) of the example.
const TASK: u64 = 42;
/// How long a stale agent takes to stop after SIGTERM.
const STOP_MS: u64 = 150;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cluster = Cluster::start(1).await;
    let kube = &cluster.kube;
    let pods = kube.tap("", "pods");
    let states = kube.tap("", "configmaps");
    let leases = kube.tap("coordination.k8s.io", "leases");
    let runs = kube.tap(&CodeRun::group(&()), &CodeRun::plural(&()));

    let (old, new) = (sha(0xa1), sha(0xb2));
    cluster.pull(TASK, &old).await;
    let stale = cluster.agents_on(TASK, &old, STOP_MS).await;
    let fresh = cluster.agents_on(TASK, &new, STOP_MS).await;
    println!(
        "PR #{TASK}: agents {stale:?} on …{}, {fresh:?} on …{}",
        short(&old),
        short(&new)
    );
    println!("each stale agent stops {STOP_MS} ms after SIGTERM\n");

    let log_from = kube.requests().last_seq();
    let github_from = cluster.github.calls().total();
    let pushed_at = kube.now();
    let deliveries = cluster.push(TASK, &new);

    // Wait until the saga is done, watching the labels move on GitHub.
    let mut labelled_at = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if labelled_at.is_none() && cluster.labels(TASK) == [MOVED] {
            labelled_at = Some(kube.now());
        }
        let state = state_of(&cluster);
        let done = state.as_ref().is_some_and(|s| {
            s.active_operation.is_none()
                && s.cancellation_history
                    .iter()
                    .any(|r| r.outcome == CancellationOutcome::Cancelled)
        });
        let released = leases
            .writes()
            .last()
            .is_some_and(|w| holder(w).is_none() && w.at > pushed_at);
        if done && released && labelled_at.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the supersession did not finish in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let answers = cluster.answered(&deliveries).await;

    let mut timeline: Vec<(jiff::Timestamp, String)> = Vec::new();
    timeline.push((pushed_at, format!("push of …{} to PR #{TASK}", short(&new))));
    for id in &deliveries {
        let delivery = cluster.github.webhooks().delivery(*id).unwrap();
        let event = match &delivery.action {
            Some(action) => format!("{}.{action}", delivery.event),
            None => delivery.event.clone(),
        };
        if let Some(at) = delivery.delivered_at {
            timeline.push((at, format!("webhook received: {event}")));
        }
        if let testkit::github::DeliveryOutcome::Answered {
            status_code,
            duration,
        } = delivery.outcome
            && let Some(at) = delivery.delivered_at
        {
            let answered = at.checked_add(duration).unwrap_or(at);
            timeline.push((answered, format!("webhook answered {status_code}: {event}")));
        }
    }

    let state_writes: Vec<(Write, RemediationState)> = states
        .writes()
        .into_iter()
        .filter(|w| w.kind != WriteKind::Deleted && w.at >= pushed_at)
        .filter_map(|w| {
            let map: ConfigMap = serde_json::from_value(w.object.clone()).ok()?;
            let state = decode(&map)?;
            (state.task_id == TASK.to_string()).then_some((w, state))
        })
        .collect();
    let first = |what: &str, pick: &dyn Fn(&RemediationState) -> bool| {
        state_writes
            .iter()
            .find(|(_, s)| pick(s))
            .map(|(w, s)| (w.at, what.to_owned(), s.clone()))
    };
    if let Some((at, what, _)) = first(
        "fact recorded: pending supersession in the task state",
        &|s| s.latest_head.as_ref().is_some_and(|h| h.sha == new),
    ) {
        timeline.push((at, what));
    }
    if let Some(w) = leases
        .writes()
        .into_iter()
        .find(|w| w.at >= pushed_at && holder(w).is_some())
    {
        timeline.push((
            w.at,
            format!("lock: Lease {} taken by {}", w.name, holder(&w).unwrap()),
        ));
    }
    let log = kube.requests().since(log_from);
    let saga = |verb: &str, resource: &str| {
        log.iter()
            .filter(move |r| r.verb == verb && r.resource == resource)
            .filter(|r| {
                r.user_agent
                    .as_deref()
                    .is_none_or(|ua| !ua.contains("testkit"))
            })
            .collect::<Vec<_>>()
    };
    if let Some(list) = saga("list", "coderuns").first() {
        timeline.push((list.at, "runs listed (the task's CodeRuns)".to_owned()));
    }
    if let Some((at, _, state)) = first("journal", &|s| s.active_operation.is_some()) {
        let targets = state
            .active_operation
            .map(|j| j.targets.join(", "))
            .unwrap_or_default();
        timeline.push((at, format!("runs selected and journaled: {targets}")));
    }
    if let Some(w) = runs.writes().into_iter().find(|w| {
        w.at >= pushed_at
            && w.object["metadata"]["annotations"]
                .get(cancel_coordinator::workloads::ANNOTATION_SUPERSEDED_BY)
                .is_some()
    }) {
        timeline.push((w.at, format!("intent annotated on {}", w.name)));
    }
    let deletes = saga("delete", "coderuns");
    if let (Some(first), Some(last)) = (deletes.first(), deletes.last()) {
        timeline.push((
            first.at,
            format!("SIGTERM: {} graceful deletes sent", deletes.len()),
        ));
        if last.seq != first.seq {
            timeline.push((last.at, "SIGTERM: last delete sent".to_owned()));
        }
    }
    let pod_writes = pods.writes();
    if let Some(w) = pod_writes.iter().find(|w| {
        w.kind == WriteKind::Modified && w.object["metadata"]["deletionTimestamp"].is_string()
    }) {
        timeline.push((w.at, format!("pod {} terminating", w.name)));
    }
    let gone: Vec<&Write> = pod_writes
        .iter()
        .filter(|w| w.kind == WriteKind::Deleted)
        .collect();
    if let Some(last) = gone.last() {
        timeline.push((
            last.at,
            format!(
                "verified: {} stale pods gone (last {})",
                gone.len(),
                last.name
            ),
        ));
    }
    let step_done = |step: Step| {
        move |s: &RemediationState| {
            s.active_operation.as_ref().is_some_and(|j| {
                j.steps
                    .iter()
                    .any(|st| st.step == step && st.status == StepStatus::Succeeded)
            })
        }
    };
    if let Some((at, _, _)) = first("recorded", &step_done(Step::Cancelled)) {
        timeline.push((
            at,
            "recorded: journal step Cancelled (runs verified gone)".to_owned(),
        ));
    }
    if let Some(at) = labelled_at {
        timeline.push((
            at,
            format!(
                "labelled: PR #{TASK} now {:?} on GitHub",
                cluster.labels(TASK)
            ),
        ));
    }
    if let Some((at, _, _)) = first("labelled", &step_done(Step::Labeled)) {
        timeline.push((at, "recorded: journal step Labeled".to_owned()));
    }
    if let Some((at, _, _)) = first("done", &|s| {
        s.active_operation.is_none()
            && s.cancellation_history
                .iter()
                .any(|r| r.outcome == CancellationOutcome::Cancelled)
    }) {
        timeline.push((
            at,
            "recorded and done: cancellation in the task's history, journal retired".to_owned(),
        ));
    }
    if let Some(w) = leases
        .writes()
        .into_iter()
        .rev()
        .find(|w| holder(w).is_none())
    {
        timeline.push((w.at, format!("lock released: Lease {}", w.name)));
    }

    timeline.sort_by_key(|(at, _)| *at);
    println!("timeline of one supersession (from the fakes' records):");
    for (at, what) in &timeline {
        let ms = at.duration_since(pushed_at).as_secs_f64() * 1000.0;
        println!("  +{ms:8.1} ms  {what}");
    }
    let kube_calls = kube.requests().since(log_from).len();
    let github_calls = cluster.github.calls().total() - github_from;
    println!(
        "\ndeliveries answered {answers:?}; {kube_calls} Kubernetes requests, {github_calls} GitHub calls (all processes)"
    );
    let stale_left = stale.iter().filter(|r| cluster.exists(r)).count();
    let fresh_left = fresh.iter().filter(|r| cluster.exists(r)).count();
    println!(
        "stale runs left: {stale_left}, fresh runs kept: {fresh_left}/{}",
        fresh.len()
    );
    let violations = cluster.history().await.violations();
    println!("history checker: {} violations", violations.len());
    assert!(violations.is_empty(), "{violations:#?}");
    assert_eq!(
        kube.peek::<Pod>(support::NS, &format!("{}-pod", stale[0])),
        None
    );
}

fn state_of(cluster: &Cluster) -> Option<RemediationState> {
    let map: ConfigMap = cluster
        .kube
        .peek(support::NS, &format!("task-{TASK}-state"))?;
    decode(&map)
}

fn decode(map: &ConfigMap) -> Option<RemediationState> {
    map.data
        .as_ref()
        .and_then(|d| d.get(state_store::naming::KEY_STATE))
        .and_then(|text| serde_json::from_str(text).ok())
}

/// The holder a Lease write left, if any.
fn holder(w: &Write) -> Option<String> {
    w.object["spec"]["holderIdentity"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
}

/// The last 8 hex digits of a head.
fn short(sha: &str) -> &str {
    &sha[sha.len() - 8..]
}
