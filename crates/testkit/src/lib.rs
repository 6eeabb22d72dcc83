#![doc = include_str!("../README.md")]
//!
//! # Features
//!
//! - `kube` (default): [`kube::FakeKube`].
//! - `cli` (default): the `fake-kube` binary.
//! - `github` (default): [`github::FakeGitHub`].
//! - `logs`: [`logs::Logs`], a test's log lines captured per thread.
//!
//! Crates that need only one fake turn the other off, which keeps their test
//! and benchmark builds small (`octocrab` is the heaviest dependency here).

pub mod binary;
pub mod calls;
pub mod faults;
#[cfg(feature = "github")]
pub mod github;
pub mod history;
#[cfg(feature = "kube")]
pub mod kube;
#[cfg(feature = "logs")]
pub mod logs;
pub mod metrics_contract;
pub mod process;
