//! FakeGitHub's App webhook as a test drives it: where deliveries go, which
//! are held, lost, failed or redelivered, and what became of each.
//!
//! Every change the fake makes as git or a human would (a push, a merge, a
//! label) records its events in the delivery log; unless the log is held,
//! each is then POSTed once, concurrently with the others, to the
//! configured `http://127.0.0.1` URL (see the [module documentation](super)
//! for the headers and the 10 s limit). The one rule: **nothing is sent
//! twice unless a test or a client asks for a redelivery**, and arrival
//! order is only guaranteed when a test releases held deliveries with
//! [`Webhooks::release`].

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use url::Url;

use super::Error;
use super::deliveries::{AttemptResult, Refusal};
use super::payloads;
use super::server::Shared;

/// Where and how the App's webhook delivers.
///
/// ```
/// use testkit::github::WebhookConfig;
///
/// let url = "http://127.0.0.1:8080/webhook/github".parse()?;
/// let config = WebhookConfig::new(url).with_secret("It's a Secret to Everybody");
/// assert_eq!(config.hook_id(), WebhookConfig::DEFAULT_HOOK_ID);
/// # Ok::<_, url::ParseError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    url: Url,
    secret: Option<String>,
    hook_id: u64,
    app_id: u64,
    installation_id: u64,
}

impl WebhookConfig {
    /// The hook id of a new configuration (the fixtures' ping hook's).
    pub const DEFAULT_HOOK_ID: u64 = 109_948_940;
    /// The App id of a new configuration.
    pub const DEFAULT_APP_ID: u64 = 12_345;
    /// The installation id of a new configuration (the fixtures').
    pub const DEFAULT_INSTALLATION_ID: u64 = 1;

    /// Delivers to `url`, which must be `http://127.0.0.1:<port>/…` (checked
    /// when the configuration is given to the fake), without a secret.
    pub fn new(url: Url) -> Self {
        Self {
            url,
            secret: None,
            hook_id: Self::DEFAULT_HOOK_ID,
            app_id: Self::DEFAULT_APP_ID,
            installation_id: Self::DEFAULT_INSTALLATION_ID,
        }
    }

    /// Signs every delivery with `secret` (`X-Hub-Signature-256`). Without
    /// one, as on GitHub, deliveries carry no signature. Fake secrets are
    /// not secrets.
    #[must_use]
    pub fn with_secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// The hook's id (`X-GitHub-Hook-ID`).
    #[must_use]
    pub fn with_hook_id(mut self, id: u64) -> Self {
        self.hook_id = id;
        self
    }

    /// The App's id (`X-GitHub-Hook-Installation-Target-ID`).
    #[must_use]
    pub fn with_app_id(mut self, id: u64) -> Self {
        self.app_id = id;
        self
    }

    /// The installation events are sent for (`installation.id`).
    #[must_use]
    pub fn with_installation_id(mut self, id: u64) -> Self {
        self.installation_id = id;
        self
    }

    /// Where deliveries go.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The signing secret, if any.
    pub fn secret(&self) -> Option<&str> {
        self.secret.as_deref()
    }

    /// The hook's id.
    pub fn hook_id(&self) -> u64 {
        self.hook_id
    }

    /// The App's id.
    pub fn app_id(&self) -> u64 {
        self.app_id
    }

    /// The installation's id.
    pub fn installation_id(&self) -> u64 {
        self.installation_id
    }

    /// The secret deliveries are signed with: GitHub treats an empty one as
    /// none.
    pub(crate) fn signing_secret(&self) -> Option<&str> {
        self.secret.as_deref().filter(|s| !s.is_empty())
    }

    /// Refuses any URL but `http://127.0.0.1:<port>/…`: the fake never
    /// connects anywhere else.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let local = self.url.scheme() == "http"
            && self.url.host() == Some(url::Host::Ipv4(Ipv4Addr::LOCALHOST))
            && self.url.port_or_known_default().is_some();
        if local {
            Ok(())
        } else {
            Err(Error::NonLocalWebhook(self.url.to_string()))
        }
    }
}

/// Identifies one delivery (`id` in `GET /app/hook/deliveries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryId(u64);

impl DeliveryId {
    pub(crate) fn new(id: u64) -> Self {
        Self(id)
    }

    /// The numeric id GitHub's API uses.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<DeliveryId> for octocrab::models::HookDeliveryId {
    fn from(id: DeliveryId) -> Self {
        Self(id.0)
    }
}

