//! Calibration drift: whether served answers' P(correct) still matches how often people find
//! them correct (feedback and review verdicts), per system, tier and confidence model version.
//!
//! The last `window` labelled answers of each are kept; their expected calibration error (ECE,
//! ten bins of P) is published, and crossing `ece_threshold` upwards (once at least
//! `min_labelled` answers are in) raises an alert, to be recorded as a governance entry. It
//! recovers below half the threshold, so that an ECE hovering at the line does not flap.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use super::fit::{ReliabilityBin, ece, reliability};

#[derive(Debug, Clone, Copy)]
pub struct CalibrationSettings {
    pub window: usize,
    pub min_labelled: usize,
    pub ece_threshold: f64,
}

impl Default for CalibrationSettings {
    fn default() -> Self {
        CalibrationSettings { window: 200, min_labelled: 50, ece_threshold: 0.1 }
    }
}

/// The state of one (system, tier) as published.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CalibrationState {
    /// The confidence model version whose predictions are being judged.
    pub confidence_model: String,
    pub labelled: usize,
    /// `None` until `min_labelled` answers are in.
    pub ece: Option<f64>,
    /// Per tenth of predicted P: answers, mean predicted P, observed accuracy.
    pub bins: Vec<ReliabilityBin>,
    pub alerting: bool,
}

/// A threshold crossing, to be recorded in the ledger.
#[derive(Debug, Clone, Serialize)]
pub struct CalibrationEvent {
    pub system: String,
    pub tier: usize,
    pub confidence_model: String,
    pub ece: f64,
    pub threshold: f64,
    pub labelled: usize,
    /// `alert` or `recovered`.
    pub state: &'static str,
    /// Observed accuracy against mean predicted P per tenth of P.
    pub bins: Vec<ReliabilityBin>,
}

#[derive(Debug, Default)]
struct Window {
    model: String,
    labelled: VecDeque<(f64, bool)>,
    alerting: bool,
}

#[derive(Debug)]
pub struct CalibrationMonitor {
    settings: CalibrationSettings,
    windows: BTreeMap<(String, usize), Window>,
}

impl CalibrationMonitor {
    pub fn new(settings: CalibrationSettings) -> CalibrationMonitor {
        CalibrationMonitor { settings, windows: BTreeMap::new() }
    }

    /// Adds one labelled answer (its predicted P and whether it was right); returns the
    /// window's state and the crossing it caused, if any. Another model version starts afresh.
    pub fn observe(&mut self, system: &str, tier: usize, model: &str, p_correct: f64, correct: bool) -> (CalibrationState, Option<CalibrationEvent>) {
        let settings = self.settings;
        let window = self.windows.entry((system.to_owned(), tier)).or_default();
        if window.model != model {
            *window = Window { model: model.to_owned(), ..Window::default() };
        }
        window.labelled.push_back((p_correct.clamp(0.0, 1.0), correct));
        while window.labelled.len() > settings.window.max(1) {
            window.labelled.pop_front();
        }
        let bins = bins(&window.labelled);
        let n = window.labelled.len();
        let ece = (n >= settings.min_labelled).then(|| ece(&bins));
        let crossed = match ece {
            Some(ece) if !window.alerting && ece > settings.ece_threshold => Some("alert"),
            Some(ece) if window.alerting && ece < settings.ece_threshold / 2.0 => Some("recovered"),
            _ => None,
        };
        if let Some(state) = crossed {
            window.alerting = state == "alert";
        }
        let event = crossed.zip(ece).map(|(state, ece)| CalibrationEvent {
            system: system.to_owned(),
            tier,
            confidence_model: model.to_owned(),
            ece,
            threshold: settings.ece_threshold,
            labelled: n,
            state,
            bins: bins.clone(),
        });
        (CalibrationState { confidence_model: model.to_owned(), labelled: n, ece, bins, alerting: window.alerting }, event)
    }

    /// Every watched (system, tier), keyed `system/tier`.
    pub fn report(&self) -> BTreeMap<String, CalibrationState> {
        self.windows
            .iter()
            .map(|((system, tier), w)| {
                let bins = bins(&w.labelled);
                let n = w.labelled.len();
                let ece = (n >= self.settings.min_labelled).then(|| ece(&bins));
                (format!("{system}/{tier}"), CalibrationState { confidence_model: w.model.clone(), labelled: n, ece, bins, alerting: w.alerting })
            })
            .collect()
    }
}

fn bins(labelled: &VecDeque<(f64, bool)>) -> Vec<ReliabilityBin> {
    let (predictions, labels): (Vec<f64>, Vec<bool>) = labelled.iter().copied().unzip();
    reliability(&predictions, &labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overconfident_model_raises_one_alert_and_recovers_once_it_matches_again() {
        let mut monitor = CalibrationMonitor::new(CalibrationSettings { window: 100, min_labelled: 50, ece_threshold: 0.1 });
        // Calibrated: P 0.8, right 4 times in 5.
        for i in 0..60 {
            let (state, event) = monitor.observe("s", 0, "m@1", 0.8, i % 5 != 0);
            assert!(event.is_none(), "calibrated answers raise nothing");
            if i >= 49 {
                assert!(state.ece.unwrap() < 0.05, "{:?}", state.ece);
            }
        }
        // Overconfident: P 0.8, right 1 time in 5.
        let mut alerts = Vec::new();
        for i in 0..100 {
            if let (_, Some(event)) = monitor.observe("s", 0, "m@1", 0.8, i % 5 == 0) {
                alerts.push(event);
            }
        }
        assert_eq!(alerts.len(), 1, "one crossing, one alert");
        assert_eq!(alerts[0].state, "alert");
        assert!(alerts[0].ece > 0.1);
        assert_eq!(alerts[0].bins[8].count, alerts[0].labelled, "every answer in the 0.8 bin");
        let recovered: Vec<CalibrationEvent> = (0..100).filter_map(|i| monitor.observe("s", 0, "m@1", 0.8, i % 5 != 0).1).collect();
        assert_eq!(recovered.iter().map(|e| e.state).collect::<Vec<_>>(), ["recovered"]);
        // A new model version is judged afresh.
        let (state, _) = monitor.observe("s", 0, "m@2", 0.5, true);
        assert_eq!((state.labelled, state.ece, state.alerting), (1, None, false));
        assert_eq!(monitor.report()["s/0"].confidence_model, "m@2");
    }
}
