//! Properties over arbitrary input: no panic, every refusal one of the
//! documented statuses, and a signature never survives a changed byte.
//!
//! Cases: 64 by default (CI time); set `PROPTEST_CASES` for more.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use github_webhook::{Delivery, WebhookHandler, WebhookRoute, WebhookSecrets, sign};
use http::StatusCode;
use proptest::prelude::*;
use secrecy::SecretString;

const SECRET: &str = "property secret";
const SYNCHRONIZE: &str = include_str!("fixtures/pull_request_synchronize.payload.json");

struct Accept;

impl WebhookHandler for Accept {
    async fn handle(&self, _: Delivery) -> Response {
        StatusCode::ACCEPTED.into_response()
    }
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    ProptestConfig::with_cases(cases)
}

fn route() -> WebhookRoute<Accept> {
    let secrets = WebhookSecrets::new([SecretString::from(SECRET)]).unwrap();
    WebhookRoute::new(secrets, Accept)
        .with_body_limit(32 * 1024)
        .unwrap()
}

fn header_value() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        "[ -~]{0,80}".prop_map(Some),
        Just(Some("push".to_owned())),
        Just(Some("pull_request".to_owned())),
        Just(Some(" Pull_Request ".to_owned())),
        Just(Some("application/json".to_owned())),
        Just(Some("application/x-www-form-urlencoded".to_owned())),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2048),
        Just(SYNCHRONIZE.as_bytes().to_vec()),
        // The real payload with one byte changed somewhere.
        (0..SYNCHRONIZE.len(), any::<u8>()).prop_map(|(i, b)| {
            let mut v = SYNCHRONIZE.as_bytes().to_vec();
            v[i] = b;
            v
        }),
        Just(b"payload=%7B%7D".to_vec()),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_requests_are_answered_with_a_documented_status(
        body in body(),
        event in header_value(),
        content_type in header_value(),
        delivery in header_value(),
        sign_it in any::<bool>(),
        signature in header_value(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut builder = Request::post("/");
        for (name, value) in [
            ("x-github-event", event),
            ("content-type", content_type),
            ("x-github-delivery", delivery),
            (
                "x-hub-signature-256",
                if sign_it { Some(sign(SECRET.as_bytes(), &body)) } else { signature },
            ),
        ] {
            if let Some(value) = value.filter(|v| http::HeaderValue::from_str(v).is_ok()) {
                builder = builder.header(name, value);
            }
        }
        let request = builder.body(Body::from(body)).unwrap();
        let status = match runtime.block_on(route().accept(request)) {
            Ok(_) => StatusCode::ACCEPTED,
            Err(rejection) => rejection.status(),
        };
        prop_assert!(
            [400, 401, 413, 415, 202].contains(&status.as_u16()),
            "status {status}"
        );
    }

    #[test]
    fn a_signature_over_a_changed_byte_never_verifies(
        body in proptest::collection::vec(any::<u8>(), 1..4096),
        index in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let secrets = WebhookSecrets::new([SecretString::from(SECRET), SecretString::from("other")]).unwrap();
        let header = sign(SECRET.as_bytes(), &body);
        prop_assert_eq!(secrets.verify(Some(&header), &body), Ok(0));
        let mut changed = body.clone();
        let i = index.index(changed.len());
        changed[i] ^= flip;
        prop_assert!(secrets.verify(Some(&header), &changed).is_err());
    }
}
