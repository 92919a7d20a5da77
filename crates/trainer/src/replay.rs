//! Offline replay of logged validation-loss curves through a weighting method
//! (`coba-dist replay`), so users can tune τ and H on curves they already have.
//!
//! Input and output formats are pinned in `tests/data/coba/README.md` ("CSV rules for
//! `replay`"): header `step,<task>,...`; row 0 holds the initial validation losses; row `c` the
//! losses measured after the update of step `c`; an empty cell (or a literal 0) is a task absent
//! from that probe. The output has one row per step `0..=last`: `step,source,<task>...`, and
//! with `explain` the CoBa intermediates.

use coba::{MethodKind, StepWeights, WeightError, Weighter, WeighterConfig};
use std::fmt::Write as _;
use thiserror::Error;

/// A replay input or setting error. Input errors name the 1-based line and column of the CSV.
#[derive(Debug, Error)]
pub enum ReplayError {
    /// The CSV is malformed at a cell or row.
    #[error("line {line}, column {column}: {message}")]
    Csv {
        /// 1-based line number in the file.
        line: usize,
        /// 1-based column number (1 = `step`).
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The file as a whole is unusable (empty, no row 0, a probe step without a row).
    #[error("{0}")]
    File(String),
    /// The weighting settings are invalid.
    #[error(transparent)]
    Settings(#[from] WeightError),
}

/// Parsed curves: task names, initial losses and the logged probe rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Curves {
    /// Task names in column order (K >= 1, unique).
    pub tasks: Vec<String>,
    /// Row 0: the initial validation losses (nats/token), all present.
    pub initial_losses: Vec<f64>,
    /// Rows with step >= 1, steps strictly increasing: `(line, step, K losses)`,
    /// `None` for an empty cell. Losses are finite and >= 0 (0 means absent).
    pub rows: Vec<CurveRow>,
}

/// One logged probe row of the CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct CurveRow {
    /// 1-based line number in the file.
    pub line: usize,
    /// The training step after whose update the losses were measured.
    pub step: u64,
    /// K losses; `None` for an empty cell.
    pub losses: Vec<Option<f64>>,
}

