//! The route's order of refusals and what reaches the handler: a signed
//! delivery in JSON or form encoding, refusals before the body is read,
//! the body limit, and one real HTTP exchange over loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use github_webhook::{
    BodyFormat, Delivery, Event, FormPolicy, Rejection, SignatureError, WebhookHandler,
    WebhookRoute, WebhookSecrets, sign,
};
use http::StatusCode;
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "route test secret";
const PUSH: &str = include_str!("fixtures/push_with-new-branch.payload.json");

#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Delivery>>>,
    rejected: Arc<Mutex<Vec<&'static str>>>,
}

impl WebhookHandler for Recorder {
    async fn handle(&self, delivery: Delivery) -> Response {
        self.seen.lock().unwrap().push(delivery);
        StatusCode::ACCEPTED.into_response()
    }

    fn rejected(&self, rejection: &Rejection, _headers: &http::HeaderMap) {
        self.rejected.lock().unwrap().push(rejection.as_label());
    }
}

fn route(recorder: &Recorder) -> WebhookRoute<Recorder> {
    let secrets = WebhookSecrets::new([SecretString::from(SECRET)]).unwrap();
    WebhookRoute::new(secrets, recorder.clone())
        .with_body_limit(64 * 1024)
        .unwrap()
}

fn request(body: &[u8], content_type: &str, signature: Option<String>) -> Request {
    let mut builder = Request::post("/hook")
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("x-github-event", "push")
        .header("x-github-delivery", "d0b4e5a0-0000-4000-8000-000000000001")
        .header("x-github-hook-id", "7");
    if let Some(signature) = signature {
        builder = builder.header("x-hub-signature-256", signature);
    }
    builder.body(Body::from(body.to_vec())).unwrap()
}

fn signed(body: &[u8], content_type: &str) -> Request {
    request(body, content_type, Some(sign(SECRET.as_bytes(), body)))
}

#[tokio::test]
async fn a_signed_json_delivery_reaches_the_handler_parsed() {
    let recorder = Recorder::default();
    let delivery = route(&recorder)
        .accept(signed(PUSH.as_bytes(), "application/json"))
        .await
        .unwrap();
    assert_eq!(delivery.format, BodyFormat::Json);
    assert_eq!(delivery.secret_index, 0);
    assert_eq!(delivery.headers.event, "push");
    assert_eq!(
        delivery.headers.dedupe_key().as_str(),
        "d0b4e5a0-0000-4000-8000-000000000001:7"
    );
    assert!(matches!(delivery.event, Event::Push(_)));
    assert_eq!(&delivery.json[..], PUSH.as_bytes());
}

