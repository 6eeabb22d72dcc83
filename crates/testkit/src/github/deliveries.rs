//! The App webhook's delivery log: every event FakeGitHub sends, with its
//! GUID and its fate (held, pending, answered, timed out, unreachable,
//! lost), and, once attempted, the request and response that
//! `GET /app/hook/deliveries/{id}` shows.
//!
//! The one rule: **a delivery is attempted once per release and never
//! again by itself**, as GitHub never retries; only a redelivery (a new
//! delivery with the same GUID) sends an event again.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::payloads::Event;
use super::pull::timestamp;
use super::store::ApiError;
use super::webhooks::{Delivery, DeliveryId, DeliveryOutcome, WebhookConfig};

/// Why a call about one delivery was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No delivery has this id.
    Unknown,
    /// It is not held (so it cannot be released, lost or failed).
    NotHeld,
    /// It was never attempted (so GitHub does not list it and cannot
    /// redeliver it).
    NotAttempted,
    /// No webhook is configured.
    NoWebhook,
}

/// A request ready to go out.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) url: url::Url,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: Bytes,
}

/// How an attempt ended, as the sender saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) result: AttemptResult,
    pub(crate) duration: Duration,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

/// The three ways an attempt ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptResult {
    /// The receiver answered with this status (2xx or not).
    Answered(u16),
    /// No complete answer within the timeout.
    TimedOut,
    /// No connection (or it broke before an answer).
    Unreachable,
}

impl AttemptResult {
    /// The `status` GitHub's deliveries list shows.
    pub(crate) fn status(self) -> String {
        match self {
            Self::Answered(code) if (200..300).contains(&code) => "OK".to_owned(),
            Self::Answered(code) => format!("Invalid HTTP Response: {code}"),
            Self::TimedOut => "timed out".to_owned(),
            Self::Unreachable => "failed to connect to host".to_owned(),
        }
    }

    /// The `status_code` GitHub's deliveries list shows: 0 without an answer.
    pub(crate) fn status_code(self) -> u16 {
        match self {
            Self::Answered(code) => code,
            Self::TimedOut | Self::Unreachable => 0,
        }
    }
}

/// Every delivery, and the switches that decide when each is attempted.
#[derive(Debug)]
pub(crate) struct DeliveryLog {
    config: Option<WebhookConfig>,
    records: BTreeMap<u64, Record>,
    holding: bool,
    next_id: u64,
    rng: StdRng,
    /// `GitHub-Hookshot/<hex>`, fixed per fake as per GitHub deployment.
    user_agent: String,
    dispatch: mpsc::UnboundedSender<u64>,
    dispatch_rx: Option<mpsc::UnboundedReceiver<u64>>,
    changed: watch::Sender<()>,
    /// The most settled (attempted or lost) deliveries kept; `None`: all.
    retain: Option<usize>,
    /// Settled deliveries, in the order they settled.
    settled: VecDeque<u64>,
}

#[derive(Debug, Clone)]
struct Record {
    id: u64,
    guid: String,
    event: &'static str,
    action: Option<String>,
    installation_id: Option<u64>,
    repository_id: Option<u64>,
    redelivery: bool,
    body: Bytes,
    state: State,
}

#[derive(Debug, Clone)]
enum State {
    Held,
    /// Released, waiting for the sender.
    Pending,
    /// On the wire since `delivered_at`, with these request headers.
    InFlight(Sent),
    Lost,
    Attempted(Sent, Answer),
}

