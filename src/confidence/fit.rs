//! Fitting a confidence model from labelled answers, and judging it on answers it was not
//! fitted on.
//!
//! Two candidates, both small enough to read: a logistic regression on the standardised
//! features (ridge-penalised, fitted by Newton's method), and an isotonic (monotone) fit of the
//! mean token log-probability alone. Each is scored by stratified five-fold cross-validation:
//! every answer's probability comes from a model fitted on the other four folds. The one with
//! the lower held-out log loss (a proper scoring rule: it rewards ranking and calibration
//! together, and punishes confident mistakes) is refitted on every answer and shipped; the
//! figures reported are the held-out ones, never those on the data it was fitted on.

use std::fmt::Write;

use serde::Serialize;
use serde_json::{Value, json};

use super::{AUROC_FLOOR, Feature, LogisticTerm, MIN_LABELLED_ITEMS, MIN_PER_CLASS, Predictor, sigmoid};
use crate::inference::Signals;

/// Folds of the cross-validation.
pub const FOLDS: usize = 5;
/// Ridge penalty on the standardised coefficients: keeps a fit on a few hundred answers from
/// chasing noise in correlated features (the logprob features move together).
const RIDGE: f64 = 1.0;
/// Probabilities are kept this far from 0 and 1 when scoring, so one confident mistake costs a
/// bounded log loss.
const EPSILON: f64 = 1e-4;
/// Bins of the reliability diagram and of the expected calibration error.
pub const BINS: usize = 10;

/// The features a fit uses unless told otherwise: every signal each tier always produces.
pub const DEFAULT_FEATURES: [Feature; 7] = [
    Feature::MeanLogprob,
    Feature::MinLogprob,
    Feature::LowProbShare,
    Feature::MeanMargin,
    Feature::MinMargin,
    Feature::MeanEntropy,
    Feature::LogCompletionTokens,
];

/// One labelled answer: its signals and whether it was right.
#[derive(Debug, Clone)]
pub struct Sample {
    pub signals: Signals,
    pub correct: bool,
}

/// How well probabilities match outcomes, on answers the model was not fitted on.
#[derive(Debug, Clone, Serialize)]
pub struct Scores {
    /// Probability that a random right answer gets a higher P than a random wrong one.
    pub auroc: f64,
    /// Expected calibration error: |accuracy − mean P| per bin of P, weighted by the bin's share.
    pub ece: f64,
    pub brier: f64,
    pub log_loss: f64,
    /// Accuracy of the 20% of answers with the highest P (what a tier that keeps a fifth gets).
    pub selective_accuracy_at_20pct: f64,
    pub reliability: Vec<ReliabilityBin>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReliabilityBin {
    pub from: f64,
    pub to: f64,
    pub count: usize,
    pub mean_predicted: Option<f64>,
    pub observed_accuracy: Option<f64>,
}

/// One candidate method's held-out scores.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub method: &'static str,
    pub features: Vec<&'static str>,
    pub held_out: Scores,
}

/// A fitted model with the evidence for it.
#[derive(Debug, Clone)]
pub struct Fitted {
    pub predictor: Predictor,
    pub candidates: Vec<Candidate>,
    pub chosen: usize,
    /// Held-out P(correct) of every sample, in sample order, from the chosen method.
    pub held_out_predictions: Vec<f64>,
    pub right: usize,
    pub wrong: usize,
}

impl Fitted {
    pub fn held_out(&self) -> &Scores {
        &self.candidates[self.chosen].held_out
    }
}

/// Why no model could be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    #[error(
        "{items} labelled answers ({right} right, {wrong} wrong): a fit needs at least {min_items}, with at least {min_per_class} of each",
        min_items = MIN_LABELLED_ITEMS,
        min_per_class = MIN_PER_CLASS
    )]
    TooFew { items: usize, right: usize, wrong: usize },
    #[error("the answers lack feature {0} (a tier without alternatives gives no margins; self_check_yes needs escalation.self_check)")]
    MissingFeature(&'static str),
    #[error("held-out AUROC {auroc:.3} is below the floor {floor}: these signals barely separate right answers from wrong ones", floor = AUROC_FLOOR)]
    WeakSignal { auroc: f64 },
}

