//! A GitHub App's webhook deliveries: the failed ones found and redelivered.
//!
//! GitHub attempts a webhook delivery once and never again by itself
//! (docs.github.com, "Handling failed webhook deliveries"); a sensor that
//! was down, or answered 503 because the state store was, misses the event
//! for good unless someone asks for a redelivery. This module lists the
//! App's recent deliveries (`GET /app/hook/deliveries`, newest first, the
//! App's JWT) and asks again (`POST /app/hook/deliveries/{id}/attempts`)
//! for those no attempt was accepted.
//!
//! The one rule: **a delivery that some attempt got a 2xx for is never
//! redelivered**, whatever later attempts answered: the sensor has it, and
//! its dedupe would only spend the redelivery. Redeliveries are bounded per
//! cycle and per delivery, and one asked for is not asked for again until
//! GitHub has had time to attempt it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use octocrab::Octocrab;
use octocrab::models::hooks::Delivery;
use octocrab::service::middleware::retry::RetryConfig;
use secrecy::{ExposeSecret as _, SecretString};
use tokio::time::Instant;

use crate::{Error, Result};

/// One attempt of a delivery, as `GET /app/hook/deliveries` lists it (each
/// attempt, redeliveries included, is listed as its own item).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryAttempt {
    /// The attempt's id (what a redelivery names).
    pub id: u64,
    /// The event's GUID, shared by the delivery and its redeliveries (the
    /// `X-GitHub-Delivery` header the sensor dedupes on).
    pub guid: String,
    /// When GitHub attempted it.
    pub delivered_at: Timestamp,
    /// The receiver's HTTP status; 0 when there was no answer (timed out,
    /// could not connect).
    pub status_code: u16,
    /// The event (`push`, `pull_request`, …).
    pub event: Option<String>,
    /// The event's action, when it has one.
    pub action: Option<String>,
    /// Whether this attempt was a redelivery.
    pub redelivery: bool,
}

impl DeliveryAttempt {
    /// Whether the receiver accepted it (a 2xx answer).
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status_code)
    }

    /// Whether another attempt could succeed: no answer, a 5xx, 408 or 429.
    /// Any other answer (400, 401 for a bad signature, 404 for a wrong URL,
    /// 413) would be given again: that is a configuration for a human, not
    /// a delivery to retry.
    pub fn retryable(&self) -> bool {
        matches!(self.status_code, 0 | 408 | 429 | 500..=599)
    }
}

/// One page of the deliveries list, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryPage {
    /// The attempts on this page.
    pub attempts: Vec<DeliveryAttempt>,
    /// Where the next (older) page starts; `None` on the last page.
    pub next: Option<String>,
}

/// A GitHub App's webhook deliveries (the App's own endpoints).
#[async_trait]
pub trait WebhookDeliveries: Send + Sync + 'static {
    /// One page of the App's delivery attempts, newest first, from `next`
    /// (as a previous page gave it; `None` for the newest).
    async fn list(&self, next: Option<String>) -> Result<DeliveryPage>;

    /// Asks GitHub to attempt delivery `id` again (a new attempt with the
    /// same GUID).
    async fn redeliver(&self, id: u64) -> Result<()>;
}

/// github.com's REST API root.
const GITHUB_API: &str = "https://api.github.com";

/// [`WebhookDeliveries`] on GitHub's REST API, authenticated as the App
/// (a JWT signed with its private key; the App endpoints take nothing
/// else). octocrab's own retries are off: a redelivery asked for twice is
/// two deliveries.
pub struct GitHubAppDeliveries {
    client: Octocrab,
    /// The API root links to later pages must start with.
    api_root: String,
    per_page: u8,
    timeout: Duration,
}

impl fmt::Debug for GitHubAppDeliveries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHubAppDeliveries")
            .field("per_page", &self.per_page)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl GitHubAppDeliveries {
    /// The deliveries of App `app_id`, signing its JWTs with
    /// `private_key_pem` (RSA, PEM), on `base_uri` (GitHub Enterprise
    /// Server's `https://HOST/api/v3/`, a test server) or github.com's API
    /// when `None`. Each request is bounded by 30 s. Must be called inside
    /// a tokio runtime.
    pub fn new(
        app_id: u64,
        private_key_pem: &SecretString,
        base_uri: Option<&str>,
    ) -> Result<Self> {
        let config = |reason: &str| Error::Config(format!("GitHub App deliveries: {reason}"));
        let mut builder = Octocrab::builder().add_retry_config(RetryConfig::None);
        if let Some(uri) = base_uri {
            if uri.contains('@') {
                return Err(config("the base URI must not carry credentials"));
            }
            builder = builder
                .base_uri(uri)
                .map_err(|_| config("the base URI does not parse"))?;
        }
        let client = builder
            .app_from_rsa_pem(
                octocrab::models::AppId(app_id),
                private_key_pem.expose_secret().as_bytes(),
            )
            .map_err(|_| config("the private key is not an RSA key in PEM format"))?
            .build()
            .map_err(|e| config(&format!("the client could not be built: {e}")))?;
        Ok(Self {
            client,
            api_root: base_uri
                .unwrap_or(GITHUB_API)
                .trim_end_matches('/')
                .to_owned(),
            per_page: 100,
            timeout: Duration::from_secs(30),
        })
    }

    async fn bounded<T>(
        &self,
        what: &str,
        call: impl Future<Output = octocrab::Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(github_error(what, &e)),
            Err(_) => Err(Error::GitHub {
                what: what.to_owned(),
                reason: format!("no answer within {:?}", self.timeout),
                transient: true,
            }),
        }
    }
}

