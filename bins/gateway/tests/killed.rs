//! A replica killed while it holds a fingerprint's lock, before it created
//! anything: its Lease stays, never renewed nor released. Another replica
//! receiving the signal waits for that Lease to expire, takes it over and
//! creates the one request; deliveries arriving meanwhile on other replicas
//! find it. Memory backends on paused time: 15 s leases take no real time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use gateway::{Gateway, MemoryRequests, Settings};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use lease_lock::{Lease, LeaseBackend, LeaseSpec, MemoryLeases};
use tokio::time::Instant;

const NAMESPACE: &str = "default";

fn settings(identity: &str) -> Settings {
    Settings {
        lease_duration: Duration::from_secs(15),
        lock_timeout: Duration::from_secs(60),
        ..Settings::new(NAMESPACE, identity)
    }
}

#[tokio::test(start_paused = true)]
async fn a_replica_killed_holding_a_key_is_taken_over_after_its_lease_and_one_request_is_created() {
    let requests = MemoryRequests::new();
    let leases = MemoryLeases::new();
    let signal = gateway::signal::parse_signal(
        br#"{"source":"prometheus","alertName":"DiskFull","severity":"critical","fingerprint":"fp-killed"}"#,
    )
    .unwrap();
    // What the killed replica left: the fingerprint's Lease, held by it.
    let now = jiff::Timestamp::now();
    let hash = gateway::crd::fingerprint_hash(&signal.fingerprint);
    let lease_name = lease_lock::lease_name(gateway::gateway::LOCK_PREFIX, &hash).unwrap();
    leases
        .create(
            NAMESPACE,
            &Lease {
                metadata: ObjectMeta {
                    name: Some(lease_name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some("gateway-killed/x1y2z".into()),
                    lease_duration_seconds: Some(15),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            },
        )
        .await
        .unwrap();
    let survivors: Vec<Gateway> = (0..3)
        .map(|i| {
            Gateway::new(
                Arc::new(requests.clone()),
                leases.clone(),
                settings(&format!("gateway-{i}")),
            )
            .unwrap()
        })
        .collect();
    let started = Instant::now();
    let mut deliveries = Vec::new();
    for (i, gateway) in survivors.iter().enumerate() {
        for _ in 0..4 {
            let (gateway, signal) = (gateway.clone(), signal.clone());
            deliveries.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100 * i as u64)).await;
                gateway.record(&signal).await
            }));
        }
    }
    let mut created = 0;
    for delivery in deliveries {
        let recorded = delivery.await.unwrap().unwrap();
        created += usize::from(recorded.created);
    }
    let waited = started.elapsed();
    assert_eq!(created, 1, "exactly one delivery created the request");
    for gateway in &survivors {
        gateway.settled().await;
    }
    let stored = requests.all();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].occurrence_count(), 12, "every delivery counted");
    assert!(
        waited >= Duration::from_secs(15),
        "nobody created while the killed replica's lease was valid ({waited:?})"
    );
    assert!(
        waited < Duration::from_secs(20),
        "taken over at expiry, not later ({waited:?})"
    );
    let lease = leases.get(NAMESPACE, &lease_name).await.unwrap().unwrap();
    assert_eq!(
        lease.spec.unwrap().lease_transitions,
        Some(1),
        "taken over once, by one survivor"
    );
}