/// Fits both candidates on `samples` with `features` (for the logistic one) and keeps the
/// better by held-out log loss; refuses too few answers, a missing feature and a weak signal.
pub fn fit(samples: &[Sample], features: &[Feature]) -> Result<Fitted, FitError> {
    let right = samples.iter().filter(|s| s.correct).count();
    let wrong = samples.len() - right;
    if samples.len() < MIN_LABELLED_ITEMS || right < MIN_PER_CLASS || wrong < MIN_PER_CLASS {
        return Err(FitError::TooFew { items: samples.len(), right, wrong });
    }
    let rows = feature_rows(samples, features)?;
    let labels: Vec<bool> = samples.iter().map(|s| s.correct).collect();
    let folds = stratified_folds(&labels, FOLDS);
    let mean_logprob: Vec<Vec<f64>> = feature_rows(samples, &[Feature::MeanLogprob])?;

    let logistic_held_out = cross_validate(&rows, &labels, &folds, |x, y| fit_logistic(x, y, features));
    let isotonic_held_out = cross_validate(&mean_logprob, &labels, &folds, |x, y| fit_isotonic(x, y, Feature::MeanLogprob));
    let candidates = vec![
        Candidate { method: "logistic", features: features.iter().map(|f| f.as_str()).collect(), held_out: scores(&logistic_held_out, &labels) },
        Candidate { method: "isotonic", features: vec![Feature::MeanLogprob.as_str()], held_out: scores(&isotonic_held_out, &labels) },
    ];
    let chosen = if candidates[0].held_out.log_loss <= candidates[1].held_out.log_loss { 0 } else { 1 };
    let auroc = candidates[chosen].held_out.auroc;
    if auroc < AUROC_FLOOR {
        return Err(FitError::WeakSignal { auroc });
    }
    let (predictor, held_out_predictions) = if chosen == 0 {
        (fit_logistic(&rows, &labels, features), logistic_held_out)
    } else {
        (fit_isotonic(&mean_logprob, &labels, Feature::MeanLogprob), isotonic_held_out)
    };
    Ok(Fitted { predictor, candidates, chosen, held_out_predictions, right, wrong })
}

fn feature_rows(samples: &[Sample], features: &[Feature]) -> Result<Vec<Vec<f64>>, FitError> {
    samples.iter().map(|s| features.iter().map(|f| f.value(&s.signals).ok_or(FitError::MissingFeature(f.as_str()))).collect()).collect()
}

/// Fold of each sample: within each class, samples in order go round the folds, so every fold
/// holds about the same share of right and wrong answers. Deterministic: the same workload
/// always gives the same folds.
pub fn stratified_folds(labels: &[bool], folds: usize) -> Vec<usize> {
    let (mut right, mut wrong) = (0usize, 0usize);
    labels
        .iter()
        .map(|&label| {
            let counter = if label { &mut right } else { &mut wrong };
            let fold = *counter % folds;
            *counter += 1;
            fold
        })
        .collect()
}

/// Held-out predictions: each sample's from a model fitted without its fold.
fn cross_validate(rows: &[Vec<f64>], labels: &[bool], folds: &[usize], fit: impl Fn(&[Vec<f64>], &[bool]) -> Predictor) -> Vec<f64> {
    let count = folds.iter().copied().max().map_or(0, |m| m + 1);
    let mut predictions = vec![0.0; rows.len()];
    for fold in 0..count {
        let (x, y): (Vec<Vec<f64>>, Vec<bool>) =
            rows.iter().zip(labels).zip(folds).filter(|(_, f)| **f != fold).map(|((r, l), _)| (r.clone(), *l)).unzip();
        let model = fit(&x, &y);
        for (i, row) in rows.iter().enumerate().filter(|(i, _)| folds[*i] == fold) {
            predictions[i] = model.predict_values(row);
        }
    }
    predictions
}

