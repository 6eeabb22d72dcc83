//! The dev modes' parts: the in-memory GitHub a push moves ([`github`]),
//! the seeded task ([`seed`]), the simulated agent fleet ([`fleet`]) and
//! `controller dev-push`, the client that pushes and delivers the signed
//! webhook ([`push`]).
//!
//! The rule it keeps: **the dev parts stand where the outside world
//! stands** — GitHub, the agents, a person pushing — and never inside the
//! production path: the coordinator, the reconciler, the API and the
//! webhook route are the same code with or without them.

pub mod fleet;
pub mod github;
pub mod push;
pub mod seed;
