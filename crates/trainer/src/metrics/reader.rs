//! Reading a whole `metrics.jsonl` into typed records ([`MetricsFile`]): line errors name the
//! line and the key path, a truncated last line (a crash while writing) is skipped, a step
//! logged twice keeps its later line.

use super::record::{in_task_order, Header, PerTask, StepRecord};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// A whole `metrics.jsonl`: the header and the step records in ascending step order (for a
/// step logged twice, the later line, as after a resume that replayed it).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsFile {
    /// Line 1.
    pub header: Header,
    /// One record per step.
    pub steps: Vec<StepRecord>,
    /// The 1-based number of a truncated last line that was skipped (a crash while writing).
    pub truncated_line: Option<usize>,
}

/// A malformed line: its 1-based number and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong (names the field and task where there is one).
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for LineError {}

impl MetricsFile {
    /// Reads and parses `path`.
    ///
    /// # Errors
    /// An unreadable file, or a malformed line (the message names the file and line).
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        Self::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Parses the bytes of a `metrics.jsonl` (UTF-8, `\n` or `\r\n` line ends, blank lines
    /// skipped).
    ///
    /// # Errors
    /// A line that is not UTF-8 or not a JSON object, a first line without `tasks` (or with
    /// a task listed twice), a step without `step`, a value of the wrong type (the message
    /// names the key path, e.g. `weights.code`), or a task the header does not list. The last
    /// non-blank line is exempt when it is cut off (no final newline, and invalid UTF-8 or
    /// incomplete JSON): it is skipped and its number kept in [`MetricsFile::truncated_line`]. A second header (same
    /// tasks) is accepted.
    pub fn parse(bytes: &[u8]) -> Result<Self, LineError> {
        let lines: Vec<(usize, &[u8])> = bytes
            .split(|&b| b == b'\n')
            .enumerate()
            .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
            .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
            .collect();
        // Only a last line without its newline can be a cut write (the writer puts a line
        // and its newline in one write).
        let last = lines
            .last()
            .map(|&(n, _)| n)
            .filter(|_| !bytes.ends_with(b"\n"));
        let mut header: Option<Header> = None;
        let mut steps: BTreeMap<u64, StepRecord> = BTreeMap::new();
        let mut truncated_line = None;
        for &(line, raw) in &lines {
            let err = |message: String| LineError { line, message };
            let value = match std::str::from_utf8(raw)
                .map_err(|e| (true, format!("not UTF-8 ({e})")))
                .and_then(|text| {
                    serde_json::from_str::<serde_json::Value>(text).map_err(|e| {
                        let cut = matches!(
                            e.classify(),
                            serde_json::error::Category::Eof | serde_json::error::Category::Syntax
                        );
                        (cut, json_message(&e))
                    })
                }) {
                Ok(v) => v,
                Err((true, _)) if Some(line) == last => {
                    truncated_line = Some(line);
                    continue;
                }
                Err((_, message)) => return Err(err(message)),
            };
            let Some(obj) = value.as_object() else {
                return Err(err("expected a JSON object".into()));
            };
            let is_step = obj.contains_key("step");
            match &header {
                None if is_step => {
                    return Err(err(
                        "expected the header (with `tasks`) before the first step".into(),
                    ))
                }
                None => header = Some(read_header(value).map_err(err)?),
                Some(h) if !is_step && obj.contains_key("tasks") => {
                    let again = read_header(value).map_err(err)?;
                    if again.tasks != h.tasks {
                        return Err(err(format!(
                            "a second header names tasks {:?}, the first named {:?}",
                            again.tasks, h.tasks
                        )));
                    }
                }
                Some(_) if !is_step => return Err(err("a step record without `step`".into())),
                Some(h) => {
                    let record: StepRecord = typed(value).map_err(err)?;
                    check_tasks(&record, &h.tasks).map_err(err)?;
                    steps.insert(record.step, record);
                }
            }
        }
        let Some(header) = header else {
            return Err(LineError {
                line: truncated_line.unwrap_or(1),
                message: match truncated_line {
                    Some(_) => "no header: the only line is truncated".into(),
                    None => "no header: the file is empty".into(),
                },
            });
        };
        Ok(Self {
            header,
            steps: steps.into_values().collect(),
            truncated_line,
        })
    }

    /// `l_i(0)` in the header's task order (`None` where absent or not finite).
    pub fn initial_val_loss(&self) -> Vec<Option<f64>> {
        in_task_order(self.header.initial_val_loss.as_ref(), &self.header.tasks)
            .unwrap_or_else(|| vec![None; self.header.tasks.len()])
    }
}

fn read_header(value: serde_json::Value) -> Result<Header, String> {
    let h: Header = typed(value)?;
    if h.tasks.is_empty() {
        return Err("`tasks` is empty".into());
    }
    for (i, t) in h.tasks.iter().enumerate() {
        if h.tasks[..i].contains(t) {
            return Err(format!("`tasks`: task `{t}` is listed twice"));
        }
    }
    if let Some(m) = &h.initial_val_loss {
        check_map("initial_val_loss", m, &h.tasks)?;
    }
    Ok(h)
}

/// Deserializes with the key path of a type error in the message (`weights.code: ...`).
fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("`{path}`: {}", e.inner())
        }
    })
}