/// One delivery as the fake recorded it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Delivery {
    /// Its id; a redelivery has a new one.
    pub id: DeliveryId,
    /// `X-GitHub-Delivery`: the same for an event and its redeliveries.
    pub guid: String,
    /// `X-GitHub-Event`.
    pub event: String,
    /// The payload's `action`, if the event has one.
    pub action: Option<String>,
    /// Whether it is a redelivery.
    pub redelivery: bool,
    /// The installation it was sent for (none for `ping`).
    pub installation_id: Option<u64>,
    /// The repository it is about (none for `ping`).
    pub repository_id: Option<u64>,
    /// The raw body, as signed.
    pub body: Bytes,
    /// When it was sent (wall clock), once sent.
    pub delivered_at: Option<jiff::Timestamp>,
    /// The URL it was sent to, once sent.
    pub url: Option<String>,
    /// The request headers, in GitHub's spelling, once sent.
    pub request_headers: Vec<(String, String)>,
    /// The receiver's answer body, once attempted.
    pub response_body: Option<String>,
    /// What became of it.
    pub outcome: DeliveryOutcome,
}

impl Delivery {
    /// The body as JSON (`Null` if it is not JSON, which cannot happen for
    /// bodies the fake built).
    pub fn payload(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    /// The request header `name` (case-insensitive), once sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.request_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryOutcome {
    /// Held by [`Webhooks::hold`], not sent yet.
    Held,
    /// Released, waiting for its answer.
    Pending,
    /// Never sent and never listed ([`Webhooks::lose`]).
    Lost,
    /// The receiver answered, with a 2xx (GitHub's `OK`) or not (`Invalid
    /// HTTP Response: <code>`).
    Answered {
        /// The answer's status.
        status_code: u16,
        /// From the start of the attempt to the end of the answer, on
        /// tokio's clock.
        duration: Duration,
    },
    /// No complete answer within 10 s (GitHub's `timed out`).
    TimedOut,
    /// No connection, or it broke before an answer (GitHub's `failed to
    /// connect to host`), or failed by [`Webhooks::fail`].
    Unreachable,
}

impl DeliveryOutcome {
    /// The `status` GitHub's deliveries list shows, once attempted.
    pub fn status(&self) -> Option<String> {
        self.attempt().map(|a| a.status())
    }

    /// The `status_code` GitHub's deliveries list shows (0 without an
    /// answer), once attempted.
    pub fn status_code(&self) -> Option<u16> {
        self.attempt().map(AttemptResult::status_code)
    }

    /// Whether the receiver answered with a 2xx.
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Answered { status_code, .. } if (200..300).contains(status_code))
    }

    /// Whether it was attempted (or failed): whether GitHub lists it.
    pub fn is_attempted(&self) -> bool {
        self.attempt().is_some()
    }

    fn attempt(&self) -> Option<AttemptResult> {
        match *self {
            Self::Answered { status_code, .. } => Some(AttemptResult::Answered(status_code)),
            Self::TimedOut => Some(AttemptResult::TimedOut),
            Self::Unreachable => Some(AttemptResult::Unreachable),
            Self::Held | Self::Pending | Self::Lost => None,
        }
    }
}

