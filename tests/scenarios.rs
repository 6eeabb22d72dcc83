//! The seed's acceptance scenarios end to end: FakeGitHub's webhook sender
//! delivers to sensor replicas behind a round-robin balancer, each sensor
//! records the fact in the task's state on FakeKube and hands it to its own
//! coordinator, the sagas cancel CodeRuns whose pods FakeKube's kubelet
//! stops and garbage collector removes, and label-cas moves the labels on
//! FakeGitHub — all over real HTTP. Every scenario ends with testkit's
//! cancellation history checker judging what the fakes recorded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use recovery::ANNOTATION_NEEDS_INTERVENTION;
use state_store::CancellationOutcome;
use state_store::naming::{ANNOTATION_QUARANTINE_REASON, KEY_STATE_CORRUPT};
use support::{Cluster, MOVED, NS, WAITING, sha, state_map};
use testkit::calls::Outcome;
use testkit::faults::{InjectedError, Match};
use testkit::github::PrimaryLimitStatus;

/// Seed scenario 1, high concurrent load.
///
/// Given 25 pull requests, each with quality, testing and review agents
/// running on its old head and a review agent already on its new head, and
/// three sensor replicas;
/// when 25 pushes arrive at once (a `push` and a `pull_request.synchronize`
/// delivery each, spread over the replicas);
/// then every delivery is answered 202, every stale run is cancelled (its
/// pod gone before it was recorded) and recorded once, no run of a new head
/// is touched, every PR's labels move to `needs-qa`, and no task lock is
/// left held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_01_high_concurrent_load() {
    const TASKS: u64 = 25;
    let cluster = Cluster::start(3).await;
    let old = |task: u64| sha(task as usize * 10 + 1);
    let new = |task: u64| sha(task as usize * 10 + 2);
    let mut stale = Vec::new();
    let mut fresh = Vec::new();
    for task in 1..=TASKS {
        cluster.pull(task, &old(task)).await;
        stale.extend(cluster.agents_on(task, &old(task), 10).await);
        let name = format!("t{task}-review-new");
        cluster.run(task, &name, "review", &new(task), 10).await;
        fresh.push(name);
    }

    let mut deliveries = Vec::new();
    for task in 1..=TASKS {
        deliveries.extend(cluster.push(task, &new(task)));
    }
    let answers = cluster.answered(&deliveries).await;
    assert!(answers.iter().all(|&code| code == 202), "{answers:?}");
    cluster.converged().await;

    let history = cluster.history().await;
    assert_eq!(history.violations(), vec![]);
    assert!(stale.iter().all(|run| !cluster.exists(run)));
    assert!(fresh.iter().all(|run| cluster.exists(run)));
    for task in 1..=TASKS {
        assert_eq!(cluster.labels(task), [MOVED], "PR {task}");
        let state = cluster.state(task).await.unwrap();
        assert_eq!(state.latest_head.unwrap().sha, new(task), "task {task}");
    }
}

/// Seed scenario 2, lock contention.
///
/// Given one pull request with agents on its head and three sensor
/// replicas;
/// when five pushes to it arrive in quick succession, each new head's agents
/// started before the next push, the deliveries spread over the replicas so
/// that their coordinators contend for the task's lock;
/// then the lock serialises them: only the newest head's runs survive,
/// every older run is cancelled and recorded once, no run of the
/// newest head is touched, the labels end at `needs-qa`, and the task lock
/// ends free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_02_lock_contention() {
    const TASK: u64 = 7;
    let cluster = Cluster::start(3).await;
    let heads: Vec<String> = (1..=6).map(sha).collect();
    cluster.pull(TASK, &heads[0]).await;
    let mut runs = vec![cluster.agents_on(TASK, &heads[0], 50).await];

    let mut deliveries = Vec::new();
    for head in &heads[1..] {
        // Agents start on a head once it is pushed, never before: a run of
        // a head GitHub does not show yet is a run of another head.
        deliveries.extend(cluster.push(TASK, head));
        runs.push(cluster.agents_on(TASK, head, 50).await);
    }
    let answers = cluster.answered(&deliveries).await;
    assert!(answers.iter().all(|&code| code == 202), "{answers:?}");
    cluster.converged().await;

    let history = cluster.history().await;
    assert_eq!(history.violations(), vec![]);
    let (newest, older) = runs.split_last().unwrap();
    assert!(older.iter().flatten().all(|run| !cluster.exists(run)));
    assert!(newest.iter().all(|run| cluster.exists(run)));
    assert_eq!(cluster.labels(TASK), [MOVED]);
}