/// Ridge-penalised logistic regression on standardised features, by Newton's method (iteratively
/// reweighted least squares); the intercept is not penalised.
pub fn fit_logistic(rows: &[Vec<f64>], labels: &[bool], features: &[Feature]) -> Predictor {
    let d = features.len();
    let n = rows.len().max(1) as f64;
    let mean: Vec<f64> = (0..d).map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n).collect();
    let scale: Vec<f64> = (0..d)
        .map(|j| {
            let variance = rows.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / n;
            // A constant feature carries nothing; scale 1 keeps it harmless (its coefficient goes to 0).
            if variance > 1e-12 { variance.sqrt() } else { 1.0 }
        })
        .collect();
    let x: Vec<Vec<f64>> = rows.iter().map(|r| std::iter::once(1.0).chain((0..d).map(|j| (r[j] - mean[j]) / scale[j])).collect()).collect();
    let mut beta = vec![0.0; d + 1];
    for _ in 0..50 {
        let mut gradient = vec![0.0; d + 1];
        let mut hessian = vec![vec![0.0; d + 1]; d + 1];
        for (xi, &yi) in x.iter().zip(labels) {
            let p = sigmoid(xi.iter().zip(&beta).map(|(a, b)| a * b).sum());
            let w = (p * (1.0 - p)).max(1e-9);
            for a in 0..=d {
                gradient[a] += (f64::from(u8::from(yi)) - p) * xi[a];
                for b in 0..=d {
                    hessian[a][b] += w * xi[a] * xi[b];
                }
            }
        }
        for j in 1..=d {
            gradient[j] -= RIDGE * beta[j];
            hessian[j][j] += RIDGE;
        }
        let Some(step) = solve(hessian, gradient) else { break };
        let size: f64 = step.iter().map(|s| s.abs()).sum();
        for (b, s) in beta.iter_mut().zip(&step) {
            *b += s;
        }
        if size < 1e-10 {
            break;
        }
    }
    Predictor::Logistic {
        intercept: beta[0],
        features: (0..d).map(|j| LogisticTerm { name: features[j], mean: mean[j], scale: scale[j], coefficient: beta[j + 1] }).collect(),
    }
}

/// Solves `a · x = b` by Gaussian elimination with partial pivoting; `None` when singular.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..n {
            let factor = a[row][col] / a[col][col];
            let (above, below) = a.split_at_mut(row);
            for (target, source) in below[0][col..].iter_mut().zip(&above[col][col..]) {
                *target -= factor * source;
            }
            b[row] -= factor * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let rest: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - rest) / a[row][row];
    }
    Some(x)
}

/// Isotonic regression of the label on one feature (pool adjacent violators); each pooled
/// block becomes a point at its mean feature value.
pub fn fit_isotonic(rows: &[Vec<f64>], labels: &[bool], feature: Feature) -> Predictor {
    let mut pairs: Vec<(f64, f64)> = rows.iter().zip(labels).map(|(r, &l)| (r[0], f64::from(u8::from(l)))).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Blocks of (sum x, sum y, count), merged while a block's mean exceeds the next one's.
    let mut blocks: Vec<(f64, f64, f64)> = Vec::new();
    for (x, y) in pairs {
        blocks.push((x, y, 1.0));
        while blocks.len() > 1 {
            let (last, before) = (blocks[blocks.len() - 1], blocks[blocks.len() - 2]);
            if before.1 / before.2 < last.1 / last.2 {
                break;
            }
            blocks.pop();
            let merged = blocks.last_mut().expect("two blocks");
            *merged = (merged.0 + last.0, merged.1 + last.1, merged.2 + last.2);
        }
    }
    let points = blocks.iter().map(|(x, y, n)| [x / n, y / n]).collect();
    Predictor::Isotonic { feature, points }
}

