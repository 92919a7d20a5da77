//! The `coba-dist` binary on a tiny random Llama and synthetic tasks, one process or under
//! `mpirun`: the harness shared by the loop tests (`train_loop.rs`, `first_hour.rs`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// Runs are serialised: two ranks already fill the 2-core CI machine.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_coba-dist")
}

pub fn tokenizer() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tokenizers/smollm2/tokenizer.json")
}

/// Three synthetic tasks of different difficulty, 32 train + 8 valid lines each.
pub fn write_tasks(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for (t, name) in ["add", "echo", "words"].iter().enumerate() {
        let p = dir.join(format!("{name}.jsonl"));
        let mut f = std::fs::File::create(&p).unwrap();
        for i in 0..40u64 {
            let split = if i < 32 { "train" } else { "valid" };
            let (prompt, completion) = match t {
                0 => (
                    format!("{} + {} =", i * 7 % 13, i % 5),
                    format!("{}", i * 7 % 13 + i % 5),
                ),
                1 => (format!("repeat {i}"), format!("{i} {i} {i}")),
                _ => (
                    format!("story {i}"),
                    [
                        "the cat sat",
                        "a dog ran far",
                        "birds sing at dawn",
                        "rain fell",
                    ][(i % 4) as usize]
                        .repeat(1 + (i % 3) as usize),
                ),
            };
            writeln!(
                f,
                "{}",
                serde_json::json!({"prompt": prompt, "completion": completion, "split": split})
            )
            .unwrap();
        }
        out.push((name.to_string(), p));
    }
    out
}

pub struct Job {
    /// The job's directory (data, config.toml, out/).
    pub dir: tempfile::TempDir,
}

impl Job {
    /// A job directory with data and `config.toml`; `extra` is appended to the TOML.
    pub fn new(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tasks = write_tasks(dir.path());
        let tasks_toml: Vec<String> = tasks
            .iter()
            .map(|(n, p)| {
                format!(
                    "{{ name = \"{n}\", paths = [{:?}] }}",
                    p.display().to_string()
                )
            })
            .collect();
        let toml = format!(
            r#"output_dir = {out:?}
[model]
tokenizer = {tok:?}
[model.arch]
hidden_size = 16
num_hidden_layers = 1
num_attention_heads = 2
intermediate_size = 32
[data]
tasks = [{tasks}]
max_seq_len = 24
mixing = {{ kind = "uniform" }}
[train]
max_steps = 6
micro_batch_size = 4
lr = 1.0e-2
lr_schedule = "constant"
eval_interval = 3
seed = 7
[coba]
warmup_steps = 2
history_length = 4
update_interval = 2
probe_samples_per_task = 4
[checkpoint]
every_steps = 3
keep_last = 3
[runtime]
threads = 1
{extra}
"#,
            out = dir.path().join("out").display().to_string(),
            tok = tokenizer().display().to_string(),
            tasks = tasks_toml.join(", "),
        );
        std::fs::write(dir.path().join("config.toml"), toml).unwrap();
        Job { dir }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// `coba-dist --config config.toml ARGS` on one process.
    pub fn run(&self, args: &[&str]) -> Output {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        Command::new(bin())
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env_remove("OMPI_COMM_WORLD_SIZE")
            .output()
            .unwrap()
    }

    /// The same under `mpirun -n N`, or `None` when MPI is unavailable.
    pub fn mpirun(&self, n: usize, args: &[&str]) -> Option<Output> {
        let mut cmd = self.mpirun_command(n, args)?;
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        Some(cmd.output().unwrap())
    }

    /// The `mpirun -n N coba-dist --config config.toml ARGS` command, not started (`None` when
    /// MPI is unavailable); the caller serialises with [`SERIAL`].
    pub fn mpirun_command(&self, n: usize, args: &[&str]) -> Option<Command> {
        let mpirun = find_mpirun()?;
        let mut cmd = Command::new(mpirun);
        cmd.arg("-n")
            .arg(n.to_string())
            .arg("--oversubscribe")
            .arg(bin())
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        if !Path::new("/usr/bin/ssh").exists() {
            cmd.env("OMPI_MCA_plm", "isolated");
        }
        Some(cmd)
    }

    /// Metrics lines after the header, by step (a later line of a step wins).
    pub fn steps(&self) -> BTreeMap<u64, serde_json::Value> {
        let text = std::fs::read_to_string(self.out().join("metrics.jsonl")).unwrap();
        text.lines()
            .skip(1)
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| (v["step"].as_u64().unwrap(), v))
            .collect()
    }

    /// Like [`Job::steps`], but empty while `metrics.jsonl` is missing, and a line still being
    /// written is left out (for polling a running job).
    pub fn steps_if_any(&self) -> BTreeMap<u64, serde_json::Value> {
        let Ok(text) = std::fs::read_to_string(self.out().join("metrics.jsonl")) else {
            return BTreeMap::new();
        };
        text.lines()
            .skip(1)
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| Some((v["step"].as_u64()?, v)))
            .collect()
    }

    pub fn header(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.out().join("metrics.jsonl")).unwrap();
        serde_json::from_str(text.lines().next().unwrap()).unwrap()
    }

    pub fn checkpoint(&self, step: u64) -> PathBuf {
        self.out().join(format!("checkpoints/step-{step:08}"))
    }
}

pub fn ok(o: &Output) -> String {
    let text = text(o);
    assert!(o.status.success(), "{text}");
    text
}

pub fn find_mpirun() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("mpirun"))
            .find(|p| p.is_file())
    });
    let ci = std::env::var("CI").as_deref() == Ok("true");
    if found.is_none() || !collectives::MPI_COMPILED {
        assert!(
            !ci,
            "CI=true but mpirun is missing or the test binary lacks the `mpi` feature"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: multi-rank test needs mpirun and --features collectives/mpi"
        );
        return None;
    }
    found
}

pub fn file_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The parameters of a checkpoint's HF model (`dir/model/model.safetensors`).
pub fn params(dir: &Path) -> BTreeMap<String, Vec<f32>> {
    safetensors_f32(&dir.join("model/model.safetensors"))
}

/// Every tensor of a safetensors file as flat f32 values.
pub fn safetensors_f32(file: &Path) -> BTreeMap<String, Vec<f32>> {
    let t = candle_core::safetensors::load(file, &candle_core::Device::Cpu).unwrap();
    t.into_iter()
        .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

/// `coba-dist ARGS` (no job), its output.
pub fn coba_dist(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run coba-dist")
}

/// Status, stdout and stderr of a finished command, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
