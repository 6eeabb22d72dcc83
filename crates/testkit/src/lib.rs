#![doc = include_str!("../README.md")]

pub mod calls;
pub mod faults;
pub mod github;
pub mod history;
pub mod kube;