/// Held-out scores of `predictions` against `labels`.
pub fn scores(predictions: &[f64], labels: &[bool]) -> Scores {
    let n = predictions.len().max(1) as f64;
    let brier = predictions.iter().zip(labels).map(|(p, &l)| (p - f64::from(u8::from(l))).powi(2)).sum::<f64>() / n;
    let log_loss = predictions
        .iter()
        .zip(labels)
        .map(|(p, &l)| {
            let p = p.clamp(EPSILON, 1.0 - EPSILON);
            if l { -p.ln() } else { -(1.0 - p).ln() }
        })
        .sum::<f64>()
        / n;
    let reliability = reliability(predictions, labels);
    let ece = ece(&reliability);
    Scores {
        auroc: auroc(predictions, labels).unwrap_or(0.5),
        ece,
        brier,
        log_loss,
        selective_accuracy_at_20pct: selective_accuracy(predictions, labels, 0.2),
        reliability,
    }
}

/// Expected calibration error: per bin, |observed accuracy − mean predicted P|, weighted by the
/// bin's share of the answers.
pub(crate) fn ece(bins: &[ReliabilityBin]) -> f64 {
    let n = bins.iter().map(|b| b.count).sum::<usize>().max(1) as f64;
    bins.iter().filter_map(|b| Some(b.count as f64 / n * (b.observed_accuracy? - b.mean_predicted?).abs())).sum()
}

/// The reliability table: per tenth of predicted P, the answers, their mean P and accuracy.
pub(crate) fn reliability(predictions: &[f64], labels: &[bool]) -> Vec<ReliabilityBin> {
    (0..BINS)
        .map(|bin| {
            let (from, to) = (bin as f64 / BINS as f64, (bin + 1) as f64 / BINS as f64);
            let members: Vec<(f64, bool)> = predictions.iter().zip(labels).filter(|(p, _)| bin_of(**p) == bin).map(|(p, l)| (*p, *l)).collect();
            let count = members.len();
            ReliabilityBin {
                from,
                to,
                count,
                mean_predicted: (count > 0).then(|| members.iter().map(|(p, _)| p).sum::<f64>() / count as f64),
                observed_accuracy: (count > 0).then(|| members.iter().filter(|(_, l)| *l).count() as f64 / count as f64),
            }
        })
        .collect()
}

fn bin_of(p: f64) -> usize {
    ((p * BINS as f64).floor() as usize).min(BINS - 1)
}

/// Mann–Whitney AUROC (ties count half); `None` without both classes.
pub fn auroc(predictions: &[f64], labels: &[bool]) -> Option<f64> {
    let mut ranked: Vec<(f64, bool)> = predictions.iter().copied().zip(labels.iter().copied()).collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    let right = ranked.iter().filter(|(_, l)| *l).count() as f64;
    let wrong = ranked.len() as f64 - right;
    if right == 0.0 || wrong == 0.0 {
        return None;
    }
    // Sum of the right answers' ranks, ties given their average rank.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < ranked.len() {
        let mut j = i;
        while j + 1 < ranked.len() && ranked[j + 1].0 == ranked[i].0 {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += ranked[i..=j].iter().filter(|(_, l)| *l).count() as f64 * average_rank;
        i = j + 1;
    }
    Some((rank_sum - right * (right + 1.0) / 2.0) / (right * wrong))
}

/// Accuracy of the `share` of answers with the highest P (at least one answer).
pub fn selective_accuracy(predictions: &[f64], labels: &[bool], share: f64) -> f64 {
    let mut ranked: Vec<(f64, bool)> = predictions.iter().copied().zip(labels.iter().copied()).collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let keep = ((ranked.len() as f64 * share).round() as usize).clamp(1, ranked.len().max(1));
    ranked.iter().take(keep).filter(|(_, l)| *l).count() as f64 / keep as f64
}

