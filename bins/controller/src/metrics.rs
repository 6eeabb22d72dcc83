//! The controller's own metrics, under `supersede_` (every crate it
//! composes registers its own beside them under the crate's prefix:
//! `cancel_coordinator_*`, `recovery_*`, `state_store_*`, `lease_lock_*`,
//! `label_cas_*`, `sensor_*`, `health_*`, `shutdown_*`).
//!
//! The rule it keeps: labels are small fixed sets — a route template, a
//! status code, a configured role — never a task, run or pull request.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use sensor::backends::BackendChoice;

/// Answer-time buckets (seconds): the reads are one LIST page or a few GETs.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The controller's counters. Cheap to clone; clones share.
#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    pub(crate) info: Family<InfoLabels, Gauge>,
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) request_duration: HistogramFamily<RouteLabels>,
    pub(crate) fleet_started: Family<RoleLabels, Counter>,
    pub(crate) fleet_finished: Family<RoleLabels, Counter>,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self {
            info: Family::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
            fleet_started: Family::default(),
            fleet_finished: Family::default(),
        }
    }
}

/// Labels of `supersede_controller_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct InfoLabels {
    pub(crate) version: &'static str,
    pub(crate) state: &'static str,
    pub(crate) leases: &'static str,
    pub(crate) runs: &'static str,
    pub(crate) github: &'static str,
}

/// Labels of `supersede_api_requests`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) route: String,
    pub(crate) code: u16,
}

/// Labels of `supersede_api_request_duration`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    pub(crate) route: String,
}

/// Labels of the fleet's counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RoleLabels {
    pub(crate) role: String,
}

impl ControllerMetrics {
    /// Sets `supersede_controller_info` for this build and `backends`.
    pub fn set_info(&self, backends: &BackendChoice) {
        let name = |b: sensor::backends::Backend| match b {
            sensor::backends::Backend::Memory => "memory",
            sensor::backends::Backend::Kubernetes => "kubernetes",
        };
        self.info
            .get_or_create(&InfoLabels {
                version: env!("CARGO_PKG_VERSION"),
                state: name(backends.state),
                leases: name(backends.leases),
                runs: name(backends.runs),
                github: match backends.github {
                    sensor::backends::GitHubBackend::Memory => "memory",
                    sensor::backends::GitHubBackend::Api => "api",
                },
            })
            .set(1);
    }

    /// Counts one API answer to `route` (its template, `/v1/tasks/{task_id}`).
    pub(crate) fn request(&self, route: &str, code: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                code,
            })
            .inc();
        self.request_duration
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    /// Registers everything under `supersede_`; the fleet's series only
    /// when `fleet` (they are dev-only).
    pub fn register(&self, registry: &mut Registry, fleet: bool) {
        let r = registry.sub_registry_with_prefix("supersede");
        r.register(
            "controller_info",
            "1, labelled with the build's version and the backend of each kind",
            self.info.clone(),
        );
        r.register(
            "api_requests",
            "Answers of the HTTP API, by route template and status code",
            self.requests.clone(),
        );
        r.register_with_unit(
            "api_request_duration",
            "Time to answer an API request, by route template",
            Unit::Seconds,
            self.request_duration.clone(),
        );
        if fleet {
            r.register(
                "dev_fleet_runs_started",
                "Runs the simulated agent fleet started, by role",
                self.fleet_started.clone(),
            );
            r.register(
                "dev_fleet_runs_finished",
                "Runs of the simulated fleet that worked to their end and succeeded, by role",
                self.fleet_finished.clone(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_named_supersede_and_the_info_names_the_backends() {
        let metrics = ControllerMetrics::default();
        metrics.set_info(&BackendChoice::MEMORY);
        metrics.request("/v1/tasks", 200, 0.002);
        let mut registry = Registry::default();
        metrics.register(&mut registry, false);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("supersede_controller_info{version=\"")
                && text.contains("state=\"memory\"")
                && text.contains("github=\"memory\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("supersede_api_requests_total{route=\"/v1/tasks\",code=\"200\"} 1"),
            "{text}"
        );
        assert!(!text.contains("dev_fleet"), "{text}");
    }
}
