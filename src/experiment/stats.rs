//! The statistics of an experiment report: 95% intervals for rates, means and quantiles, and
//! the mixture sequential probability ratio test (mSPRT) that gives its verdict.
//!
//! Why the mSPRT (Johari, Pekelis and Walsh, "Always Valid Inference", 2017, the test behind
//! Optimizely's stats engine): people read an experiment's report every day and stop when it
//! looks decided; a fixed-horizon test read that way is wrong far more often than its alpha.
//! The mSPRT's p-value is valid at every look (it is the running minimum of 1/Λ, Λ being the
//! likelihood ratio of a normal mixture of alternatives against "no difference"), it applies to
//! all three primary metrics alike (each is a mean of one number per request), and an auditor
//! recomputes it from the ledger in a few lines. Its interval is the matching confidence
//! sequence. The variance is that of all values together (the variance under "no difference";
//! larger, so conservative, when the arms differ). The normal approximation makes it
//! asymptotically valid: it needs some tens of requests per arm, which `min_samples` sets.

use serde::Serialize;

/// z for a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// A point estimate and its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Estimate {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

fn round6(value: f64) -> f64 {
    (value * 1e6).round() / 1e6
}

impl Estimate {
    fn rounded(value: f64, low: f64, high: f64) -> Estimate {
        Estimate { value: round6(value), low: round6(low), high: round6(high) }
    }
}

/// Wilson score interval of `successes` in `n` (None when n = 0): it stays inside [0, 1] and
/// behaves at rates near 0 or 1, where guardrails live.
pub fn proportion(successes: u64, n: u64) -> Option<Estimate> {
    if n == 0 {
        return None;
    }
    let (s, n) = (successes as f64, n as f64);
    let p = s / n;
    let z2 = Z95 * Z95;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z95 / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(Estimate::rounded(p, (centre - half).max(0.0), (centre + half).min(1.0)))
}

/// Mean with a normal-approximation interval (None when empty).
pub fn mean(values: &[f64]) -> Option<Estimate> {
    let (m, variance) = mean_variance(values)?;
    let half = Z95 * (variance / values.len() as f64).sqrt();
    Some(Estimate::rounded(m, m - half, m + half))
}

/// Mean and unbiased sample variance (0 for a single value).
pub fn mean_variance(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let m = values.iter().sum::<f64>() / n;
    let variance = if values.len() > 1 { values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    Some((m, variance))
}

/// The `q` quantile (nearest rank) with a distribution-free 95% interval from order statistics:
/// the ranks n·q ± z·sqrt(n·q·(1−q)), clamped to the sample.
pub fn quantile(values: &[f64], q: f64) -> Option<Estimate> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    let at = |rank: f64| sorted[(rank.ceil().max(1.0) as usize).min(sorted.len()) - 1];
    let spread = Z95 * (n * q * (1.0 - q)).sqrt();
    Some(Estimate::rounded(at(n * q), at(n * q - spread), at(n * q + spread + 1.0)))
}

/// The mSPRT of treatment − control on per-request values, read after every request in order.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SequentialTest {
    pub method: &'static str,
    /// Treatment mean − control mean, now.
    pub difference: Option<f64>,
    /// The always-valid (1 − alpha) confidence sequence for the difference, now.
    pub interval: Option<(f64, f64)>,
    /// The always-valid p-value: the smallest 1/Λ over every look so far (capped at 1).
    pub p_value: f64,
    pub alpha: f64,
    /// The mixing standard deviation τ used.
    pub mixture_sd: f64,
}

/// Runs the test over `observations` (arm is treatment?, value), in the order they happened.
/// Λ is evaluated after each observation once both arms have two values.
pub fn msprt(observations: &[(bool, f64)], alpha: f64, mixture_sd: f64) -> SequentialTest {
    let tau2 = mixture_sd * mixture_sd;
    let mut arms = [Running::default(), Running::default()];
    let mut pooled = Running::default();
    let mut p_value: f64 = 1.0;
    let mut now = None;
    for &(treatment, value) in observations {
        arms[usize::from(treatment)].push(value);
        pooled.push(value);
        let (control, treated) = (&arms[0], &arms[1]);
        if control.n < 2 || treated.n < 2 {
            continue;
        }
        // Variance of the difference of means, from the variance of all values together: what
        // it is under "no difference", and larger (so, conservative) otherwise. Per-arm
        // variances would call two constant arms (every request escalated against none)
        // certain after two requests each. A floor keeps Λ finite when everything is constant.
        let v = (pooled.variance() * (1.0 / treated.n as f64 + 1.0 / control.n as f64)).max(1e-12);
        let difference = treated.mean - control.mean;
        let log_lambda = 0.5 * (v / (v + tau2)).ln() + tau2 * difference * difference / (2.0 * v * (v + tau2));
        p_value = p_value.min((-log_lambda).exp().min(1.0));
        let half = ((2.0 * v * (v + tau2) / tau2) * ((1.0 / alpha).ln() + 0.5 * ((v + tau2) / v).ln())).sqrt();
        now = Some((difference, (round6(difference - half), round6(difference + half))));
    }
    SequentialTest {
        method: "mSPRT, normal mixture (Johari et al. 2017), always-valid p-value and confidence sequence",
        difference: now.map(|(d, _)| round6(d)),
        interval: now.map(|(_, interval)| interval),
        p_value: round6(p_value),
        alpha,
        mixture_sd,
    }
}

