//! `FlakyBackend`: wraps any backend and injects the failures a real API server
//! and network produce — 409s, 5xx before a write, and the worst one: a write
//! that was applied but whose answer was lost.
//!
//! The rule it keeps: faults are drawn from a seeded generator, so a failing
//! test can be replayed exactly.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::backend::{Document, StateBackend, StoredDocument};
use crate::{Error, Result};

/// Fault probabilities (each in `[0, 1]`) and the seed they are drawn with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultConfig {
    /// Seed of the fault generator.
    pub seed: u64,
    /// GET and LIST fail with 503 before reading.
    pub read_error_rate: f64,
    /// Writes fail with 500 before being applied.
    pub write_error_rate: f64,
    /// Conditional writes (replace, delete) fail with 409 without being applied.
    pub conflict_rate: f64,
    /// Writes are applied, then answered with 504 (the answer is lost).
    pub lost_response_rate: f64,
    /// Every call first waits a uniformly drawn delay up to this (tokio time,
    /// so a paused clock makes interleavings reproducible).
    pub max_latency: std::time::Duration,
}

/// A [`StateBackend`] wrapper that injects faults (see [`FaultConfig`]).
#[derive(Debug)]
pub struct FlakyBackend<B> {
    inner: B,
    config: FaultConfig,
    rng: Mutex<StdRng>,
    injected: AtomicU64,
}

impl<B: StateBackend> FlakyBackend<B> {
    /// Wraps `inner` with the faults of `config`.
    pub fn new(inner: B, config: FaultConfig) -> Self {
        Self {
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
            inner,
            config,
            injected: AtomicU64::new(0),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    async fn delay(&self) {
        if self.config.max_latency.is_zero() {
            return;
        }
        let fraction: f64 = self
            .rng
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .random_range(0.0..=1.0);
        tokio::time::sleep(self.config.max_latency.mul_f64(fraction)).await;
    }

    fn roll(&self, rate: f64) -> bool {
        if rate <= 0.0 {
            return false;
        }
        let hit = self
            .rng
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .random_bool(rate.min(1.0));
        if hit {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    fn before_write(&self, name: &str, conditional: bool) -> Result<()> {
        if self.roll(self.config.write_error_rate) {
            return Err(server_error(500, "InternalError"));
        }
        if conditional && self.roll(self.config.conflict_rate) {
            return Err(Error::Conflict {
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    fn after_write<T>(&self, result: Result<T>) -> Result<T> {
        if result.is_ok() && self.roll(self.config.lost_response_rate) {
            return Err(server_error(504, "Timeout"));
        }
        result
    }
}

fn server_error(code: u16, reason: &str) -> Error {
    Error::Api {
        code,
        reason: reason.to_owned(),
        message: "injected fault".to_owned(),
        retry_after: None,
    }
}

#[async_trait]
impl<B: StateBackend> StateBackend for FlakyBackend<B> {
    async fn get(&self, name: &str) -> Result<Option<StoredDocument>> {
        self.delay().await;
        if self.roll(self.config.read_error_rate) {
            return Err(server_error(503, "ServiceUnavailable"));
        }
        self.inner.get(name).await
    }

    async fn create(&self, name: &str, document: Document) -> Result<StoredDocument> {
        self.delay().await;
        self.before_write(name, false)?;
        let result = self.inner.create(name, document).await;
        self.after_write(result)
    }

    async fn replace(
        &self,
        name: &str,
        resource_version: &str,
        document: Document,
    ) -> Result<StoredDocument> {
        self.delay().await;
        self.before_write(name, true)?;
        let result = self.inner.replace(name, resource_version, document).await;
        self.after_write(result)
    }

    async fn delete(&self, name: &str, resource_version: &str) -> Result<()> {
        self.delay().await;
        self.before_write(name, true)?;
        let result = self.inner.delete(name, resource_version).await;
        self.after_write(result)
    }

    async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<StoredDocument>> {
        self.delay().await;
        if self.roll(self.config.read_error_rate) {
            return Err(server_error(503, "ServiceUnavailable"));
        }
        self.inner.list(labels).await
    }

    async fn list_metadata(
        &self,
        labels: &BTreeMap<String, String>,
        limit: u32,
        continue_token: Option<String>,
    ) -> Result<crate::backend::MetadataPage> {
        self.delay().await;
        if self.roll(self.config.read_error_rate) {
            return Err(server_error(503, "ServiceUnavailable"));
        }
        self.inner
            .list_metadata(labels, limit, continue_token)
            .await
    }
}