/// Seed scenario 3, partial failure recovery.
///
/// Given a pull request with agents on its old head, two sensor replicas
/// and a controller replica, and GitHub refusing every label call (503);
/// when a push arrives, so that the saga cancels the stale runs and records
/// the cancellation in the task state, then fails to move the labels;
/// then the state says so while GitHub refuses, and once GitHub answers
/// again the controller's recovery cycle moves the labels to `needs-qa`:
/// the cancellation is recorded once and the history checker finds the
/// world consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_03_partial_failure_recovery() {
    const TASK: u64 = 3;
    let cluster = Cluster::start(2).await;
    let controller = cluster.start_controller("controller-0").await;
    let (old, new) = (sha(1), sha(2));
    cluster.pull(TASK, &old).await;
    let stale = cluster.agents_on(TASK, &old, 10).await;
    let fresh = cluster.agents_on(TASK, &new, 10).await;
    let faults = cluster.github.faults();
    let refusals = ["label", "labels"].map(|resource| {
        faults.error_rate(
            Match::any().resource(resource),
            1.0,
            InjectedError::Status(503),
        )
    });

    let answers = cluster.answered(&cluster.push(TASK, &new)).await;
    assert_eq!(answers, [202, 202]);
    cluster
        .until(
            "the cancellation recorded with its labels failed",
            async |c| {
                c.state(TASK).await.is_some_and(|s| {
                    s.cancellation_history.iter().any(|r| {
                        r.outcome == CancellationOutcome::Cancelled
                            && r.detail
                                .as_deref()
                                .is_some_and(|d| d.contains("labels: failed"))
                    })
                })
            },
        )
        .await;
    assert!(stale.iter().all(|run| !cluster.exists(run)));
    assert_eq!(cluster.labels(TASK), [WAITING], "GitHub refused the move");
    for rule in refusals {
        faults.remove(rule);
    }

    cluster.converged().await;
    let history = cluster.history().await;
    assert_eq!(history.violations(), vec![]);
    assert!(fresh.iter().all(|run| cluster.exists(run)));
    let state = cluster.state(TASK).await.unwrap();
    assert_eq!(state.cancellation_history.len(), 1, "recorded once");
    let detail = state.cancellation_history[0].detail.clone().unwrap();
    assert!(detail.contains("moved by recovery"), "{detail}");
    controller.trigger();
    assert_eq!(
        controller.drain(Duration::from_secs(5)).await.exit_code(),
        0
    );
}

