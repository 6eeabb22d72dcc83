//! FakeGitHub's App webhook deliveries API, through octocrab: the list
//! (newest first, cursor pages, status codes as recorded), one delivery
//! with its request and response, redelivery (202, same GUID), App-JWT
//! authentication, no rate limit, ETags.

#![cfg(feature = "github")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod github_common;

use github_common::{Receiver, SECRET, app_jwt};
use http::header::{HeaderMap, HeaderValue, IF_NONE_MATCH};
use octocrab::Octocrab;
use octocrab::models::HookDeliveryId;
use octocrab::models::webhook_events::WebhookEventType;
use testkit::calls::Outcome;
use testkit::github::{DeliveryId, FakeGitHub, WebhookConfig};

const DELIVERIES: &str = "/app/hook/deliveries";

fn sha(n: u8) -> String {
    format!("{n:02x}").repeat(20)
}

fn status_of(err: octocrab::Error) -> http::StatusCode {
    match err {
        octocrab::Error::GitHub { source, .. } => source.status_code,
        other => panic!("expected an answer from GitHub, got {other:?}"),
    }
}

async fn setup() -> (FakeGitHub, Receiver, Octocrab) {
    let receiver = Receiver::start().await;
    let github = FakeGitHub::builder()
        .webhook(WebhookConfig::new(receiver.url.clone()).with_secret(SECRET))
        .start()
        .await
        .unwrap();
    let app = github.octocrab_with_token(app_jwt()).unwrap();
    (github, receiver, app)
}

/// Pushes to branch `b<n>` and waits until the push was attempted.
async fn push(github: &FakeGitHub, n: u8) -> DeliveryId {
    let id = github
        .push_branch("acme", "widgets", &format!("b{n}"), &[&sha(n)])
        .unwrap()[0];
    github.webhooks().attempted(id).await.unwrap();
    id
}

#[tokio::test]
async fn the_list_shows_attempted_deliveries_newest_first_with_their_status() {
    let (github, receiver, app) = setup().await;
    let webhooks = github.webhooks();
    let ok_id = push(&github, 1).await;
    receiver.answer_with(500);
    let failed_id = push(&github, 2).await;
    webhooks.hold();
    let unsent = github
        .push_branch("acme", "widgets", "b3", &[&sha(3)])
        .unwrap()[0];
    let unreachable_id = github
        .push_branch("acme", "widgets", "b4", &[&sha(4)])
        .unwrap()[0];
    webhooks.fail(unreachable_id).unwrap();
    let lost = github
        .push_branch("acme", "widgets", "b5", &[&sha(5)])
        .unwrap()[0];
    webhooks.lose(lost).unwrap();

    let listed = app.apps().webhook_deliveries().send().await.unwrap();

    let ids: Vec<u64> = listed.iter().map(|d| d.id.0).collect();
    assert_eq!(
        ids,
        [unreachable_id.get(), failed_id.get(), ok_id.get()],
        "held and lost ones are not listed"
    );
    let [unreachable, failed, ok] = &listed[..] else {
        panic!("{listed:?}")
    };
    assert_eq!((ok.status.as_str(), ok.status_code), ("OK", 202));
    assert_eq!(
        (failed.status.as_str(), failed.status_code),
        ("Invalid HTTP Response: 500", 500)
    );
    assert_eq!(
        (unreachable.status.as_str(), unreachable.status_code),
        ("failed to connect to host", 0)
    );
    let recorded = webhooks.delivery(ok_id).unwrap();
    assert_eq!(ok.guid, recorded.guid);
    assert_eq!(ok.event, Some(WebhookEventType::Push));
    assert_eq!(ok.action, None);
    assert!(!ok.redelivery);
    assert!(ok.duration >= 0.0 && ok.duration < 10.0);
    assert_eq!(
        ok.installation_id.map(|i| i.0),
        Some(WebhookConfig::DEFAULT_INSTALLATION_ID)
    );
    assert_eq!(ok.repository_id.map(|i| i.0), recorded.repository_id);
    assert!(ok.repository_id.is_some());
    let age = jiff::Timestamp::now().as_second() - ok.delivered_at.timestamp();
    assert!((0..60).contains(&age), "delivered {age} s ago");
    assert_eq!(webhooks.held(), [unsent]);
}

#[tokio::test]
async fn one_delivery_shows_its_request_and_response() {
    let (github, mut receiver, app) = setup().await;
    let id = push(&github, 1).await;
    let sent = receiver.next().await;

    let detail = app
        .apps()
        .get_webhook_delivery(HookDeliveryId::from(id))
        .await
        .unwrap();

    assert_eq!(detail.id.0, id.get());
    assert_eq!(detail.guid, sent.guid());
    assert_eq!(detail.event, "push");
    assert_eq!(detail.status_code, 202);
    assert_eq!(detail.url.as_deref(), Some(receiver.url.as_str()));
    let headers = detail.request.headers.unwrap();
    assert_eq!(headers["X-GitHub-Delivery"], sent.guid());
    assert_eq!(headers["X-GitHub-Event"], "push");
    assert_eq!(
        headers["X-Hub-Signature-256"],
        sent.header("x-hub-signature-256")
    );
    assert_eq!(detail.request.payload.unwrap(), sent.json());
    assert_eq!(detail.response.payload.as_deref(), Some("thanks"));
    assert!(
        detail
            .response
            .headers
            .unwrap()
            .get("content-length")
            .is_some()
    );

    let unknown = app
        .apps()
        .get_webhook_delivery(HookDeliveryId(1))
        .await
        .unwrap_err();
    assert_eq!(status_of(unknown), 404);
}