#[async_trait]
impl WebhookDeliveries for GitHubAppDeliveries {
    async fn list(&self, next: Option<String>) -> Result<DeliveryPage> {
        let page: octocrab::Page<Delivery> = match next {
            None => {
                let per_page = [("per_page", self.per_page)];
                self.bounded(
                    "listing deliveries",
                    self.client.get("/app/hook/deliveries", Some(&per_page)),
                )
                .await?
            }
            Some(next) => {
                // Only a page GitHub linked to, on the API we talk to.
                if !next.starts_with(&self.api_root) {
                    return Err(Error::GitHub {
                        what: "listing deliveries".into(),
                        reason: "the next page's link leaves the configured API".into(),
                        transient: false,
                    });
                }
                self.bounded("listing deliveries", self.client.get(next, None::<&()>))
                    .await?
            }
        };
        Ok(DeliveryPage {
            attempts: page.items.iter().map(attempt_of).collect(),
            next: page.next.map(|uri| uri.to_string()),
        })
    }

    async fn redeliver(&self, id: u64) -> Result<()> {
        self.bounded(
            "redelivering",
            self.client
                .apps()
                .webhook()
                .redeliver(octocrab::models::HookDeliveryId(id)),
        )
        .await
    }
}

fn attempt_of(d: &Delivery) -> DeliveryAttempt {
    DeliveryAttempt {
        id: d.id.0,
        guid: d.guid.clone(),
        delivered_at: Timestamp::from_millisecond(d.delivered_at.timestamp_millis())
            .unwrap_or(Timestamp::UNIX_EPOCH),
        status_code: u16::try_from(d.status_code).unwrap_or(0),
        event: d
            .event
            .as_ref()
            .and_then(|e| serde_json::to_value(e).ok())
            .and_then(|v| v.as_str().map(str::to_owned)),
        action: d.action.clone(),
        redelivery: d.redelivery,
    }
}

/// An octocrab error, transient when another attempt could answer
/// differently (no answer, 5xx, 429, a secondary rate limit's 403).
fn github_error(what: &str, e: &octocrab::Error) -> Error {
    let transient = match e {
        octocrab::Error::GitHub { source, .. } => {
            let status = source.status_code.as_u16();
            status >= 500 || status == 429 || status == 408 || source.message.contains("rate limit")
        }
        octocrab::Error::Hyper { .. } | octocrab::Error::Http { .. } => true,
        _ => false,
    };
    Error::GitHub {
        what: what.to_owned(),
        reason: match e {
            octocrab::Error::GitHub { source, .. } => {
                format!("{} {}", source.status_code.as_u16(), source.message)
            }
            other => other.to_string(),
        },
        transient,
    }
}

/// How redelivery is bounded.
#[derive(Clone, Debug)]
pub struct RedeliveryConfig {
    /// Deliveries older than this are not looked at. Default 1 h (GitHub
    /// keeps three days; an older event is head drift's to catch).
    pub window: Duration,
    /// Pages of the deliveries list read per cycle (100 attempts each).
    /// Default 3.
    pub pages_per_cycle: usize,
    /// Redeliveries asked for per cycle. Default 20.
    pub per_cycle: usize,
    /// Attempts of one delivery (the first one included) after which it is
    /// left alone. Default 4.
    pub max_attempts: usize,
    /// A redelivery asked for is not asked for again before this, so GitHub
    /// can attempt it and list it. Default 2 min.
    pub backoff: Duration,
}

impl Default for RedeliveryConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(3600),
            pages_per_cycle: 3,
            per_cycle: 20,
            max_attempts: 4,
            backoff: Duration::from_secs(120),
        }
    }
}

/// A delivery whose every attempt failed, with its newest attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failed {
    pub(crate) newest: DeliveryAttempt,
    pub(crate) attempts: usize,
}

/// What the reconciler remembers between cycles: the redeliveries it asked
/// for (so it does not ask twice while GitHub attempts one), pruned to the
/// window.
#[derive(Debug, Default)]
pub(crate) struct Asked {
    by_guid: HashMap<String, Instant>,
}

