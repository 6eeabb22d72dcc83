//! testkit: a fake Kubernetes API server and a fake GitHub over real HTTP,
//! with fault injection, call counters and history checkers (dev only).
//!
//! [`faults`] and [`calls`] are shared by every fake: each request is first
//! judged by [`faults::Faults::apply`], then counted in [`calls::Calls`].

pub mod calls;
pub mod faults;
pub mod github;
pub mod history;
pub mod kube;
