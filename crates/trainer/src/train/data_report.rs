//! What the data pipeline kept and lost, said at startup and kept in `summary.json`.
//!
//! Data loss used to be silent: the demo drops 472 samples whose prompt alone fills
//! `max_seq_len`, `unit_test_gen`'s validation set shrinks from 8 to 3 samples (below the
//! probe's 4 per task), and `on_bad_line = "skip"` counted its skips nowhere. Rank 0 now logs
//! one line per task (kept per split of the records read, truncated, dropped by reason, skipped
//! by reason) and a warning for every split that shrank or fell below what the probe needs.

use data::dataset::{Dataset, TaskStats};
use serde::{Deserialize, Serialize};

/// Per-task accounting and the warnings derived from it (`summary.json` → `data`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataReport {
    /// Per task, in task-id order (the data crate's counts).
    pub tasks: Vec<TaskStats>,
    /// Every warning logged at startup.
    pub warnings: Vec<String>,
}

impl DataReport {
    /// The report of a loaded dataset; `probe_per_task` is the probe's global samples per
    /// task (`coba.probe_samples_per_task` or `data.probe_samples_per_task`).
    pub fn new(ds: &Dataset, probe_per_task: usize) -> Self {
        let tasks: Vec<TaskStats> = ds.tasks.iter().map(|t| t.stats.clone()).collect();
        let warnings = tasks
            .iter()
            .flat_map(|st| warnings(st, probe_per_task))
            .collect();
        DataReport { tasks, warnings }
    }

    /// Logs one line per task and each warning (call on rank 0).
    pub fn log(&self) {
        for st in &self.tasks {
            tracing::info!("data: {}", line(st));
        }
        for w in &self.warnings {
            tracing::warn!("data: {w}");
        }
    }
}

/// `task `x`: train 30/32, valid 3/8, test 0/0 kept of records read; 4 truncated; 5 dropped
/// (0 overlong, 5 without a loss token); 2 skipped (invalid_json 2)`.
pub fn line(st: &TaskStats) -> String {
    let skipped = if st.skipped.is_empty() {
        String::new()
    } else {
        let by: Vec<String> = st.skipped.iter().map(|(r, n)| format!("{r} {n}")).collect();
        format!(" ({})", by.join(", "))
    };
    format!(
        "task `{}`: train {}/{}, valid {}/{}{}, test {}/{} kept of records read; {} truncated; \
         {} dropped ({} overlong, {} without a loss token: the prompt fills max_seq_len); \
         {} skipped{skipped}",
        st.name,
        st.train,
        st.records.train,
        st.valid,
        st.records.valid,
        if st.carved_valid > 0 {
            format!(" ({} carved out of train)", st.carved_valid)
        } else {
            String::new()
        },
        st.test,
        st.records.test,
        st.truncated,
        st.dropped,
        st.dropped_overlong,
        st.dropped_no_loss_token,
        st.skipped_total(),
    )
}

/// The warnings of one task: a validation split that lost records, fewer validation samples
/// than one probe takes (the probe then repeats samples: a noisier CoBa slope), lines skipped,
/// and whatever the data crate warns about (a split reduced to zero).
pub fn warnings(st: &TaskStats, probe_per_task: usize) -> Vec<String> {
    let mut out = data::stats::warnings(st);
    let read_valid = st.records.valid;
    if read_valid > 0 && st.valid < read_valid {
        out.push(format!(
            "task `{}`: the validation split shrank from {read_valid} records to {} samples \
             ({} dropped in all; raise data.max_seq_len or use shorter prompts)",
            st.name, st.valid, st.dropped
        ));
    }
    if st.valid > 0 && st.valid < probe_per_task {
        out.push(format!(
            "task `{}`: {} validation samples, fewer than the probe's {probe_per_task} per task: \
             each probe repeats samples (a noisier convergence slope for CoBa)",
            st.name, st.valid
        ));
    }
    if st.skipped_total() > 0 {
        out.push(format!(
            "task `{}`: {} bad lines skipped (on_bad_line = \"skip\")",
            st.name,
            st.skipped_total()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> TaskStats {
        let mut st = TaskStats {
            name: "t".into(),
            train: 30,
            valid: 3,
            ..Default::default()
        };
        st.records.train = 32;
        st.records.valid = 8;
        st.dropped = 7;
        st.dropped_no_loss_token = 7;
        st
    }

    #[test]
    fn data_loss_warns_when_validation_shrinks_below_the_probe() {
        let w = warnings(&stats(), 4);
        assert!(
            w.iter().any(|w| w.contains("shrank from 8 records to 3")),
            "{w:?}"
        );
        assert!(
            w.iter().any(|w| w.contains("fewer than the probe's 4")),
            "{w:?}"
        );
        // Enough samples for the probe and nothing lost: no warning.
        let mut st = stats();
        st.valid = 8;
        assert!(warnings(&st, 4).is_empty());
    }

    #[test]
    fn data_loss_line_names_every_count() {
        let mut st = stats();
        st.skipped.insert("invalid_json".into(), 2);
        let l = line(&st);
        assert!(l.contains("train 30/32, valid 3/8"), "{l}");
        assert!(
            l.contains("7 dropped (0 overlong, 7 without a loss token"),
            "{l}"
        );
        assert!(l.contains("2 skipped (invalid_json 2)"), "{l}");
    }
}