/// What went out: when, where, with which headers.
#[derive(Debug, Clone)]
struct Sent {
    delivered_at: jiff::Timestamp,
    url: String,
    headers: Vec<(&'static str, String)>,
}

/// The first delivery id; GitHub's are large integers.
const FIRST_ID: u64 = 1_000_000_001;

/// GitHub's page sizes for the deliveries list.
const DEFAULT_PER_PAGE: usize = 30;
const MAX_PER_PAGE: usize = 100;

/// GitHub's delivery cursors look like `v1_12077215967`.
const CURSOR_PREFIX: &str = "v1_";

const DOCS_DELIVERIES: &str = "https://docs.github.com/rest/apps/webhooks";

impl DeliveryLog {
    /// An empty log without a webhook; GUIDs come from `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x686f_6f6b_7368_6f74);
        let build: u32 = rng.random();
        let (dispatch, dispatch_rx) = mpsc::unbounded_channel();
        Self {
            config: None,
            records: BTreeMap::new(),
            holding: false,
            next_id: FIRST_ID,
            rng,
            user_agent: format!("GitHub-Hookshot/{:07x}", build & 0x0fff_ffff),
            dispatch,
            dispatch_rx: Some(dispatch_rx),
            changed: watch::Sender::new(()),
            retain: None,
            settled: VecDeque::new(),
        }
    }

    /// Keeps at most `n` of the deliveries that settle from now on,
    /// forgetting the oldest settled first (held, pending and in-flight
    /// ones are kept). Set once, before the first delivery.
    pub(crate) fn retain_settled(&mut self, n: usize) {
        self.retain = Some(n);
        self.forget_oldest();
    }

