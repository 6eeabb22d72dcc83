//! Specifications of the tracker: registration, cancellation outcomes, the
//! step gate, deadlines, the finished memory and reservation release.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

use super::*;

fn tracker_with_budget(budget: u64) -> JobTracker {
    JobTracker::new(TrackerConfig {
        reservation_budget: budget,
        ..TrackerConfig::default()
    })
}

fn reserve(units: u64) -> JobOptions {
    JobOptions {
        reservation: Some(units),
        ..JobOptions::default()
    }
}

#[test]
fn duplicate_active_id_is_refused_and_takes_nothing() {
    let tracker = tracker_with_budget(100);
    let _first = tracker.register("same", reserve(10)).unwrap();
    let error = tracker.register("same", reserve(10)).unwrap_err();
    assert_eq!(
        error,
        Error::Duplicate {
            job_id: "same".into()
        }
    );
    assert!(!error.is_transient());
    assert_eq!(tracker.active_count(), 1);
    assert_eq!(tracker.pool().reserved(), 10);
}

#[test]
fn a_finished_id_can_be_registered_again() {
    let tracker = tracker_with_budget(100);
    tracker
        .register("again", JobOptions::default())
        .unwrap()
        .finish(JobOutcome::Completed);
    let second = tracker.register("again", JobOptions::default()).unwrap();
    assert_eq!(
        tracker.cancel("again", CancelReason::ClientRequest),
        CancelOutcome::Cancelling
    );
    assert!(second.is_cancelled());
}

#[test]
fn empty_job_id_is_refused() {
    let tracker = tracker_with_budget(100);
    assert_eq!(
        tracker.register("", JobOptions::default()).unwrap_err(),
        Error::EmptyJobId
    );
}

#[test]
fn cancel_is_idempotent_and_answers_what_it_found() {
    let tracker = tracker_with_budget(100);
    let job = tracker.register("j", JobOptions::default()).unwrap();
    assert_eq!(
        tracker.cancel("j", CancelReason::ClientRequest),
        CancelOutcome::Cancelling
    );
    assert_eq!(
        tracker.cancel("j", CancelReason::Shutdown),
        CancelOutcome::AlreadyCancelling
    );
    assert_eq!(
        job.reason(),
        Some(CancelReason::ClientRequest),
        "the first reason wins"
    );
    drop(job);
    assert_eq!(
        tracker.cancel("j", CancelReason::ClientRequest),
        CancelOutcome::Finished
    );
    assert_eq!(
        tracker.cancel("j", CancelReason::ClientRequest),
        CancelOutcome::Finished
    );
    assert_eq!(
        tracker.cancel("never-seen", CancelReason::ClientRequest),
        CancelOutcome::Unknown
    );
}

#[test]
fn no_step_is_committed_after_an_accepted_cancel() {
    for round in 0..200 {
        let tracker = tracker_with_budget(100);
        let job = Arc::new(tracker.register("gate", JobOptions::default()).unwrap());
        let stepper = {
            let job = Arc::clone(&job);
            std::thread::spawn(move || while job.commit_step().is_some() {})
        };
        // Let the stepper run a little so the cancel lands mid-stream.
        while job.steps() < 10 * (round % 5 + 1) {
            std::hint::spin_loop();
        }
        assert_eq!(
            tracker.cancel("gate", CancelReason::ClientRequest),
            CancelOutcome::Cancelling
        );
        let at_acceptance = job.steps();
        stepper.join().unwrap();
        assert_eq!(job.steps_after_cancel(), 0, "round {round}");
        assert_eq!(job.commit_step(), None);
        assert_eq!(
            job.steps(),
            at_acceptance,
            "round {round}: a step was committed after the cancel was accepted"
        );
    }
}