fn check_tasks(record: &StepRecord, tasks: &[String]) -> Result<(), String> {
    for (field, map) in record.per_task_fields() {
        if let Some(m) = map {
            check_map(field, m, tasks)?;
        }
    }
    Ok(())
}

fn check_map(field: &str, map: &PerTask, tasks: &[String]) -> Result<(), String> {
    match map.keys().find(|k| !tasks.contains(k)) {
        Some(task) => Err(format!(
            "`{field}`: task `{task}` is not in the header's tasks {tasks:?}"
        )),
        None => Ok(()),
    }
}

/// serde_json's message with its `at line 1 column N` (always line 1 here) turned into a
/// column.
fn json_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&suffix) {
        Some(message) => format!("column {}: invalid JSON: {message}", e.column()),
        None => format!("invalid JSON: {text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_and_unknown_keys_and_nulls_read_as_none() {
        let text = concat!(
            r#"{"tasks": ["b", "a"], "initial_val_loss": {"a": 2.0}, "future_key": 1}"#,
            "\n",
            r#"{"step": 0, "train_loss": {"a": 1.5, "b": null}, "new_metric": [1, 2]}"#,
            "\n"
        );
        let f = MetricsFile::parse(text.as_bytes()).unwrap();
        assert_eq!(f.initial_val_loss(), vec![None, Some(2.0)]);
        let s = &f.steps[0];
        assert_eq!(
            in_task_order(s.train_loss.as_ref(), &f.header.tasks),
            Some(vec![None, Some(1.5)])
        );
        assert_eq!((s.lr, s.val_ratio.as_ref()), (None, None));
    }

    #[test]
    fn only_a_last_line_without_newline_counts_as_cut() {
        let head = "{\"tasks\": [\"a\"]}\n{\"step\": 0}\n";
        let cut = format!("{head}{{\"step\": 1, \"lr\": 0.");
        let f = MetricsFile::parse(cut.as_bytes()).unwrap();
        assert_eq!((f.steps.len(), f.truncated_line), (1, Some(3)));
        // A complete line with trailing garbage is an error, also as the last line.
        let bad = format!("{head}{{\"step\": 1}} trailing\n");
        let e = MetricsFile::parse(bad.as_bytes()).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
    }

    #[test]
    fn a_wrong_type_names_the_key_path_and_line() {
        let text = "{\"tasks\": [\"a\"]}\n{\"step\": 1, \"weights\": {\"a\": \"x\"}}\n";
        let e = MetricsFile::parse(text.as_bytes()).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.starts_with("`weights.a`: invalid type"), "{e}");
        let text = "{\"tasks\": [\"a\"]}\n{\"step\": 1, \"weights\": {\"z\": 1.0}}\n";
        let e = MetricsFile::parse(text.as_bytes()).unwrap_err();
        assert!(e.message.contains("task `z` is not in the header"), "{e}");
    }
}