    /// Delivery `id` has just settled: remembered as such, and the oldest
    /// settled ones beyond the retention forgotten.
    fn note_settled(&mut self, id: u64) {
        // Without a retention nothing is ever forgotten: no order to keep.
        if self.retain.is_some() {
            self.settled.push_back(id);
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        let Some(keep) = self.retain else {
            return;
        };
        while self.settled.len() > keep {
            if let Some(id) = self.settled.pop_front() {
                self.records.remove(&id);
            }
        }
    }

    /// The ids the sender must attempt, in release order; taken once.
    pub(crate) fn take_dispatch(&mut self) -> Option<mpsc::UnboundedReceiver<u64>> {
        self.dispatch_rx.take()
    }

    /// Fires after every change of any delivery.
    pub(crate) fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    pub(crate) fn configure(&mut self, config: WebhookConfig) {
        self.config = Some(config);
    }

    pub(crate) fn config(&self) -> Option<&WebhookConfig> {
        self.config.as_ref()
    }

    /// Records `event` for delivery (held, or released at once); `None`
    /// when no webhook is configured, as GitHub sends nothing then.
    pub(crate) fn enqueue(&mut self, mut event: Event) -> Option<DeliveryId> {
        let config = self.config.as_ref()?;
        let installation_id = event.installation.then(|| config.installation_id());
        if let (Some(id), Some(fields)) = (installation_id, event.payload.as_object_mut()) {
            fields.insert("installation".into(), installation(id));
        }
        let guid = self.guid();
        let body = Bytes::from(event.payload.to_string());
        let id = self.insert(Record {
            id: 0,
            guid,
            event: event.name,
            action: event.action,
            installation_id,
            repository_id: event.repository_id,
            redelivery: false,
            body,
            state: State::Held,
        });
        Some(DeliveryId::new(id))
    }

    /// A redelivery of attempted delivery `id`: a new delivery with the same
    /// GUID, event and body, and `redelivery: true`.
    pub(crate) fn redeliver(&mut self, id: u64) -> Result<DeliveryId, Refusal> {
        if self.config.is_none() {
            return Err(Refusal::NoWebhook);
        }
        let original = self.records.get(&id).ok_or(Refusal::Unknown)?;
        if !matches!(original.state, State::Attempted(..)) {
            return Err(Refusal::NotAttempted);
        }
        let copy = Record {
            redelivery: true,
            state: State::Held,
            ..original.clone()
        };
        Ok(DeliveryId::new(self.insert(copy)))
    }

    /// Holds every delivery made from now on until it is released.
    pub(crate) fn hold(&mut self) {
        self.holding = true;
    }

    /// Stops holding; releases every held delivery, oldest first.
    pub(crate) fn resume(&mut self) -> Vec<DeliveryId> {
        self.holding = false;
        let held = self.held();
        for id in &held {
            let _ = self.release(id.get());
        }
        held
    }

    /// The held deliveries, oldest first.
    pub(crate) fn held(&self) -> Vec<DeliveryId> {
        self.records
            .values()
            .filter(|r| matches!(r.state, State::Held))
            .map(|r| DeliveryId::new(r.id))
            .collect()
    }

    /// Hands held delivery `id` to the sender.
    pub(crate) fn release(&mut self, id: u64) -> Result<(), Refusal> {
        let record = self.held_mut(id)?;
        record.state = State::Pending;
        // The receiver lives as long as the fake's sender task; after that
        // nothing is sent any more, as nothing would be.
        let _ = self.dispatch.send(id);
        self.changed.send_replace(());
        Ok(())
    }

    /// Held delivery `id` is never sent and never listed, as when GitHub
    /// loses an event.
    pub(crate) fn lose(&mut self, id: u64) -> Result<(), Refusal> {
        self.held_mut(id)?.state = State::Lost;
        self.note_settled(id);
        self.changed.send_replace(());
        Ok(())
    }

    /// Held delivery `id` is recorded as failed to connect at `now` without
    /// being sent, as when the receiver cannot be reached.
    pub(crate) fn fail(&mut self, id: u64, now: jiff::Timestamp) -> Result<(), Refusal> {
        self.held_mut(id)?;
        let sent = self.sent(id, now).ok_or(Refusal::NoWebhook)?;
        let record = self.held_mut(id)?;
        record.state = State::Attempted(
            sent,
            Answer {
                result: AttemptResult::Unreachable,
                duration: Duration::ZERO,
                headers: Vec::new(),
                body: String::new(),
            },
        );
        self.note_settled(id);
        self.changed.send_replace(());
        Ok(())
    }

    /// Puts pending delivery `id` on the wire at `now`: the request to send,
    /// signed with the current secret; `None` if it is not pending.
    pub(crate) fn start(&mut self, id: u64, now: jiff::Timestamp) -> Option<Outgoing> {
        let sent = self.sent(id, now)?;
        let url = self.config.as_ref()?.url().clone();
        let record = self.records.get_mut(&id)?;
        if !matches!(record.state, State::Pending) {
            return None;
        }
        let outgoing = Outgoing {
            url,
            headers: sent.headers.clone(),
            body: record.body.clone(),
        };
        record.state = State::InFlight(sent);
        Some(outgoing)
    }

    /// Records how the attempt of in-flight delivery `id` ended.
    pub(crate) fn finish(&mut self, id: u64, answer: Answer) {
        if let Some(record) = self.records.get_mut(&id)
            && let State::InFlight(sent) = &record.state
        {
            record.state = State::Attempted(sent.clone(), answer);
            self.note_settled(id);
            self.changed.send_replace(());
        }
    }

    /// Delivery `id` as a test sees it.
    pub(crate) fn get(&self, id: u64) -> Option<Delivery> {
        self.records.get(&id).map(Record::view)
    }

    /// Every delivery, oldest first.
    pub(crate) fn all(&self) -> Vec<Delivery> {
        self.records.values().map(Record::view).collect()
    }

    /// One page of what `GET /app/hook/deliveries` lists (the attempted
    /// deliveries, newest first) from `cursor`, and the `Link` header to
    /// the next page; `per_page` defaults to 30, at most 100.
    pub(crate) fn list(
        &self,
        api_base: &str,
        query: &str,
    ) -> Result<(Vec<Value>, Option<String>), ApiError> {
        let mut per_page = DEFAULT_PER_PAGE;
        let mut from = u64::MAX;
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "per_page" => {
                    per_page = value
                        .parse()
                        .unwrap_or(DEFAULT_PER_PAGE)
                        .clamp(1, MAX_PER_PAGE);
                }
                "cursor" => {
                    from = value
                        .strip_prefix(CURSOR_PREFIX)
                        .and_then(|id| id.parse().ok())
                        .ok_or_else(|| ApiError::new(400, "Invalid cursor", DOCS_DELIVERIES))?;
                }
                _ => {}
            }
        }
        let mut listed = self
            .records
            .range(..=from)
            .rev()
            .filter_map(|(_, r)| r.item());
        let page: Vec<Value> = listed.by_ref().take(per_page).collect();
        let link = listed.next().and_then(|next| {
            let id = next.get("id")?.as_u64()?;
            Some(format!(
                "<{api_base}/app/hook/deliveries?per_page={per_page}&cursor={CURSOR_PREFIX}{id}>; rel=\"next\""
            ))
        });
        Ok((page, link))
    }

    /// What `GET /app/hook/deliveries/{id}` shows: the listed fields, the
    /// request (headers, payload) and the response (headers, body); `None`
    /// unless it was attempted.
    pub(crate) fn detail(&self, id: u64) -> Option<Value> {
        let record = self.records.get(&id)?;
        let State::Attempted(sent, answer) = &record.state else {
            return None;
        };
        let mut detail = record.item()?;
        let headers = |pairs: &mut dyn Iterator<Item = (&str, &str)>| {
            Value::Object(
                pairs
                    .map(|(name, value)| (name.to_owned(), Value::from(value)))
                    .collect(),
            )
        };
        let request_headers = headers(&mut sent.headers.iter().map(|(n, v)| (*n, v.as_str())));
        let answered = matches!(answer.result, AttemptResult::Answered(_));
        let response_headers =
            headers(&mut answer.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        if let Some(fields) = detail.as_object_mut() {
            fields.insert(
                "request".into(),
                json!({
                    "headers": request_headers,
                    "payload": serde_json::from_slice::<Value>(&record.body).unwrap_or(Value::Null),
                }),
            );
            fields.insert(
                "response".into(),
                json!({
                    "headers": response_headers,
                    "payload": if answered { Value::from(answer.body.as_str()) } else { Value::Null },
                }),
            );
        }
        Some(detail)
    }

    /// Whether no released delivery is still waiting for its answer.
    pub(crate) fn is_settled(&self) -> bool {
        !self
            .records
            .values()
            .any(|r| matches!(r.state, State::Pending | State::InFlight(_)))
    }

    fn insert(&mut self, mut record: Record) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        record.id = id;
        let holding = self.holding;
        self.records.insert(id, record);
        if holding {
            self.changed.send_replace(());
        } else {
            let _ = self.release(id);
        }
        id
    }

    fn held_mut(&mut self, id: u64) -> Result<&mut Record, Refusal> {
        let record = self.records.get_mut(&id).ok_or(Refusal::Unknown)?;
        if matches!(record.state, State::Held) {
            Ok(record)
        } else {
            Err(Refusal::NotHeld)
        }
    }

    /// The headers delivery `id` goes out with at `now`, as GitHub sends
    /// them (names in GitHub's spelling).
    fn sent(&self, id: u64, now: jiff::Timestamp) -> Option<Sent> {
        let config = self.config.as_ref()?;
        let record = self.records.get(&id)?;
        let mut headers = vec![
            ("Accept", "*/*".to_owned()),
            ("Content-Type", "application/json".to_owned()),
            ("User-Agent", self.user_agent.clone()),
            ("X-GitHub-Delivery", record.guid.clone()),
            ("X-GitHub-Event", record.event.to_owned()),
            ("X-GitHub-Hook-ID", config.hook_id().to_string()),
            (
                "X-GitHub-Hook-Installation-Target-ID",
                config.app_id().to_string(),
            ),
            (
                "X-GitHub-Hook-Installation-Target-Type",
                "integration".to_owned(),
            ),
        ];
        if let Some(secret) = config.signing_secret() {
            headers.push((
                "X-Hub-Signature-256",
                super::sender::signature_256(secret, &record.body),
            ));
        }
        Some(Sent {
            delivered_at: now,
            url: config.url().to_string(),
            headers,
        })
    }

    fn guid(&mut self) -> String {
        uuid::Builder::from_random_bytes(self.rng.random())
            .into_uuid()
            .to_string()
    }
}

