//! Building blocks that keep supersede's services correct when the world is not:
//! backoff, retry, circuit breaking, process termination, graceful shutdown,
//! health probes and an expiring queue.
