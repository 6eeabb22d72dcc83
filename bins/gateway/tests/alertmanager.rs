//! `POST /api/v1/alertmanager` with payloads of Alertmanager's real shape
//! (webhook version 4: `groupKey`, `status`, `alerts[]` with `fingerprint`,
//! `labels`, `startsAt`), and malformed ones: 400 with a message, nothing
//! created. One replica on memory backends, over real HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use gateway::{Gateway, MemoryRequests};
use serde_json::{Value, json};
use support::{Replica, http, post, settings};

/// A notification as Alertmanager 0.27 sends it to a `webhook_configs` receiver.
fn notification(alerts: &Value) -> Value {
    json!({
        "receiver": "supersede-gateway",
        "status": "firing",
        "alerts": alerts,
        "groupLabels": {"alertname": "KubePodCrashLooping"},
        "commonLabels": {"alertname": "KubePodCrashLooping", "severity": "critical"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.monitoring:9093",
        "version": "4",
        "groupKey": "{}:{alertname=\"KubePodCrashLooping\"}",
        "truncatedAlerts": 0
    })
}

fn alert(fingerprint: &str, pod: &str, status: &str) -> Value {
    json!({
        "status": status,
        "labels": {
            "alertname": "KubePodCrashLooping",
            "severity": "critical",
            "namespace": "payments",
            "pod": pod,
            "container": "api"
        },
        "annotations": {"summary": format!("{pod} is crash looping")},
        "startsAt": "2026-12-01T22:14:05.123Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.monitoring:9090/graph?g0.expr=...",
        "fingerprint": fingerprint
    })
}

async fn replica() -> (Replica, MemoryRequests) {
    let (gateway, requests, _) = Gateway::memory(settings("gateway-0")).unwrap();
    (Replica::serve(gateway).await, requests)
}

#[tokio::test]
async fn a_group_of_firing_alerts_creates_one_request_each_and_a_resend_counts_them() {
    let (replica, requests) = replica().await;
    let url = replica.url("/api/v1/alertmanager");
    let payload = notification(&json!([
        alert("8d1e5a4ce9b0f1a2", "api-7d9f-abcde", "firing"),
        alert("0b5c9e3f7a1d2c44", "api-7d9f-fghij", "firing"),
    ]))
    .to_string();
    let (status, body) = post(&http(), &url, payload.clone()).await;
    assert_eq!(status, 201, "{body}");
    let answers = body["alerts"].as_array().unwrap();
    assert_eq!(answers.len(), 2);
    assert!(answers.iter().all(|a| a["status"] == "created"), "{body}");

    let (status, body) = post(&http(), &url, payload).await;
    assert_eq!(status, 202, "{body}");
    assert!(
        body["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["status"] == "deduplicated" && a["occurrenceCount"] == 2),
        "{body}"
    );
    replica.gateway.settled().await;
    let stored = requests.all();
    assert_eq!(stored.len(), 2);
    let rr = stored
        .iter()
        .find(|r| r.spec.fingerprint == "8d1e5a4ce9b0f1a2")
        .unwrap();
    assert_eq!(rr.spec.alert_name, "KubePodCrashLooping");
    assert_eq!(rr.spec.target_namespace.as_deref(), Some("payments"));
    let resource = rr.spec.resource.as_ref().unwrap();
    assert_eq!(
        (resource.kind.as_str(), resource.name.as_str()),
        ("Pod", "api-7d9f-abcde")
    );
    assert_eq!(
        rr.spec.starts_at.unwrap().to_string(),
        "2026-12-01T22:14:05.123Z"
    );
    assert_eq!(rr.occurrence_count(), 2);
}

#[tokio::test]
async fn resolved_alerts_create_nothing_and_alerts_without_fingerprint_get_a_stable_one() {
    let (replica, requests) = replica().await;
    let url = replica.url("/api/v1/alertmanager");
    let mut unfingerprinted = alert("", "api-1", "firing");
    unfingerprinted
        .as_object_mut()
        .unwrap()
        .remove("fingerprint");
    let payload = notification(&json!([
        alert("aaaaaaaaaaaaaaaa", "api-0", "resolved"),
        unfingerprinted
    ]));
    let (status, body) = post(&http(), &url, payload.to_string()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["alerts"][0]["status"], "resolved");
    let fingerprint = body["alerts"][1]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(fingerprint.len(), 16);
    let (_, again) = post(&http(), &url, payload.to_string()).await;
    assert_eq!(again["alerts"][1]["fingerprint"], fingerprint.as_str());
    assert_eq!(
        requests.all().len(),
        1,
        "the resolved alert created nothing"
    );
}

#[tokio::test]
async fn malformed_payloads_are_refused_with_400_and_a_message_and_create_nothing() {
    let (replica, requests) = replica().await;
    let url = replica.url("/api/v1/alertmanager");
    let good = alert("1111111111111111", "api-0", "firing");
    let mut no_alertname = good.clone();
    no_alertname["labels"]
        .as_object_mut()
        .unwrap()
        .remove("alertname");
    let mut bad_status = good.clone();
    bad_status["status"] = json!("pending");
    let mut bad_fingerprint = good.clone();
    bad_fingerprint["fingerprint"] = json!("../../etc");
    let mut bad_time = good.clone();
    bad_time["startsAt"] = json!("yesterday");
    let mut v3 = notification(&json!([good.clone()]));
    v3["version"] = json!("3");
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "not an Alertmanager"),
        ("{}".into(), "not an Alertmanager"),
        (v3.to_string(), "version"),
        (notification(&json!([])).to_string(), "alerts is empty"),
        // One bad alert refuses the whole group: none of it is created.
        (
            notification(&json!([good.clone(), no_alertname])).to_string(),
            "alerts[1]: labels.alertname",
        ),
        (notification(&json!([bad_status])).to_string(), "status"),
        (
            notification(&json!([bad_fingerprint])).to_string(),
            "fingerprint",
        ),
        (notification(&json!([bad_time])).to_string(), "startsAt"),
        (
            notification(&json!([{"status": "firing"}])).to_string(),
            "labels",
        ),
    ];
    for (body, needle) in cases {
        let (status, answer) = post(&http(), &url, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
    assert!(requests.all().is_empty(), "nothing was created");
    assert_eq!(replica.gateway.metrics().signals("invalid"), 9);
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413_and_bad_signals_with_400() {
    let (replica, requests) = replica().await;
    let huge = "x".repeat(2 * 1024 * 1024);
    let (status, _) = post(&http(), &replica.url("/api/v1/alertmanager"), huge).await;
    assert_eq!(status, 413);
    let (status, answer) = post(
        &http(),
        &replica.url("/api/v1/signals"),
        r#"{"source":"p","severity":"critical"}"#,
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("alertName"),
        "{answer}"
    );
    assert!(requests.all().is_empty());
}

#[tokio::test]
async fn metrics_and_probes_are_served_on_the_same_port() {
    let (replica, _) = replica().await;
    let client = http();
    let (status, _) = post(
        &client,
        &replica.url("/api/v1/signals"),
        support::signal("fp-1"),
    )
    .await;
    assert_eq!(status, 201);
    let metrics = client
        .get(replica.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "gateway_signals_total{outcome=\"created\"} 1",
        "gateway_signals_total{outcome=\"deduplicated\"} 0",
        "gateway_signals_total{outcome=\"failed\"} 0",
        "gateway_lock_added_seconds_count 1",
        "gateway_signal_duration_seconds_count 1",
        "gateway_lock_acquisitions_total 1",
        "gateway_lock_contended_total",
        "gateway_lock_wait_duration_seconds_count{outcome=\"acquired\"} 1",
        "gateway_lock_hold_duration_seconds_count 1",
        "gateway_count_conflicts_total 0",
    ] {
        assert!(metrics.contains(series), "{series} missing in\n{metrics}");
    }
    for probe in ["/healthz", "/readyz"] {
        let status = client
            .get(replica.url(probe))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{probe}");
    }
    replica.shutdown.trigger();
    replica.server.await.unwrap();
}