impl Record {
    /// The delivery as GitHub lists it, once attempted.
    fn item(&self) -> Option<Value> {
        let State::Attempted(sent, answer) = &self.state else {
            return None;
        };
        Some(json!({
            "id": self.id,
            "guid": self.guid,
            "delivered_at": timestamp(sent.delivered_at),
            "redelivery": self.redelivery,
            // Seconds, to the hundredth, as GitHub shows them.
            "duration": (answer.duration.as_secs_f64() * 100.0).round() / 100.0,
            "status": answer.result.status(),
            "status_code": answer.result.status_code(),
            "event": self.event,
            "action": self.action,
            "installation_id": self.installation_id,
            "repository_id": self.repository_id,
            "throttled_at": null,
            "url": sent.url,
        }))
    }

    fn view(&self) -> Delivery {
        let outcome = match &self.state {
            State::Held => DeliveryOutcome::Held,
            State::Pending | State::InFlight(_) => DeliveryOutcome::Pending,
            State::Lost => DeliveryOutcome::Lost,
            State::Attempted(_, answer) => match answer.result {
                AttemptResult::Answered(status_code) => DeliveryOutcome::Answered {
                    status_code,
                    duration: answer.duration,
                },
                AttemptResult::TimedOut => DeliveryOutcome::TimedOut,
                AttemptResult::Unreachable => DeliveryOutcome::Unreachable,
            },
        };
        let (sent, response_body) = match &self.state {
            State::InFlight(sent) => (Some(sent), None),
            State::Attempted(sent, answer) => (Some(sent), Some(answer.body.clone())),
            State::Held | State::Pending | State::Lost => (None, None),
        };
        Delivery {
            id: DeliveryId::new(self.id),
            guid: self.guid.clone(),
            event: self.event.to_owned(),
            action: self.action.clone(),
            redelivery: self.redelivery,
            installation_id: self.installation_id,
            repository_id: self.repository_id,
            body: self.body.clone(),
            delivered_at: sent.map(|s| s.delivered_at),
            url: sent.map(|s| s.url.clone()),
            request_headers: sent.map(|s| owned_headers(&s.headers)).unwrap_or_default(),
            response_body,
            outcome,
        }
    }
}