/// The lowest P threshold at which the answers kept (P at or above it) are at least
/// `target` accurate, keeping as many as possible; with the share kept and its accuracy.
pub fn threshold_for_kept_accuracy(predictions: &[f64], labels: &[bool], target: f64) -> Option<(f64, f64, f64)> {
    let mut ranked: Vec<(f64, bool)> = predictions.iter().copied().zip(labels.iter().copied()).collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut best = None;
    let mut right = 0usize;
    for (i, (p, l)) in ranked.iter().enumerate() {
        right += usize::from(*l);
        // Only cut between distinct probabilities: a threshold keeps all answers at its value.
        if ranked.get(i + 1).is_some_and(|next| next.0 == *p) {
            continue;
        }
        let kept = i + 1;
        let accuracy = right as f64 / kept as f64;
        if accuracy >= target {
            best = Some((*p, kept as f64 / ranked.len() as f64, accuracy));
        }
    }
    best
}

/// Accuracy and share of the answers at or above `threshold`.
pub fn kept_at(predictions: &[f64], labels: &[bool], threshold: f64) -> (f64, Option<f64>) {
    let kept: Vec<bool> = predictions.iter().zip(labels).filter(|(p, _)| **p >= threshold).map(|(_, l)| *l).collect();
    let share = kept.len() as f64 / predictions.len().max(1) as f64;
    (share, (!kept.is_empty()).then(|| kept.iter().filter(|l| **l).count() as f64 / kept.len() as f64))
}

/// A confidence-model document (`kind: confidence-model`) for a fitted model.
pub fn document(id: &str, purpose: &str, tier_model: &str, fitted: &Fitted, report: Value) -> Value {
    json!({
        "kind": "confidence-model",
        "id": id,
        "purpose": purpose,
        "tier_model": tier_model,
        "predictor": fitted.predictor,
        "fit": report,
    })
}

/// The fit report stored in the confidence-model document under `fit`.
pub fn fit_report(fitted: &Fitted, workload: &str, workload_sha256: &str, source: &str) -> Value {
    json!({
        "source": source,
        "workload": workload,
        "workload_sha256": workload_sha256,
        "items": fitted.right + fitted.wrong,
        "right": fitted.right,
        "wrong": fitted.wrong,
        "folds": FOLDS,
        "method": fitted.candidates[fitted.chosen].method,
        "chosen_by": "lower held-out log loss",
        "held_out": fitted.held_out(),
        "candidates": fitted.candidates,
        "reliability_svg": reliability_svg(fitted.held_out(), &format!("{} (held out, {} folds)", fitted.candidates[fitted.chosen].method, FOLDS)),
    })
}