impl Asked {
    pub(crate) fn recently(&self, guid: &str, backoff: Duration) -> bool {
        self.by_guid
            .get(guid)
            .is_some_and(|at| at.elapsed() < backoff)
    }

    pub(crate) fn note(&mut self, guid: &str) {
        self.by_guid.insert(guid.to_owned(), Instant::now());
    }

    pub(crate) fn prune(&mut self, window: Duration) {
        self.by_guid.retain(|_, at| at.elapsed() < window);
    }
}

/// Reads up to `config.pages_per_cycle` pages of attempts no older than
/// the window and returns the deliveries no attempt was accepted for,
/// oldest first, with how many attempts each had.
pub(crate) async fn failed_deliveries(
    deliveries: &dyn WebhookDeliveries,
    config: &RedeliveryConfig,
    now: Timestamp,
) -> Result<(Vec<Failed>, usize)> {
    let window = jiff::SignedDuration::try_from(config.window).unwrap_or(jiff::SignedDuration::MAX);
    let mut by_guid: BTreeMap<String, (bool, usize, DeliveryAttempt)> = BTreeMap::new();
    let mut next = None;
    let mut pages = 0;
    loop {
        let page = deliveries.list(next).await?;
        pages += 1;
        let mut old_enough_to_stop = false;
        for attempt in page.attempts {
            if now.duration_since(attempt.delivered_at) > window {
                old_enough_to_stop = true;
                continue;
            }
            let entry = by_guid
                .entry(attempt.guid.clone())
                .or_insert_with(|| (false, 0, attempt.clone()));
            entry.0 |= attempt.accepted();
            entry.1 += 1;
            if (attempt.delivered_at, attempt.id) > (entry.2.delivered_at, entry.2.id) {
                entry.2 = attempt;
            }
        }
        match page.next {
            Some(link) if !old_enough_to_stop && pages < config.pages_per_cycle => {
                next = Some(link);
            }
            _ => break,
        }
    }
    let mut failed: Vec<Failed> = by_guid
        .into_values()
        .filter(|(accepted, _, _)| !accepted)
        .map(|(_, attempts, newest)| Failed { newest, attempts })
        .collect();
    failed.sort_by_key(|f| (f.newest.delivered_at, f.newest.id));
    Ok((failed, pages))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use super::*;

    struct Listed(Mutex<Vec<DeliveryPage>>);

    #[async_trait]
    impl WebhookDeliveries for Listed {
        async fn list(&self, next: Option<String>) -> Result<DeliveryPage> {
            let pages = self.0.lock().unwrap();
            let index = next.map_or(0, |n| n.parse::<usize>().unwrap());
            Ok(pages[index].clone())
        }
        async fn redeliver(&self, _: u64) -> Result<()> {
            Ok(())
        }
    }

    fn attempt(id: u64, guid: &str, ago_s: i64, status: u16) -> DeliveryAttempt {
        DeliveryAttempt {
            id,
            guid: guid.into(),
            delivered_at: Timestamp::from_second(1_000_000 - ago_s).unwrap(),
            status_code: status,
            event: Some("push".into()),
            action: None,
            redelivery: false,
        }
    }

    #[tokio::test]
    async fn a_guid_any_attempt_of_which_was_accepted_is_not_failed_and_the_newest_attempt_is_kept()
    {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let pages = vec![
            DeliveryPage {
                attempts: vec![
                    attempt(5, "a", 10, 503),
                    attempt(4, "b", 20, 0),
                    attempt(3, "a", 30, 202),
                ],
                next: Some("1".into()),
            },
            DeliveryPage {
                attempts: vec![attempt(2, "b", 40, 503), attempt(1, "c", 7200, 503)],
                next: Some("2".into()),
            },
            DeliveryPage {
                attempts: vec![attempt(0, "d", 9000, 503)],
                next: None,
            },
        ];
        let listed = Listed(Mutex::new(pages));
        let (failed, pages) = failed_deliveries(&listed, &RedeliveryConfig::default(), now)
            .await
            .unwrap();
        assert_eq!(
            pages, 2,
            "the page with an attempt older than the window ends the walk"
        );
        assert_eq!(failed.len(), 1, "a: accepted once; c: out of the window");
        assert_eq!(failed[0].newest.id, 4);
        assert_eq!(failed[0].attempts, 2);
    }

    #[test]
    fn only_answers_another_attempt_could_change_are_retryable() {
        for (status, retryable) in [
            (0, true),
            (503, true),
            (500, true),
            (429, true),
            (408, true),
            (400, false),
            (401, false),
            (404, false),
            (413, false),
            (202, false),
        ] {
            assert_eq!(
                attempt(1, "g", 0, status).retryable(),
                retryable,
                "{status}"
            );
        }
    }
}
