//! Building blocks that keep supersede's services correct when the world is not:
//! backoff, retry, circuit breaking, process termination, graceful shutdown,
//! health probes and an expiring queue.

pub mod backoff;
pub mod error;
pub mod retry;

pub use backoff::{Backoff, BackoffPolicy};
pub use error::Error;
pub use retry::{Classification, RetryError, RetryPolicy, Transient, retry, retry_transient};