/// A reliability diagram: observed accuracy against mean predicted P per bin, the diagonal
/// being perfect calibration; each bin's count written beside its point.
pub fn reliability_svg(scores: &Scores, title: &str) -> String {
    const SIZE: f64 = 360.0;
    const PAD: f64 = 48.0;
    let plot = SIZE - 2.0 * PAD;
    let x = |p: f64| PAD + p * plot;
    let y = |p: f64| SIZE - PAD - p * plot;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE}" height="{SIZE}" viewBox="0 0 {SIZE} {SIZE}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(svg, r#"<rect width="{SIZE}" height="{SIZE}" fill="white"/>"#);
    let _ = write!(svg, r#"<text x="{}" y="20" text-anchor="middle" font-size="13">{}</text>"#, SIZE / 2.0, crate::evidence::chart::escape(title));
    let _ = write!(svg, r##"<rect x="{PAD}" y="{PAD}" width="{plot}" height="{plot}" fill="none" stroke="#999"/>"##);
    let _ = write!(svg, r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#bbb" stroke-dasharray="4 3"/>"##, x(0.0), y(0.0), x(1.0), y(1.0));
    for tick in [0.0, 0.5, 1.0] {
        let _ = write!(svg, r#"<text x="{}" y="{}" text-anchor="middle">{tick}</text>"#, x(tick), SIZE - PAD + 16.0);
        let _ = write!(svg, r#"<text x="{}" y="{}" text-anchor="end">{tick}</text>"#, PAD - 6.0, y(tick) + 4.0);
    }
    let _ = write!(svg, r#"<text x="{}" y="{}" text-anchor="middle">predicted P(correct)</text>"#, SIZE / 2.0, SIZE - 12.0);
    let _ = write!(svg, r#"<text x="14" y="{}" text-anchor="middle" transform="rotate(-90 14 {})">observed accuracy</text>"#, SIZE / 2.0, SIZE / 2.0);
    let points: Vec<(f64, f64, usize)> = scores.reliability.iter().filter_map(|b| Some((b.mean_predicted?, b.observed_accuracy?, b.count))).collect();
    let path: Vec<String> = points.iter().map(|(p, a, _)| format!("{:.1},{:.1}", x(*p), y(*a))).collect();
    let _ = write!(svg, r##"<polyline points="{}" fill="none" stroke="#2b6cb0" stroke-width="2"/>"##, path.join(" "));
    for (p, a, count) in points {
        let _ = write!(svg, r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="#2b6cb0"><title>{count} answers</title></circle>"##, x(p), y(a));
        let _ = write!(svg, r##"<text x="{:.1}" y="{:.1}" fill="#555">{count}</text>"##, x(p) + 6.0, y(a) - 6.0);
    }
    let _ = write!(svg, r#"<text x="{}" y="{}">AUROC {:.3} · ECE {:.3}</text>"#, PAD + 6.0, PAD + 16.0, scores.auroc, scores.ece);
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(mean_logprob: f64, margin: f64, correct: bool) -> Sample {
        Sample {
            signals: Signals {
                mean_logprob,
                min_logprob: mean_logprob * 2.0,
                low_prob_share: 0.0,
                completion_tokens: 5,
                finish_reason: "stop".into(),
                self_check_yes: None,
                mean_margin: Some(margin),
                min_margin: Some(margin / 2.0),
                mean_entropy: Some(-mean_logprob),
                p_correct: None,
            },
            correct,
        }
    }

    /// A deterministic workload where confident answers are usually right: P(right) rises
    /// with the mean logprob, with overlap so that neither class is separable.
    fn workload(n: usize) -> Vec<Sample> {
        (0..n)
            .map(|i| {
                let mean_logprob = -2.0 + 2.0 * (i as f64 / n as f64);
                let jitter = ((i * 7919) % 100) as f64 / 100.0;
                let correct = jitter < 0.15 + 0.7 * (i as f64 / n as f64);
                sample(mean_logprob, 1.0 + mean_logprob + jitter * 0.1, correct)
            })
            .collect()
    }

    #[test]
    fn auroc_counts_ordered_pairs_and_ties_as_half() {
        assert_eq!(auroc(&[0.9, 0.8, 0.1], &[true, true, false]), Some(1.0));
        assert_eq!(auroc(&[0.9, 0.5, 0.1, 0.1], &[true, false, true, false]), Some(0.625));
        assert_eq!(auroc(&[0.9], &[true]), None);
    }

    #[test]
    fn the_logistic_fit_recovers_a_known_relation() {
        // Labels drawn so that P(right) = sigmoid(2x): a large sample's fit finds a slope near 2
        // per unit of x (the ridge pulls it slightly towards 0).
        let n = 4000;
        let rows: Vec<Vec<f64>> = (0..n).map(|i| vec![-3.0 + 6.0 * i as f64 / n as f64]).collect();
        let labels: Vec<bool> = rows.iter().enumerate().map(|(i, r)| ((i * 7919) % 1000) as f64 / 1000.0 < sigmoid(2.0 * r[0])).collect();
        let Predictor::Logistic { intercept, features } = fit_logistic(&rows, &labels, &[Feature::MeanLogprob]) else { panic!("logistic") };
        let slope = features[0].coefficient / features[0].scale;
        assert!((slope - 2.0).abs() < 0.2, "slope {slope}");
        assert!(intercept.abs() < 0.2, "intercept {intercept}");
    }

    #[test]
    fn isotonic_fit_pools_violators_into_a_monotone_curve() {
        let rows: Vec<Vec<f64>> = [1.0, 2.0, 3.0, 4.0].iter().map(|x| vec![*x]).collect();
        let Predictor::Isotonic { points, .. } = fit_isotonic(&rows, &[false, true, false, true], Feature::MeanLogprob) else { panic!() };
        assert_eq!(points, vec![[1.0, 0.0], [2.5, 0.5], [4.0, 1.0]]);
    }

    #[test]
    fn folds_are_stratified_and_every_prediction_is_held_out() {
        let labels: Vec<bool> = (0..20).map(|i| i % 4 == 0).collect();
        let folds = stratified_folds(&labels, 5);
        for fold in 0..5 {
            assert_eq!(folds.iter().zip(&labels).filter(|(f, l)| **f == fold && **l).count(), 1);
            assert_eq!(folds.iter().filter(|f| **f == fold).count(), 4);
        }
        // Held out: a model that memorised its training rows would predict its own labels; a
        // feature that is pure noise must give held-out AUROC near chance, not 1.
        let rows: Vec<Vec<f64>> = (0..200).map(|i| vec![((i * 7919) % 200) as f64]).collect();
        let labels: Vec<bool> = (0..200).map(|i| (i * 31) % 7 < 3).collect();
        let folds = stratified_folds(&labels, 5);
        let held_out = cross_validate(&rows, &labels, &folds, |x, y| fit_isotonic(x, y, Feature::MeanLogprob));
        let auroc = auroc(&held_out, &labels).unwrap();
        assert!((0.3..0.7).contains(&auroc), "noise should not rank: {auroc}");
    }

    #[test]
    fn a_fit_on_an_informative_workload_is_calibrated_on_held_out_answers() {
        let samples = workload(400);
        let fitted = fit(&samples, &DEFAULT_FEATURES).unwrap();
        let held_out = fitted.held_out();
        assert!(held_out.auroc > 0.75, "{}", held_out.auroc);
        assert!(held_out.ece < 0.1, "{}", held_out.ece);
        assert_eq!(fitted.held_out_predictions.len(), 400);
        let labels: Vec<bool> = samples.iter().map(|s| s.correct).collect();
        let (threshold, share, accuracy) = threshold_for_kept_accuracy(&fitted.held_out_predictions, &labels, 0.8).unwrap();
        assert!(accuracy >= 0.8 && share > 0.0);
        assert_eq!(kept_at(&fitted.held_out_predictions, &labels, threshold), (share, Some(accuracy)));
        let svg = reliability_svg(held_out, "t");
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    }

    #[test]
    fn too_few_answers_a_missing_feature_and_a_weak_signal_are_refused() {
        assert!(matches!(fit(&workload(40), &DEFAULT_FEATURES), Err(FitError::TooFew { items: 40, .. })));
        let mut without_margin = workload(200);
        without_margin[3].signals.mean_margin = None;
        assert_eq!(fit(&without_margin, &DEFAULT_FEATURES).unwrap_err(), FitError::MissingFeature("mean_margin"));
        // Labels unrelated to every signal: a hash of the index (splitmix64's finaliser).
        let coin = |i: u64| {
            let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)).is_multiple_of(2)
        };
        let noise: Vec<Sample> = workload(200).into_iter().enumerate().map(|(i, s)| Sample { correct: coin(i as u64), ..s }).collect();
        let refused = fit(&noise, &DEFAULT_FEATURES);
        assert!(matches!(refused, Err(FitError::WeakSignal { .. })), "{:?}", refused.map(|f| f.held_out().auroc));
    }
}