#[tokio::test]
async fn redelivery_through_the_api_is_202_and_sends_the_same_guid_again() {
    let (github, mut receiver, app) = setup().await;
    let id = push(&github, 1).await;
    let first = receiver.next().await;

    let resp = app
        ._post(format!("{DELIVERIES}/{id}/attempts"), None::<&()>)
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(app.body_to_string(resp).await.unwrap(), "{}");
    app.apps()
        .redeliver_webhook_delivery(HookDeliveryId::from(id))
        .await
        .unwrap();

    let again = receiver.take(2).await;
    assert!(
        again
            .iter()
            .all(|r| r.guid() == first.guid() && r.body == first.body)
    );
    github.webhooks().settled().await.unwrap();
    let listed = app.apps().webhook_deliveries().send().await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed[0].redelivery && listed[1].redelivery && !listed[2].redelivery);
    assert!(listed.iter().all(|d| d.guid == first.guid()));
    assert!(listed[0].id.0 > listed[1].id.0 && listed[1].id.0 > id.get());

    let unknown = app
        .apps()
        .redeliver_webhook_delivery(HookDeliveryId(7))
        .await
        .unwrap_err();
    assert_eq!(status_of(unknown), 404);
}

#[tokio::test]
async fn the_list_pages_with_a_cursor_in_the_link_header() {
    let (github, _receiver, app) = setup().await;
    let mut pushed = Vec::new();
    for n in 1..=5 {
        pushed.push(push(&github, n).await.get());
    }
    pushed.reverse();

    let mut seen = Vec::new();
    let mut route = format!("{DELIVERIES}?per_page=2");
    let mut pages = 0;
    loop {
        let resp = app._get(route.as_str()).await.unwrap();
        let link = resp
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_owned());
        let page: Vec<serde_json::Value> =
            serde_json::from_str(&app.body_to_string(resp).await.unwrap()).unwrap();
        seen.extend(page.iter().map(|d| d["id"].as_u64().unwrap()));
        pages += 1;
        let Some(link) = link else { break };
        assert!(link.ends_with("rel=\"next\""), "{link}");
        let url = link.trim_start_matches('<').split('>').next().unwrap();
        let cursor = url.split("cursor=").nth(1).unwrap();
        assert!(cursor.starts_with("v1_"), "{cursor}");
        // octocrab's own builder takes the cursor.
        let via_octocrab = app
            .apps()
            .webhook_deliveries()
            .per_page(2u8)
            .cursor(cursor)
            .send()
            .await
            .unwrap();
        assert!(!via_octocrab.is_empty());
        route = url
            .trim_start_matches(github.url().as_str().trim_end_matches('/'))
            .to_owned();
    }

    assert_eq!(seen, pushed);
    assert_eq!(pages, 3);
    let bad = app
        ._get(format!("{DELIVERIES}?cursor=nonsense"))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn the_apps_endpoints_take_its_jwt_and_nothing_else() {
    let (github, _receiver, _app) = setup().await;
    let id = push(&github, 1).await;
    let personal = github.octocrab().unwrap();
    let anonymous = github.octocrab_builder().unwrap().build().unwrap();

    for client in [&personal, &anonymous] {
        for (resp, what) in [
            (client._get(DELIVERIES).await.unwrap(), "list"),
            (
                client._get(format!("{DELIVERIES}/{id}")).await.unwrap(),
                "get",
            ),
            (
                client
                    ._post(format!("{DELIVERIES}/{id}/attempts"), None::<&()>)
                    .await
                    .unwrap(),
                "redeliver",
            ),
        ] {
            assert_eq!(resp.status(), 401, "{what}");
            let body: serde_json::Value =
                serde_json::from_str(&client.body_to_string(resp).await.unwrap()).unwrap();
            assert_eq!(body["message"], "A JSON web token could not be decoded");
        }
    }
    assert_eq!(
        github.webhooks().deliveries().len(),
        1,
        "nothing was redelivered"
    );
    assert_eq!(github.rate_limit(github.token()).unwrap().used, 0);
    assert_eq!(
        github
            .calls()
            .count_outcome(Some("get"), Some("hook_deliveries"), &Outcome::Error(401)),
        2
    );
}

#[tokio::test]
async fn jwt_calls_are_not_rate_limited_and_the_list_answers_304_until_it_changes() {
    let (github, _receiver, app) = setup().await;
    push(&github, 1).await;

    let first = app._get(DELIVERIES).await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("x-ratelimit-remaining").is_none());
    let etag = first.headers()["etag"].clone();
    let mut headers = HeaderMap::new();
    headers.insert(IF_NONE_MATCH, etag.clone());
    let unchanged = app
        ._get_with_headers(DELIVERIES, Some(headers.clone()))
        .await
        .unwrap();
    assert_eq!(unchanged.status(), 304);

    push(&github, 2).await;
    let changed = app
        ._get_with_headers(DELIVERIES, Some(headers))
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    assert_ne!(changed.headers()["etag"], etag);
    assert_ne!(etag, HeaderValue::from_static(""));
    assert_eq!(
        github
            .calls()
            .count_outcome(Some("get"), Some("hook_deliveries"), &Outcome::Ok),
        3
    );
}