/// The App webhook of a [`FakeGitHub`](super::FakeGitHub): its
/// configuration, its delivery log and the switches that decide when each
/// delivery goes out. Cheap to clone; every clone drives the same fake.
#[derive(Clone)]
pub struct Webhooks {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("config", &self.config())
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Delivers to `config` from now on (also deliveries already pending,
    /// as GitHub uses the configuration at delivery time). Refuses any URL
    /// but `http://127.0.0.1:<port>/…`.
    pub fn configure(&self, config: WebhookConfig) -> Result<(), Error> {
        config.validate()?;
        self.shared.store().hooks.configure(config);
        Ok(())
    }

    /// The current configuration, if any.
    pub fn config(&self) -> Option<WebhookConfig> {
        self.shared.store().hooks.config().cloned()
    }

    /// Sends the App hook's `ping`, as GitHub does when a webhook is set
    /// up (the fake never pings by itself).
    pub fn ping(&self) -> Result<DeliveryId, Error> {
        let mut store = self.shared.store();
        let config = store.hooks.config().cloned().ok_or(Error::NoWebhook)?;
        let event = payloads::ping(
            &self.shared.api_base,
            config.hook_id(),
            config.app_id(),
            config.url().as_str(),
            config.signing_secret().is_some(),
            jiff::Timestamp::now(),
        );
        store.hooks.enqueue(event).ok_or(Error::NoWebhook)
    }

    /// Holds every delivery made from now on (redeliveries included) until
    /// [`release`](Self::release)d, [`resume`](Self::resume)d,
    /// [`lose`](Self::lose)d or [`fail`](Self::fail)ed.
    pub fn hold(&self) {
        self.shared.store().hooks.hold();
    }

    /// The held deliveries, oldest first.
    pub fn held(&self) -> Vec<DeliveryId> {
        self.shared.store().hooks.held()
    }

    /// Stops holding and releases every held delivery at once, oldest
    /// first (they then race, as GitHub's do). Returns them.
    pub fn resume(&self) -> Vec<DeliveryId> {
        self.shared.store().hooks.resume()
    }

    /// Sends held deliveries one at a time in the order given, each after
    /// the previous one was answered (or timed out): the receiver sees them
    /// in this order. Returns them as attempted. Holding stays on.
    pub async fn release(&self, ids: &[DeliveryId]) -> Result<Vec<Delivery>, Error> {
        {
            let store = self.shared.store();
            let held = store.hooks.held();
            for (i, id) in ids.iter().enumerate() {
                if !held.contains(id) || ids[..i].contains(id) {
                    return Err(delivery_error(*id, Refusal::NotHeld));
                }
            }
        }
        let mut attempted = Vec::with_capacity(ids.len());
        for &id in ids {
            self.shared
                .store()
                .hooks
                .release(id.get())
                .map_err(|r| delivery_error(id, r))?;
            attempted.push(self.attempted(id).await?);
        }
        Ok(attempted)
    }

    /// Held delivery `id` is never sent and never listed, as when GitHub
    /// itself loses an event; only the change it reported tells of it.
    pub fn lose(&self, id: DeliveryId) -> Result<(), Error> {
        self.shared
            .store()
            .hooks
            .lose(id.get())
            .map_err(|r| delivery_error(id, r))
    }

    /// Held delivery `id` is recorded as failed to connect (status code 0)
    /// without being sent, as when the receiver cannot be reached; it can
    /// be redelivered.
    pub fn fail(&self, id: DeliveryId) -> Result<(), Error> {
        self.shared
            .store()
            .hooks
            .fail(id.get(), jiff::Timestamp::now())
            .map_err(|r| delivery_error(id, r))
    }

    /// Redelivers attempted delivery `id`, as `POST
    /// /app/hook/deliveries/{id}/attempts` does: a new delivery with the
    /// same GUID and body and `redelivery: true`.
    pub fn redeliver(&self, id: DeliveryId) -> Result<DeliveryId, Error> {
        self.shared
            .store()
            .hooks
            .redeliver(id.get())
            .map_err(|r| delivery_error(id, r))
    }

    /// Delivery `id`, if it exists.
    pub fn delivery(&self, id: DeliveryId) -> Option<Delivery> {
        self.shared.store().hooks.get(id.get())
    }

    /// Every delivery, oldest first (held, pending and lost ones included,
    /// which GitHub's list does not show).
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.store().hooks.all()
    }

    /// Waits until delivery `id` was attempted (or lost), and returns it.
    pub async fn attempted(&self, id: DeliveryId) -> Result<Delivery, Error> {
        self.wait_for(|log| {
            log.get(id.get())
                .map(|d| {
                    (d.outcome.is_attempted() || d.outcome == DeliveryOutcome::Lost).then_some(d)
                })
                .ok_or_else(|| delivery_error(id, Refusal::Unknown))
        })
        .await
    }

    /// Waits until no released delivery is waiting for its answer (held
    /// ones stay held).
    pub async fn settled(&self) -> Result<(), Error> {
        self.wait_for(|log| Ok(log.is_settled().then_some(())))
            .await
    }

    /// Waits until `ready` gives a value, re-checking after every change of
    /// the log; fails if the fake stops meanwhile.
    async fn wait_for<T>(
        &self,
        ready: impl Fn(&super::deliveries::DeliveryLog) -> Result<Option<T>, Error>,
    ) -> Result<T, Error> {
        loop {
            let mut changed = {
                let store = self.shared.store();
                if let Some(value) = ready(&store.hooks)? {
                    return Ok(value);
                }
                // Subscribed under the lock that checked: no change is missed.
                store.hooks.subscribe()
            };
            tokio::select! {
                result = changed.changed() => result.map_err(|_| Error::Stopped)?,
                () = self.shared.stopped.cancelled() => return Err(Error::Stopped),
            }
        }
    }
}

/// The public error for a refused call about delivery `id`.
pub(crate) fn delivery_error(id: DeliveryId, refusal: Refusal) -> Error {
    match refusal {
        Refusal::NoWebhook => Error::NoWebhook,
        Refusal::Unknown => Error::Delivery {
            id: id.get(),
            reason: "does not exist",
        },
        Refusal::NotHeld => Error::Delivery {
            id: id.get(),
            reason: "is not held",
        },
        Refusal::NotAttempted => Error::Delivery {
            id: id.get(),
            reason: "was never attempted",
        },
    }
}
