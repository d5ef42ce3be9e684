//! Drift of a system's traffic: the first tier's confidence and the prompt length, each in a
//! rolling window compared with a baseline window by the population stability index (PSI).
//!
//! The baseline is the first `window` requests a system version serves on this replica (it
//! restarts when another version is activated); after that, the current window is the last
//! `window` requests. PSI = Σ (current share − baseline share) · ln(current share / baseline
//! share) over ten bins cut at the baseline's deciles; by the usual reading, below 0.1 is
//! stable, above 0.2 a significant shift. Crossing the threshold (either way) is reported once,
//! for a governance entry in the ledger.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

/// The signals watched.
pub const SIGNALS: [&str; 2] = ["confidence", "prompt_length"];

const BINS: usize = 10;
/// Stands in for an empty bin's share, so that the logarithm stays finite.
const EMPTY_SHARE: f64 = 1e-4;

#[derive(Debug, Clone, Copy)]
pub struct DriftSettings {
    pub window: usize,
    pub psi_threshold: f64,
}

/// One signal of one system.
#[derive(Debug, Default)]
struct SignalWindows {
    baseline: Vec<f64>,
    /// The baseline's bins, cut once it is full: it does not change after that.
    bins: Option<Bins>,
    current: VecDeque<f64>,
    alerting: bool,
}

/// What the endpoint shows for one signal.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SignalDrift {
    pub baseline_size: usize,
    pub window_size: usize,
    /// `None` until both windows are full.
    pub psi: Option<f64>,
    pub alerting: bool,
}

/// A threshold crossing, to be recorded.
#[derive(Debug, Clone, Serialize)]
pub struct DriftEvent {
    pub system: String,
    pub signal: &'static str,
    pub psi: f64,
    pub threshold: f64,
    /// `alert` (crossed upwards) or `recovered`.
    pub state: &'static str,
    pub window: usize,
}

#[derive(Debug)]
pub struct DriftMonitor {
    settings: DriftSettings,
    /// By system id: the version the windows belong to, and per signal its windows.
    systems: BTreeMap<String, (String, [SignalWindows; 2])>,
}

impl DriftMonitor {
    /// A window holds at least one value per bin.
    pub fn new(settings: DriftSettings) -> DriftMonitor {
        let settings = DriftSettings { window: settings.window.max(BINS), ..settings };
        DriftMonitor { settings, systems: BTreeMap::new() }
    }

    /// Adds one request's signals (`None` when the first tier gave no answer); returns the PSI
    /// of each signal whose windows are full, and the crossings this request caused.
    pub fn observe(
        &mut self,
        system: &str,
        version: &str,
        confidence: Option<f64>,
        prompt_length: f64,
    ) -> (Vec<(&'static str, f64)>, Vec<DriftEvent>) {
        let window = self.settings.window;
        let entry = self.systems.entry(system.to_owned()).or_insert_with(|| (version.to_owned(), Default::default()));
        if entry.0 != version {
            *entry = (version.to_owned(), Default::default());
        }
        let mut events = Vec::new();
        let mut psis = Vec::new();
        for (index, value) in [confidence, Some(prompt_length)].into_iter().enumerate() {
            let Some(value) = value.filter(|v| v.is_finite()) else { continue };
            let signal = &mut entry.1[index];
            if signal.baseline.len() < window {
                signal.baseline.push(value);
                if signal.baseline.len() == window {
                    signal.bins = Some(Bins::cut(&signal.baseline));
                }
                continue;
            }
            signal.current.push_back(value);
            if signal.current.len() > window {
                signal.current.pop_front();
            }
            if signal.current.len() < window {
                continue;
            }
            let Some(bins) = &signal.bins else { continue };
            let psi = bins.psi(signal.current.make_contiguous());
            psis.push((SIGNALS[index], psi));
            let alerting = psi > self.settings.psi_threshold;
            if alerting != signal.alerting {
                signal.alerting = alerting;
                events.push(DriftEvent {
                    system: system.to_owned(),
                    signal: SIGNALS[index],
                    psi,
                    threshold: self.settings.psi_threshold,
                    state: if alerting { "alert" } else { "recovered" },
                    window,
                });
            }
        }
        (psis, events)
    }

    /// Per system and signal: window sizes, PSI and alert state.
    pub fn report(&self) -> BTreeMap<String, BTreeMap<&'static str, SignalDrift>> {
        self.systems
            .iter()
            .map(|(system, (_, signals))| {
                let by_signal = SIGNALS
                    .iter()
                    .zip(signals)
                    .map(|(name, windows)| {
                        let current: Vec<f64> = windows.current.iter().copied().collect();
                        let full = current.len() >= self.settings.window;
                        let drift = SignalDrift {
                            baseline_size: windows.baseline.len(),
                            window_size: current.len(),
                            psi: windows.bins.as_ref().filter(|_| full).map(|bins| bins.psi(&current)),
                            alerting: windows.alerting,
                        };
                        (*name, drift)
                    })
                    .collect();
                (system.clone(), by_signal)
            })
            .collect()
    }
}

