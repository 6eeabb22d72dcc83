//! Agents as real processes: what they get, timeouts (SIGTERM obeyed, and
//! ignored until SIGKILL after the 5 s default grace), cancellation through
//! the API, workspaces removed on every path, and queue expiry on a paused
//! clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use agent_runner::Runner;
use agent_runner::config::DEFAULT_AGENT_KILL_GRACE_SECONDS;
use serde_json::Value;
use support::{FakeStream, eventually, http, sample, settings, start_connected};
use testkit::logs::Logs;

fn value(runner: &Runner, name: &str, extra: &str) -> f64 {
    let series = if extra.is_empty() {
        format!(r#"agent_runner_{name}{{cluster="test"}}"#)
    } else {
        format!(r#"agent_runner_{name}{{cluster="test",{extra}}}"#)
    };
    sample(&runner.metrics_text(), &series)
}

fn completed(runner: &Runner, status: &str) -> f64 {
    value(
        runner,
        "agents_completed_total",
        &format!(r#"status="{status}""#),
    )
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Waits for a file the agent writes, and returns its content.
async fn read_when_written(path: &Path) -> String {
    eventually(&format!("{} is written", path.display()), || {
        std::fs::read_to_string(path).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
    std::fs::read_to_string(path).unwrap()
}

#[tokio::test]
async fn an_agent_gets_the_incident_on_stdin_its_env_and_a_workspace_removed_afterwards() {
    let out = tempfile::tempdir().unwrap();
    let workspaces = tempfile::tempdir().unwrap();
    let stream = FakeStream::start(Vec::new()).await;
    let script = format!(
        r#"cat > "{out}/stdin"; echo "$INCIDENT_ID $CLUSTER $SEVERITY" > "{out}/env"; pwd > "{out}/pwd"; echo done; echo oops >&2"#,
        out = out.path().display()
    );
    let mut settings = settings(&stream.url(), &script);
    settings.workspace_root = Some(workspaces.path().to_owned());
    let (runner, shutdown) = start_connected(settings).await;

    stream
        .emit("id: 7\ndata: {\"id\":\"disk-full\",\"severity\":\"critical\",\"node\":\"n1\"}\n\n");
    eventually("the agent succeeded", || {
        completed(&runner, "success") == 1.0
    })
    .await;

    let stdin = std::fs::read_to_string(out.path().join("stdin")).unwrap();
    assert_eq!(
        stdin,
        "{\"id\":\"disk-full\",\"severity\":\"critical\",\"node\":\"n1\"}\n"
    );
    let env = std::fs::read_to_string(out.path().join("env")).unwrap();
    assert_eq!(env, "disk-full test critical\n");
    let pwd = std::fs::read_to_string(out.path().join("pwd")).unwrap();
    let workspace = Path::new(pwd.trim());
    assert!(
        workspace.starts_with(workspaces.path().canonicalize().unwrap())
            || workspace.starts_with(workspaces.path()),
        "{pwd}"
    );
    assert!(!workspace.exists(), "the workspace is removed");
    assert!(entries(workspaces.path()).is_empty());
    assert_eq!(value(&runner, "agents_active", ""), 0.0);
    assert_eq!(
        sample(
            &runner.metrics_text(),
            "agent_runner_agent_duration_seconds_count"
        ),
        1.0
    );
    shutdown.trigger();
    runner.run_until_shutdown().await;
}

#[tokio::test]
async fn a_timed_out_agent_that_obeys_sigterm_is_stopped_and_its_workspace_removal_confirmed() {
    let (logs, _guard) = Logs::capture();
    let out = tempfile::tempdir().unwrap();
    let stream = FakeStream::start(Vec::new()).await;
    let script = format!(
        r#"pwd > "{out}/pwd"; exec sleep 3600"#,
        out = out.path().display()
    );
    let mut settings = settings(&stream.url(), &script);
    settings.agent_timeout = Duration::from_secs(1);
    let (runner, shutdown) = start_connected(settings).await;

    let started = Instant::now();
    stream.incident("slow-1", "error");
    let pwd = read_when_written(&out.path().join("pwd")).await;
    eventually("the agent timed out", || {
        completed(&runner, "timeout") == 1.0
    })
    .await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1),
        "not before the timeout: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(DEFAULT_AGENT_KILL_GRACE_SECONDS),
        "SIGTERM ended it; no need to wait for the grace: {elapsed:?}"
    );
    assert_eq!(value(&runner, "agents_timeout_total", ""), 1.0);
    assert!(!Path::new(pwd.trim()).exists(), "workspace removed");

    let warning = logs
        .with_message("agent timed out; sending SIGTERM to its process group")
        .pop()
        .expect("a WARN log for the timeout");
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["fields"]["cluster"], "test");
    assert_eq!(warning["fields"]["incident_id"], "slow-1");
    assert_eq!(warning["fields"]["threshold_seconds"], 1.0);
    assert!(warning["fields"]["duration_seconds"].as_f64().unwrap() >= 1.0);
    let finished = logs.with_message("agent did not succeed").pop().unwrap();
    assert_eq!(finished["fields"]["stopped_by"], "terminated");
    assert_eq!(finished["fields"]["signal"], 15);
    // The cleanup after the timeout is confirmed, not only its failure.
    let removed = logs
        .with_message("agent workspace removed")
        .pop()
        .expect("an INFO line confirms the cleanup");
    assert_eq!(removed["level"], "INFO");
    assert_eq!(removed["fields"]["cluster"], "test");
    assert_eq!(removed["fields"]["incident_id"], "slow-1");
    assert_eq!(removed["fields"]["status"], "timeout");
    assert_eq!(removed["fields"]["workspace"], pwd.trim());
    assert_eq!(
        removed["fields"]["agent_id"],
        finished["fields"]["agent_id"]
    );
    shutdown.trigger();
    runner.run_until_shutdown().await;
}

#[tokio::test]
async fn a_timed_out_agent_that_ignores_sigterm_is_killed_after_the_default_5_second_grace() {
    let (logs, _guard) = Logs::capture();
    let out = tempfile::tempdir().unwrap();
    let stream = FakeStream::start(Vec::new()).await;
    // The shell and its sleep both ignore SIGTERM (ignored dispositions are
    // inherited across exec).
    let script = format!(
        r#"trap '' TERM; pwd > "{out}/pwd"; sleep 3600"#,
        out = out.path().display()
    );
    let mut settings = settings(&stream.url(), &script);
    assert_eq!(
        settings.agent_kill_grace,
        Duration::from_secs(5),
        "the issue's default is what this test exercises"
    );
    settings.agent_timeout = Duration::from_secs(1);
    let (runner, shutdown) = start_connected(settings).await;

    let started = Instant::now();
    stream.incident("stubborn-1", "critical");
    let pwd = read_when_written(&out.path().join("pwd")).await;
    eventually("the agent timed out", || {
        completed(&runner, "timeout") == 1.0
    })
    .await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1 + 5),
        "timeout, then the full 5 s grace before SIGKILL: {elapsed:?}"
    );
    assert!(!Path::new(pwd.trim()).exists(), "workspace removed");
    let finished = logs.with_message("agent did not succeed").pop().unwrap();
    assert_eq!(finished["fields"]["stopped_by"], "killed");
    assert_eq!(finished["fields"]["signal"], 9);
    assert_eq!(finished["fields"]["status"], "timeout");
    shutdown.trigger();
    runner.run_until_shutdown().await;
}

#[tokio::test]
async fn agents_are_listed_and_cancelled_through_the_api() {
    let stream = FakeStream::start(Vec::new()).await;
    let (runner, shutdown) = start_connected(settings(&stream.url(), "exec sleep 3600")).await;
    stream.incident("long-1", "error");
    eventually("the agent runs", || {
        value(&runner, "agents_active", "") == 1.0
    })
    .await;

    let base = format!("http://{}", runner.health_addr());
    let list: Value = http()
        .get(format!("{base}/v1/agents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent = &list["agents"][0];
    assert_eq!(agent["cluster"], "test");
    assert_eq!(agent["incident_id"], "long-1");
    assert_eq!(agent["severity"], "error");
    assert_eq!(agent["state"], "running");
    assert!(agent["pid"].as_u64().is_some());
    assert!(agent["deadline"].as_str().is_some());
    let id = agent["id"].as_str().unwrap().to_owned();

    let cancel = http()
        .post(format!("{base}/v1/agents/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status().as_u16(), 202);
    let body: Value = cancel.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"id": id, "status": "cancelling"}));
    eventually("the agent is stopped", || {
        completed(&runner, "cancelled") == 1.0
    })
    .await;
    let again = http()
        .post(format!("{base}/v1/agents/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 409, "it already finished");
    let unknown = http()
        .post(format!("{base}/v1/agents/nope/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 404);
    assert_eq!(
        sample(&runner.metrics_text(), "agent_runner_circuit_breaker_state"),
        0.0,
        "an operator's cancel is not an agent failure"
    );
    shutdown.trigger();
    runner.run_until_shutdown().await;
}

#[tokio::test]
async fn queued_incidents_expire_on_the_sweep_with_a_warning_on_a_paused_clock() {
    let (logs, _guard) = Logs::capture();
    let stream = FakeStream::start(Vec::new()).await;
    let mut settings = settings(&stream.url(), "exec sleep 3600");
    settings.max_concurrent_agents = 1;
    settings.agent_timeout = Duration::from_secs(86_400);
    // No timer may fire on its own while the clock is moved by hand.
    settings.sse_idle_timeout = None;
    settings.shutdown_timeout = Duration::from_secs(1);
    let max_age = settings.max_queue_age;
    let sweep = settings.queue_sweep_interval;
    assert_eq!(
        (max_age, sweep),
        (Duration::from_secs(600), Duration::from_secs(60)),
        "the defaults"
    );
    let (runner, shutdown) = start_connected(settings).await;
    stream.incident("busy", "critical");
    eventually("the only agent slot is taken", || {
        value(&runner, "agents_active", "") == 1.0
    })
    .await;
    stream.incident("waiting-1", "warning");
    stream.emit("id: ev-2\ndata: {\"id\":\"waiting-2\",\"severity\":\"error\"}\n\n");
    eventually("two incidents wait", || {
        value(&runner, "queue_depth", "") == 2.0
    })
    .await;

    tokio::time::pause();
    // Just under the max age, a sweep keeps both.
    tokio::time::advance(max_age - Duration::from_secs(1)).await;
    tokio::task::yield_now().await;
    assert_eq!(value(&runner, "events_expired_total", ""), 0.0);
    assert_eq!(value(&runner, "queue_depth", ""), 2.0);
    // The first sweep after they are older than the max age drops them.
    tokio::time::advance(sweep + Duration::from_secs(1)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(value(&runner, "events_expired_total", ""), 2.0);
    assert_eq!(value(&runner, "queue_depth", ""), 0.0);
    assert_eq!(value(&runner, "events_dequeued_total", ""), 1.0);
    tokio::time::resume();

    let expired = logs.with_message("queued incident expired before an agent was free");
    assert_eq!(expired.len(), 2);
    let second = expired
        .iter()
        .find(|l| l["fields"]["incident_id"] == "waiting-2")
        .unwrap();
    assert_eq!(second["level"], "WARN");
    assert_eq!(second["fields"]["cluster"], "test");
    assert_eq!(second["fields"]["event_id"], "ev-2");
    assert_eq!(second["fields"]["max_age_seconds"], 600.0);
    assert!(second["fields"]["age_seconds"].as_f64().unwrap() > 600.0);

    shutdown.trigger();
    let report = runner.run_until_shutdown().await;
    assert_eq!(report.interrupted, ["test/busy"]);
    assert_eq!(report.exit_code(), 0);
}

#[tokio::test]
async fn up_stays_1_while_metrics_answer_during_the_drain_and_the_shutdown_phase_shows_it() {
    let stream = FakeStream::start(Vec::new()).await;
    let mut settings = settings(&stream.url(), "exec sleep 3600");
    settings.shutdown_timeout = Duration::from_secs(2);
    let (runner, shutdown) = start_connected(settings).await;
    stream.incident("long-1", "error");
    eventually("the agent runs", || {
        value(&runner, "agents_active", "") == 1.0
    })
    .await;
    let metrics_url = format!("http://{}/metrics", runner.metrics_addr());
    let scrape = || async {
        let response = http().get(&metrics_url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        response.text().await.unwrap()
    };
    let before = scrape().await;
    assert_eq!(sample(&before, "agent_runner_up"), 1.0);
    assert_eq!(sample(&before, "agent_runner_shutdown_phase"), 0.0);

    shutdown.trigger();
    let drain = tokio::spawn(runner.run_until_shutdown());
    // The agent outlives the trigger by the shutdown timeout: scrapes in
    // that window see the drain, and a runner that still answers is up.
    let mut during = scrape().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while sample(&during, "agent_runner_shutdown_phase") != 1.0 {
        assert!(
            Instant::now() < deadline,
            "the drain never showed:\n{during}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        during = scrape().await;
    }
    assert_eq!(
        sample(&during, "agent_runner_up"),
        1.0,
        "answering means up"
    );
    assert_eq!(
        sample(&during, r#"agent_runner_agents_active{cluster="test"}"#),
        1.0
    );
    let report = drain.await.unwrap();
    assert_eq!(report.interrupted, ["test/long-1"]);
    assert_eq!(report.exit_code(), 0);
}