impl Curves {
    /// Parses the CSV text (`\n` or `\r\n` line ends; blank lines are skipped).
    ///
    /// # Errors
    /// [`ReplayError::Csv`] naming line and column for: a header not starting with `step`, an
    /// empty or duplicate task name, a wrong number of cells, a bad step, steps not strictly
    /// increasing, a loss that is not a number or is negative, NaN or infinite, an empty cell in
    /// row 0; [`ReplayError::File`] for an empty file or a first row that is not step 0.
    pub fn parse(text: &str) -> Result<Curves, ReplayError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if text.contains('\r') && !text.contains('\n') && text.trim_end_matches('\r').contains('\r')
        {
            return Err(ReplayError::File(
                "lines end in a bare `\\r` (classic Mac); use `\\n` or `\\r\\n` line ends".into(),
            ));
        }
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
            .filter(|(_, l)| !l.trim().is_empty());
        let (header_line, header) = lines.next().ok_or_else(|| {
            ReplayError::File("the file is empty (expected a header `step,<task>,...`)".into())
        })?;
        let tasks = parse_header(header_line, header)?;
        let k = tasks.len();
        let mut initial_losses = None;
        let mut rows: Vec<CurveRow> = Vec::new();
        let mut last_step: Option<u64> = None;
        for (line, text) in lines {
            let cells: Vec<&str> = text.split(',').map(str::trim).collect();
            if cells.len() != k + 1 {
                return Err(csv_err(
                    line,
                    cells.len().min(k + 1),
                    format!(
                        "expected {} cells (step and {k} tasks), found {}",
                        k + 1,
                        cells.len()
                    ),
                ));
            }
            let step: u64 = cells[0].parse().map_err(|_| {
                csv_err(
                    line,
                    1,
                    format!("step `{}` is not a non-negative integer", cells[0]),
                )
            })?;
            if let Some(prev) = last_step {
                if step <= prev {
                    return Err(csv_err(
                        line,
                        1,
                        format!("step {step} does not increase (previous row is step {prev})"),
                    ));
                }
            } else if step != 0 {
                return Err(ReplayError::File(format!(
                    "line {line}: the first row must be step 0 (the initial validation losses), found step {step}"
                )));
            }
            last_step = Some(step);
            let mut losses = Vec::with_capacity(k);
            for (j, cell) in cells[1..].iter().enumerate() {
                losses.push(parse_loss(line, j + 2, &tasks[j], cell)?);
            }
            if step == 0 {
                let mut initial = Vec::with_capacity(k);
                for (j, l) in losses.iter().enumerate() {
                    match l {
                        Some(v) if *v > 0.0 => initial.push(*v),
                        _ => {
                            return Err(csv_err(
                                line,
                                j + 2,
                                format!(
                                    "row 0 must hold every task's initial loss (> 0); task `{}` has none",
                                    tasks[j]
                                ),
                            ))
                        }
                    }
                }
                initial_losses = Some(initial);
            } else {
                rows.push(CurveRow { line, step, losses });
            }
        }
        let initial_losses = initial_losses.ok_or_else(|| {
            ReplayError::File(
                "no data rows: row 0 (the initial validation losses) is missing".into(),
            )
        })?;
        Ok(Curves {
            tasks,
            initial_losses,
            rows,
        })
    }

    /// Parses raw file bytes: as [`parse`](Self::parse) after checking they are UTF-8 (a
    /// leading byte-order mark is skipped).
    ///
    /// # Errors
    /// [`ReplayError::Csv`] at the line and column of the first byte that is not UTF-8; then as
    /// [`parse`](Self::parse).
    pub fn parse_bytes(bytes: &[u8]) -> Result<Curves, ReplayError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Curves::parse(text),
            Err(e) => {
                let good = &bytes[..e.valid_up_to()];
                let line = 1 + good.iter().filter(|b| **b == b'\n').count();
                let line_start = good.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                let column = 1 + good[line_start..].iter().filter(|b| **b == b',').count();
                Err(csv_err(line, column, "the file is not UTF-8 text".into()))
            }
        }
    }

    /// The last logged step (0 if only row 0 exists).
    pub fn last_step(&self) -> u64 {
        self.rows.last().map_or(0, |r| r.step)
    }
}

fn csv_err(line: usize, column: usize, message: String) -> ReplayError {
    ReplayError::Csv {
        line,
        column,
        message,
    }
}

fn parse_header(line: usize, header: &str) -> Result<Vec<String>, ReplayError> {
    let cells: Vec<&str> = header.split(',').map(str::trim).collect();
    if cells[0] != "step" {
        return Err(csv_err(
            line,
            1,
            format!("header must start with `step`, found `{}`", cells[0]),
        ));
    }
    if cells.len() < 2 {
        return Err(csv_err(
            line,
            2,
            "header names no task (expected `step,<task>,...`)".into(),
        ));
    }
    let mut tasks: Vec<String> = Vec::with_capacity(cells.len() - 1);
    for (j, name) in cells[1..].iter().enumerate() {
        if name.is_empty() {
            return Err(csv_err(line, j + 2, "empty task name".into()));
        }
        if let Some(first) = tasks.iter().position(|t| t == name) {
            return Err(csv_err(
                line,
                j + 2,
                format!("duplicate task name `{name}` (also column {})", first + 2),
            ));
        }
        tasks.push((*name).to_string());
    }
    Ok(tasks)
}

fn parse_loss(
    line: usize,
    column: usize,
    task: &str,
    cell: &str,
) -> Result<Option<f64>, ReplayError> {
    if cell.is_empty() {
        return Ok(None);
    }
    let value: f64 = cell.parse().map_err(|_| {
        csv_err(
            line,
            column,
            format!("task `{task}`: `{cell}` is not a number"),
        )
    })?;
    if !value.is_finite() || value < 0.0 {
        return Err(csv_err(
            line,
            column,
            format!("task `{task}`: loss {cell} must be finite and >= 0"),
        ));
    }
    Ok(Some(value))
}

