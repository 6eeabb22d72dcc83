#![doc = include_str!("../README.md")]
//!
//! # Crate layout
//!
//! - [`Workloads`] (`workloads.rs`): the runs of a task and their pods, as
//!   the saga needs them; [`MemoryWorkloads`] (`memory.rs`) in process.
//! - [`CancellationRequest`] (`request.rs`): what the sensor asks for.
//! - [`StateAwareCancellation`] (`saga.rs`): one task's cancellation, the
//!   journaled saga of DESIGN §2.
//! - [`CancellationCoordinator`] (`coordinator.rs`): many tasks at once,
//!   one operation per task, coalesced to the newest head.
//! - [`Metrics`] (`metrics.rs`) and [`Error`] (`error.rs`).

mod coordinator;
mod crd;
mod error;
mod kube;
mod memory;
mod metrics;
mod request;
mod saga;
pub mod workloads;

pub use crate::coordinator::{
    CancellationCoordinator, CoordinatorConfig, Finished, Running, Submitted, TaskStatus, Waiting,
    Workers,
};
pub use crate::crd::{
    AgentSpec, CodeRun, CodeRunPhase, CodeRunSpec, CodeRunStatus, EnvVar, crd_yaml,
};
pub use crate::error::Error;
pub use crate::kube::{CodeRunConfig, FIELD_MANAGER, Field, KubeCodeRuns, PodMatch};
pub use crate::memory::{Happened, MemoryWorkloads, PodBehaviour, RunSeed};
pub use crate::metrics::Metrics;
pub use crate::request::{CancellationRequest, Reason, is_sha};
pub use crate::saga::{
    HeadSource, LabelsReport, Outcome, Progress, Report, RunOutcome, RunReport, SagaBuilder,
    SagaConfig, SagaStep, StateAwareCancellation, StepTiming,
};
#[cfg(any(test, feature = "mock"))]
pub use crate::workloads::MockWorkloads;
pub use crate::workloads::{CancelMode, Intent, Remains, Run, Workloads};

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
