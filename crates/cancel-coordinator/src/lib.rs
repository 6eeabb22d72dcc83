#![doc = include_str!("../README.md")]
//!
//! # Crate layout
//!
//! - [`Workloads`] (`workloads.rs`): the runs of a task and their pods, as
//!   the saga needs them; [`MemoryWorkloads`] (`memory.rs`) in process.
//! - [`Error`] (`error.rs`).

mod error;
mod memory;
pub mod workloads;

pub use crate::error::Error;
pub use crate::memory::{Happened, MemoryWorkloads, PodBehaviour, RunSeed};
pub use crate::workloads::{CancelMode, Intent, Remains, Run, Workloads};

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