/// Most steps one replay produces (one output row each). A larger last step is almost
/// certainly a typo, and its output would not fit in memory.
pub const MAX_REPLAY_STEPS: u64 = 10_000_000;

/// Replays `curves` through the method of `config`, calling `emit` with the weights of every
/// step `0..=last` in order.
///
/// # Errors
/// Checked before the first step, so `emit` sees nothing on error except for a rejected value:
/// [`ReplayError::Settings`] for invalid settings; [`ReplayError::File`] when the last step is
/// above [`MAX_REPLAY_STEPS`] or a probe step (`c >= 1`, `c % U == 0`) has no row.
/// During the replay: [`ReplayError::Csv`] naming the row and column of a value the method
/// rejects (an absent task for a baseline, a ratio above 1e100).
pub fn replay(
    curves: &Curves,
    config: &WeighterConfig,
    mut emit: impl FnMut(&StepWeights),
) -> Result<(), ReplayError> {
    let mut weighter = Weighter::new(config, &curves.initial_losses)?;
    let last = curves.last_step();
    if last > MAX_REPLAY_STEPS {
        let line = curves.rows.last().map_or(0, |r| r.line);
        return Err(ReplayError::File(format!(
            "line {line}: step {last} is beyond the replay limit of {MAX_REPLAY_STEPS} steps (a typo?)"
        )));
    }
    check_probe_rows(curves, config.update_interval)?;
    let mut rows = curves.rows.iter().peekable();
    for step in 0..=last {
        emit(&weighter.weights_for_step(step)?);
        // Rows of steps that are not probe steps are ignored (any U replays a per-step log).
        while rows.next_if(|r| r.step < step).is_some() {}
        if !weighter.is_probe_step(step) {
            continue;
        }
        let row = rows
            .next_if(|r| r.step == step)
            .ok_or_else(|| missing_row(step, config.update_interval))?;
        weighter
            .observe_probe(step, &row.losses)
            .map_err(|e| locate(e, row, &curves.tasks))?;
    }
    Ok(())
}

fn missing_row(step: u64, update_interval: u64) -> ReplayError {
    ReplayError::File(format!(
        "step {step} is a probe step (c >= 1 and c % {update_interval} == 0) but the file has no row for it"
    ))
}

/// Finds the first probe step without a row, in O(rows): between two logged steps `a < b`, the
/// first probe step after `a` is `(a / U + 1) · U`.
fn check_probe_rows(curves: &Curves, update_interval: u64) -> Result<(), ReplayError> {
    let mut prev = 0u64;
    for row in &curves.rows {
        let next_probe = (prev / update_interval + 1).checked_mul(update_interval);
        if let Some(p) = next_probe.filter(|p| *p < row.step) {
            return Err(missing_row(p, update_interval));
        }
        prev = row.step;
    }
    Ok(())
}

/// Turns a per-task probe error into one naming the CSV line and column.
fn locate(e: WeightError, row: &CurveRow, tasks: &[String]) -> ReplayError {
    match e {
        WeightError::MissingTask { task, method, .. } => csv_err(
            row.line,
            task + 2,
            format!(
                "task `{}` is absent (empty or 0), but method `{method}` needs every task in every probe",
                tasks[task]
            ),
        ),
        WeightError::RatioOutOfRange { task, value, .. } | WeightError::InvalidProbeLoss { task, value, .. } => {
            csv_err(
                row.line,
                task + 2,
                format!("task `{}`: loss {value} cannot be used: {e}", tasks[task]),
            )
        }
        other => ReplayError::Settings(other),
    }
}

/// The output CSV's header: `step,source,<task>...`, and with `explain` (CoBa only)
/// `df,total_slope,rcs_<task>...,acs_<task>...,slope_<task>...`.
pub fn csv_header(tasks: &[String], explain: bool) -> Vec<String> {
    let mut cols = vec!["step".to_string(), "source".to_string()];
    cols.extend(tasks.iter().cloned());
    if explain {
        cols.extend(["df".to_string(), "total_slope".to_string()]);
        for prefix in ["rcs", "acs", "slope"] {
            cols.extend(tasks.iter().map(|t| format!("{prefix}_{t}")));
        }
    }
    cols
}