#[test]
fn reservation_is_released_exactly_once_on_every_path() {
    let tracker = tracker_with_budget(100);
    let pool = tracker.pool().clone();

    tracker
        .register("finish", reserve(40))
        .unwrap()
        .finish(JobOutcome::Completed);
    assert_eq!(pool.reserved(), 0, "finish");

    let failed = tracker.register("error", reserve(40)).unwrap();
    fn run_model(job: JobHandle) -> Result<(), &'static str> {
        let _job = job;
        Err("the model crashed")
    }
    let result = run_model(failed);
    assert!(result.is_err());
    assert_eq!(pool.reserved(), 0, "early return on error");

    let cancelled = tracker.register("cancel", reserve(40)).unwrap();
    tracker.cancel("cancel", CancelReason::ClientRequest);
    assert_eq!(pool.reserved(), 40, "held until the job stops");
    drop(cancelled);
    assert_eq!(pool.reserved(), 0, "cancel");

    let panicking = tracker.register("panic", reserve(40)).unwrap();
    let unwound = catch_unwind(AssertUnwindSafe(move || {
        let _job = panicking;
        panic!("decode step panicked");
    }));
    assert!(unwound.is_err());
    assert_eq!(pool.reserved(), 0, "panic");

    let gone = tracker.register("gone", reserve(40)).unwrap();
    assert!(gone.cancel(CancelReason::ClientGone));
    drop(gone);
    assert_eq!(pool.reserved(), 0, "client gone");

    // Budget fully usable again: nothing was released twice or leaked.
    let all = tracker.register("all", reserve(100)).unwrap();
    assert!(tracker.register("one-more", reserve(1)).is_err());
    drop(all);
    assert_eq!(pool.reserved(), 0);
    assert_eq!(tracker.active_count(), 0);

    let outcomes: Vec<_> = ["finish", "error", "cancel", "panic", "gone"]
        .iter()
        .map(|id| match tracker.get(id).unwrap().state {
            JobState::Finished { outcome, .. } => outcome,
            other => panic!("{id} is {other:?}"),
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            JobOutcome::Completed,
            JobOutcome::Abandoned,
            JobOutcome::Cancelled(CancelReason::ClientRequest),
            JobOutcome::Abandoned,
            JobOutcome::Cancelled(CancelReason::ClientGone),
        ]
    );
}

#[test]
fn reservation_over_budget_is_refused_and_registers_nothing() {
    let tracker = tracker_with_budget(100);
    let _held = tracker.register("big", reserve(80)).unwrap();
    let error = tracker.register("too-big", reserve(30)).unwrap_err();
    assert_eq!(
        error,
        Error::Exhausted {
            requested: 30,
            available: 20,
            budget: 100
        }
    );
    assert!(error.is_transient());
    assert_eq!(tracker.active_count(), 1);
    assert_eq!(
        tracker.cancel("too-big", CancelReason::ClientRequest),
        CancelOutcome::Unknown
    );
}

#[test]
fn max_active_jobs_refuses_with_at_capacity_until_a_job_ends() {
    let tracker = JobTracker::new(TrackerConfig {
        max_active_jobs: Some(2),
        ..TrackerConfig::default()
    });
    let a = tracker.register("a", JobOptions::default()).unwrap();
    let _b = tracker.register("b", JobOptions::default()).unwrap();
    assert_eq!(
        tracker.register("c", JobOptions::default()).unwrap_err(),
        Error::AtCapacity { limit: 2 }
    );
    drop(a);
    assert!(tracker.register("c", JobOptions::default()).is_ok());
}