/// Seed scenario 8, resource cleanup.
///
/// Given three pull requests with agents on their old heads whose pods take
/// a second to stop after SIGTERM, two sensor replicas and a controller
/// replica;
/// when pushes to all three arrive and, while their cancellations are in
/// flight, both sensor replicas are shut down (SIGTERM, drain, exit: their
/// connections cut) and replaced by restarted ones;
/// then every cancellation completes, every stale run is gone and recorded
/// once, no run of a new head is touched, the labels move, and no Lease is
/// left held by a replica that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_08_resource_cleanup() {
    let cluster = Cluster::start(2).await;
    let controller = cluster.start_controller("controller-0").await;
    let tasks = [81, 82, 83];
    let mut stale = Vec::new();
    let mut fresh = Vec::new();
    for task in tasks {
        let (old, new) = (sha(task as usize * 10 + 1), sha(task as usize * 10 + 2));
        cluster.pull(task, &old).await;
        stale.extend(cluster.agents_on(task, &old, 1_000).await);
        fresh.extend(cluster.agents_on(task, &new, 10).await);
    }

    let mut deliveries = Vec::new();
    for task in tasks {
        deliveries.extend(cluster.push(task, &sha(task as usize * 10 + 2)));
    }
    let answers = cluster.answered(&deliveries).await;
    assert!(answers.iter().all(|&code| code == 202), "{answers:?}");
    cluster
        .until("a stale run's deletion under way", async |c| {
            stale.iter().any(|run| c.deletes_of(run) > 0)
        })
        .await;
    assert!(
        stale.iter().any(|run| cluster.exists(run)),
        "still in flight"
    );
    for replica in [0, 1] {
        let exit = cluster.stop_replica(replica, Duration::from_secs(5)).await;
        assert_eq!(exit, 0, "replica {replica} drained");
    }
    cluster.start_replica().await;
    cluster.start_replica().await;

    cluster.converged().await;
    let history = cluster.history().await;
    assert_eq!(history.violations(), vec![]);
    assert!(stale.iter().all(|run| !cluster.exists(run)));
    assert!(fresh.iter().all(|run| cluster.exists(run)));
    controller.trigger();
    assert_eq!(
        controller.drain(Duration::from_secs(5)).await.exit_code(),
        0
    );
}

/// Seed scenario 9, state manager integration.
///
/// Given one pull request with agents on its head and three sensor
/// replicas;
/// when five pushes to it arrive in quick succession, each new head's agents
/// started before the next push;
/// then every version of the task's state, read in resourceVersion order,
/// tells a valid story: the latest head's push time never goes back, the
/// cancellation history only grows (no record rewritten or lost), every
/// cancellation was journaled as the active operation before it was
/// recorded (intent first), the last version's head is the newest push with
/// no operation left active, and the history checker finds the world
/// consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_09_state_manager_integration() {
    const TASK: u64 = 9;
    let cluster = Cluster::start(3).await;
    let heads: Vec<String> = (1..=6).map(|n| sha(900 + n)).collect();
    cluster.pull(TASK, &heads[0]).await;
    cluster.agents_on(TASK, &heads[0], 20).await;
    let mut deliveries = Vec::new();
    for head in &heads[1..] {
        // As in scenario 2: a head's agents start after its push.
        deliveries.extend(cluster.push(TASK, head));
        cluster.agents_on(TASK, head, 20).await;
    }
    let answers = cluster.answered(&deliveries).await;
    assert!(answers.iter().all(|&code| code == 202), "{answers:?}");
    cluster.converged().await;
    assert_eq!(cluster.history().await.violations(), vec![]);

    cluster
        .until("the state watch caught up with the store", async |c| {
            c.state_watch_caught_up(TASK)
        })
        .await;
    let versions = cluster.state_versions(TASK);
    assert!(versions.len() > 2, "{} versions", versions.len());
    let mut journaled = std::collections::BTreeSet::new();
    for pair in versions.windows(2) {
        let [(rv_a, a), (rv_b, b)] = pair else {
            unreachable!()
        };
        let pushed =
            |s: &state_store::RemediationState| s.latest_head.as_ref().map(|h| h.pushed_at);
        assert!(
            pushed(b) >= pushed(a),
            "head went back between {rv_a} and {rv_b}"
        );
        let ids = |s: &state_store::RemediationState| -> Vec<String> {
            s.cancellation_history
                .iter()
                .map(|r| r.operation_id.clone())
                .collect()
        };
        assert!(
            ids(b).starts_with(&ids(a)),
            "history rewritten between {rv_a} and {rv_b}: {:?} then {:?}",
            ids(a),
            ids(b)
        );
        if let Some(op) = &a.active_operation {
            journaled.insert(op.operation_id.clone());
        }
    }
    let (_, last) = versions.last().unwrap();
    for record in &last.cancellation_history {
        if record.outcome == CancellationOutcome::Cancelled {
            assert!(
                journaled.contains(&record.operation_id),
                "{} recorded without a journal before it",
                record.operation_id
            );
        }
    }
    assert_eq!(last.latest_head.as_ref().unwrap().sha, heads[5]);
    assert!(
        last.active_operation.is_none(),
        "{:?}",
        last.active_operation
    );
}