/// Checks that no task name collides with another output column (a task named `source`, or
/// `rcs_a` next to a task `a` with `explain`), naming the header cell.
///
/// # Errors
/// [`ReplayError::Csv`] at line 1 and the task's column.
pub fn check_output_columns(tasks: &[String], explain: bool) -> Result<(), ReplayError> {
    let header = csv_header(tasks, explain);
    for (j, task) in tasks.iter().enumerate() {
        if header.iter().filter(|c| *c == task).count() > 1 {
            return Err(csv_err(
                1,
                j + 2,
                format!("task name `{task}` collides with an output column of the same name; rename the task"),
            ));
        }
    }
    Ok(())
}

/// Appends one output row (with `\n`) for `s`; `k` is the number of tasks. Floats use Rust's
/// shortest round-trip form, so parsing a printed value gives back the same f64. Explain cells
/// are empty on rows that are not `computed`.
pub fn write_csv_row(out: &mut String, s: &StepWeights, k: usize, explain: bool) {
    let _ = write!(out, "{},{}", s.step, s.source);
    for w in &s.weights {
        let _ = write!(out, ",{w:?}");
    }
    if explain {
        match &s.explain {
            Some(ex) => {
                let _ = write!(out, ",{:?},{:?}", ex.df, ex.total_slope);
                for v in ex.rcs.iter().chain(&ex.acs).chain(&ex.task_slopes) {
                    let _ = write!(out, ",{v:?}");
                }
            }
            None => out.push_str(&",".repeat(2 + 3 * k)),
        }
    }
    out.push('\n');
}

