//! The report: figures measured over repeated runs, their medians against
//! the targets, as JSON, as a markdown table, and as BENCHMARKS.md (whose
//! hand-written notes section is kept when the file is regenerated).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::stats::median;
use crate::system::Machine;

/// Markers around the hand-written section of BENCHMARKS.md that
/// regeneration keeps.
const NOTES_BEGIN: &str = "<!-- notes:begin (kept by kobo-bench --write) -->";
const NOTES_END: &str = "<!-- notes:end -->";

/// A target a measured value must meet.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Bound {
    AtMost(f64),
    AtLeast(f64),
}

impl Bound {
    fn met(self, value: f64) -> bool {
        match self {
            Bound::AtMost(limit) => value <= limit,
            Bound::AtLeast(limit) => value >= limit,
        }
    }

    fn describe(self, unit: &str) -> String {
        match self {
            Bound::AtMost(limit) => format!("≤ {} {unit}", number(limit)),
            Bound::AtLeast(limit) => format!("≥ {} {unit}", number(limit)),
        }
    }
}

/// One measured value of one run.
#[derive(Debug, Clone)]
pub(crate) struct Metric {
    /// Stable name, e.g. `p50_ms`; unique within its figure.
    pub(crate) key: String,
    pub(crate) label: String,
    pub(crate) unit: &'static str,
    pub(crate) value: f64,
    pub(crate) target: Option<Bound>,
}

impl Metric {
    pub(crate) fn new(
        key: impl Into<String>,
        label: impl Into<String>,
        unit: &'static str,
        value: f64,
    ) -> Metric {
        Metric {
            key: key.into(),
            label: label.into(),
            unit,
            value,
            target: None,
        }
    }

    pub(crate) fn target(mut self, bound: Bound) -> Metric {
        self.target = Some(bound);
        self
    }
}

/// A figure: what was measured, how, and each run's values.
#[derive(Debug, Clone)]
pub(crate) struct FigureResult {
    pub(crate) id: &'static str,
    pub(crate) title: &'static str,
    /// How it was measured, with this run's parameters.
    pub(crate) method: String,
    pub(crate) runs: Vec<Vec<Metric>>,
}

/// A metric over all runs.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    pub(crate) key: String,
    pub(crate) label: String,
    pub(crate) unit: &'static str,
    pub(crate) median: f64,
    pub(crate) runs: Vec<f64>,
    pub(crate) target: Option<Bound>,
    pub(crate) met: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct FigureReport {
    pub(crate) id: &'static str,
    pub(crate) title: &'static str,
    pub(crate) method: String,
    pub(crate) metrics: Vec<Summary>,
    /// Every run's values by key.
    pub(crate) runs: Vec<BTreeMap<String, f64>>,
}

impl FigureReport {
    pub(crate) fn from_result(result: FigureResult) -> FigureReport {
        let mut metrics: Vec<Summary> = Vec::new();
        for run in &result.runs {
            for metric in run {
                match metrics.iter_mut().find(|s| s.key == metric.key) {
                    Some(summary) => summary.runs.push(metric.value),
                    None => metrics.push(Summary {
                        key: metric.key.clone(),
                        label: metric.label.clone(),
                        unit: metric.unit,
                        median: f64::NAN,
                        runs: vec![metric.value],
                        target: metric.target,
                        met: None,
                    }),
                }
            }
        }
        for summary in &mut metrics {
            summary.median = median(&summary.runs);
            summary.met = summary.target.map(|t| t.met(summary.median));
        }
        let runs = result
            .runs
            .iter()
            .map(|run| run.iter().map(|m| (m.key.clone(), m.value)).collect())
            .collect();
        FigureReport {
            id: result.id,
            title: result.title,
            method: result.method,
            metrics,
            runs,
        }
    }
}

/// Everything one `kobo-bench` run measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) tool: String,
    pub(crate) command: String,
    pub(crate) quick: bool,
    /// `release` or `debug`: how kobo-bench (and the binaries next to it) were built.
    pub(crate) build: &'static str,
    pub(crate) started_at: String,
    pub(crate) duration_s: f64,
    pub(crate) repeats: usize,
    pub(crate) machine: Machine,
    pub(crate) figures: Vec<FigureReport>,
}