/// Seed scenario 4, GitHub rate limiting.
///
/// Given three pull requests with agents on their old heads, two sensor
/// replicas and a controller replica, all on one GitHub token whose budget
/// is 10 requests per 4-second window — once spent, GitHub answers 403 (and,
/// in a second run, 429) with `x-ratelimit-remaining: 0` and the window's
/// `x-ratelimit-reset`;
/// when pushes to the three pull requests arrive at once, so that the
/// budget runs out half-way through their cancellations and label moves;
/// then the cancellations stand (the runs go, recorded once each), the
/// label moves GitHub refused are retried by the controller's recovery
/// cycle — never in a tight loop: while the budget is spent GitHub sees at
/// most one refused call per task and recovery cycle, plus the sagas'
/// own — and succeed once the window resets: every pull request's labels
/// end at `needs-qa` and the history checker finds the world consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_04_github_rate_limiting() {
    for status in [
        PrimaryLimitStatus::Forbidden,
        PrimaryLimitStatus::TooManyRequests,
    ] {
        rate_limited_pushes(status).await;
    }
}

/// Scenario 4 with GitHub refusing a spent budget with `status`.
async fn rate_limited_pushes(status: PrimaryLimitStatus) {
    const BUDGET: u32 = 10;
    const WINDOW: Duration = Duration::from_secs(4);
    let code = match status {
        PrimaryLimitStatus::Forbidden => 403,
        PrimaryLimitStatus::TooManyRequests => 429,
    };
    let tasks = [41, 42, 43];
    let cluster = Cluster::start_with(
        2,
        |kube| kube,
        |github| {
            github
                .rate_limit(BUDGET)
                .rate_limit_window(WINDOW)
                .primary_limit_status(status)
        },
    )
    .await;
    let controller = cluster.start_controller("controller-0").await;
    let mut stale = Vec::new();
    let mut fresh = Vec::new();
    for task in tasks {
        let (old, new) = (sha(task as usize * 10 + 1), sha(task as usize * 10 + 2));
        cluster.pull(task, &old).await;
        stale.extend(cluster.agents_on(task, &old, 10).await);
        fresh.push((task, new));
    }
    let started = tokio::time::Instant::now();
    let mut deliveries = Vec::new();
    for (task, new) in &fresh {
        deliveries.extend(cluster.push(*task, new));
    }
    let mut fresh_runs = Vec::new();
    for (task, new) in &fresh {
        fresh_runs.extend(cluster.agents_on(*task, new, 10).await);
    }
    let answers = cluster.answered(&deliveries).await;
    assert!(answers.iter().all(|&c| c == 202), "{answers:?}");

    cluster.converged().await;
    let took = started.elapsed();
    let calls = cluster.github.calls();
    let refused = calls.count_outcome(None, None, &Outcome::Error(code));
    assert!(refused > 0, "the budget ran out ({code})");
    // Recovery runs every second; each cycle asks at most one call per
    // task that GitHub can refuse (the head check or the label move stops
    // at its first refusal), and each saga makes at most two (the head
    // read, the label move), twice per push (push and synchronize).
    let cycles = took.as_secs() + 1;
    let bound = cycles * tasks.len() as u64 + 4 * tasks.len() as u64;
    assert!(
        refused <= bound,
        "{refused} calls refused with {code} in {took:?}: a storm (bound {bound})"
    );
    assert_eq!(cluster.history().await.violations(), vec![]);
    assert!(stale.iter().all(|run| !cluster.exists(run)));
    assert!(fresh_runs.iter().all(|run| cluster.exists(run)));
    for task in tasks {
        let state = cluster.state(task).await.unwrap();
        assert_eq!(state.cancellation_history.len(), 1, "task {task}");
        assert_eq!(cluster.labels(task), [MOVED], "PR {task}");
    }
    eprintln!(
        "scenario 04 ({code}): {refused} refused calls of {} in {took:?}",
        calls.total()
    );
    controller.trigger();
    assert_eq!(
        controller.drain(Duration::from_secs(5)).await.exit_code(),
        0
    );
}

