//! The runner in-process against a fake incident stream: connection
//! metrics, filtering, readiness and the circuit breaker.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use agent_runner::Runner;
use resilience::Shutdown;
use serde_json::Value;
use support::{
    FakeStream, Reply, assert_bounded_labels, eventually, http, incident, sample, settings,
    start_connected,
};
use testkit::logs::Logs;

const C: &str = r#"cluster="test""#;

fn series(name: &str, extra: &str) -> String {
    if extra.is_empty() {
        format!("agent_runner_{name}{{{C}}}")
    } else {
        format!("agent_runner_{name}{{{C},{extra}}}")
    }
}

fn value(runner: &Runner, name: &str, extra: &str) -> f64 {
    sample(&runner.metrics_text(), &series(name, extra))
}

async fn readyz(runner: &Runner) -> (u16, Value) {
    let response = http()
        .get(format!("http://{}/readyz", runner.health_addr()))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn connection_metrics_are_exact_across_a_clean_end_a_500_a_drop_and_a_restart() {
    let stream = FakeStream::start(vec![
        Reply::Close(vec![incident("a", "warning")]),
        Reply::Status(500),
        Reply::Abort(vec![incident("b", "warning")]),
        Reply::Live(Vec::new()),
    ])
    .await;
    let shutdown = Shutdown::new();
    let runner = Runner::start(settings(&stream.url(), "true"), shutdown.clone())
        .await
        .unwrap();

    eventually("the fourth connection is up", || {
        stream.connections() == 4 && value(&runner, "sse_connections_active", "") == 1.0
    })
    .await;
    let reconnections = |reason: &str| {
        value(
            &runner,
            "sse_reconnections_total",
            &format!(r#"reason="{reason}""#),
        )
    };
    let errors = |reason: &str| {
        value(
            &runner,
            "sse_connection_errors_total",
            &format!(r#"reason="{reason}""#),
        )
    };
    assert_eq!(reconnections("end_of_stream"), 1.0);
    assert_eq!(reconnections("server_status"), 1.0);
    assert_eq!(reconnections("network"), 1.0);
    assert_eq!(reconnections("timeout"), 0.0);
    assert_eq!(reconnections("decode"), 0.0);
    assert_eq!(errors("end_of_stream"), 0.0, "a clean end is not an error");
    assert_eq!(errors("server_status"), 1.0);
    assert_eq!(errors("network"), 1.0);
    let text = runner.metrics_text();
    assert_eq!(
        sample(&text, "agent_runner_sse_connection_duration_seconds_count"),
        2.0,
        "two established connections ended; the 500 never connected"
    );
    assert_eq!(
        sample(
            &text,
            &series("events_received_total", r#"severity="warning""#)
        ),
        2.0
    );

    // The server goes away: the live connection breaks, attempts are refused
    // while it is down, and it is reached again once it is back.
    stream.kill().await;
    eventually("the break is counted", || {
        value(&runner, "sse_connections_active", "") == 0.0 && errors("network") >= 2.0
    })
    .await;
    stream.restart().await;
    eventually("reconnected after the restart", || {
        value(&runner, "sse_connections_active", "") == 1.0
    })
    .await;
    assert_eq!(
        reconnections("network"),
        errors("network"),
        "every network failure was followed by exactly one reconnection"
    );
    assert_eq!(
        sample(
            &runner.metrics_text(),
            "agent_runner_sse_connection_duration_seconds_count"
        ),
        3.0
    );

    shutdown.trigger();
    assert_eq!(runner.run_until_shutdown().await.exit_code(), 0);
}

#[tokio::test]
async fn every_event_is_counted_once_by_severity_and_filter_reason() {
    let stream = FakeStream::start(Vec::new()).await;
    let (runner, shutdown) = start_connected(settings(&stream.url(), "true")).await;

    stream.incident("i-1", "info"); // below the default minimum (warning)
    stream.incident("w-1", "warning");
    stream.incident("w-1", "WARNING"); // duplicate, whatever the case
    stream.emit("data: not json\n\n");
    stream.emit("data: {\"id\":\"x\",\"severity\":\"sev1\"}\n\n"); // unknown severity
    stream.emit("data: {\"severity\":\"error\"}\n\n"); // no id
    stream.emit("event: ping\ndata: {}\n\n"); // not an incident event: ignored
    stream.emit(": heartbeat\n\n");
    stream.incident("c-1", "critical");
    stream.incident("e-1", "error");

    eventually("three agents ran", || {
        value(&runner, "agents_completed_total", r#"status="success""#) == 3.0
    })
    .await;
    let received = |severity: &str| {
        value(
            &runner,
            "events_received_total",
            &format!(r#"severity="{severity}""#),
        )
    };
    let filtered = |reason: &str| {
        value(
            &runner,
            "events_filtered_total",
            &format!(r#"reason="{reason}""#),
        )
    };
    assert_eq!(received("info"), 1.0);
    assert_eq!(received("warning"), 2.0);
    assert_eq!(
        received("error"),
        2.0,
        "the id-less event still had a severity"
    );
    assert_eq!(received("critical"), 1.0);
    assert_eq!(received("unknown"), 2.0);
    assert_eq!(filtered("severity_low"), 1.0);
    assert_eq!(filtered("duplicate"), 1.0);
    assert_eq!(filtered("malformed"), 3.0);
    assert_eq!(filtered("queue_full"), 0.0);
    assert_eq!(value(&runner, "events_queued_total", ""), 3.0);
    assert_eq!(value(&runner, "events_dequeued_total", ""), 3.0);
    assert_eq!(value(&runner, "agents_spawned_total", ""), 3.0);
    assert_eq!(value(&runner, "queue_depth", ""), 0.0);
    assert_eq!(value(&runner, "agents_active", ""), 0.0);

    // The duplicate window is per incident id: a repeat later is still one.
    stream.incident("c-1", "critical");
    eventually("the repeat is filtered", || filtered("duplicate") == 2.0).await;

    // Whatever the stream sent, the labels kept to their fixed values.
    assert_bounded_labels(&runner.metrics_text(), &["test"]);

    shutdown.trigger();
    assert_eq!(runner.run_until_shutdown().await.exit_code(), 0);
}

#[tokio::test]
async fn readyz_is_503_until_a_stream_connects() {
    // Nothing listens on a port we bound and released.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let shutdown = Shutdown::new();
    let runner = Runner::start(
        settings(&format!("http://{closed}/events"), "true"),
        shutdown.clone(),
    )
    .await
    .unwrap();
    eventually("a refused attempt is counted", || {
        value(
            &runner,
            "sse_connection_errors_total",
            r#"reason="network""#,
        ) >= 1.0
    })
    .await;
    let (status, body) = readyz(&runner).await;
    assert_eq!(status, 503);
    assert_eq!(
        body["failed"],
        serde_json::json!([{"check": "streams", "message": "no incident stream connected (0 of 1)"}])
    );
    let healthz = http()
        .get(format!("http://{}/healthz", runner.health_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status().as_u16(), 200, "alive, just not ready");
    shutdown.trigger();
    runner.run_until_shutdown().await;

    let stream = FakeStream::start(Vec::new()).await;
    let (runner, shutdown) = start_connected(settings(&stream.url(), "true")).await;
    assert_eq!(readyz(&runner).await.0, 200);
    shutdown.trigger();
    runner.run_until_shutdown().await;
}

#[tokio::test]
async fn the_breaker_opens_on_failures_drops_incidents_and_recovers_with_a_probe() {
    let stream = FakeStream::start(Vec::new()).await;
    let shutdown = Shutdown::new();
    let mut settings = settings(&stream.url(), r#"[ "$INCIDENT_ID" = ok ] || exit 1"#);
    settings.breaker_failure_threshold = 2;
    settings.breaker_cool_down = Duration::from_secs(2);
    let runner = Runner::start(settings, shutdown.clone()).await.unwrap();
    eventually("connected", || {
        value(&runner, "sse_connections_active", "") == 1.0
    })
    .await;
    let state =
        |runner: &Runner| sample(&runner.metrics_text(), "agent_runner_circuit_breaker_state");
    assert_eq!(state(&runner), 0.0);
    assert_eq!(readyz(&runner).await.0, 200);

    stream.incident("bad-1", "error");
    stream.incident("bad-2", "error");
    eventually("two failures open the breaker", || state(&runner) == 1.0).await;
    assert_eq!(
        value(&runner, "agents_completed_total", r#"status="failure""#),
        2.0
    );
    let (status, body) = readyz(&runner).await;
    assert_eq!(status, 503);
    assert_eq!(body["failed"][0]["check"], "circuit_breaker");
    assert!(
        body["failed"][0]["message"]
            .as_str()
            .unwrap()
            .contains("circuit breaker is open"),
        "{body}"
    );

    stream.incident("dropped", "critical");
    eventually("the incident is dropped while open", || {
        value(&runner, "circuit_breaker_events_dropped_total", "") == 1.0
    })
    .await;
    assert_eq!(value(&runner, "events_queued_total", ""), 2.0);

    eventually("the cool-down ends: half-open", || state(&runner) == 2.0).await;
    stream.incident("ok", "warning");
    eventually("the probe succeeds and closes the breaker", || {
        state(&runner) == 0.0
    })
    .await;
    assert_eq!(
        value(&runner, "agents_completed_total", r#"status="success""#),
        1.0
    );
    assert_eq!(readyz(&runner).await.0, 200);
    shutdown.trigger();
    runner.run_until_shutdown().await;
}

#[tokio::test]
async fn a_failed_connection_is_one_warn_line_and_a_reconnection_reports_the_downtime() {
    let (logs, _guard) = Logs::capture();
    let stream = FakeStream::start(vec![Reply::Status(500), Reply::Live(Vec::new())]).await;
    let (runner, shutdown) = start_connected(settings(&stream.url(), "true")).await;

    // The 500: one WARN line that says what failed, when the next try is
    // and how many tries it has been.
    let failed = logs.with_message("incident stream connection failed; retrying");
    assert_eq!(failed.len(), 1, "{failed:#?}");
    let failed = &failed[0];
    assert_eq!(failed["level"], "WARN");
    assert_eq!(failed["fields"]["cluster"], "test");
    assert_eq!(failed["fields"]["error"], "server answered 500");
    assert_eq!(failed["fields"]["reason"], "server_status");
    assert_eq!(failed["fields"]["attempt"], 1);
    let retry_in = failed["fields"]["retry_in"].as_str().unwrap();
    assert!(retry_in.ends_with('s'), "a readable duration: {retry_in}");
    let stream_warnings = logs
        .lines()
        .into_iter()
        .filter(|l| l["level"] == "WARN")
        .filter(|l| l["fields"]["message"].as_str().unwrap().contains("stream"))
        .count();
    assert_eq!(stream_warnings, 1, "one line per failure, not two");
    let connected = logs.with_message("incident stream connected");
    assert_eq!(connected.len(), 1);
    assert_eq!(connected[0]["fields"]["cluster"], "test");

    // The server goes away for a while and comes back: the reconnection says
    // how long the stream was down (at least the time it was away).
    let down = std::time::Instant::now();
    stream.kill().await;
    eventually("the break is seen", || {
        value(&runner, "sse_connections_active", "") == 0.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.restart().await;
    eventually("reconnected", || {
        value(&runner, "sse_connections_active", "") == 1.0
    })
    .await;
    let away = down.elapsed().as_secs_f64();
    let reconnected = logs.with_message("incident stream reconnected");
    assert_eq!(reconnected.len(), 1, "{reconnected:#?}");
    assert_eq!(reconnected[0]["level"], "INFO");
    assert_eq!(reconnected[0]["fields"]["cluster"], "test");
    let downtime = reconnected[0]["fields"]["downtime_seconds"]
        .as_f64()
        .unwrap();
    assert!(
        downtime >= 0.3 && downtime <= away,
        "down at least while the server was away, at most since the kill: {downtime} (away {away})"
    );
    let failures = logs.with_message("incident stream connection failed; retrying");
    assert!(failures.len() >= 2, "the break and the refused attempts");
    assert!(
        failures[1..]
            .iter()
            .all(|l| l["fields"]["reason"] == "network"
                && l["fields"]["attempt"].as_u64() >= Some(1)),
        "{failures:#?}"
    );

    shutdown.trigger();
    assert_eq!(runner.run_until_shutdown().await.exit_code(), 0);
}
