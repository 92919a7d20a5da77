//! The per-task, per-language table: passed / total and the metric (Pass@1 = passed / judged,
//! accuracy for GSM8K), with skips counted apart so a missing toolchain never reads as 0.

use crate::judge::{Judgement, Verdict};
use crate::problems::{Metric, Problem};
use serde::Serialize;
use std::collections::BTreeMap;

/// One row: a task and language (GSM8K: language `-`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Task name.
    pub task: String,
    /// `python`, `cpp`, `java`, `js`, `go`, or `-` for GSM8K.
    pub lang: String,
    /// `pass@1` or `accuracy`.
    pub metric: Metric,
    /// Problems that passed.
    pub passed: usize,
    /// Problems judged (run or matched); skipped ones excluded.
    pub total: usize,
    /// `passed / total`, `None` when nothing was judged.
    pub score: Option<f64>,
    /// Of the failures: tests failed, timed out, did not build.
    pub failed: usize,
    /// Timeouts.
    pub timeout: usize,
    /// Build errors.
    pub error: usize,
    /// Problems not run, and why (the toolchain is missing).
    pub skipped: usize,
    /// The skip reason, when any were skipped.
    pub skip_reason: Option<String>,
}

/// The table, rows in (task, language) order, plus one overall row per task when it has
/// several languages.
pub fn table(problems: &[&Problem], judged: &[Judgement]) -> Vec<Row> {
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    for (p, j) in problems.iter().zip(judged) {
        let lang = p.check.lang().map_or("-", |l| l.as_str()).to_string();
        let row = rows
            .entry((p.task.clone(), lang.clone()))
            .or_insert_with(|| Row {
                task: p.task.clone(),
                lang,
                metric: p.check.metric(),
                passed: 0,
                total: 0,
                score: None,
                failed: 0,
                timeout: 0,
                error: 0,
                skipped: 0,
                skip_reason: None,
            });
        match j.verdict {
            Verdict::Skipped => {
                row.skipped += 1;
                row.skip_reason.get_or_insert_with(|| j.detail.clone());
                continue;
            }
            Verdict::Passed => row.passed += 1,
            Verdict::Failed => row.failed += 1,
            Verdict::Timeout => row.timeout += 1,
            Verdict::Error => row.error += 1,
        }
        row.total += 1;
    }
    let mut out: Vec<Row> = rows.into_values().collect();
    for r in &mut out {
        r.score = (r.total > 0).then(|| r.passed as f64 / r.total as f64);
    }
    // Per-task totals over the languages that ran (HumanEval-X's five).
    let mut tasks: Vec<String> = out.iter().map(|r| r.task.clone()).collect();
    tasks.dedup();
    let mut with_all = Vec::new();
    for task in tasks {
        let rs: Vec<Row> = out.iter().filter(|r| r.task == task).cloned().collect();
        let several = rs.len() > 1;
        with_all.extend(rs.iter().cloned());
        if several {
            let (passed, total) = rs
                .iter()
                .fold((0, 0), |a, r| (a.0 + r.passed, a.1 + r.total));
            with_all.push(Row {
                task,
                lang: "all".into(),
                metric: rs[0].metric,
                passed,
                total,
                score: (total > 0).then(|| passed as f64 / total as f64),
                failed: rs.iter().map(|r| r.failed).sum(),
                timeout: rs.iter().map(|r| r.timeout).sum(),
                error: rs.iter().map(|r| r.error).sum(),
                skipped: rs.iter().map(|r| r.skipped).sum(),
                skip_reason: None,
            });
        }
    }
    with_all
}

/// The table as aligned text: `task lang metric passed/total score  (failed timeout error)`,
/// and a `skipped: <reason>` note on rows with skips.
pub fn render(rows: &[Row]) -> String {
    let mut s = format!(
        "{:<18} {:<6} {:<9} {:>9} {:>7}  {:>6} {:>7} {:>5}\n",
        "task", "lang", "metric", "passed", "score", "failed", "timeout", "error"
    );
    for r in rows {
        let score = r
            .score
            .map_or("-".to_string(), |x| format!("{:.1}%", 100.0 * x));
        s.push_str(&format!(
            "{:<18} {:<6} {:<9} {:>9} {:>7}  {:>6} {:>7} {:>5}",
            r.task,
            r.lang,
            r.metric.as_str(),
            format!("{}/{}", r.passed, r.total),
            score,
            r.failed,
            r.timeout,
            r.error
        ));
        if r.skipped > 0 {
            s.push_str(&format!(
                "  skipped {}: {}",
                r.skipped,
                r.skip_reason
                    .as_deref()
                    .unwrap_or("see the languages above")
            ));
        }
        s.push('\n');
    }
    s
}