/// Whether `method` supports `--explain`.
pub fn explains(method: MethodKind) -> bool {
    method == MethodKind::Coba
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(curves: &Curves, config: &WeighterConfig) -> Result<Vec<StepWeights>, ReplayError> {
        let mut out = Vec::new();
        replay(curves, config, |s| out.push(s.clone()))?;
        Ok(out)
    }

    fn err(text: &str) -> String {
        Curves::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_absent_cells_and_crlf() {
        let c = Curves::parse("step,a,b\r\n0,2.0,1.0\r\n1,,0.5\r\n3,1.5,0\r\n").unwrap();
        assert_eq!(c.tasks, vec!["a", "b"]);
        assert_eq!(c.initial_losses, vec![2.0, 1.0]);
        assert_eq!(c.rows[0].losses, vec![None, Some(0.5)]);
        assert_eq!(c.rows[1].step, 3);
        assert_eq!(c.rows[1].line, 4);
        assert_eq!(c.last_step(), 3);
    }

    #[test]
    fn malformed_files_name_line_and_column() {
        let cases = [
            ("", "empty"),
            ("\u{feff}step,a\n0,1\n1,x\n", "line 3, column 2"),
            ("step,a\r0,1\r1,1\r", "bare `\\r`"),
            ("stp,a\n0,1\n", "line 1, column 1"),
            (
                "step,a,a\n0,1,1\n",
                "line 1, column 3: duplicate task name `a`",
            ),
            ("step,a\n", "row 0"),
            ("step,a\n1,1.0\n", "line 2: the first row must be step 0"),
            (
                "step,a,b\n0,1,1\n1,1\n",
                "line 3, column 2: expected 3 cells",
            ),
            (
                "step,a\n0,1\n1,x\n",
                "line 3, column 2: task `a`: `x` is not a number",
            ),
            ("step,a\n0,1\n1,-1\n", "line 3, column 2"),
            ("step,a\n0,1\n1,NaN\n", "line 3, column 2"),
            ("step,a\n0,1\n1,inf\n", "line 3, column 2"),
            (
                "step,a\n0,1\n2,1\n2,1\n",
                "line 4, column 1: step 2 does not increase",
            ),
            ("step,a\n0,1\n-1,1\n", "line 3, column 1"),
            ("step,a,b\n0,1,\n", "line 2, column 3: row 0 must hold"),
            ("step,a,b\n0,1,0\n", "line 2, column 3: row 0 must hold"),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(got.contains(want), "{text:?}: got `{got}`, want `{want}`");
        }
    }

    #[test]
    fn missing_probe_row_and_absent_baseline_cell_are_errors() {
        let curves = Curves::parse("step,a,b\n0,1,1\n1,0.9,0.9\n3,0.8,0.8\n").unwrap();
        let config = WeighterConfig {
            warmup_steps: 0,
            ..Default::default()
        };
        let mut emitted = 0;
        let e = replay(&curves, &config, |_| emitted += 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("step 2 is a probe step"), "{e}");
        assert_eq!(emitted, 0, "a missing row is found before the first step");
        // With U = 3 rows 1 and 3 ... row 3 is the only probe step and exists.
        let u3 = WeighterConfig {
            update_interval: 3,
            ..config
        };
        assert_eq!(collect(&curves, &u3).unwrap().len(), 4);

        let curves = Curves::parse("step,a,b\n0,1,1\n1,0.9,\n").unwrap();
        let lbtw = WeighterConfig {
            method: MethodKind::Lbtw,
            ..config
        };
        let e = collect(&curves, &lbtw).unwrap_err().to_string();
        assert!(e.starts_with("line 3, column 3: task `b` is absent"), "{e}");
    }

    #[test]
    fn non_utf8_names_line_and_column() {
        let e = Curves::parse_bytes(b"step,a,b\n0,1,1\n1,0.5,\xff\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 3, column 3: the file is not UTF-8 text"
        );
        let ok = Curves::parse_bytes(b"\xef\xbb\xbfstep,a\n0,1\n").unwrap();
        assert_eq!(ok.tasks, vec!["a"]);
    }

    #[test]
    fn huge_steps_and_colliding_names_are_errors() {
        let curves = Curves::parse("step,a\n0,1\n1,1\n99999999999,1\n").unwrap();
        let config = WeighterConfig::default();
        let e = collect(&curves, &config).unwrap_err().to_string();
        assert!(e.starts_with("line 4: step 99999999999 is beyond"), "{e}");
        let u = WeighterConfig {
            update_interval: 1000,
            ..config
        };
        let curves = Curves::parse("step,a\n0,1\n1000,1\n1000000,1\n").unwrap();
        let e = collect(&curves, &u).unwrap_err().to_string();
        assert!(e.contains("step 2000 is a probe step"), "{e}");

        let tasks = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_output_columns(&tasks(&["a", "b"]), true).is_ok());
        let e = check_output_columns(&tasks(&["a", "source"]), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("line 1, column 3: task name `source` collides"),
            "{e}"
        );
        assert!(check_output_columns(&tasks(&["a", "rcs_a"]), false).is_ok());
        let e = check_output_columns(&tasks(&["a", "rcs_a"]), true)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("line 1, column 3"), "{e}");
    }

    #[test]
    fn output_round_trips_floats_and_pads_explain() {
        let curves = Curves::parse("step,a,b\n0,3,1\n1,2.9,0.7\n2,2.8,0.6\n").unwrap();
        let config = WeighterConfig {
            warmup_steps: 1,
            ..Default::default()
        };
        let steps = collect(&curves, &config).unwrap();
        let mut csv = csv_header(&curves.tasks, true).join(",") + "\n";
        for s in &steps {
            write_csv_row(&mut csv, s, 2, true);
        }
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "step,source,a,b,df,total_slope,rcs_a,rcs_b,acs_a,acs_b,slope_a,slope_b"
        );
        assert_eq!(lines[1], "0,warmup,0.5,0.5,,,,,,,,");
        let cells: Vec<&str> = lines[3].split(',').collect();
        assert_eq!(cells.len(), 12);
        assert_eq!(cells[1], "computed");
        assert_eq!(cells[2].parse::<f64>().unwrap(), steps[2].weights[0]);
    }
}
