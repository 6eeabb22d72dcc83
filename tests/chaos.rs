//! The chaos soak: random pushes, closes and outside label changes against
//! the whole flow on several replicas, with random faults everywhere, then
//! one recovery cycle and the cancellation history checker judging what the
//! fakes recorded.
//!
//! Size: `SUPERSEDE_CHAOS_OPS` operations (default [`DEFAULT_OPS`]: 20–40 s
//! on two cores, about 90 s when a killed replica's Lease has to age out;
//! 1 500 took about three minutes); replay: the seed is printed at the start
//! (`chaos seed: …`) and in every failure message, and
//! `SUPERSEDE_CHAOS_SEED=<seed>` runs the same sequence of operations and
//! faults again (the interleaving of the system's own concurrency can
//! differ; see docs/testing.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;
#[path = "chaos/world.rs"]
mod world;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lease_lock::{LeaseLock, LockConfig};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use recovery::{RecoveryConfig, RecoveryManager};
use resilience::Shutdown;
use secrecy::SecretString;
use sensor::backends::{BackendChoice, Backends, Clients};
use sensor::wiring;
use support::{NS, OWNER, REPO, ROLES, SECRET, sha};
use testkit::faults::{Faults, InjectedError, Match, RuleId};
use testkit::github::DeliveryId;
use tokio::task::JoinSet;
use tokio::time::Instant;
use world::World;

/// Operations in a CI run.
const DEFAULT_OPS: usize = 150;
/// Pull requests (tasks) in play.
const TASKS: u64 = 8;
/// Sensor replicas behind the balancer.
const SENSORS: usize = 2;
/// Controller replicas (coordinator workers, the recovery loop on the leader).
const CONTROLLERS: usize = 1;
/// Replicas are killed only in this first fraction of the operations: a
/// killed saga's Lease stays held until it is idle for two lease durations
/// (60 s), and the soak waits for that before its recovery cycle.
const KILLS_UNTIL: f64 = 0.4;
/// The longest the soak waits for the world to settle after its cycle.
const PATIENCE: Duration = Duration::from_secs(90);

/// Which fake a fault is injected into.
#[derive(Clone, Copy, Debug)]
enum Fake {
    Kube,
    GitHub,
}

/// A fault in force until `until`: a rule, or a partition (`None`).
struct Active {
    until: Instant,
    fake: Fake,
    rule: Option<RuleId>,
}

/// The soak's driver: its random generator and what it injected.
struct Chaos {
    seed: u64,
    /// Draws the schedule only (each operation's kind, its own
    /// generator's seed, the pause after it), a fixed number of draws per
    /// operation, so that the sequence of operations replays exactly even
    /// where what an operation finds (a delivery not answered yet, a
    /// replica holding a Lease) depends on the system's timing.
    schedule: StdRng,
    /// The current operation's generator (reseeded from `schedule`).
    op: StdRng,
    world: World,
    faults: Vec<Active>,
    injected: BTreeMap<&'static str, usize>,
    /// Deliveries held, not yet released.
    held: Vec<DeliveryId>,
    /// Deliveries released (their ids, for duplicates).
    released: Vec<DeliveryId>,
    releases: JoinSet<()>,
    /// Sensor replicas alive, by index.
    sensors: Vec<usize>,
    /// Controller replicas alive: identity and shutdown.
    controllers: Vec<(String, Shutdown)>,
    controllers_started: usize,
    /// The next head number per task.
    heads: BTreeMap<u64, usize>,
    outside_labels: Vec<String>,
}

impl Chaos {
    fn faults(&self, fake: Fake) -> &Faults {
        match fake {
            Fake::Kube => self.world.cluster.kube.faults(),
            Fake::GitHub => self.world.cluster.github.faults(),
        }
    }

    fn count(&mut self, what: &'static str) {
        *self.injected.entry(what).or_default() += 1;
    }

    fn stop_ms(rng: &mut StdRng) -> u64 {
        rng.random_range(0..=200)
    }