/// Seed scenario 5, state inconsistency.
///
/// Given a pull request whose push was handled (its stale runs cancelled
/// and recorded, its labels moved), two sensor replicas and a controller
/// replica;
/// when an outside writer corrupts the task's state ConfigMap (its JSON cut
/// off half-way through the cancellation history);
/// then the controller's recovery repairs it: the state is rebuilt from
/// what survived (the head and the pull request), the raw payload is kept
/// in quarantine beside it, the task is flagged for intervention naming
/// what was lost, no run of the new head is touched, and the history
/// checker finds the world consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_05_state_inconsistency() {
    const TASK: u64 = 5;
    let cluster = Cluster::start(2).await;
    let controller = cluster.start_controller("controller-0").await;
    let (old, new) = (sha(51), sha(52));
    cluster.pull(TASK, &old).await;
    let stale = cluster.agents_on(TASK, &old, 10).await;
    let answers = cluster.answered(&cluster.push(TASK, &new)).await;
    assert_eq!(answers, [202, 202]);
    let fresh = cluster.agents_on(TASK, &new, 10).await;
    cluster.converged().await;
    assert_eq!(
        cluster
            .state(TASK)
            .await
            .unwrap()
            .cancellation_history
            .len(),
        1
    );

    let broken = cluster.corrupt_state(TASK).await;

    cluster
        .until("the corrupted state rebuilt and quarantined", async |c| {
            c.kube
                .peek::<ConfigMap>(NS, &state_map(TASK))
                .and_then(|cm| cm.data)
                .is_some_and(|d| d.contains_key(KEY_STATE_CORRUPT))
        })
        .await;
    cluster
        .until("the task flagged for intervention", async |c| {
            c.kube
                .peek::<ConfigMap>(NS, &state_map(TASK))
                .is_some_and(|cm| cm.annotations().contains_key(ANNOTATION_NEEDS_INTERVENTION))
        })
        .await;
    let stored = cluster
        .kube
        .peek::<ConfigMap>(NS, &state_map(TASK))
        .unwrap();
    assert_eq!(
        stored.data.as_ref().unwrap()[KEY_STATE_CORRUPT],
        broken,
        "the raw payload is kept as it was"
    );
    assert!(
        stored
            .annotations()
            .contains_key(ANNOTATION_QUARANTINE_REASON)
    );
    let flag = &stored.annotations()[ANNOTATION_NEEDS_INTERVENTION];
    assert!(flag.starts_with("unreadable_state:"), "{flag}");
    let rebuilt = cluster.state(TASK).await.expect("readable again");
    assert_eq!(rebuilt.latest_head.unwrap().sha, new, "the head survived");
    assert!(
        rebuilt
            .metadata
            .contains_key(cancel_coordinator::METADATA_PULL_REQUEST),
        "the pull request survived"
    );
    assert!(rebuilt.active_operation.is_none());
    assert_eq!(cluster.history().await.violations(), vec![]);
    assert!(stale.iter().all(|run| !cluster.exists(run)));
    assert!(fresh.iter().all(|run| cluster.exists(run)));
    controller.trigger();
    assert_eq!(
        controller.drain(Duration::from_secs(5)).await.exit_code(),
        0
    );
}

