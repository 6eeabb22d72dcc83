//! Properties of the webhook endpoint over arbitrary input: no panic, and
//! every answer one of 200, 202, 400, 401, 413, 415, 503 — for garbage,
//! for forged signatures, and for correctly signed bodies of every shape
//! (GitHub's payloads with bytes changed, fields removed or retyped).
//!
//! 64 cases by default (CI time); set `PROPTEST_CASES` for more.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use sensor::Config;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

#[derive(Debug, Clone)]
struct Input {
    event: Option<String>,
    content_type: Option<String>,
    delivery: Option<String>,
    hook: Option<String>,
    signature: Signature,
    body: Vec<u8>,
}

#[derive(Debug, Clone)]
enum Signature {
    None,
    Garbage(String),
    Valid,
}

fn text_header() -> impl Strategy<Value = Option<String>> {
    prop_oneof![Just(None), "[ -~]{0,60}".prop_map(Some),]
}

fn fixture() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just(PUSH),
        Just(SYNCHRONIZE),
        Just(OPENED),
        Just(CLOSED),
        Just(LABELED),
        Just(PING),
    ]
}

/// A payload of every kind: a fixture, one with a byte changed, one with a
/// top-level field removed or replaced by another JSON type, or noise.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        fixture().prop_map(|f| f.as_bytes().to_vec()),
        (fixture(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(f, i, b)| {
            let mut v = f.as_bytes().to_vec();
            let i = i.index(v.len());
            v[i] = b;
            v
        }),
        (
            fixture(),
            any::<prop::sample::Index>(),
            prop_oneof![
                Just(serde_json::Value::Null),
                Just(serde_json::json!(42)),
                Just(serde_json::json!("x")),
                Just(serde_json::json!([])),
            ],
            any::<bool>()
        )
            .prop_map(|(f, i, value, remove)| {
                let mut json: serde_json::Value = serde_json::from_str(f).unwrap();
                let object = json.as_object_mut().unwrap();
                let key = object.keys().nth(i.index(object.len())).unwrap().clone();
                if remove {
                    object.remove(&key);
                } else {
                    object.insert(key, value);
                }
                json.to_string().into_bytes()
            }),
        proptest::collection::vec(any::<u8>(), 0..1024),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    (
        prop_oneof![
            Just(Some("push".to_owned())),
            Just(Some("pull_request".to_owned())),
            Just(Some("ping".to_owned())),
            Just(Some(" Pull_Request".to_owned())),
            text_header(),
        ],
        prop_oneof![
            Just(Some("application/json".to_owned())),
            Just(Some("application/x-www-form-urlencoded".to_owned())),
            text_header(),
        ],
        prop_oneof![Just(Some("g-1".to_owned())), text_header()],
        prop_oneof![Just(Some("1".to_owned())), text_header()],
        prop_oneof![
            Just(Signature::Valid),
            Just(Signature::None),
            "[ -~]{0,80}".prop_map(Signature::Garbage),
        ],
        body(),
    )
        .prop_map(
            |(event, content_type, delivery, hook, signature, body)| Input {
                event,
                content_type,
                delivery,
                hook,
                signature,
                body,
            },
        )
}

#[test]
fn arbitrary_deliveries_are_answered_with_a_documented_status_and_never_crash_the_sensor() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let world = World::new();
    let config = Config {
        body_limit_bytes: 16 * 1024,
        branch_pattern: "^(?P<task>master|changes|task-[0-9]+)".into(),
        ..config()
    };
    let sensor = runtime.block_on(Running::start(&config, world.parts(&config)));
    let mut runner = TestRunner::new(RunnerConfig::with_cases(cases()));
    runner
        .run(&input(), |input| {
            let status = runtime.block_on(async {
                let mut request = sensor.http.post(sensor.url(sensor::WEBHOOK_PATH));
                for (name, value) in [
                    ("x-github-event", &input.event),
                    ("content-type", &input.content_type),
                    ("x-github-delivery", &input.delivery),
                    ("x-github-hook-id", &input.hook),
                ] {
                    if let Some(value) = value
                        && reqwest::header::HeaderValue::from_str(value).is_ok()
                    {
                        request = request.header(name, value);
                    }
                }
                let signature = match &input.signature {
                    Signature::None => None,
                    Signature::Garbage(g) => Some(g.clone()),
                    Signature::Valid => Some(github_webhook::sign(SECRET.as_bytes(), &input.body)),
                };
                if let Some(signature) = signature
                    && reqwest::header::HeaderValue::from_str(&signature).is_ok()
                {
                    request = request.header("x-hub-signature-256", signature);
                }
                request
                    .body(input.body.clone())
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            });
            prop_assert!(
                [200, 202, 400, 401, 413, 415, 503].contains(&status),
                "status {status} for {input:?}"
            );
            Ok(())
        })
        .unwrap();
    // Still serving after all of it.
    let healthz = runtime
        .block_on(sensor.http.get(sensor.url("/healthz")).send())
        .unwrap();
    assert_eq!(healthz.status(), 200);
}