    /// Pushes a new head to a random open PR (sometimes two commits at
    /// once); its deliveries are held.
    fn push(&mut self) {
        let open = self.world.open_pulls();
        let Some(&task) = open.choose(&mut self.op) else {
            return;
        };
        let next = self.heads.entry(task).or_insert(1);
        *next += 1;
        let head = sha(task as usize * 1_000 + *next);
        let ids = self.world.cluster.push(task, &head);
        self.world.pushed(task);
        self.held.extend(ids);
        self.count("push");
    }

    /// Releases some held deliveries in a shuffled order (out of order),
    /// one at a time in the background; sometimes duplicates one already
    /// delivered, sometimes loses one (GitHub recorded it failed).
    fn deliver(&mut self) {
        let hooks = self.world.cluster.github.webhooks();
        if self.op.random_bool(0.3)
            && let Some(&id) = self.released.choose(&mut self.op)
            && hooks.delivery(id).is_some_and(|d| d.outcome.is_attempted())
            && let Ok(again) = hooks.redeliver(id)
        {
            self.held.push(again);
            self.count("duplicate_delivery");
        }
        if self.held.is_empty() {
            return;
        }
        self.held.shuffle(&mut self.op);
        let n = self.op.random_range(1..=self.held.len());
        let mut batch: Vec<DeliveryId> = self.held.drain(..n).collect();
        if batch.len() > 1 && self.op.random_bool(0.05) {
            let lost = batch.pop().unwrap();
            if hooks.fail(lost).is_ok() {
                self.count("lost_delivery");
            }
        }
        if batch.windows(2).any(|w| w[0] > w[1]) {
            self.count("out_of_order_batch");
        }
        self.released.extend(batch.iter().copied());
        self.releases.spawn(async move {
            let _ = hooks.release(&batch).await;
        });
    }

    /// Closes a random open PR (at most a quarter of them).
    fn close(&mut self) {
        let open = self.world.open_pulls();
        if open.len() as u64 <= TASKS * 3 / 4 {
            return;
        }
        let &task = open.choose(&mut self.op).unwrap();
        let ids = self
            .world
            .cluster
            .github
            .close_pull(OWNER, REPO, task)
            .unwrap();
        self.world.closed(task);
        self.held.extend(ids);
        self.count("close");
    }

    /// The outside writer adds or removes an unrelated label.
    fn outside(&mut self) {
        let task = self.op.random_range(1..=TASKS);
        let label = self.outside_labels.choose(&mut self.op).unwrap().clone();
        let add = self.op.random_bool(0.6);
        if self.world.outside_label(task, &label, add) {
            self.count("outside_label");
        }
    }

    /// One random fault, in force for a random while (or at once).
    async fn fault(&mut self, kills_allowed: bool) {
        let fake = if self.op.random_bool(0.5) {
            Fake::Kube
        } else {
            Fake::GitHub
        };
        let lasts = Duration::from_millis(self.op.random_range(300..=3_000));
        let until = Instant::now() + lasts;
        let kind = self.op.random_range(0..if kills_allowed { 9 } else { 7 });
        let rule = match kind {
            0 => {
                let fixed = Duration::from_millis(self.op.random_range(2..=20));
                let jitter = Duration::from_millis(self.op.random_range(0..=30));
                self.count("latency");
                Some(self.faults(fake).latency(Match::any(), fixed, jitter))
            }
            1 => {
                let rate = self.op.random_range(0.05..0.3);
                let code = *[500, 502, 503].choose(&mut self.op).unwrap();
                self.count("5xx");
                Some(
                    self.faults(fake)
                        .error_rate(Match::any(), rate, InjectedError::Status(code)),
                )
            }
            2 => {
                let rate = self.op.random_range(0.05..0.3);
                let error = InjectedError::TooManyRequests {
                    retry_after: Duration::from_secs(1),
                };
                self.count("429");
                Some(self.faults(fake).error_rate(Match::any(), rate, error))
            }
            3 => {
                let rate = self.op.random_range(0.05..0.3);
                let error = if self.op.random_bool(0.5) {
                    InjectedError::Drop
                } else {
                    InjectedError::Status(500)
                };
                let verb = *["create", "update", "patch", "delete"]
                    .choose(&mut self.op)
                    .unwrap();
                self.count("answer_lost_after_commit");
                Some(self.faults(fake).error_rate_after_commit(
                    Match::any().verb(verb),
                    rate,
                    error,
                ))
            }
            4 => {
                if self.faults(fake).is_partitioned() {
                    return;
                }
                self.faults(fake).partition();
                self.count("partition");
                None
            }
            5 => {
                self.world.cluster.kube.restart();
                self.count("fake_kube_restart");
                return;
            }
            6 => {
                self.world.cluster.kube.cut_watches();
                self.count("watches_cut");
                return;
            }
            7 => {
                self.kill_sensor().await;
                return;
            }
            _ => {
                self.restart_controller().await;
                return;
            }
        };
        let until = if rule.is_none() {
            Instant::now() + lasts.min(Duration::from_millis(1_500))
        } else {
            until
        };
        self.faults.push(Active { until, fake, rule });
    }

