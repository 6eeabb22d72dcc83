//! The seed's scenario: several gateway replicas sharing one FakeKube (2 ms
//! per call, 5xx and dropped reads injected) receive the same signals at
//! once, many times over many fingerprints. Judged from what FakeKube
//! stores and its request log, never from the gateways' own counters:
//! exactly one RemediationRequest per fingerprint, its replicas' counts and
//! (once the folds landed) its `occurrenceCount` equal to the deliveries
//! answered 2xx, and at most one applied count patch per such delivery (a
//! replica batches the deliveries waiting in it).
//!
//! Real time (the fake server's latency is on the wall clock); a few
//! seconds per scenario in a debug build, where FakeKube's own work per
//! request dominates.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use gateway::{Gateway, Settings};
use support::{fake_kube, http, kube_replicas, post, signal, stored};
use testkit::faults::{InjectedError, Match};
use testkit::kube::{FakeKube, RequestFilter};

fn inject_faults(kube: &FakeKube) {
    let faults = kube.faults();
    faults.latency(Match::any(), Duration::from_millis(2), Duration::ZERO);
    // Failures injected before the server applies anything: a failed
    // request changed nothing, so the delivery is rightly not counted.
    for (verb, resource, rate) in [
        ("list", "remediationrequests", 0.03),
        ("create", "remediationrequests", 0.05),
        ("patch", "remediationrequests/status", 0.05),
        ("update", "remediationrequests/status", 0.05),
        ("get", "remediationrequests", 0.03),
        ("create", "leases", 0.03),
        ("update", "leases", 0.03),
    ] {
        faults.error_rate(
            Match::any().verb(verb).resource(resource),
            rate,
            InjectedError::Status(503),
        );
    }
    faults.drop_rate(Match::any().verb("get").resource("leases"), 0.03);
}

