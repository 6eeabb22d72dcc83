//! Measures tracker throughput with one lock versus sharded locks, to justify
//! `TrackerConfig::shards`' default.
//!
//! `cargo run --release -p job-tracker --example tracker_bench` prints one JSON
//! line per shard count: jobs per second for threads that register a job,
//! commit 8 steps, and drop it, while another thread cancels random ids.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use job_tracker::{CancelReason, JobOptions, JobTracker, TrackerConfig};

const RUN_FOR: Duration = Duration::from_secs(2);

fn main() {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
    for shards in [1, 16] {
        let tracker = JobTracker::new(TrackerConfig {
            shards,
            reservation_budget: 1 << 40,
            ..TrackerConfig::default()
        });
        let jobs = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let start = Instant::now();
        std::thread::scope(|scope| {
            for thread in 0..threads {
                let (tracker, jobs, stop) = (&tracker, &jobs, &stop);
                scope.spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let id = format!("t{thread}-{n}");
                        n += 1;
                        let options = JobOptions {
                            reservation: Some(16),
                            ..JobOptions::default()
                        };
                        if let Ok(job) = tracker.register(&id, options) {
                            for _ in 0..8 {
                                if job.commit_step().is_none() {
                                    break;
                                }
                            }
                        }
                    }
                    jobs.fetch_add(n, Ordering::Relaxed);
                });
            }
            let (tracker, stop) = (&tracker, &stop);
            scope.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    tracker.cancel(&format!("t{}-{}", n % 4, n), CancelReason::ClientRequest);
                    n += 1;
                }
            });
            std::thread::sleep(RUN_FOR);
            stop.store(true, Ordering::Relaxed);
        });
        let per_second = jobs.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
        println!(
            "{{\"shards\":{shards},\"threads\":{threads},\"jobs_per_second\":{per_second:.0},\"reserved_after\":{}}}",
            tracker.pool().reserved()
        );
    }
}