    /// Kills a sensor replica, one holding a task Lease (mid-saga) when
    /// there is one: a drain of at most 300 ms, then its connections are
    /// cut; a new replica starts.
    async fn kill_sensor(&mut self) {
        if self.sensors.is_empty() {
            return;
        }
        let holders = self.world.task_lock_holders();
        let busy: Vec<usize> = (0..self.sensors.len())
            .filter(|&i| {
                let prefix = format!("sensor-{}/", self.sensors[i]);
                holders.iter().any(|h| h.starts_with(&prefix))
            })
            .collect();
        let i = match busy.choose(&mut self.op) {
            Some(&i) => {
                self.count("sensor_killed_mid_saga");
                i
            }
            None => self.op.random_range(0..self.sensors.len()),
        };
        let index = self.sensors.remove(i);
        let drain = Duration::from_millis(self.op.random_range(0..=300));
        self.world.gone(&format!("sensor-{index}"));
        self.world.cluster.stop_replica(index, drain).await;
        let new = self.world.cluster.start_replica().await;
        self.world.alive(&format!("sensor-{new}"));
        self.sensors.push(new);
        self.count("sensor_killed");
    }

    /// Stops a controller replica with a short drain (its sagas stop at a
    /// step boundary) and starts a new one.
    async fn restart_controller(&mut self) {
        if self.controllers.is_empty() {
            return;
        }
        let i = self.op.random_range(0..self.controllers.len());
        let (identity, shutdown) = self.controllers.remove(i);
        shutdown.trigger();
        let drain = Duration::from_millis(self.op.random_range(0..=300));
        let _ = shutdown.drain(drain).await;
        self.world.gone(&identity);
        self.start_controller().await;
        self.count("controller_restarted");
    }

    async fn start_controller(&mut self) {
        let identity = format!("controller-{}", self.controllers_started);
        self.controllers_started += 1;
        let shutdown = self.world.cluster.start_controller(&identity).await;
        self.world.alive(&identity);
        self.controllers.push((identity, shutdown));
    }

    /// Ends the faults whose time is up.
    fn expire(&mut self, all: bool) {
        let now = Instant::now();
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.faults)
            .into_iter()
            .partition(|a| all || a.until <= now);
        self.faults = keep;
        for active in done {
            match active.rule {
                Some(rule) => self.faults(active.fake).remove(rule),
                None => self.faults(active.fake).heal(),
            }
        }
    }

    /// The message every failed assertion carries.
    fn replay(&self) -> String {
        format!(
            "replay with SUPERSEDE_CHAOS_SEED={} SUPERSEDE_CHAOS_OPS={}",
            self.seed,
            ops()
        )
    }
}