async fn same_signals_at_once_on(replicas: usize, fingerprints: usize, per_fingerprint: usize) {
    let kube = fake_kube().await;
    inject_faults(&kube);
    let gateways = kube_replicas(&kube, replicas).await;
    let client = http();
    let mut deliveries = Vec::new();
    for f in 0..fingerprints {
        for d in 0..per_fingerprint {
            let url = gateways[(f + d) % replicas].url("/api/v1/signals");
            let client = client.clone();
            let fingerprint = format!("fp-{f:03}");
            deliveries.push(tokio::spawn(async move {
                let (status, body) = post(&client, &url, signal(&fingerprint)).await;
                (fingerprint, status, body)
            }));
        }
    }
    let mut accepted: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed = 0;
    for delivery in deliveries {
        let (fingerprint, status, body) = delivery.await.unwrap();
        match status {
            201 | 202 => {
                assert!(body["name"].as_str().unwrap().starts_with("rr-"), "{body}");
                *accepted.entry(fingerprint).or_default() += 1;
            }
            500 | 503 => failed += 1,
            other => panic!("unexpected answer {other}: {body}"),
        }
    }
    kube.faults().clear();
    for gateway in &gateways {
        gateway.gateway.settled().await;
    }
    let total = fingerprints * per_fingerprint;
    assert!(
        failed < total / 4,
        "{failed} of {total} deliveries failed: the faults should cost a few, not most"
    );

    let requests = stored(&kube).await;
    let mut by_fingerprint: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for rr in &requests {
        by_fingerprint
            .entry(rr.spec.fingerprint.clone())
            .or_default()
            .push(rr);
    }
    for (fingerprint, count) in &accepted {
        let rrs = by_fingerprint
            .get(fingerprint)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        assert_eq!(rrs.len(), 1, "{fingerprint}: {} requests", rrs.len());
        let rr = rrs[0];
        let name = rr.metadata.name.clone().unwrap();
        let replicas_sum: u64 = rr
            .status
            .as_ref()
            .and_then(|s| s.deduplication.as_ref())
            .map(|d| d.replicas.values().sum())
            .unwrap_or(0);
        assert_eq!(
            replicas_sum, *count,
            "{fingerprint}: the replicas' counts against deliveries answered 2xx"
        );
        assert_eq!(
            rr.occurrence_count(),
            *count,
            "{fingerprint}: occurrenceCount (folded) against deliveries answered 2xx"
        );
        let applied_counts = kube
            .requests()
            .matching(
                &RequestFilter::any()
                    .verb("patch")
                    .resource("remediationrequests/status")
                    .name(name.clone()),
            )
            .into_iter()
            .filter(|r| r.applied)
            .count() as u64;
        // A replica adds the deliveries waiting in it in one write (+n).
        assert!(
            (1..=*count).contains(&applied_counts),
            "{name}: {applied_counts} applied count patches for {count} deliveries answered 2xx"
        );
    }
    assert!(
        requests.len() <= fingerprints,
        "{} requests for {fingerprints} fingerprints",
        requests.len()
    );
    let created = kube
        .requests()
        .matching(
            &RequestFilter::any()
                .verb("create")
                .resource("remediationrequests"),
        )
        .into_iter()
        .filter(|r| r.applied)
        .count();
    assert_eq!(
        created,
        requests.len(),
        "every applied create is one stored request"
    );
    // A failure must not be reported as acceptance anywhere: no injected
    // failure was applied (they are injected before the server acts).
    assert!(
        kube.requests().entries().iter().all(|r| r.applied
            == matches!(r.outcome, testkit::calls::Outcome::Ok)
            || r.verb == "watch"),
        "an injected failure took effect, or a success did not"
    );
    for g in gateways {
        g.shutdown.trigger();
        g.server.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_create_one_request_per_fingerprint_and_count_every_accepted_delivery() {
    same_signals_at_once_on(3, 12, 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_replicas_create_one_request_per_fingerprint_and_count_every_accepted_delivery() {
    same_signals_at_once_on(10, 10, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_is_answered_500_with_the_reason() {
    let kube = fake_kube().await;
    let gateways = kube_replicas(&kube, 1).await;
    // The API server goes away: connections are refused.
    kube.shutdown().await;
    let (status, body) = post(&http(), &gateways[0].url("/api/v1/signals"), signal("fp-x")).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("unreachable"),
        "{body}"
    );
    assert_eq!(body["fingerprint"], "fp-x");
}

/// An API server that takes the connection and never answers: each call
/// is given up at the API timeout (not `kube`'s five-minute read timeout),
/// and the delivery is answered 500 with the reason, so the sender retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_that_never_answers_is_given_up_at_the_api_timeout() {
    let kube = fake_kube().await;
    kube.faults().latency(
        Match::any().resource("remediationrequests"),
        Duration::from_secs(3600),
        Duration::ZERO,
    );
    let settings = Settings {
        api_timeout: Duration::from_millis(200),
        ..support::settings("gateway-0")
    };
    let hung = gateway::signal::parse_signal(signal("fp-hung").as_bytes()).unwrap();
    let replica = Gateway::cluster(kube.client(), settings).unwrap();
    let err = replica.record(&hung).await.unwrap_err();
    assert!(
        err.to_string().contains("gave no answer within 200ms"),
        "{err}"
    );
    assert_eq!(err.status(), 500);
}

/// Ten replicas count the same request at the same moment, one delivery
/// each: each replica's count is a compare-and-swap of its own entry, so
/// FakeKube's log shows no count patch refused, where a compare-and-swap
/// of the whole status would refuse about 45 (each of ten writers losing
/// to every one before it). Every delivery is counted, and the folds make
/// `occurrenceCount` the sum with at most one status write per count write
/// and no re-read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_counting_one_request_at_once_do_not_conflict_with_each_other() {
    let kube = fake_kube().await;
    kube.faults()
        .latency(Match::any(), Duration::from_millis(2), Duration::ZERO);
    let gateways = kube_replicas(&kube, 10).await;
    let client = http();
    // The request exists before the burst, so every delivery is a duplicate.
    let (status, body) = post(&client, &gateways[0].url("/api/v1/signals"), signal("fp-c")).await;
    assert_eq!(status, 201, "{body}");
    gateways[0].gateway.settled().await;
    let deliveries: Vec<_> = gateways
        .iter()
        .map(|g| {
            let (client, url) = (client.clone(), g.url("/api/v1/signals"));
            tokio::spawn(async move { post(&client, &url, signal("fp-c")).await })
        })
        .collect();
    for delivery in deliveries {
        let (status, body) = delivery.await.unwrap();
        assert_eq!(status, 202, "{body}");
    }
    for g in &gateways {
        g.gateway.settled().await;
    }
    let patches = kube.requests().matching(
        &RequestFilter::any()
            .verb("patch")
            .resource("remediationrequests/status"),
    );
    let applied = patches.iter().filter(|r| r.applied).count();
    let refused = patches
        .iter()
        .filter(|r| matches!(r.outcome, testkit::calls::Outcome::Error(422)))
        .count();
    assert_eq!(applied, 11, "one applied count patch per delivery");
    assert_eq!(
        refused, 0,
        "count patches refused: replicas conflicted with each other"
    );
    // The folds: one status write at most per count write, never a read
    // (a fold that meets a later write leaves the sum to that write's
    // writer), and the last status write is a fold of all eleven.
    let fold_writes = kube.requests().matching(
        &RequestFilter::any()
            .verb("update")
            .resource("remediationrequests/status"),
    );
    assert!(
        (1..=applied).contains(&fold_writes.len()),
        "{} fold writes for {applied} count writes",
        fold_writes.len()
    );
    let reads = kube.requests().matching(
        &RequestFilter::any()
            .verb("get")
            .resource("remediationrequests"),
    );
    assert!(
        reads.is_empty(),
        "folds or counts re-read the request: {reads:?}"
    );
    let requests = stored(&kube).await;
    assert_eq!(requests.len(), 1);
    let dedup = requests[0]
        .status
        .as_ref()
        .and_then(|s| s.deduplication.clone())
        .unwrap();
    assert_eq!(dedup.replicas.len(), 10, "{dedup:?}");
    assert_eq!(dedup.replicas.values().sum::<u64>(), 11, "{dedup:?}");
    assert_eq!(dedup.occurrence_count, 11, "the fold holds the sum");
}
