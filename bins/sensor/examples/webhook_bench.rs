//! `webhook_bench`: signed deliveries over loopback HTTP against the sensor,
//! 1 000 in flight at once over 500 tasks, on the memory backends and then
//! on FakeKube with 2 ms of latency per call. Prints one JSON line per run:
//!
//! - `backend`: `memory` or `fake-kube`;
//! - `deliveries`, `deliveries_per_sec`: valid, signed `pull_request`
//!   `synchronize` deliveries, and how many were answered per second;
//! - `answer_p50_ms`, `answer_p99_ms`: from sending a delivery to its answer;
//! - `rss_mb`: the sensor process's resident memory after the last burst
//!   (stderr adds its peak, `VmHWM`);
//! - `rejected`: deliveries not answered 202 (must be 0: every one is valid);
//! - `exit_code`: the sensor's exit code after SIGTERM (0: drained).
//!
//! The sensor runs in a child process (this example re-executed), so its
//! memory is measured alone; the load generator and FakeKube run in the
//! parent. Each run sends `WEBHOOK_BENCH_ROUNDS` (5) bursts of
//! `WEBHOOK_BENCH_IN_FLIGHT` (1 000) deliveries over `WEBHOOK_BENCH_TASKS`
//! (500) tasks, each burst with new heads pushed later than the last. The
//! sensor's coordinator runs too, as deployed (it finds no runs to cancel:
//! the answer path is what is measured). On FakeKube the states, leases and
//! CodeRuns are there (the real `kube::Client` through `KUBECONFIG`);
//! GitHub is in memory in both runs.
//!
//! ```text
//! cargo run --release -p sensor --example webhook_bench
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use secrecy::SecretString;
use serde_json::Value;
use testkit::process::{Memory, cpu_seconds, memory, own_cpu_seconds, raise_fd_limit};

const SECRET: &str = "webhook bench secret";
const SYNCHRONIZE: &str = include_str!(
    "../../../crates/github-webhook/tests/fixtures/pull_request_synchronize.payload.json"
);
const ROLE: &str = "WEBHOOK_BENCH_ROLE";

fn main() {
    if std::env::var(ROLE).is_ok() {
        serve();
        return;
    }
    raise_fd_limit(8_192).unwrap();
    let rounds = env_usize("WEBHOOK_BENCH_ROUNDS", 5);
    let in_flight = env_usize("WEBHOOK_BENCH_IN_FLIGHT", 1_000);
    let tasks = env_usize("WEBHOOK_BENCH_TASKS", 500);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        resilience::tls::ensure_crypto_provider();
        let memory = run("memory", None, rounds, in_flight, tasks).await;
        println!("{memory}");
        let kube = testkit::kube::FakeKube::builder()
            .crd(<cancel_coordinator::CodeRun as kube::CustomResourceExt>::crd())
            .start()
            .await
            .unwrap();
        kube.faults().latency(
            testkit::faults::Match::any(),
            Duration::from_millis(2),
            Duration::ZERO,
        );
        let kubeconfig = kube.kubeconfig().unwrap().to_owned();
        let fake_kube = run("fake-kube", Some(&kubeconfig), rounds, in_flight, tasks).await;
        println!("{fake_kube}");
        eprintln!(
            "FakeKube calls: {}",
            kube.calls()
                .snapshot()
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    });
}

/// One run: a sensor child on `kubeconfig` (memory when `None`), the
/// bursts, then SIGTERM.
async fn run(
    backend: &str,
    kubeconfig: Option<&std::path::Path>,
    rounds: usize,
    in_flight: usize,
    tasks: usize,
) -> Value {
    let (mut child, addr) = spawn_sensor(kubeconfig);
    let url = format!("http://{addr}{}", sensor::WEBHOOK_PATH);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(in_flight)
        .build()
        .unwrap();
    let mut latencies = Vec::with_capacity(rounds * in_flight);
    let mut rejected = 0usize;
    let mut sent = 0usize;
    // Built and signed before the clock starts: only the sensor is timed.
    let bursts: Vec<Vec<(String, String, String)>> = (0..rounds)
        .map(|round| (0..in_flight).map(|i| delivery(round, i, tasks)).collect())
        .collect();
    let started = Instant::now();
    let harness_cpu_before = own_cpu_seconds().unwrap();
    for deliveries in bursts {
        let answers =
            futures::stream::iter(deliveries.into_iter().map(|(guid, body, signature)| {
                let http = http.clone();
                let url = url.clone();
                async move {
                    let sent_at = Instant::now();
                    let answer = http
                        .post(url)
                        .header("content-type", "application/json")
                        .header("x-github-event", "pull_request")
                        .header("x-github-delivery", guid)
                        .header("x-github-hook-id", "1")
                        .header("x-hub-signature-256", signature)
                        .body(body)
                        .send()
                        .await;
                    let status = match answer {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let _ = response.bytes().await;
                            status
                        }
                        Err(_) => 0,
                    };
                    (status, sent_at.elapsed())
                }
            }))
            .buffer_unordered(in_flight)
            .collect::<Vec<_>>()
            .await;
        for (status, took) in answers {
            sent += 1;
            latencies.push(took);
            if status != 202 {
                rejected += 1;
                if rejected <= 5 {
                    eprintln!("{backend}: answered {status}");
                }
            }
        }
    }
    let elapsed = started.elapsed();
    let Memory { rss_kb, peak_kb } = memory(child.id()).unwrap();
    let cpu = cpu_seconds(child.id()).unwrap();
    // This process: the load generator, and FakeKube on the second run.
    let harness_cpu = own_cpu_seconds().unwrap() - harness_cpu_before;
    let exit_code = stop(&mut child);
    latencies.sort();
    let p = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        round3(latencies[i].as_secs_f64() * 1e3)
    };
    eprintln!(
        "{backend}: {sent} deliveries in {elapsed:.2?}; sensor RSS {rss_kb} kB, peak {peak_kb} kB; \
         sensor CPU {cpu:.2} s ({:.3} ms per delivery, coordinator included); \
         harness CPU {harness_cpu:.2} s ({:.3} ms per delivery: load generator{})",
        cpu * 1e3 / sent as f64,
        harness_cpu * 1e3 / sent as f64,
        if kubeconfig.is_some() {
            " and FakeKube"
        } else {
            ""
        },
    );
    serde_json::json!({
        "backend": backend,
        "deliveries": sent,
        "in_flight": in_flight,
        "tasks": tasks,
        "deliveries_per_sec": round3(sent as f64 / elapsed.as_secs_f64()),
        "answer_p50_ms": p(0.50),
        "answer_p99_ms": p(0.99),
        "rss_mb": round3(rss_kb as f64 / 1024.0),
        "rejected": rejected,
        "exit_code": exit_code,
    })
}