fn ops() -> usize {
    std::env::var("SUPERSEDE_CHAOS_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_OPS)
}

fn seed() -> u64 {
    std::env::var("SUPERSEDE_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        })
}

/// The reconciler the soak runs its one cycle with, and the coordinator it
/// hands work to (its workers running): the controller's wiring, over
/// direct clients, with short settle times (the faults have stopped).
async fn final_recovery(world: &World) -> (RecoveryManager, cancel_coordinator::Workers) {
    let cluster = &world.cluster;
    let identity = "chaos-recovery";
    let config = sensor::Config {
        identity: identity.to_owned(),
        webhook_secret: Some(SecretString::from(SECRET)),
        repositories: vec![format!("{OWNER}/{REPO}")],
        github_token: Some(SecretString::from(cluster.github.token().to_owned())),
        ..sensor::Config::default()
    };
    let settings = wiring::backend_settings(&config).unwrap();
    let clients = Clients {
        kube: Some(cluster.kube.client()),
        github: Some(cluster.github.octocrab().unwrap()),
    };
    let backends = Backends::build(BackendChoice::PRODUCTION, &settings, clients).unwrap();
    let parts = wiring::parts_over(&config, backends.clone()).unwrap();
    let coordinator = parts.coordinator.unwrap();
    let workers = coordinator.start();
    let locks = LeaseLock::new(
        backends.leases.clone(),
        LockConfig {
            prefix: wiring::LOCK_PREFIX.to_owned(),
            ..LockConfig::new(identity, NS)
        },
    )
    .unwrap();
    let manager = RecoveryManager::builder(
        backends.store.clone(),
        locks,
        Arc::clone(&backends.workloads),
        coordinator,
    )
    .config(RecoveryConfig {
        settle_after: Duration::from_secs(1),
        run_deadline: Duration::from_secs(5),
        ..RecoveryConfig::default()
    })
    .github(backends.pulls.clone(), backends.labels.clone())
    .build()
    .unwrap();
    world.alive(identity);
    (manager, workers)
}

/// The soak. Given eight pull requests with agents on their heads, two
/// sensor replicas behind the balancer and a controller replica;
/// when `SUPERSEDE_CHAOS_OPS` random operations run — pushes (their
/// deliveries held and released in shuffled batches, some duplicated,
/// a few lost), PR closes, an outside writer's label changes, faults on
/// both fakes (latency, 5xx, 429 with Retry-After, answers lost after the
/// commit, partitions, FakeKube restarts, watches cut), sensor replicas
/// killed mid-saga and controller replicas restarted — and the agent
/// fleet starts runs on every head the state records;
/// then, after the faults stop, the deliveries are settled, the Leases of
/// killed replicas have aged out and one recovery cycle ran: no stale run
/// is left running, no run of a newest head was touched, no run is
/// recorded cancelled twice or before its pod was gone, no Lease is held
/// by a process that is gone (nor any task Lease at all), no outside label
/// was lost, and every open pushed PR ends at `needs-qa` without
/// `ready-for-qa`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak() {
    let seed = seed();
    let ops = ops();
    println!("chaos seed: {seed} ops: {ops} (replay: SUPERSEDE_CHAOS_SEED={seed})");
    let started = std::time::Instant::now();
    let world = World::start(SENSORS).await;
    world.cluster.kube.faults().reseed(seed);
    world.cluster.github.faults().reseed(seed.rotate_left(17));
    let mut chaos = Chaos {
        seed,
        schedule: StdRng::seed_from_u64(seed),
        op: StdRng::seed_from_u64(seed),
        world,
        faults: Vec::new(),
        injected: BTreeMap::new(),
        held: Vec::new(),
        released: Vec::new(),
        releases: JoinSet::new(),
        sensors: (0..SENSORS).collect(),
        controllers: Vec::new(),
        controllers_started: 0,
        heads: BTreeMap::new(),
        outside_labels: ["wip", "priority", "outside-a", "outside-b"]
            .map(String::from)
            .to_vec(),
    };
    for _ in 0..CONTROLLERS {
        chaos.start_controller().await;
    }
    for task in 1..=TASKS {
        let stop = Chaos::stop_ms(&mut chaos.op);
        chaos
            .world
            .open(task, &sha(task as usize * 1_000 + 1), stop)
            .await;
    }
    chaos.world.cluster.github.webhooks().hold();

    for op in 0..ops {
        chaos.expire(false);
        let kills = (op as f64) < ops as f64 * KILLS_UNTIL;
        let kind = chaos.schedule.random_range(0..100);
        let op_seed: u64 = chaos.schedule.random();
        let fleet_seed: u64 = chaos.schedule.random();
        let gap = chaos.schedule.random_range(20..=150);
        chaos.op = StdRng::seed_from_u64(op_seed);
        match kind {
            0..40 => chaos.push(),
            40..62 => chaos.deliver(),
            62..82 => chaos.fault(kills).await,
            82..94 => chaos.outside(),
            94..97 => chaos.close(),
            _ => {}
        }
        let mut rng = StdRng::seed_from_u64(fleet_seed);
        chaos.world.fleet(&ROLES, || Chaos::stop_ms(&mut rng));
        chaos.world.read_requests();
        tokio::time::sleep(Duration::from_millis(gap)).await;
    }
    let chaos_took = started.elapsed();

    // The faults stop; every held delivery goes out; the fleet catches up.
    chaos.expire(true);
    for fake in [Fake::Kube, Fake::GitHub] {
        chaos.faults(fake).clear();
    }
    let hooks = chaos.world.cluster.github.webhooks();
    hooks.resume();
    while chaos.releases.join_next().await.is_some() {}
    tokio::time::timeout(Duration::from_secs(30), hooks.settled())
        .await
        .unwrap_or_else(|_| panic!("deliveries not settled; {}", chaos.replay()))
        .unwrap();
    let world = &chaos.world;

    // The Leases killed replicas left held age out: recovery deletes a
    // Lease only once it is idle for two lease durations.
    let abandoned = LockConfig::new("chaos", NS).lease_duration * 2 + Duration::from_secs(2);
    let aged = Instant::now() + abandoned + Duration::from_secs(30);
    loop {
        world.fleet(&ROLES, || 20);
        world.read_requests();
        let dead = world.leases_of_the_dead();
        if dead.iter().all(|(_, _, idle)| *idle > abandoned) {
            break;
        }
        assert!(
            Instant::now() < aged,
            "Leases of killed replicas never aged: {dead:?}; {}",
            chaos.replay()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // One recovery cycle.
    let (manager, workers) = final_recovery(world).await;
    let report = manager
        .run_cycle()
        .await
        .unwrap_or_else(|e| panic!("recovery cycle failed: {e}; {}", chaos.replay()));
    let settle = Instant::now() + PATIENCE;
    loop {
        world.fleet(&ROLES, || 20);
        if world.history(true).check().is_ok() {
            break;
        }
        if Instant::now() >= settle {
            // The seed first: a failing run must say how to replay it.
            panic!(
                "{}: not settled within {PATIENCE:?} after the recovery cycle ({:?}); \
                 violations with task Leases still held counted: {:?}; \
                 without that rule: {:?}; Leases held by processes gone: {:?}",
                chaos.replay(),
                report.findings,
                world.history(true).violations(),
                world.history(false).violations(),
                world.leases_of_the_dead(),
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let violations = world.history(false).violations();
    let runs = world.runs().len();
    let cancelled = world.cancelled_runs();
    println!(
        "chaos seed {seed}: {ops} ops in {:.1?} (chaos phase {:.1?}); runs {runs}, cancelled {cancelled}; \
         recovery cycle findings {}; injected {:?}; violations {}",
        started.elapsed(),
        chaos_took,
        report.findings.len(),
        chaos.injected,
        violations.len()
    );
    assert_eq!(violations, vec![], "{}", chaos.replay());
    assert_eq!(world.requests_evicted(), 0, "the request log lost records");
    assert!(
        cancelled > 0,
        "nothing was cancelled: the soak proved nothing"
    );
    assert!(
        world.deleted_runs() >= 1,
        "no delete request seen: the history does not read the request log"
    );
    workers.shutdown(Duration::from_secs(5)).await;
    for (_, shutdown) in &chaos.controllers {
        shutdown.trigger();
        let _ = shutdown.drain(Duration::from_secs(5)).await;
    }
}