/// Welford's running mean and variance.
#[derive(Debug, Default, Clone, Copy)]
struct Running {
    n: u64,
    mean: f64,
    m2: f64,
}

impl Running {
    fn push(&mut self, value: f64) {
        self.n += 1;
        let delta = value - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (value - self.mean);
    }

    fn variance(&self) -> f64 {
        if self.n > 1 { self.m2 / (self.n - 1) as f64 } else { 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_matches_the_textbook_value_and_stays_in_range() {
        // 81 of 263: p = 0.308, Wilson 95% [0.255, 0.366] (Newcombe 1998, table I style check).
        let estimate = proportion(81, 263).unwrap();
        assert!((estimate.low - 0.2553).abs() < 1e-3 && (estimate.high - 0.3662).abs() < 1e-3, "{estimate:?}");
        let none = proportion(0, 10).unwrap();
        assert_eq!(none.low, 0.0);
        assert!(none.high > 0.2 && none.high < 0.35);
        assert!(proportion(0, 0).is_none());
    }

    #[test]
    fn quantile_interval_brackets_the_estimate() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let p95 = quantile(&values, 0.95).unwrap();
        assert_eq!(p95.value, 95.0);
        assert!(p95.low <= 95.0 && p95.low >= 88.0 && p95.high >= 95.0 && p95.high <= 100.0, "{p95:?}");
        let p50 = quantile(&values, 0.5).unwrap();
        assert_eq!(p50.value, 50.0);
        assert!(p50.low >= 39.0 && p50.high <= 62.0, "{p50:?}");
    }

    /// Deterministic pseudo-random numbers for the simulations (SplitMix64).
    fn uniform(state: &mut u64) -> f64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn bernoulli_stream(seed: u64, n: usize, p_control: f64, p_treatment: f64) -> Vec<(bool, f64)> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                let treatment = uniform(&mut state) < 0.5;
                let p = if treatment { p_treatment } else { p_control };
                (treatment, f64::from(u8::from(uniform(&mut state) < p)))
            })
            .collect()
    }

    #[test]
    fn with_no_difference_the_test_rarely_rejects_even_when_read_after_every_request() {
        // The property that matters: looking after every one of 2,000 requests, the share of
        // null experiments ever declared different stays near alpha (a fixed-horizon z-test
        // read this way rejects several times as often).
        let runs = 200;
        let rejected = (0..runs).filter(|seed| msprt(&bernoulli_stream(*seed, 2000, 0.3, 0.3), 0.05, 0.05).p_value <= 0.05).count();
        assert!(rejected <= 20, "{rejected} of {runs} null experiments rejected");
    }

    #[test]
    fn two_constant_arms_are_not_called_different_after_a_handful_of_requests() {
        // Every treatment request escalated, no control request: real, but 4 against 6 is not
        // yet evidence an always-valid test may act on.
        let few: Vec<(bool, f64)> = (0..10).map(|i| (i % 5 < 2, if i % 5 < 2 { 1.0 } else { 0.0 })).collect();
        assert!(msprt(&few, 0.05, 0.05).p_value > 0.05, "{:?}", msprt(&few, 0.05, 0.05));
        let many: Vec<(bool, f64)> = (0..300).map(|i| (i % 10 < 3, if i % 10 < 3 { 1.0 } else { 0.0 })).collect();
        assert!(msprt(&many, 0.05, 0.05).p_value < 0.001);
    }

    #[test]
    fn a_real_difference_is_detected_with_the_right_sign() {
        let test = msprt(&bernoulli_stream(7, 4000, 0.30, 0.40), 0.05, 0.05);
        assert!(test.p_value < 0.01, "{test:?}");
        let (low, high) = test.interval.unwrap();
        assert!(low > 0.0 && high < 0.2 && (0.05..0.15).contains(&test.difference.unwrap()), "{test:?}");
    }
}