#[tokio::test(start_paused = true)]
async fn deadline_cancels_the_job_with_reason_deadline() {
    let tracker = tracker_with_budget(100);
    let job = tracker
        .register(
            "slow",
            JobOptions {
                deadline: Some(Duration::from_secs(30)),
                reservation: Some(5),
            },
        )
        .unwrap();
    let registered = tokio::time::Instant::now();
    assert_eq!(job.deadline(), Some(registered + Duration::from_secs(30)));

    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(!job.is_cancelled());
    job.cancelled().await;
    assert_eq!(registered.elapsed(), Duration::from_secs(30));
    assert_eq!(job.reason(), Some(CancelReason::Deadline));
    assert_eq!(
        tracker.cancel("slow", CancelReason::ClientRequest),
        CancelOutcome::AlreadyCancelling
    );
    drop(job);
    assert_eq!(tracker.pool().reserved(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_finished_jobs_timer_never_cancels_a_new_job_with_the_same_id() {
    let tracker = tracker_with_budget(100);
    let deadline = JobOptions {
        deadline: Some(Duration::from_secs(10)),
        reservation: None,
    };
    tracker
        .register("reused", deadline)
        .unwrap()
        .finish(JobOutcome::Completed);
    let second = tracker.register("reused", JobOptions::default()).unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!second.is_cancelled());
}

#[test]
fn deadline_without_a_runtime_is_refused() {
    let tracker = tracker_with_budget(100);
    let options = JobOptions {
        deadline: Some(Duration::from_secs(1)),
        reservation: Some(1),
    };
    assert_eq!(
        tracker.register("x", options).unwrap_err(),
        Error::NoRuntime
    );
    assert_eq!(tracker.pool().reserved(), 0);
}

#[tokio::test(start_paused = true)]
async fn late_cancel_answers_finished_until_the_memory_forgets_the_job() {
    let tracker = JobTracker::new(TrackerConfig {
        finished_max_age: Duration::from_secs(60),
        ..TrackerConfig::default()
    });
    tracker
        .register("done", JobOptions::default())
        .unwrap()
        .finish(JobOutcome::Completed);
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(
        tracker.cancel("done", CancelReason::ClientRequest),
        CancelOutcome::Finished
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(
        tracker.cancel("done", CancelReason::ClientRequest),
        CancelOutcome::Unknown
    );
}

#[test]
fn finished_memory_is_bounded_by_count() {
    let tracker = JobTracker::new(TrackerConfig {
        finished_capacity: 64,
        shards: 4,
        ..TrackerConfig::default()
    });
    for n in 0..10_000 {
        drop(
            tracker
                .register(&format!("job-{n}"), JobOptions::default())
                .unwrap(),
        );
    }
    let remembered = (0..10_000)
        .filter(|n| tracker.get(&format!("job-{n}")).is_some())
        .count();
    assert!(remembered <= 64, "{remembered} finished jobs remembered");
    assert!(
        tracker.get("job-9999").is_some(),
        "the latest is remembered"
    );
}

#[test]
fn cancel_all_cancels_every_active_job_once() {
    let tracker = tracker_with_budget(100);
    let jobs: Vec<_> = (0..20)
        .map(|n| {
            tracker
                .register(&format!("j{n}"), JobOptions::default())
                .unwrap()
        })
        .collect();
    jobs[3].cancel(CancelReason::ClientRequest);
    assert_eq!(tracker.cancel_all(CancelReason::Shutdown), 19);
    assert!(jobs.iter().all(JobHandle::is_cancelled));
    assert_eq!(jobs[3].reason(), Some(CancelReason::ClientRequest));
    assert_eq!(jobs[4].reason(), Some(CancelReason::Shutdown));
}

#[test]
fn child_token_fires_on_cancel_but_cannot_cancel_the_job() {
    let tracker = tracker_with_budget(100);
    let job = tracker.register("t", JobOptions::default()).unwrap();
    let token = job.token();
    token.cancel();
    assert!(!job.is_cancelled());
    let second = job.token();
    tracker.cancel("t", CancelReason::ClientRequest);
    assert!(second.is_cancelled());
}

#[test]
fn list_and_get_report_running_cancelling_and_finished_jobs() {
    let tracker = tracker_with_budget(100);
    let running = tracker.register("running", reserve(7)).unwrap();
    let cancelling = tracker
        .register("cancelling", JobOptions::default())
        .unwrap();
    running.commit_step();
    tracker.cancel("cancelling", CancelReason::Shutdown);
    tracker
        .register("finished", JobOptions::default())
        .unwrap()
        .finish(JobOutcome::Failed);

    let list = tracker.list();
    let ids: Vec<_> = list.iter().map(|s| s.job_id.as_str()).collect();
    assert_eq!(ids, ["running", "cancelling"], "active jobs, oldest first");
    assert_eq!(list[0].state, JobState::Running);
    assert_eq!(list[0].reserved_units, 7);
    assert_eq!(list[0].steps, 1);
    assert_eq!(
        list[1].state,
        JobState::Cancelling {
            reason: CancelReason::Shutdown
        }
    );
    assert!(matches!(
        tracker.get("finished").unwrap().state,
        JobState::Finished {
            outcome: JobOutcome::Failed,
            ..
        }
    ));
    assert!(tracker.get("nope").is_none());
    drop(cancelling);
}

#[test]
fn status_and_outcomes_round_trip_through_json() {
    let tracker = tracker_with_budget(100);
    let _job = tracker.register("json", reserve(3)).unwrap();
    tracker.cancel("json", CancelReason::ClientGone);
    let status = tracker.get("json").unwrap();
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["job_id"], "json");
    assert_eq!(json["state"], "cancelling");
    assert_eq!(json["reason"], "client_gone");
    assert_eq!(json["reserved_units"], 3);
    let back: JobStatus = serde_json::from_value(json).unwrap();
    assert_eq!(back, status);

    assert_eq!(
        serde_json::to_string(&CancelOutcome::AlreadyCancelling).unwrap(),
        "\"already_cancelling\""
    );
    assert_eq!(
        serde_json::to_value(JobOutcome::Cancelled(CancelReason::Deadline)).unwrap(),
        serde_json::json!({"cancelled": "deadline"})
    );
}

#[test]
fn metrics_count_jobs_cancels_and_reserved_units() {
    let tracker = tracker_with_budget(100);
    let mut registry = Registry::default();
    tracker.register_metrics(&mut registry);

    let held = tracker.register("held", reserve(25)).unwrap();
    let cancelled = tracker
        .register("cancelled", JobOptions::default())
        .unwrap();
    tracker.cancel("cancelled", CancelReason::ClientRequest);
    tracker.cancel("cancelled", CancelReason::ClientRequest);
    tracker.cancel("ghost", CancelReason::ClientRequest);
    drop(cancelled);
    let _ = tracker.register("held", JobOptions::default());

    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    for line in [
        "job_tracker_jobs_active 1",
        "job_tracker_jobs_started_total 2",
        "job_tracker_reserved_units 25",
        r#"job_tracker_cancel_requests_total{outcome="cancelling"} 1"#,
        r#"job_tracker_cancel_requests_total{outcome="already_cancelling"} 1"#,
        r#"job_tracker_cancel_requests_total{outcome="unknown"} 1"#,
        r#"job_tracker_jobs_finished_total{outcome="cancelled",reason="client_request"} 1"#,
        r#"job_tracker_jobs_rejected_total{reason="duplicate"} 1"#,
        "job_tracker_cancel_to_stop_seconds_count 1",
        "job_tracker_steps_after_cancel_total 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    drop(held);
}

#[test]
fn concurrent_register_cancel_and_drop_leave_nothing_behind() {
    let tracker = tracker_with_budget(1_000);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for worker in 0..4 {
            let tracker = tracker.clone();
            let stop = &stop;
            scope.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("w{worker}-{}", n % 50);
                    n += 1;
                    if let Ok(job) = tracker.register(&id, reserve(10)) {
                        while job.commit_step().is_some() && job.steps() < 3 {}
                    }
                }
            });
        }
        for _ in 0..2 {
            let tracker = tracker.clone();
            let stop = &stop;
            scope.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    tracker.cancel(
                        &format!("w{}-{}", n % 4, n % 50),
                        CancelReason::ClientRequest,
                    );
                    n += 1;
                }
            });
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(tracker.active_count(), 0);
    assert_eq!(tracker.pool().reserved(), 0);
    assert!(tracker.list().is_empty());
}
