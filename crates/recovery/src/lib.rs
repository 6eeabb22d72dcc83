#![doc = include_str!("../README.md")]
//!
//! # Crate layout
//!
//! - [`RecoveryManager`] (`manager.rs`): one cycle ([`RecoveryManager::run_cycle`])
//!   and the leader's loop ([`RecoveryManager::spawn`]).
//! - [`Kind`], [`Finding`], [`Action`] (`findings.rs`): the decision table's
//!   rows and what was done.
//! - flags (`flags.rs`): `needs-intervention` — annotation, Event, gauge —
//!   and the API to list, retry and resolve flagged tasks.
//! - [`Metrics`] (`metrics.rs`) and [`Error`] (`error.rs`).

mod error;
mod findings;
mod flags;
mod manager;
mod metrics;

pub use crate::error::Error;
pub use crate::findings::{Action, Finding, Kind};
pub use crate::flags::{ANNOTATION_NEEDS_INTERVENTION, Flagged, METADATA_RESOLVED};
pub use crate::manager::{CycleReport, RecoveryBuilder, RecoveryConfig, RecoveryManager};
pub use crate::metrics::Metrics;

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