/// Seed scenario 6, network partition.
///
/// Given two pull requests with agents on their heads whose pods take a
/// second to stop (the second one's first push already handled, so its
/// state names its pull request), two sensor replicas and a controller
/// replica, each with its own connections to the API server;
/// when a push to the first pull request arrives and, once its
/// cancellation is under way, every component is cut off the API server
/// (open connections dropped, new ones refused); a push to the second pull
/// request arrives during the partition (no sensor can record it: GitHub
/// sees its deliveries fail); and after three seconds the partition heals;
/// then the world converges: the interrupted cancellation is resumed and
/// the lost push is found by the controller's recovery (GitHub's head
/// against the recorded one), every stale run of both pull requests is
/// gone and recorded once, never while its pod existed, no run of a newest
/// head is touched, both pull requests' labels move, and no task Lease is
/// left held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_06_network_partition() {
    let (first, second) = (61, 62);
    let head = |task: u64, n: usize| sha(task as usize * 10 + n);
    let cluster = Cluster::start(2).await;
    let controller = cluster.start_controller("controller-0").await;
    cluster.pull(first, &head(first, 1)).await;
    let mut stale = cluster.agents_on(first, &head(first, 1), 1_000).await;
    cluster.pull(second, &head(second, 1)).await;
    stale.extend(cluster.agents_on(second, &head(second, 1), 10).await);
    let answers = cluster
        .answered(&cluster.push(second, &head(second, 2)))
        .await;
    assert_eq!(answers, [202, 202]);
    let superseded_later = cluster.agents_on(second, &head(second, 2), 1_000).await;
    cluster
        .until("the second pull request's first push handled", async |c| {
            c.labels(second) == [MOVED]
                && c.state(second)
                    .await
                    .is_some_and(|s| s.cancellation_history.len() == 1)
        })
        .await;
    // GitHub's times are whole seconds; recovery only believes a head
    // GitHub changed after the push it recorded (a lagging read must not
    // win), so the lost push must land in a later second than this one.
    let handled = jiff::Timestamp::now().as_second();
    stale.extend(superseded_later);

    let mut fresh = Vec::new();
    let answers = cluster
        .answered(&cluster.push(first, &head(first, 2)))
        .await;
    assert_eq!(answers, [202, 202]);
    fresh.extend(cluster.agents_on(first, &head(first, 2), 10).await);
    cluster
        .until("the first cancellation's deletes under way", async |c| {
            stale[..3].iter().any(|run| c.deletes_of(run) > 0)
        })
        .await;
    cluster.partition();
    while jiff::Timestamp::now().as_second() <= handled {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lost = cluster.push(second, &head(second, 3));
    fresh.extend(cluster.agents_on(second, &head(second, 3), 10).await);
    let answers = cluster.answered(&lost).await;
    assert!(
        answers.iter().all(|&code| code != 202),
        "no sensor could record the push: {answers:?}"
    );
    assert!(
        stale[6..].iter().all(|run| cluster.deletes_of(run) == 0),
        "nothing is cancelled blind"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.heal();

    cluster.converged().await;
    assert_eq!(cluster.history().await.violations(), vec![]);
    assert!(stale.iter().all(|run| !cluster.exists(run)));
    assert!(fresh.iter().all(|run| cluster.exists(run)));
    let first_state = cluster.state(first).await.unwrap();
    assert_eq!(first_state.cancellation_history.len(), 1, "recorded once");
    let second_state = cluster.state(second).await.unwrap();
    assert_eq!(second_state.cancellation_history.len(), 2, "one per push");
    for task in [first, second] {
        assert_eq!(cluster.labels(task), [MOVED], "PR {task}");
    }
    controller.trigger();
    assert_eq!(
        controller.drain(Duration::from_secs(5)).await.exit_code(),
        0
    );
}

/// Seed scenario 7, circuit breaker activation.
///
/// Given five pull requests with agents on their old heads, one sensor
/// replica (one GitHub breaker, the production policy: open after 5
/// consecutive failures, 30 s cool-down, one probe), and GitHub answering
/// 503 to every pull request read and label call;
/// when pushes to the pull requests arrive one after another;
/// then each cancellation still completes (the runs go, the state records
/// it with its labels failed), but once the first three pushes' calls have
/// failed the breaker is open and the next cancellations fail fast: GitHub
/// receives no pull request or label call at all from then until the
/// cool-down ends; once GitHub answers again and the cool-down is over,
/// the next pushes' first call is the probe, the breaker closes, and every
/// pull request's labels move — the history checker finds the world
/// consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_07_circuit_breaker_activation() {
    let tasks: Vec<u64> = (71..=75).collect();
    let cool_down = resilience::BreakerPolicy::default().cool_down;
    let cluster = Cluster::start(1).await;
    for &task in &tasks {
        cluster.pull(task, &sha(task as usize * 10 + 1)).await;
        cluster
            .agents_on(task, &sha(task as usize * 10 + 1), 10)
            .await;
    }
    let faults = cluster.github.faults();
    let refusals = ["pull", "labels", "label"].map(|resource| {
        faults.error_rate(
            Match::any().resource(resource),
            1.0,
            InjectedError::Status(503),
        )
    });
    let calls = || {
        let calls = cluster.github.calls();
        ["pull", "labels", "label"]
            .iter()
            .map(|r| calls.count(None, Some(r)))
            .sum::<u64>()
    };

    let mut after = Vec::new();
    let mut opened_by = None;
    for (i, &task) in tasks.iter().enumerate() {
        let head = sha(task as usize * 10 + 2);
        let answers = cluster.answered(&cluster.push(task, &head)).await;
        assert_eq!(answers, [202, 202]);
        cluster
            .until("the cancellation recorded, labels failed", async |c| {
                c.state(task).await.is_some_and(|s| {
                    s.cancellation_history.iter().any(|r| {
                        r.detail
                            .as_deref()
                            .is_some_and(|d| d.contains("labels: failed"))
                    })
                })
            })
            .await;
        cluster.agents_on(task, &head, 10).await;
        after.push(calls());
        if i == 2 {
            // At least two breaker-guarded calls failed per push (the head
            // read and the label transition): five in a row by now.
            opened_by = Some(tokio::time::Instant::now());
        }
    }
    assert!(after[0] > 0 && after[2] > after[0], "{after:?}");
    assert_eq!(
        after[4], after[2],
        "no call reached GitHub while the breaker was open: {after:?}"
    );
    for rule in refusals {
        faults.remove(rule);
    }
    tokio::time::sleep_until(opened_by.unwrap() + cool_down + Duration::from_millis(500)).await;
    assert_eq!(calls(), after[2], "none either until the cool-down ended");

    for &task in &tasks {
        let answers = cluster
            .answered(&cluster.push(task, &sha(task as usize * 10 + 3)))
            .await;
        assert_eq!(answers, [202, 202]);
    }
    cluster.converged().await;
    assert!(calls() > after[2], "the probe and the calls after it");
    assert_eq!(cluster.history().await.violations(), vec![]);
    for &task in &tasks {
        assert_eq!(cluster.labels(task), [MOVED], "PR {task}");
    }
}