/// Delivery `i` of burst `round`: a `synchronize` of PR `i % tasks` from
/// branch `task-<n>-bench` to a head unique to the round, pushed later than
/// the previous round's.
fn delivery(round: usize, i: usize, tasks: usize) -> (String, String, String) {
    let task = i % tasks;
    let mut json: Value = serde_json::from_str(SYNCHRONIZE).unwrap();
    let repo = &mut json["repository"];
    repo["full_name"] = "acme/widgets".into();
    repo["name"] = "widgets".into();
    repo["owner"]["login"] = "acme".into();
    let number = task as u64 + 1;
    json["number"] = number.into();
    let head = format!("{:040x}", (round * 1_000_003 + i) as u128 + 1);
    let pr = &mut json["pull_request"];
    pr["number"] = number.into();
    pr["head"]["sha"] = head.into();
    pr["head"]["ref"] = format!("task-{task}-bench").into();
    pr["head"]["repo"]["full_name"] = "acme/widgets".into();
    let at = jiff::Timestamp::from_second(1_800_000_000 + (round * 10 + i / tasks) as i64).unwrap();
    pr["updated_at"] = at.to_string().into();
    let body = json.to_string();
    let signature = github_webhook::sign(SECRET.as_bytes(), body.as_bytes());
    (format!("bench-{round}-{i}"), body, signature)
}

fn spawn_sensor(kubeconfig: Option<&std::path::Path>) -> (Child, String) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .env(ROLE, "sensor")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(path) = kubeconfig {
        command
            .env("KUBECONFIG", path)
            .env("WEBHOOK_BENCH_KUBE", "1");
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("the sensor said {line:?}"))
        .to_owned();
    (child, addr)
}

fn stop(child: &mut Child) -> i32 {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    kill(pid, Signal::SIGTERM).unwrap();
    child.wait().unwrap().code().unwrap_or(-1)
}

/// The child: a sensor on memory backends, or on the cluster of
/// `KUBECONFIG` (states, leases and CodeRuns; GitHub in memory), until
/// SIGTERM.
fn serve() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let code = runtime.block_on(async {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
        let config = sensor::Config {
            port: 0,
            dev: std::env::var("WEBHOOK_BENCH_KUBE").is_err(),
            webhook_secret: Some(SecretString::from(SECRET)),
            repositories: vec!["acme/widgets".into()],
            github_token: Some(SecretString::from("unused")),
            max_concurrent_writes: env_usize(
                "WEBHOOK_BENCH_CONCURRENT_WRITES",
                sensor::config::DEFAULT_MAX_CONCURRENT_WRITES,
            ),
            ..sensor::Config::default()
        };
        let parts = if config.dev {
            sensor::wiring::memory_parts(&config).unwrap()
        } else {
            resilience::tls::ensure_crypto_provider();
            let client = kube::Client::try_default().await.unwrap();
            let store = state_store::StateStore::with_config(
                state_store::ConfigMapBackend::new(client.clone(), &config.namespace),
                sensor::wiring::store_config(&config),
            );
            let github = Arc::new(label_cas::MemoryPullRequests::new());
            let coordinator = sensor::wiring::coordinator(
                &config,
                lease_lock::KubeLeases::new(client.clone()),
                store.clone(),
                Arc::new(
                    cancel_coordinator::KubeCodeRuns::new(
                        client.clone(),
                        &config.namespace,
                        cancel_coordinator::CodeRunConfig::default(),
                    )
                    .unwrap(),
                ),
                github.clone(),
                github.labels().clone(),
            )
            .unwrap();
            sensor::SensorParts {
                store,
                coordinator: Some(coordinator),
                pulls: Arc::new(sensor::MemoryPullLookup::new()),
            }
        };
        let mut parts = parts;
        if std::env::var("WEBHOOK_BENCH_NO_COORDINATOR").is_ok() {
            parts.coordinator = None;
        }
        let shutdown = resilience::Shutdown::new();
        let sensor = sensor::Sensor::new(&config, parts, shutdown.clone()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening {}", listener.local_addr().unwrap());
        sensor.spawn(listener).unwrap();
        shutdown.listen_for_signals().unwrap();
        shutdown.triggered().await;
        shutdown.drain(config.drain_timeout()).await.exit_code()
    });
    std::process::exit(i32::from(code));
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