#[tokio::test]
async fn a_form_delivery_is_verified_over_the_form_bytes_then_decoded() {
    let recorder = Recorder::default();
    let form: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", PUSH)
        .finish();
    let delivery = route(&recorder)
        .accept(signed(form.as_bytes(), "application/x-www-form-urlencoded"))
        .await
        .unwrap();
    assert_eq!(delivery.format, BodyFormat::Form);
    assert_eq!(&delivery.json[..], PUSH.as_bytes());

    // Signed over the JSON instead of the bytes sent: refused.
    let wrong = request(
        form.as_bytes(),
        "application/x-www-form-urlencoded",
        Some(sign(SECRET.as_bytes(), PUSH.as_bytes())),
    );
    let refused = route(&recorder).accept(wrong).await.unwrap_err();
    assert_eq!(refused, Rejection::Signature(SignatureError::Mismatch));

    // Refused by policy: 415 naming the setting.
    let strict = route(&recorder).with_form_policy(FormPolicy::Refuse);
    let refused = strict
        .accept(signed(form.as_bytes(), "application/x-www-form-urlencoded"))
        .await
        .unwrap_err();
    assert_eq!(refused.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(refused.to_string().contains("application/json"));
}

#[tokio::test]
async fn refusals_come_in_order_and_never_reach_the_handler() {
    let recorder = Recorder::default();
    let r = route(&recorder);
    let big = vec![b' '; 64 * 1024 + 1];
    let cases = [
        (
            signed(&big, "application/json"),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            signed(PUSH.as_bytes(), "text/plain"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            request(PUSH.as_bytes(), "application/json", None),
            StatusCode::UNAUTHORIZED,
        ),
        (
            request(
                PUSH.as_bytes(),
                "application/json",
                Some("sha256=00".into()),
            ),
            StatusCode::UNAUTHORIZED,
        ),
        (
            request(
                PUSH.as_bytes(),
                "application/json",
                Some(sign(b"another secret", PUSH.as_bytes())),
            ),
            StatusCode::UNAUTHORIZED,
        ),
        (
            signed(b"{\"ref\":", "application/json"),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (request, status) in cases {
        let rejection = r.accept(request).await.unwrap_err();
        assert_eq!(rejection.status(), status, "{rejection:?}");
    }
    // Unsigned and over the limit: the limit is judged first, before reading.
    let unsigned_big = request(&big, "application/json", None);
    assert!(matches!(
        r.accept(unsigned_big).await,
        Err(Rejection::PayloadTooLarge { limit: 65_536 })
    ));
    assert!(recorder.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_body_over_the_limit_without_a_declared_length_is_cut_off() {
    let recorder = Recorder::default();
    let big = vec![b' '; 64 * 1024 + 1];
    let mut request = signed(&big, "application/json");
    request.headers_mut().remove("content-length");
    let rejection = route(&recorder).accept(request).await.unwrap_err();
    assert_eq!(rejection, Rejection::PayloadTooLarge { limit: 65_536 });
}

#[tokio::test]
async fn a_missing_event_header_on_a_signed_body_is_a_bad_request() {
    let recorder = Recorder::default();
    let mut request = signed(PUSH.as_bytes(), "application/json");
    request.headers_mut().remove("x-github-event");
    let rejection = route(&recorder).accept(request).await.unwrap_err();
    assert_eq!(rejection.status(), StatusCode::BAD_REQUEST);
    assert!(rejection.to_string().contains("X-GitHub-Event"));
}

#[test]
fn a_body_limit_outside_github_s_range_is_refused() {
    let recorder = Recorder::default();
    let secrets = WebhookSecrets::new([SecretString::from(SECRET)]).unwrap();
    assert!(
        WebhookRoute::new(secrets.clone(), recorder.clone())
            .with_body_limit(0)
            .is_err()
    );
    assert!(
        WebhookRoute::new(secrets, recorder)
            .with_body_limit(26 * 1024 * 1024)
            .is_err()
    );
}

/// The route as a router on `POST /webhook/github`, served on loopback.
async fn serve_on_loopback(
    recorder: &Recorder,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let app = route(recorder).into_router("/webhook/github");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (
        addr,
        tokio::spawn(async move { axum::serve(listener, app).await }),
    )
}

/// One exchange over a real socket: the router answers 202 for a signed
/// delivery and 401 with a JSON error for a forged one, counting it.
#[tokio::test]
async fn the_router_answers_over_http() {
    let recorder = Recorder::default();
    let (addr, server) = serve_on_loopback(&recorder).await;

    let send = |signature: String| async move {
        let body = PUSH.as_bytes();
        let head = format!(
            "POST /webhook/github HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nx-github-event: push\r\nx-github-delivery: g-1\r\n\
             x-hub-signature-256: {signature}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    };
    let ok = send(sign(SECRET.as_bytes(), PUSH.as_bytes())).await;
    assert!(ok.starts_with("HTTP/1.1 202"), "{ok}");
    let forged = send(sign(b"guess", PUSH.as_bytes())).await;
    assert!(forged.starts_with("HTTP/1.1 401"), "{forged}");
    assert!(
        forged.contains(r#""error":"signature_mismatch""#),
        "{forged}"
    );
    assert!(!forged.contains("Codertocat"), "the body is never echoed");
    assert_eq!(recorder.seen.lock().unwrap().len(), 1);
    assert_eq!(*recorder.rejected.lock().unwrap(), ["signature_mismatch"]);
    server.abort();
}

/// The head of one answer read from `stream` (up to the blank line),
/// lower-cased.
async fn answer_head(stream: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "closed mid-head");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap().to_ascii_lowercase()
}

/// A refusal that leaves the body unread (by its declared length, its type,
/// a missing or malformed signature header) says `connection: close`, so a
/// keep-alive client does not send its next request into the connection
/// hyper closes after such an answer; a refusal after the whole body was
/// read keeps the connection.
#[tokio::test]
async fn a_refusal_before_the_body_is_read_closes_the_connection_and_says_so() {
    let recorder = Recorder::default();
    let (addr, server) = serve_on_loopback(&recorder).await;
    let body = PUSH.as_bytes();
    let valid = sign(SECRET.as_bytes(), body);
    let head = |content_type: &str, length: usize, signature: Option<&str>| {
        let signature =
            signature.map_or(String::new(), |s| format!("x-hub-signature-256: {s}\r\n"));
        format!(
            "POST /webhook/github HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {content_type}\r\n\
             content-length: {length}\r\nx-github-event: push\r\nx-github-delivery: g-1\r\n{signature}\r\n"
        )
    };
    let before_the_body = [
        (head("text/plain", body.len(), Some(&valid)), "415"),
        (head("application/json", body.len(), None), "401"),
        (
            head("application/json", body.len(), Some("sha256=zz")),
            "401",
        ),
        (head("application/json", 64 * 1024 + 1, Some(&valid)), "413"),
    ];
    for (request, status) in before_the_body {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        let answer = answer_head(&mut stream).await;
        assert!(
            answer.starts_with(&format!("http/1.1 {status}")),
            "{answer}"
        );
        assert!(answer.contains("connection: close\r\n"), "{answer}");
    }

    // Read whole, refused for its signature: the connection stays usable.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let forged = sign(b"guess", body);
    for _ in 0..2 {
        stream
            .write_all(head("application/json", body.len(), Some(&forged)).as_bytes())
            .await
            .unwrap();
        stream.write_all(body).await.unwrap();
        let answer = answer_head(&mut stream).await;
        assert!(answer.starts_with("http/1.1 401"), "{answer}");
        assert!(!answer.contains("connection: close"), "{answer}");
        let length: usize = answer
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut rest = vec![0u8; length];
        stream.read_exact(&mut rest).await.unwrap();
    }
    assert!(recorder.seen.lock().unwrap().is_empty());
    server.abort();
}
