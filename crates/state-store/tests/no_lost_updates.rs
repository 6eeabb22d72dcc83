//! No lost and no duplicated updates: random interleavings of concurrent
//! writers under injected conflicts, 5xx and lost answers, judged by testkit's
//! `CounterHistory` from what the writers observed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::Value;
use state_store::naming::KEY_STATE;
use state_store::{
    ConfigMapBackend, FaultConfig, FlakyBackend, MemoryBackend, StateBackend, StateStore,
    StoreConfig,
};
use testkit::faults::{InjectedError, Match};
use testkit::history::CounterHistory;
use testkit::kube::FakeKube;

const TASK: &str = "contended";

fn config() -> StoreConfig {
    StoreConfig {
        max_iterations: 100_000,
        // Enough that even at the highest injected fault rates an update
        // never runs out of attempts (each attempt fails with p < 0.6).
        max_attempts: 200,
        ..StoreConfig::default()
    }
}

/// Runs `writers` × `per_writer` increments through `store`, recording each
/// in `history`, then records the final value read through `reader`.
async fn run_writers(
    store: &StateStore,
    reader: &StateStore,
    writers: usize,
    per_writer: usize,
) -> CounterHistory {
    let history = CounterHistory::new(0);
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            let history = history.clone();
            tokio::spawn(async move {
                for i in 0..per_writer {
                    let (writer, op) = (format!("w{w}"), format!("w{w}-{i}"));
                    history.attempt(&writer, &op);
                    let n = store.increment_iteration(TASK).await.unwrap();
                    history.applied(&writer, &op, u64::from(n) - 1, u64::from(n));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let last = reader
        .get(TASK)
        .await
        .unwrap()
        .map_or(0, |s| s.state.iteration);
    history.record_final(u64::from(last));
    history
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn interleaved_writers_on_the_memory_backend_apply_every_increment_exactly_once(
        writers in 2usize..7,
        per_writer in 1usize..8,
        seed in any::<u64>(),
        conflict_rate in 0.0f64..0.3,
        write_error_rate in 0.0f64..0.2,
        read_error_rate in 0.0f64..0.2,
        lost_response_rate in 0.0f64..0.2,
    ) {
        paused_runtime().block_on(async {
            let memory = Arc::new(MemoryBackend::new());
            let flaky = FlakyBackend::new(memory.clone(), FaultConfig {
                seed,
                read_error_rate,
                write_error_rate,
                conflict_rate,
                lost_response_rate,
                max_latency: Duration::from_millis(5),
            });
            let store = StateStore::with_config(flaky, config());
            let reader = StateStore::with_config(memory, config());
            let history = run_writers(&store, &reader, writers, per_writer).await;
            prop_assert_eq!(history.check(), Ok(()));
            prop_assert_eq!(history.applied_count(), writers * per_writer);
            Ok(())
        })?;
    }
}

proptest! {
    // Each case starts a fake API server: fewer, larger cases.
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn interleaved_writers_through_the_kubernetes_api_apply_every_increment_exactly_once(
        writers in 3usize..7,
        per_writer in 2usize..6,
        seed in any::<u64>(),
        error_rate in 0.0f64..0.15,
        lost_response_rate in 0.0f64..0.15,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let kube = FakeKube::builder().seed(seed).start().await.unwrap();
            kube.faults().latency(Match::any(), Duration::from_millis(1), Duration::from_millis(2));
            kube.faults().error_rate(Match::any().verb("update"), error_rate, InjectedError::Status(500));
            kube.faults().error_rate(Match::any().verb("get"), error_rate, InjectedError::Status(503));
            kube.faults().drop_rate(Match::any().verb("update"), error_rate / 2.0);
            let real = Arc::new(ConfigMapBackend::new(kube.client(), "default"));
            // Applied-but-lost answers on top of the real HTTP path.
            let flaky = FlakyBackend::new(real.clone(), FaultConfig {
                seed,
                lost_response_rate,
                ..FaultConfig::default()
            });
            let store = StateStore::with_config(flaky, config());
            let reader = StateStore::with_config(real, config());
            let history = run_writers(&store, &reader, writers, per_writer).await;
            prop_assert_eq!(history.check(), Ok(()));
            prop_assert_eq!(history.applied_count(), writers * per_writer);
            Ok(())
        })?;
    }
}

#[test]
fn lost_answers_are_settled_by_re_reading_not_by_blind_retries() {
    paused_runtime().block_on(async {
        let memory = Arc::new(MemoryBackend::new());
        let flaky = Arc::new(FlakyBackend::new(
            memory.clone(),
            FaultConfig {
                seed: 7,
                lost_response_rate: 0.3,
                max_latency: Duration::from_millis(3),
                ..FaultConfig::default()
            },
        ));
        let store = StateStore::with_config(flaky.clone(), config());
        let reader = StateStore::with_config(memory, config());
        let history = run_writers(&store, &reader, 4, 10).await;
        // 40 applied writes each lose their answer with p = 0.3 (seeded, but
        // the order in which writers draw depends on jittered backoff), so the
        // count is Binomial(40, 0.3): a bound of 5 failed about once in 70
        // runs; none at all has p = 0.7^40 < 1e-6.
        assert!(flaky.injected() > 0, "the faults under test were injected");
        assert_eq!(history.check(), Ok(()));
        assert_eq!(reader.get(TASK).await.unwrap().unwrap().state.iteration, 40);
    });
}

/// The control experiment: the same faults with a writer that retries a failed
/// write blindly (the obvious loop) duplicate increments, and the checker sees it.
#[test]
fn a_blind_retry_after_a_lost_answer_is_caught_by_the_history_checker() {
    paused_runtime().block_on(async {
        let memory = Arc::new(MemoryBackend::new());
        // Absent states are created by the first update, even one that changes nothing.
        StateStore::new(memory.clone())
            .update(TASK, |_| Ok::<_, state_store::Error>(()))
            .await
            .unwrap();
        let flaky = FlakyBackend::new(
            memory.clone(),
            FaultConfig {
                seed: 3,
                lost_response_rate: 0.3,
                ..FaultConfig::default()
            },
        );
        let history = CounterHistory::new(0);
        for i in 0..20 {
            let op = format!("op-{i}");
            history.attempt("blind", &op);
            loop {
                let doc = flaky.get("task-contended-state").await.unwrap().unwrap();
                let mut json: Value = serde_json::from_str(&doc.document.data[KEY_STATE]).unwrap();
                let before = json["iteration"].as_u64().unwrap();
                json["iteration"] = Value::from(before + 1);
                let mut next = doc.document.clone();
                next.data.insert(KEY_STATE.into(), json.to_string());
                match flaky.replace(&doc.name, &doc.resource_version, next).await {
                    Ok(_) => {
                        history.applied("blind", &op, before, before + 1);
                        break;
                    }
                    Err(_) => continue,
                }
            }
        }
        let last = StateStore::with_config(memory, config())
            .get(TASK)
            .await
            .unwrap()
            .unwrap()
            .state
            .iteration;
        history.record_final(u64::from(last));
        assert!(
            history.check().is_err(),
            "duplicated increments went unnoticed"
        );
    });
}