fn owned_headers(headers: &[(&'static str, String)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.clone()))
        .collect()
}

/// The `installation` field of an App's event payload.
fn installation(id: u64) -> Value {
    use base64::Engine as _;
    // GitHub's legacy node id: base64 of "0", the type name's length, ":",
    // the type name and the id ("023:IntegrationInstallation1" in the
    // fixtures).
    let node = format!("023:IntegrationInstallation{id}");
    json!({
        "id": id,
        "node_id": base64::engine::general_purpose::STANDARD.encode(node),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::github::payloads;

    fn log() -> DeliveryLog {
        let mut log = DeliveryLog::new(1);
        let url = url::Url::parse("http://127.0.0.1:9/hook").unwrap();
        log.configure(WebhookConfig::new(url).with_secret("s"));
        log
    }

    fn ping(log: &mut DeliveryLog) -> u64 {
        let event = payloads::ping("http://h", 1, 2, "u", false, jiff::Timestamp::UNIX_EPOCH);
        log.enqueue(event).unwrap().get()
    }

    #[test]
    fn nothing_is_recorded_without_a_webhook() {
        let mut log = DeliveryLog::new(1);
        let event = payloads::ping("http://h", 1, 2, "u", false, jiff::Timestamp::UNIX_EPOCH);
        assert!(log.enqueue(event).is_none());
        assert!(log.all().is_empty());
    }

    #[test]
    fn deliveries_are_released_at_once_unless_held() {
        let mut log = log();
        let mut dispatched = log.take_dispatch().unwrap();
        let first = ping(&mut log);
        assert_eq!(dispatched.try_recv().unwrap(), first);
        log.hold();
        let second = ping(&mut log);
        assert!(dispatched.try_recv().is_err());
        assert_eq!(log.held(), [DeliveryId::new(second)]);
        assert_eq!(log.resume(), [DeliveryId::new(second)]);
        assert_eq!(dispatched.try_recv().unwrap(), second);
    }

    #[test]
    fn an_attempt_is_recorded_once_and_a_redelivery_keeps_the_guid() {
        let mut log = log();
        let id = ping(&mut log);
        let now = jiff::Timestamp::UNIX_EPOCH;
        let outgoing = log.start(id, now).unwrap();
        assert!(log.start(id, now).is_none(), "already on the wire");
        assert!(
            outgoing
                .headers
                .iter()
                .any(|(n, v)| *n == "X-Hub-Signature-256" && v.starts_with("sha256="))
        );
        assert_eq!(log.redeliver(id), Err(Refusal::NotAttempted));
        let answer = Answer {
            result: AttemptResult::Answered(500),
            duration: Duration::from_millis(20),
            headers: Vec::new(),
            body: "boom".into(),
        };
        log.finish(id, answer);
        assert!(log.is_settled());

        let again = log.redeliver(id).unwrap();
        let (original, copy) = (log.get(id).unwrap(), log.get(again.get()).unwrap());
        assert_eq!(original.guid, copy.guid);
        assert!(copy.redelivery && !original.redelivery);
        assert_eq!(original.body, copy.body);
        assert_eq!(copy.outcome, DeliveryOutcome::Pending);
    }

    #[test]
    fn only_held_deliveries_can_be_lost_or_failed() {
        let mut log = log();
        log.hold();
        let lost = ping(&mut log);
        let failed = ping(&mut log);
        log.lose(lost).unwrap();
        log.fail(failed, jiff::Timestamp::UNIX_EPOCH).unwrap();
        assert_eq!(log.get(lost).unwrap().outcome, DeliveryOutcome::Lost);
        assert_eq!(
            log.get(failed).unwrap().outcome,
            DeliveryOutcome::Unreachable
        );
        assert_eq!(log.lose(failed), Err(Refusal::NotHeld));
        assert_eq!(log.release(99), Err(Refusal::Unknown));
        assert_eq!(
            log.fail(99, jiff::Timestamp::UNIX_EPOCH),
            Err(Refusal::Unknown)
        );
    }

    #[test]
    fn a_retention_forgets_the_oldest_settled_deliveries_and_keeps_unsettled_ones() {
        let mut log = log();
        log.retain_settled(2);
        let now = jiff::Timestamp::UNIX_EPOCH;
        let answered = |log: &mut DeliveryLog, id| {
            log.start(id, now).unwrap();
            log.finish(
                id,
                Answer {
                    result: AttemptResult::Answered(202),
                    duration: Duration::ZERO,
                    headers: Vec::new(),
                    body: String::new(),
                },
            );
        };
        let (a, b, c) = (ping(&mut log), ping(&mut log), ping(&mut log));
        let pending = ping(&mut log);
        log.hold();
        let held = ping(&mut log);
        let lost = ping(&mut log);
        answered(&mut log, a);
        answered(&mut log, b);
        assert!(log.get(a).is_some() && log.get(b).is_some());
        answered(&mut log, c);
        // Three settled, two kept: the first to settle is forgotten.
        assert!(log.get(a).is_none());
        assert_eq!(log.redeliver(a), Err(Refusal::Unknown));
        log.lose(lost).unwrap();
        assert!(log.get(b).is_none());
        let kept: Vec<u64> = log.all().iter().map(|d| d.id.get()).collect();
        assert_eq!(kept, [c, pending, held, lost]);
    }

    #[test]
    fn installation_node_ids_match_githubs() {
        assert_eq!(
            installation(1)["node_id"],
            "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uMQ=="
        );
    }
}