/// Seed scenario 10, performance under load.
///
/// Given ten pull requests with agents on their heads and two sensor
/// replicas;
/// when pushes arrive without pause, round after round — a new head for
/// every pull request per round, its agents started right after the push,
/// `SUPERSEDE_SCENARIO_10_OPS` pushes in all (default 200; set it higher
/// for a longer run) — each round waiting only until the previous heads'
/// runs are gone;
/// then every stale run is cancelled and no newest run is touched (the
/// history checker finds the world consistent), the Kubernetes calls per
/// push stay flat (the last quarter's rate, from FakeKube's request log, is
/// at most 1.5 times the first quarter's after warm-up), and this process's
/// resident set (VmRSS in /proc/self/status, sampled after every round)
/// grows by less than 256 MiB per 1 000 pushes after the first quarter's
/// warm-up.
///
/// The bound is loose because the process also holds the fakes: FakeKube
/// is given a 256-event watch history and a 2 000-request log here so that
/// they fill during warm-up, FakeGitHub keeps its newest 100 settled
/// deliveries (without a retention it kept every one with its payload,
/// ~48 KiB per push), and the recorder keeps no state versions. Measured
/// after that (quiet machine): 96–103 MiB per 1 000 pushes at 200 pushes,
/// 70 at 1 000. Under heaptrack the live heap was 33 MB at 100 pushes and
/// 49 MB at 400, against a resident set of 112 and 138 MB: most of the
/// growth is the allocator keeping freed pages. Of the live growth, the
/// product's sites were bounded caches filling (the coordinator's finished
/// history, the sensors' recent deliveries, saga reports: kilobytes); the
/// rest was FakeKube's history of events (5.8 → 18 MB): 256 per kind, each
/// holding the object before and after, and the states' ConfigMaps grow as
/// the task states fill towards their bounds (100 cancellation records, 64
/// recent deliveries, …), so the same 256 events weigh more. What the
/// bound catches is a leak of the order of 256 KiB per push or worse in the
/// sensors, coordinators and sagas (a watch, a client or a task's whole
/// state kept per push); a smaller one is not caught at this size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_10_performance_under_load() {
    const TASKS: u64 = 10;
    const BOUND_KIB_PER_1000: f64 = 256.0 * 1024.0;
    let ops: usize = std::env::var("SUPERSEDE_SCENARIO_10_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let rounds = ops.div_ceil(TASKS as usize).max(8);
    let warm_up = rounds / 4;
    let head = |task: u64, round: usize| sha(1_000_000 + task as usize * 100_000 + round);
    let cluster = Cluster::start_with(
        2,
        |kube| kube.watch_history(256).request_log_capacity(2_000),
        |github| github.retain_deliveries(100),
    )
    .await;
    cluster.stop_recording_states();
    let mut previous = Vec::new();
    for task in 1..=TASKS {
        cluster.pull(task, &head(task, 0)).await;
        previous.extend(cluster.agents_on(task, &head(task, 0), 10).await);
    }

    // (pushes so far, VmRSS in KiB, FakeKube requests so far) after each round.
    let mut samples = Vec::new();
    for round in 1..=rounds {
        let mut deliveries = Vec::new();
        let mut current = Vec::new();
        for task in 1..=TASKS {
            deliveries.extend(cluster.push(task, &head(task, round)));
            current.extend(cluster.agents_on(task, &head(task, round), 10).await);
        }
        let answers = cluster.answered(&deliveries).await;
        assert!(answers.iter().all(|&code| code == 202), "{answers:?}");
        cluster
            .until("the previous round's runs gone", async |c| {
                previous.iter().all(|run| !c.exists(run))
            })
            .await;
        previous = current;
        samples.push((
            round * TASKS as usize,
            vm_rss_kib(),
            cluster.kube.requests().last_seq(),
        ));
    }
    cluster.converged().await;
    assert_eq!(cluster.history().await.violations(), vec![]);

    let per_push = |from: usize, to: usize| {
        let ((ops_a, _, calls_a), (ops_b, _, calls_b)) = (samples[from], samples[to]);
        (calls_b - calls_a) as f64 / (ops_b - ops_a) as f64
    };
    let quarter = rounds / 4;
    let early = per_push(warm_up, warm_up + quarter);
    let late = per_push(rounds - 1 - quarter, rounds - 1);
    assert!(
        late <= early * 1.5,
        "Kubernetes calls per push grew from {early:.1} to {late:.1}"
    );
    let (ops_warm, rss_warm, _) = samples[warm_up];
    let (ops_end, rss_end, _) = samples[rounds - 1];
    let growth = (rss_end as f64 - rss_warm as f64) * 1000.0 / (ops_end - ops_warm) as f64;
    eprintln!(
        "scenario 10: {ops_end} pushes, VmRSS {rss_warm} KiB after warm-up, {rss_end} KiB at the end: {growth:.0} KiB per 1000 pushes; {early:.1} then {late:.1} Kubernetes calls per push"
    );
    assert!(
        growth < BOUND_KIB_PER_1000,
        "VmRSS grew {growth:.0} KiB per 1000 pushes after warm-up (bound {BOUND_KIB_PER_1000} KiB): {samples:?}"
    );
}

/// This process's resident set size in KiB (`VmRSS` in /proc/self/status).
fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}