/// The population stability index of `current` against `baseline`.
pub fn psi(baseline: &[f64], current: &[f64]) -> f64 {
    Bins::cut(baseline).psi(current)
}

/// Bins cut at a baseline's deciles (repeated cut points collapse, so a constant baseline has
/// two bins: its value and everything else), with the baseline's share in each.
#[derive(Debug)]
struct Bins {
    cuts: Vec<f64>,
    expected: Vec<f64>,
}

impl Bins {
    fn cut(baseline: &[f64]) -> Bins {
        let mut sorted = baseline.to_vec();
        sorted.sort_by(f64::total_cmp);
        let mut cuts: Vec<f64> = (1..BINS).map(|i| sorted[(i * sorted.len() / BINS).min(sorted.len() - 1)]).collect();
        cuts.dedup();
        let mut bins = Bins { cuts, expected: Vec::new() };
        bins.expected = bins.shares(baseline);
        bins
    }

    fn shares(&self, values: &[f64]) -> Vec<f64> {
        let mut counts = vec![0usize; self.cuts.len() + 1];
        for value in values {
            // Bin i holds values below cut i (and at or above cut i − 1).
            counts[self.cuts.partition_point(|cut| cut <= value)] += 1;
        }
        counts.into_iter().map(|c| (c as f64 / values.len().max(1) as f64).max(EMPTY_SHARE)).collect()
    }

    fn psi(&self, current: &[f64]) -> f64 {
        self.expected.iter().zip(&self.shares(current)).map(|(e, a)| (a - e) * (a / e).ln()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_distribution_is_stable_and_a_shifted_one_is_not() {
        let baseline: Vec<f64> = (0..200).map(|i| f64::from(i % 50)).collect();
        let same: Vec<f64> = (0..200).map(|i| f64::from((i * 7) % 50)).collect();
        let shifted: Vec<f64> = (0..200).map(|i| f64::from(40 + i % 50)).collect();
        assert!(psi(&baseline, &same) < 0.01, "{}", psi(&baseline, &same));
        assert!(psi(&baseline, &shifted) > 1.0, "{}", psi(&baseline, &shifted));
    }

    #[test]
    fn a_crossing_is_reported_once_each_way_and_a_new_version_starts_a_new_baseline() {
        let mut monitor = DriftMonitor::new(DriftSettings { window: 10, psi_threshold: 0.2 });
        let mut events = Vec::new();
        for i in 0..20 {
            events.extend(monitor.observe("s", "s@1", Some(-0.5), f64::from(i % 10)).1);
        }
        assert!(events.is_empty(), "baseline, then the same traffic: {events:?}");
        for _ in 0..10 {
            events.extend(monitor.observe("s", "s@1", Some(-0.5), 500.0).1);
        }
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!((events[0].signal, events[0].state), ("prompt_length", "alert"));
        events.clear();
        for i in 0..10 {
            events.extend(monitor.observe("s", "s@1", Some(-0.5), f64::from(i % 10)).1);
        }
        assert_eq!(events.iter().map(|e| e.state).collect::<Vec<_>>(), ["recovered"]);
        monitor.observe("s", "s@2", Some(-0.5), 500.0);
        assert_eq!(monitor.report()["s"]["prompt_length"].baseline_size, 1, "a new version, a new baseline");
    }
}
