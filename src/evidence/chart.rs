//! A self-contained SVG chart (no plotting dependency): per mode, the latency distribution as
//! a box plot with every request drawn as a dot, and the cost and model time per request.

use std::fmt::Write;

use super::{
    Observation,
    compare::{CompareReport, ModeSummary},
    percentile,
};

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 420.0;
const COLORS: [&str; 2] = ["#2b6cb0", "#c05621"];

pub fn compare_chart(report: &CompareReport) -> String {
    let modes: [(&str, &[Observation]); 2] = [("small-first", &report.observations.small_first), ("large-first", &report.observations.large_first)];
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(svg, r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let _ = write!(
        svg,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}: small-first vs large-first ({} requests each)</text>"#,
        WIDTH / 2.0,
        escape(&report.system),
        report.items
    );
    latency_panel(&mut svg, &modes, 60.0, 560.0);
    cost_panel(&mut svg, report, 640.0, 930.0);
    svg.push_str("</svg>\n");
    svg
}

/// Box plots (p25–p75 box, median line, p5–p95 whiskers) of end-to-end latency per mode.
fn latency_panel(svg: &mut String, modes: &[(&str, &[Observation])], left: f64, right: f64) {
    let (top, bottom) = (60.0, HEIGHT - 50.0);
    let max = modes.iter().flat_map(|(_, o)| o.iter().map(|o| o.latency_ms)).fold(1.0_f64, f64::max) * 1.05;
    let y = |ms: f64| bottom - (ms / max) * (bottom - top);
    let _ = write!(svg, r#"<text x="{}" y="46" text-anchor="middle">End-to-end latency per request (ms)</text>"#, (left + right) / 2.0);
    axis(svg, left, top, bottom, max, |v| format!("{v:.0}"));
    let slot = (right - left) / modes.len() as f64;
    for (i, (mode, observations)) in modes.iter().enumerate() {
        let mut latencies: Vec<f64> = observations.iter().map(|o| o.latency_ms).collect();
        latencies.sort_by(f64::total_cmp);
        let center = left + slot * (i as f64 + 0.5);
        let color = COLORS[i % COLORS.len()];
        let (p5, p25, p50, p75, p95) = (
            percentile(&latencies, 5.0),
            percentile(&latencies, 25.0),
            percentile(&latencies, 50.0),
            percentile(&latencies, 75.0),
            percentile(&latencies, 95.0),
        );
        let _ = write!(svg, r#"<line x1="{center}" x2="{center}" y1="{}" y2="{}" stroke="{color}"/>"#, y(p5), y(p95));
        let _ = write!(
            svg,
            r#"<rect x="{}" y="{}" width="60" height="{}" fill="{color}" fill-opacity="0.25" stroke="{color}"/>"#,
            center - 30.0,
            y(p75),
            (y(p25) - y(p75)).max(1.0)
        );
        let _ =
            write!(svg, r#"<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="{color}" stroke-width="3"/>"#, center - 30.0, center + 30.0, y(p50), y(p50));
        // Every request as a dot, spread sideways by its position so that they do not overlap.
        for (n, o) in observations.iter().enumerate() {
            let dx = ((n * 37) % 41) as f64 - 20.0;
            let _ = write!(svg, r#"<circle cx="{}" cy="{:.1}" r="2" fill="{color}" fill-opacity="0.5"/>"#, center + 45.0 + dx * 0.6, y(o.latency_ms));
        }
        let _ = write!(svg, r#"<text x="{center}" y="{}" text-anchor="middle">{mode} (median {p50:.0} ms)</text>"#, bottom + 20.0);
    }
}

/// Bars of mean cost and mean model time per request, each scaled to its own maximum.
fn cost_panel(svg: &mut String, report: &CompareReport, left: f64, right: f64) {
    let (top, bottom) = (60.0, HEIGHT - 50.0);
    let _ = write!(svg, r#"<text x="{}" y="46" text-anchor="middle">Per request: cost and model time</text>"#, (left + right) / 2.0);
    let modes = [&report.small_first, &report.large_first];
    type Measure = (&'static str, fn(&ModeSummary) -> f64, fn(f64) -> String);
    let measures: [Measure; 2] =
        [("cost", |mode| mode.cost_per_request, |v| format!("{v:.6}")), ("model ms", |mode| mode.model_ms_per_request, |v| format!("{v:.0}"))];
    let group = (right - left) / measures.len() as f64;
    let _ = write!(svg, r#"<line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="black"/>"#);
    for (m, (label, value, format)) in measures.iter().enumerate() {
        let max = modes.iter().map(|mode| value(mode)).fold(0.0_f64, f64::max);
        for (i, mode) in modes.iter().enumerate() {
            let v = value(mode);
            // The top 40 px stay free for the legend.
            let height = if max > 0.0 { v / max * (bottom - top - 40.0) } else { 0.0 };
            let x = left + group * m as f64 + 15.0 + i as f64 * 50.0;
            let color = COLORS[i % COLORS.len()];
            let _ = write!(svg, r#"<rect x="{x}" y="{}" width="40" height="{height}" fill="{color}"/>"#, bottom - height);
            let _ = write!(svg, r#"<text x="{}" y="{}" text-anchor="middle" font-size="10">{}</text>"#, x + 20.0, bottom - height - 4.0, format(v));
        }
        let _ = write!(svg, r#"<text x="{}" y="{}" text-anchor="middle">{label}</text>"#, left + group * m as f64 + 65.0, bottom + 20.0);
    }
    for (i, mode) in modes.iter().enumerate() {
        let y = top + 10.0 + 14.0 * i as f64;
        let _ = write!(svg, r#"<rect x="{}" y="{}" width="10" height="10" fill="{}"/>"#, right - 110.0, y - 9.0, COLORS[i]);
        let _ = write!(svg, r#"<text x="{}" y="{y}">{}</text>"#, right - 96.0, escape(&mode.mode));
    }
}

fn axis(svg: &mut String, x: f64, top: f64, bottom: f64, max: f64, label: impl Fn(f64) -> String) {
    let _ = write!(svg, r#"<line x1="{x}" x2="{x}" y1="{top}" y2="{bottom}" stroke="black"/>"#);
    for step in 0..=4 {
        let value = max * step as f64 / 4.0;
        let y = bottom - (value / max) * (bottom - top);
        let _ = write!(svg, r##"<line x1="{}" x2="{x}" y1="{y}" y2="{y}" stroke="#999"/>"##, x - 4.0);
        let _ = write!(svg, r#"<text x="{}" y="{}" text-anchor="end" font-size="10">{}</text>"#, x - 6.0, y + 3.0, label(value));
    }
}

pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
