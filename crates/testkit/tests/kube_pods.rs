#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! FakeKube's simulated scheduler and kubelet on paused tokio time: pods
//! are bound, start, exit, and leave after a graceful delete when their
//! containers stop (early when they handle SIGTERM, at the end of the grace
//! period when they ignore it), and every timestamp comes from one clock
//! that follows the paused time.
//!
//! State at an instant is read with `FakeKube::peek` (no request), and
//! exact times from the fake's own timestamps.

#![cfg(feature = "kube")]

use std::collections::BTreeMap;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use testkit::kube::{FakeKube, PodBehaviour, PodTermination, TerminalPhase};
use tokio::time::{Instant, sleep, sleep_until};

const NS: &str = "ns";

fn pod(name: &str, labels: &[(&str, &str)]) -> Pod {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "containers": [{"name": "agent", "image": "agent:1"}],
            "terminationGracePeriodSeconds": 30,
        },
    }))
    .unwrap()
}

fn phase(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

fn condition(pod: &Pod, kind: &str) -> Option<(String, Option<String>)> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// The first container's termination: (exit code, finishedAt).
fn terminated(pod: &Pod) -> (i32, jiff::Timestamp) {
    let state = pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .state
        .as_ref()
        .unwrap()
        .terminated
        .as_ref()
        .expect("terminated")
        .clone();
    (state.exit_code, stamp(state.finished_at.as_ref().unwrap()))
}

fn stamp(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> jiff::Timestamp {
    t.0.to_string().parse().unwrap()
}

fn deletion(pod: &Pod) -> (jiff::Timestamp, i64) {
    (
        stamp(
            pod.metadata
                .deletion_timestamp
                .as_ref()
                .expect("terminating"),
        ),
        pod.metadata.deletion_grace_period_seconds.unwrap(),
    )
}

/// Creates `pod` and waits (paused) until it is running.
async fn running(kube: &FakeKube, pods: &Api<Pod>, pod: &Pod) -> Pod {
    pods.create(&PostParams::default(), pod).await.unwrap();
    wait_running(kube, &pod.name_any()).await
}

/// Waits (paused) until pod `name` is running.
async fn wait_running(kube: &FakeKube, name: &str) -> Pod {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Some(p) = kube.peek::<Pod>(NS, name)
            && phase(&p) == "Running"
        {
            return p;
        }
        assert!(Instant::now() < deadline, "{name} never ran");
        sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts (paused) that pod `name` is still there 100 ms before `at` and
/// gone 100 ms after.
async fn assert_gone_at(kube: &FakeKube, name: &str, at: Instant) {
    let margin = Duration::from_millis(100);
    sleep_until(at - margin).await;
    assert!(
        kube.peek::<Pod>(NS, name).is_some(),
        "{name} left too early"
    );
    sleep_until(at + margin).await;
    assert!(
        kube.peek::<Pod>(NS, name).is_none(),
        "{name} is still there"
    );
}

/// The namespace's pod events from now on.
async fn watch_from_now(
    kube: &FakeKube,
    pods: &Api<Pod>,
) -> BoxStream<'static, kube::Result<WatchEvent<Pod>>> {
    pods.watch(
        &WatchParams::default(),
        &kube.resource_version().to_string(),
    )
    .await
    .unwrap()
    .boxed()
}

/// Every event of the pod `name` until it is DELETED; returns the last
/// state before the deletion.
async fn last_state_before_deleted(
    events: &mut BoxStream<'static, kube::Result<WatchEvent<Pod>>>,
    name: &str,
) -> Pod {
    let mut last = None;
    while let Some(event) = events.try_next().await.unwrap() {
        match event {
            WatchEvent::Modified(p) if p.name_any() == name => last = Some(p),
            WatchEvent::Deleted(p) if p.name_any() == name => {
                return last.expect("a state before DELETED");
            }
            _ => {}
        }
    }
    panic!("the watch ended before {name} was deleted");
}

#[tokio::test(start_paused = true)]
async fn a_new_pod_is_bound_at_once_and_running_after_its_start_delay() {
    let kube = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(kube.client(), NS);
    let created = pods
        .create(&PostParams::default(), &pod("p1", &[]))
        .await
        .unwrap();
    assert_eq!(phase(&created), "Pending");
    assert_eq!(
        created.spec.as_ref().unwrap().node_name,
        None,
        "the create answers before the binding"
    );

    let bound = kube.peek::<Pod>(NS, "p1").unwrap();
    assert_eq!(
        bound.spec.as_ref().unwrap().node_name.as_deref(),
        Some(FakeKube::NODE_NAME)
    );
    assert_eq!(
        condition(&bound, "PodScheduled"),
        Some(("True".to_owned(), None))
    );
    assert_eq!(phase(&bound), "Pending");

    sleep(Duration::from_millis(999)).await;
    assert_eq!(phase(&kube.peek::<Pod>(NS, "p1").unwrap()), "Pending");
    sleep(Duration::from_millis(2)).await;
    let started = kube.peek::<Pod>(NS, "p1").unwrap();
    assert_eq!(phase(&started), "Running");
    let status = started.status.as_ref().unwrap();
    assert!(status.pod_ip.is_some());
    let container = &status.container_statuses.as_ref().unwrap()[0];
    assert!(container.ready && container.state.as_ref().unwrap().running.is_some());
    let start = stamp(status.start_time.as_ref().unwrap());
    let created_at = stamp(created.metadata.creation_timestamp.as_ref().unwrap());
    assert_eq!(
        start.duration_since(created_at),
        jiff::SignedDuration::from_secs(1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_pod_that_handles_sigterm_is_gone_after_its_stop_time_within_the_grace_period() {
    let kube = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(kube.client(), NS);
    let handles = pod(
        "p1",
        &[("testkit.supersede.dev/termination", "stops-after-5s")],
    );
    running(&kube, &pods, &handles).await;
    let mut events = watch_from_now(&kube, &pods).await;

    let asked = Instant::now();
    let terminating = pods
        .delete("p1", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("a terminating pod is answered");
    let (ends, grace) = deletion(&terminating);
    assert_eq!(grace, 30, "the pod's terminationGracePeriodSeconds");

    // Gone once its containers stopped, 5 s after SIGTERM.
    assert_gone_at(&kube, "p1", asked + Duration::from_secs(5)).await;

    let last = last_state_before_deleted(&mut events, "p1").await;
    let (exit_code, finished) = terminated(&last);
    assert_eq!(exit_code, 0, "it exited on SIGTERM");
    assert_eq!(
        phase(&last),
        "Failed",
        "restartPolicy Always: a deleted pod ends Failed"
    );
    assert_eq!(
        ends.duration_since(finished),
        jiff::SignedDuration::from_secs(25),
        "5 s into a 30 s grace period"
    );
    assert_eq!(
        last.metadata.deletion_grace_period_seconds,
        Some(0),
        "the kubelet's final delete"
    );
}

#[tokio::test(start_paused = true)]
async fn a_pod_that_ignores_sigterm_stays_its_whole_grace_period_and_is_killed() {
    let kube = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(kube.client(), NS);
    let stubborn = pod(
        "p1",
        &[("testkit.supersede.dev/termination", "after-grace-period")],
    );
    running(&kube, &pods, &stubborn).await;
    let mut events = watch_from_now(&kube, &pods).await;

    let asked = Instant::now();
    let terminating = pods
        .delete("p1", &DeleteParams::default().grace_period(10))
        .await
        .unwrap()
        .left()
        .unwrap();
    let (ends, grace) = deletion(&terminating);
    assert_eq!(grace, 10, "the delete's gracePeriodSeconds wins");

    // SIGTERM is ignored: killed when the grace period ends.
    assert_gone_at(&kube, "p1", asked + Duration::from_secs(10)).await;

    let last = last_state_before_deleted(&mut events, "p1").await;
    let (exit_code, finished) = terminated(&last);
    assert_eq!(exit_code, 137, "SIGKILL");
    assert_eq!(finished, ends, "killed at the deletionTimestamp");
}

#[tokio::test(start_paused = true)]
async fn a_shorter_grace_period_of_a_later_delete_moves_the_kill_earlier() {
    let kube = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(kube.client(), NS);
    let stubborn = pod(
        "p1",
        &[("testkit.supersede.dev/termination", "after-grace-period")],
    );
    running(&kube, &pods, &stubborn).await;

    let asked = Instant::now();
    let first = pods
        .delete("p1", &DeleteParams::default().grace_period(60))
        .await
        .unwrap()
        .left()
        .unwrap();
    let (first_end, _) = deletion(&first);
    sleep_until(asked + Duration::from_secs(5)).await;
    let again = pods
        .delete("p1", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(
        again.resource_version(),
        first.resource_version(),
        "a longer or no grace period changes nothing"
    );
    let shorter = pods
        .delete("p1", &DeleteParams::default().grace_period(10))
        .await
        .unwrap()
        .left()
        .unwrap();
    let (end, grace) = deletion(&shorter);
    assert_eq!(grace, 10);
    assert_eq!(
        first_end.duration_since(end),
        jiff::SignedDuration::from_secs(50),
        "the deadline moves by the difference"
    );

    // The kubelet kills it 10 s after it learns of the shorter period.
    assert_gone_at(&kube, "p1", asked + Duration::from_secs(15)).await;
}

#[tokio::test(start_paused = true)]
async fn an_immediate_pod_delete_answers_the_deleted_pod() {
    let kube = FakeKube::builder()
        .pod_termination(PodTermination::Never)
        .start()
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(kube.client(), NS);
    let run = running(&kube, &pods, &pod("p1", &[])).await;
    pods.delete("p1", &DeleteParams::default()).await.unwrap();
    sleep(Duration::from_secs(3600)).await;
    assert!(
        kube.peek::<Pod>(NS, "p1").is_some(),
        "an unreachable node never reports back"
    );

    let forced = pods
        .delete("p1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    // The API server answers a removed pod with the pod (kube: `Left`), not
    // a Status as for most kinds.
    let gone = forced.left().expect("the deleted pod");
    assert_eq!(gone.uid(), run.uid());
    assert_eq!(gone.metadata.deletion_grace_period_seconds, Some(0));
    assert!(
        kube.peek::<Pod>(NS, "p1").is_none(),
        "removed within the request"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unschedulable_pod_stays_pending_without_a_node_and_is_deleted_at_once() {
    let kube = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(kube.client(), NS);
    pods.create(
        &PostParams::default(),
        &pod("p1", &[("testkit.supersede.dev/schedulable", "false")]),
    )
    .await
    .unwrap();
    sleep(Duration::from_secs(60)).await;
    let stuck = kube.peek::<Pod>(NS, "p1").unwrap();
    assert_eq!(phase(&stuck), "Pending");
    assert_eq!(stuck.spec.as_ref().unwrap().node_name, None);
    assert_eq!(
        condition(&stuck, "PodScheduled"),
        Some(("False".to_owned(), Some("Unschedulable".to_owned())))
    );

    let gone = pods
        .delete("p1", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(
        gone.metadata.deletion_grace_period_seconds,
        Some(0),
        "no node, no grace period"
    );
    assert!(kube.peek::<Pod>(NS, "p1").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_pod_deleted_before_its_containers_start_is_removed_by_the_kubelet_at_once() {
    let kube = FakeKube::builder()
        .pod_termination(PodTermination::AfterGracePeriod)
        .start()
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(kube.client(), NS);
    pods.create(
        &PostParams::default(),
        &pod("p1", &[("testkit.supersede.dev/starts-after", "1m")]),
    )
    .await
    .unwrap();
    sleep(Duration::from_secs(1)).await;
    let terminating = pods
        .delete("p1", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(deletion(&terminating).1, 30, "bound, so graceful");
    sleep(Duration::from_millis(1)).await;
    assert!(
        kube.peek::<Pod>(NS, "p1").is_none(),
        "nothing ran, nothing to wait for"
    );
}

#[tokio::test(start_paused = true)]
async fn pods_exit_by_themselves_and_a_test_can_end_one() {
    let kube = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(kube.client(), NS);
    let job = pod(
        "job",
        &[("testkit.supersede.dev/exits", "succeeded-after-5s")],
    );
    running(&kube, &pods, &job).await;
    let crashing = running(&kube, &pods, &pod("agent", &[])).await;
    assert_eq!(phase(&crashing), "Running");

    kube.set_pod_phase(NS, "agent", TerminalPhase::Failed)
        .unwrap();
    let failed = kube.peek::<Pod>(NS, "agent").unwrap();
    assert_eq!(phase(&failed), "Failed");
    assert_eq!(terminated(&failed).0, 1);
    assert_eq!(
        condition(&failed, "Ready").map(|c| c.0),
        Some("False".to_owned())
    );
    assert!(
        kube.set_pod_phase(NS, "absent", TerminalPhase::Failed)
            .is_err()
    );

    sleep(Duration::from_secs(6)).await;
    let done = kube.peek::<Pod>(NS, "job").unwrap();
    assert_eq!(phase(&done), "Succeeded");
    assert_eq!(terminated(&done).0, 0);

    // A finished pod has nothing to stop: deleted with no grace period.
    let gone = pods
        .delete("job", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(gone.metadata.deletion_grace_period_seconds, Some(0));
    assert!(kube.peek::<Pod>(NS, "job").is_none());
}

#[tokio::test(start_paused = true)]
async fn the_tests_choice_of_behaviour_wins_over_the_pods_labels() {
    let kube = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(kube.client(), NS);
    kube.set_pod_behaviour(
        NS,
        "p1",
        PodBehaviour {
            termination: PodTermination::AfterGracePeriod,
            ..PodBehaviour::default()
        },
    );
    running(
        &kube,
        &pods,
        &pod("p1", &[("testkit.supersede.dev/termination", "immediate")]),
    )
    .await;
    let asked = Instant::now();
    pods.delete("p1", &DeleteParams::default().grace_period(5))
        .await
        .unwrap();
    assert_gone_at(&kube, "p1", asked + Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn finalizers_hold_a_stopped_pod_until_they_are_removed() {
    let kube = FakeKube::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(kube.client(), NS);
    let mut held = pod("p1", &[]);
    held.metadata.finalizers = Some(vec!["supersede.dev/collect-logs".to_owned()]);
    running(&kube, &pods, &held).await;
    pods.delete("p1", &DeleteParams::default()).await.unwrap();
    sleep(Duration::from_secs(60)).await;
    let stopped = kube.peek::<Pod>(NS, "p1").expect("held by its finalizer");
    assert_eq!(phase(&stopped), "Failed");
    assert_eq!(
        stopped.metadata.deletion_grace_period_seconds,
        Some(0),
        "the kubelet is done with it"
    );

    pods.patch(
        "p1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(kube.peek::<Pod>(NS, "p1").is_none());
}

#[tokio::test(start_paused = true)]
async fn object_timestamps_and_pod_timers_follow_one_paused_clock() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client(), NS);
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("c1".to_owned());
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let first = stamp(
        kube.peek::<ConfigMap>(NS, "c1")
            .unwrap()
            .metadata
            .creation_timestamp
            .as_ref()
            .unwrap(),
    );

    sleep(Duration::from_secs(24 * 3600)).await;
    let ahead = kube.now().duration_since(jiff::Timestamp::now());
    assert!(
        ahead >= jiff::SignedDuration::from_hours(23),
        "the fake's clock is a day ahead of the system's: {ahead:?}"
    );

    let pods: Api<Pod> = Api::namespaced(kube.client(), NS);
    let stubborn = pod(
        "p1",
        &[("testkit.supersede.dev/termination", "after-grace-period")],
    );
    let created = pods
        .create(&PostParams::default(), &stubborn)
        .await
        .unwrap();
    let born = stamp(created.metadata.creation_timestamp.as_ref().unwrap());
    assert!(born.duration_since(first) >= jiff::SignedDuration::from_hours(24));
    wait_running(&kube, "p1").await;
    let mut events = watch_from_now(&kube, &pods).await;
    let terminating = pods
        .delete("p1", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    let (ends, grace) = deletion(&terminating);
    let last = last_state_before_deleted(&mut events, "p1").await;
    assert_eq!(
        terminated(&last).1,
        ends,
        "the kill happened at the instant deletionTimestamp names"
    );
    assert!(ends.duration_since(born) >= jiff::SignedDuration::from_secs(grace));
}
