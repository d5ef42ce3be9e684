//! Prometheus metrics of one gateway: requests, escalation and containment, latencies, gateway
//! overhead, tokens and cost per tier, policy evaluation time, ledger commits, queues, errors.

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
    core::{AtomicF64, Collector, GenericCounterVec},
};

type FloatCounterVec = GenericCounterVec<AtomicF64>;

const PREFIX: &str = "tiergate";

/// Latency buckets in seconds: sub-millisecond gateway work up to minute-long generations.
const SECONDS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub escalated: IntCounterVec,
    pub contained: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub overhead_seconds: HistogramVec,
    pub tier_seconds: HistogramVec,
    pub tokens: IntCounterVec,
    pub cost: FloatCounterVec,
    pub policy_seconds: HistogramVec,
    pub ledger_commit_seconds: HistogramVec,
    pub ledger_batch_entries: HistogramVec,
    pub ledger_commit_failures: IntCounter,
    pub queued: IntGaugeVec,
    /// 1 while a tier's circuit breaker is open (skipped), else 0; set when scraped.
    pub circuit_open: IntGaugeVec,
    pub errors: IntCounterVec,
    pub feedback: IntCounterVec,
    pub drift_psi: GaugeVec,
    /// Expected calibration error of a tier's P(correct) over its latest labelled answers.
    pub confidence_ece: GaugeVec,
    /// Per bin of predicted P(correct): the mean prediction and the observed accuracy.
    pub confidence_bin: GaugeVec,
    /// Requests of running experiments by arm (`control`, `treatment`, `excluded`) and outcome.
    pub experiment_requests: IntCounterVec,
    pub witness_requests: IntCounterVec,
    /// Tree size of the newest checkpoint each witness cosigned.
    pub witness_cosigned_size: IntGaugeVec,
    /// Seconds since the oldest published checkpoint the witness quorum has not cosigned
    /// (0 when the newest is witnessed, or no witnesses are configured).
    pub ledger_uncosigned_seconds: Gauge,
    /// `max_uncosigned_s`: how long checkpoints may go uncosigned before the alert fires.
    pub ledger_uncosigned_limit_seconds: Gauge,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Metrics> {
        let registry = Registry::new_custom(Some(PREFIX.into()), None)?;
        let counter = |name: &str, help: &str, labels: &[&str]| -> anyhow::Result<IntCounterVec> {
            let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| -> anyhow::Result<HistogramVec> {
            let metric = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let cost =
            FloatCounterVec::new(Opts::new("cost_total", "Cost of attempts from the model cards' prices and real tokens"), &["system", "tier"])?;
        registry.register(Box::new(cost.clone()))?;
        let queued = IntGaugeVec::new(Opts::new("tier_queued_requests", "Requests waiting for a tier"), &["system", "tier"])?;
        registry.register(Box::new(queued.clone()))?;
        let circuit_open = IntGaugeVec::new(
            Opts::new("tier_circuit_open", "1 while the tier's circuit breaker is open (the tier is skipped)"),
            &["system", "tier"],
        )?;
        registry.register(Box::new(circuit_open.clone()))?;
        let ledger_commit_failures =
            IntCounter::with_opts(Opts::new("ledger_commit_failures_total", "Ledger group commits that failed (nothing in them was committed)"))?;
        registry.register(Box::new(ledger_commit_failures.clone()))?;
        let drift_psi = GaugeVec::new(
            Opts::new("drift_psi", "Population stability index of a signal's current window against its baseline window"),
            &["system", "signal"],
        )?;
        registry.register(Box::new(drift_psi.clone()))?;
        let confidence_ece = GaugeVec::new(
            Opts::new("confidence_ece", "Expected calibration error of a tier's P(correct) over its latest answers with feedback or a verdict"),
            &["system", "tier", "confidence_model"],
        )?;
        registry.register(Box::new(confidence_ece.clone()))?;
        let confidence_bin = GaugeVec::new(
            Opts::new(
                "confidence_calibration",
                "Per tenth of predicted P(correct) over a tier's latest labelled answers: mean predicted P and observed accuracy (quantity)",
            ),
            &["system", "tier", "bin", "quantity"],
        )?;
        registry.register(Box::new(confidence_bin.clone()))?;
        let witness_cosigned_size = IntGaugeVec::new(
            Opts::new("witness_cosigned_tree_size", "Tree size of the newest ledger checkpoint each witness cosigned"),
            &["witness"],
        )?;
        registry.register(Box::new(witness_cosigned_size.clone()))?;
        let ledger_uncosigned_seconds = Gauge::with_opts(Opts::new(
            "ledger_uncosigned_seconds",
            "Seconds since the oldest published ledger checkpoint the witness quorum has not cosigned (0 when witnessed)",
        ))?;
        registry.register(Box::new(ledger_uncosigned_seconds.clone()))?;
        let ledger_uncosigned_limit_seconds =
            Gauge::with_opts(Opts::new("ledger_uncosigned_limit_seconds", "How long ledger checkpoints may go uncosigned (max_uncosigned_s)"))?;
        registry.register(Box::new(ledger_uncosigned_limit_seconds.clone()))?;
        Ok(Metrics {
            requests: counter("requests_total", "Inference requests by system, outcome and tier served", &["system", "outcome", "tier_served"])?,
            escalated: counter("requests_escalated_total", "Requests that ran on more than one tier", &["system"])?,
            contained: counter("requests_contained_total", "Requests served by the first tier they ran on", &["system"])?,
            request_seconds: histogram("request_duration_seconds", "End-to-end request time", &["system"], SECONDS)?,
            overhead_seconds: histogram("gateway_overhead_seconds", "End-to-end time minus model time", &["system"], SECONDS)?,
            tier_seconds: histogram("tier_duration_seconds", "Time of one tier attempt", &["system", "tier"], SECONDS)?,
            tokens: counter("tokens_total", "Tokens by system, tier and kind (prompt, completion)", &["system", "tier", "kind"])?,
            cost,
            policy_seconds: histogram("policy_evaluation_seconds", "Time of one gate evaluation", &["gate"], SECONDS)?,
            ledger_commit_seconds: histogram("ledger_commit_seconds", "Time of one ledger group commit", &[], SECONDS)?,
            ledger_batch_entries: histogram(
                "ledger_batch_entries",
                "Entries per ledger group commit",
                &[],
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
            )?,
            ledger_commit_failures,
            queued,
            circuit_open,
            errors: counter("errors_total", "Error responses by code", &["code"])?,
            feedback: counter(
                "feedback_total",
                "Feedback and review verdicts on answers, by system, tier served, escalation and correctness",
                &["system", "tier_served", "escalated", "correct"],
            )?,
            drift_psi,
            confidence_ece,
            confidence_bin,
            experiment_requests: counter(
                "experiment_requests_total",
                "Requests of running experiments by experiment, arm (control, treatment, excluded) and outcome",
                &["experiment", "arm", "outcome"],
            )?,
            witness_requests: counter(
                "witness_requests_total",
                "add-checkpoint requests to witnesses, by outcome (cosigned, ahead, refused, malformed, unreachable)",
                &["witness", "outcome"],
            )?,
            witness_cosigned_size,
            ledger_uncosigned_seconds,
            ledger_uncosigned_limit_seconds,
            registry,
        })
    }

    /// The full name of every metric this gateway exports (`tiergate_…`; histograms without
    /// their `_bucket`, `_sum` and `_count` series), whether or not it has a sample yet.
    pub fn names(&self) -> Vec<String> {
        let collectors: [&dyn Collector; 24] = [
            &self.requests,
            &self.escalated,
            &self.contained,
            &self.request_seconds,
            &self.overhead_seconds,
            &self.tier_seconds,
            &self.tokens,
            &self.cost,
            &self.policy_seconds,
            &self.ledger_commit_seconds,
            &self.ledger_batch_entries,
            &self.ledger_commit_failures,
            &self.queued,
            &self.circuit_open,
            &self.errors,
            &self.feedback,
            &self.drift_psi,
            &self.confidence_ece,
            &self.confidence_bin,
            &self.experiment_requests,
            &self.witness_requests,
            &self.witness_cosigned_size,
            &self.ledger_uncosigned_seconds,
            &self.ledger_uncosigned_limit_seconds,
        ];
        // The registry adds its `tiergate` prefix when it gathers, not in the descriptions.
        collectors.iter().flat_map(|c| c.desc()).map(|d| format!("{PREFIX}_{}", d.fq_name)).collect()
    }

    /// The text exposition format.
    pub fn render(&self) -> anyhow::Result<String> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        Ok(String::from_utf8(buffer)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dashboard and the alerting rules shipped in `dashboards/` name only metrics that
    /// exist: a renamed metric must not leave an empty panel or an alert that never fires.
    #[test]
    fn every_metric_the_dashboard_and_the_alerts_name_is_exported() {
        let exported = Metrics::new().unwrap().names();
        let shipped = [include_str!("../dashboards/grafana-tiergate.json"), include_str!("../dashboards/alerts.yml")];
        let named: std::collections::BTreeSet<String> = shipped
            .iter()
            .flat_map(|text| text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
            .filter(|word| word.starts_with("tiergate_"))
            .map(|word| ["_bucket", "_sum", "_count"].iter().fold(word, |w, suffix| w.strip_suffix(suffix).unwrap_or(w)).to_owned())
            .collect();

        assert!(named.len() >= 15, "the dashboard covers the metrics: {named:?}");
        let missing: Vec<&String> = named.iter().filter(|name| !exported.contains(name)).collect();
        assert!(missing.is_empty(), "named but not exported: {missing:?} (exported: {exported:?})");
    }
}