/// A number printed with as many decimals as its size deserves.
pub(crate) fn number(value: f64) -> String {
    if value.is_nan() {
        return "–".into();
    }
    let abs = value.abs();
    if abs >= 1000.0 {
        let whole = value.round() as i64;
        let digits = whole.abs().to_string();
        let mut grouped = String::new();
        for (idx, ch) in digits.chars().enumerate() {
            if idx > 0 && (digits.len() - idx).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(ch);
        }
        if whole < 0 {
            grouped.insert(0, '-');
        }
        grouped
    } else if abs >= 100.0 {
        format!("{value:.0}")
    } else if abs >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn range(runs: &[f64]) -> String {
    let lo = runs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = runs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if runs.len() < 2 {
        "–".into()
    } else {
        format!("{} – {}", number(lo), number(hi))
    }
}

impl Report {
    /// The figures as one markdown table.
    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| figure | measure | median | runs (min – max) | target | met |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---|---|");
        for figure in &self.figures {
            for (idx, m) in figure.metrics.iter().enumerate() {
                let name = if idx == 0 { figure.title } else { "" };
                let target = m.target.map(|t| t.describe(m.unit)).unwrap_or_default();
                let met = match m.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "",
                };
                let _ = writeln!(
                    out,
                    "| {name} | {} | {} {} | {} | {target} | {met} |",
                    m.label,
                    number(m.median),
                    m.unit,
                    range(&m.runs),
                );
            }
        }
        out
    }

    /// One line per target: met or missed, by how much.
    fn reading(&self) -> String {
        let mut out = String::new();
        for figure in &self.figures {
            for m in &figure.metrics {
                let (Some(target), Some(met)) = (m.target, m.met) else {
                    continue;
                };
                let limit = match target {
                    Bound::AtMost(limit) | Bound::AtLeast(limit) => limit,
                };
                let ratio = m.median / limit;
                let verdict = if met { "meets" } else { "misses" };
                let _ = writeln!(
                    out,
                    "- {} — {}: {} {} {verdict} the target {} ({:.2}× the limit).",
                    figure.title,
                    m.label,
                    number(m.median),
                    m.unit,
                    target.describe(m.unit),
                    ratio
                );
            }
        }
        out
    }

    /// BENCHMARKS.md: command, machine, figures, method, reading, and the
    /// hand-written notes of `previous` (the file being replaced).
    pub(crate) fn markdown(&self, previous: Option<&str>) -> String {
        let notes = previous
            .and_then(|text| {
                let start = text.find(NOTES_BEGIN)?;
                let end = text.find(NOTES_END)?;
                (end > start).then(|| text[start..end + NOTES_END.len()].to_string())
            })
            .unwrap_or_else(|| format!("{NOTES_BEGIN}\n## Notes\n\n(none yet)\n{NOTES_END}"));
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(out, "# Benchmarks\n");
        let _ = writeln!(
            out,
            "Written by `kobo-bench` ({}); everything outside the notes markers is regenerated by the tool.\n",
            self.tool
        );
        let _ = writeln!(out, "## Command\n");
        let _ = writeln!(out, "```sh");
        let _ = writeln!(
            out,
            "cargo build --release -p kobo-bench -p kobo-coord -p kobo-agent -p kobo-fake-llm"
        );
        let _ = writeln!(out, "{}", self.command);
        let _ = writeln!(out, "```\n");
        let _ = writeln!(
            out,
            "Started {}, took {:.0} s; {} build; {} run(s) of each figure, medians shown{}.\n",
            self.started_at,
            self.duration_s,
            self.build,
            self.repeats,
            if self.quick {
                "; **--quick: reduced sizes, not comparable with the targets**"
            } else {
                ""
            }
        );
        let _ = writeln!(out, "## Machine\n");
        let _ = writeln!(out, "- CPU: {} — {} cores", m.cpu, m.cores);
        let _ = writeln!(out, "- memory: {} GiB; kernel {}", m.memory_gib, m.kernel);
        let _ = writeln!(
            out,
            "- databases on `{}` (SQLite WAL, `synchronous=FULL`: every acknowledged write is fsynced)",
            m.data_fs
        );
        let _ = writeln!(
            out,
            "- load average (1/5/15 min) before: {}, after: {} — the load generator (this process) and other users share the cores\n",
            m.load_before, m.load_after
        );
        let _ = writeln!(out, "## Figures\n");
        out.push_str(&self.table());
        let _ = writeln!(out, "\n## Method\n");
        let _ = writeln!(
            out,
            "Every figure starts a real `kobo-coord serve` process (the binary next to `kobo-bench`) on a fresh data directory and a loopback port: real HTTPS (TLS 1.3, HTTP/2), mutual TLS for agents, API keys for clients, a real SQLite file. Simulated agents run inside `kobo-bench`, many per process, each enrolled with its own join token and CSR and talking over its own connection through `kobo_agent::coordinator::CoordinatorClient`, with the real agent's loops (free slots → lease → run on the `sim` backend → free slot → report; heartbeats). Failover and agent footprint use real `kobo-agent` processes. Latencies are measured in `kobo-bench` with one monotonic clock.\n"
        );
        for figure in &self.figures {
            let _ = writeln!(out, "- **{}** — {}", figure.title, figure.method);
        }
        let _ = writeln!(out, "\n## Reading\n");
        out.push_str(&self.reading());
        let _ = writeln!(out);
        out.push_str(&notes);
        out.push('\n');
        out
    }
}

/// Writes `report` as BENCHMARKS.md at `path`, keeping its notes section.
pub(crate) fn write_markdown(report: &Report, path: &Path) -> anyhow::Result<()> {
    let previous = std::fs::read_to_string(path).ok();
    std::fs::write(path, report.markdown(previous.as_deref()))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_readable() {
        assert_eq!(number(12345.4), "12,345");
        assert_eq!(number(250.4), "250");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(0.834), "0.83");
        assert_eq!(number(f64::NAN), "–");
    }

    #[test]
    fn medians_and_targets_per_metric() {
        let run = |v: f64| vec![Metric::new("p50_ms", "p50", "ms", v).target(Bound::AtMost(1.0))];
        let report = FigureReport::from_result(FigureResult {
            id: "pickup",
            title: "Pickup",
            method: String::new(),
            runs: vec![run(0.5), run(2.0), run(0.9)],
        });
        assert_eq!(report.metrics.len(), 1);
        assert_eq!(report.metrics[0].median, 0.9);
        assert_eq!(report.metrics[0].met, Some(true));
    }

    #[test]
    fn notes_survive_regeneration() {
        let report = Report {
            tool: "t".into(),
            command: "kobo-bench".into(),
            quick: true,
            build: "debug",
            started_at: "now".into(),
            duration_s: 1.0,
            repeats: 1,
            machine: crate::system::machine(Path::new("/"), String::new()),
            figures: Vec::new(),
        };
        let previous = format!("old\n{NOTES_BEGIN}\nmy notes\n{NOTES_END}\nold tail");
        let text = report.markdown(Some(&previous));
        assert!(text.contains("my notes"));
        assert!(!text.contains("old tail"));
    }
}
