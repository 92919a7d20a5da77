//! One training step of a randomly initialised Llama (forward, backward, AdamW) on a fixed
//! batch, timed: `coba-dist bench-step` and `cargo bench -p trainer --bench step` (the Rust
//! side of `scripts/bench-step.sh` on the CPU and `scripts/bench-gpu.sh` on a GPU, next to
//! the PyTorch peer `scripts/bench/torch_llama_step.py` on the same shape).
//!
//! Every position is scored, one segment per row: the same work as the peer (the defaults are
//! the peer's shape, 10.5M parameters; the initialisations differ, so the printed losses are
//! not comparable). The printed line: median step time (seconds, first step excluded as
//! warm-up; on a GPU the clock stops after the device synchronises), tokens/s, GFLOP/s
//! (`6 x params x tokens / time`, a convention that counts the embedding and leaves out
//! attention scores), MFU (that rate over the GPU's dense peak, when one is known), the final
//! loss, the peak RSS (MiB, `VmHWM`) and on a GPU the most device memory seen in use after a
//! step (`total - free`, the CUDA context included).

use crate::train::config::{DeviceChoice, TrainDtype};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use model::optim::{AdamW, AdamWConfig};
use model::{CausalLm, Llama, LlamaConfig, LossOptions, TokenBatch};
use std::collections::BTreeMap;
use std::time::Instant;

/// The benchmark's settings (flags `--<key> <value>`).
#[derive(Debug, Clone)]
pub struct StepBench {
    /// Integer settings by flag name: threads, steps, vocab, d, layers, heads, kv_heads (0:
    /// = heads), ffn, batch, seq, lora (0: full fine-tuning), tie (1: tied embeddings).
    pub sizes: BTreeMap<&'static str, usize>,
    /// `--quant FORMAT`: with `--lora`, the frozen base quantized (QLoRA).
    pub quant: Option<GgmlDType>,
    /// `--device auto|cpu|cuda`.
    pub device: DeviceChoice,
    /// `--dtype auto|f32|bf16` (parameters and activations; AdamW keeps f32 masters).
    pub dtype: TrainDtype,
    /// `--peak-tflops X`: the dense peak MFU divides by (default: known GPUs' bf16 peak).
    pub peak_tflops: Option<f64>,
}

impl Default for StepBench {
    fn default() -> Self {
        let sizes = [
            ("threads", 2),
            ("steps", 5),
            ("vocab", 8192),
            ("d", 256),
            ("layers", 8),
            ("heads", 8),
            ("kv_heads", 0),
            ("ffn", 688),
            ("batch", 8),
            ("seq", 256),
            ("lora", 0),
            ("tie", 0),
        ]
        .into_iter()
        .collect();
        Self {
            sizes,
            quant: None,
            device: DeviceChoice::Cpu,
            dtype: TrainDtype::F32,
            peak_tflops: None,
        }
    }
}

/// The flags and their defaults, for `--help`.
pub fn usage() -> String {
    let d = StepBench::default();
    let mut s = String::from(
        "One training step of a random Llama (forward, backward, AdamW) on a fixed batch.\n\
         Flags, with their defaults (the PyTorch peer's): --lora R > 0 trains LoRA rank R \
         (alpha 2R, every projection) instead of everything; --quant FORMAT with --lora \
         quantizes the frozen base (q8_0, q4_0, ...); --kv-heads 0 means --heads; --tie 1 ties \
         the head to the embedding; --device auto|cpu|cuda (cpu); --dtype auto|f32|bf16 (f32); \
         --peak-tflops X (the GPU's dense peak for MFU; known: H100/H200 989.4, A100 312 in \
         bf16)\n",
    );
    for (k, v) in &d.sizes {
        s.push_str(&format!("  --{} {v}\n", k.replace('_', "-")));
    }
    s
}

/// Parses `--key value` flags; `Ok(None)` for `--help`.
///
/// # Errors
/// An unknown flag, a missing or malformed value, a zero size, or `--quant` without `--lora`.
pub fn parse(args: &[String]) -> Result<Option<StepBench>> {
    let mut b = StepBench::default();
    // `--key value` or `--key=value`.
    let mut words: Vec<String> = Vec::new();
    for a in args.iter().filter(|a| *a != "--bench") {
        match a.split_once('=') {
            Some((k, v)) if a.starts_with("--") => words.extend([k.to_owned(), v.to_owned()]),
            _ => words.push(a.clone()),
        }
    }
    let mut it = words.iter();
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let Some(key) = flag.strip_prefix("--") else {
            bail!("unexpected argument `{flag}`: flags are --key value (see --help)");
        };
        let key = key.replace('-', "_");
        let known = ["quant", "device", "dtype", "peak_tflops"];
        if !known.contains(&key.as_str()) && !b.sizes.contains_key(key.as_str()) {
            bail!("unknown flag {flag}; see --help");
        }
        let value = it.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
        match key.as_str() {
            "quant" => {
                b.quant = Some(model::quantized::parse_format(value).map_err(anyhow::Error::msg)?)
            }
            "device" => b.device = value.parse().map_err(anyhow::Error::msg)?,
            "dtype" => b.dtype = value.parse().map_err(anyhow::Error::msg)?,
            "peak_tflops" => {
                let p: f64 = value.parse().with_context(|| format!("{flag} {value}"))?;
                if !(p.is_finite() && p > 0.0) {
                    bail!("{flag} takes a positive number of TFLOP/s, got {value}");
                }
                b.peak_tflops = Some(p);
            }
            _ => {
                let Some(slot) = b.sizes.get_mut(key.as_str()) else {
                    bail!("unknown flag {flag}; see --help");
                };
                *slot = value.parse().with_context(|| format!("{flag} {value}"))?;
            }
        }
    }
    let may_be_zero = ["lora", "kv_heads", "tie"];
    if let Some((k, _)) = b
        .sizes
        .iter()
        .find(|(k, &v)| v == 0 && !may_be_zero.contains(k))
    {
        bail!("--{} must be at least 1", k.replace('_', "-"));
    }
    if b.quant.is_some() && b.sizes["lora"] == 0 {
        bail!("--quant quantizes LoRA's frozen base: give --lora R too");
    }
    let (d, heads, tie) = (b.sizes["d"], b.sizes["heads"], b.sizes["tie"]);
    let kv = match b.sizes["kv_heads"] {
        0 => heads,
        kv => kv,
    };
    if d % heads != 0 || (d / heads) % 2 != 0 {
        bail!("--heads {heads} must divide --d {d} into an even head size (RoPE rotates pairs)");
    }
    if heads % kv != 0 {
        bail!("--kv-heads {kv} must divide --heads {heads}");
    }
    if tie > 1 {
        bail!("--tie is 0 (a separate head) or 1 (tied to the embedding), got {tie}");
    }
    Ok(Some(b))
}

/// The dense bf16 peak of a known GPU, TFLOP/s, and its name (NVIDIA's datasheets, SXM).
pub fn known_peak(gpu_name: &str) -> Option<(f64, &'static str)> {
    let name = gpu_name.to_ascii_uppercase();
    if name.contains("H100") || name.contains("H200") {
        Some((989.4, "H100/H200 SXM dense bf16"))
    } else if name.contains("A100") {
        Some((312.0, "A100 dense bf16"))
    } else {
        None
    }
}

/// Runs the benchmark and returns its one-line report.
///
/// # Errors
/// A bad shape (e.g. heads not dividing d), no GPU for `cuda`, or a tensor failure (an
/// out-of-memory on the GPU among them).
pub fn run(b: &StepBench) -> Result<String> {
    let (device, device_name) = crate::train::device::select(b.device, 0)?;
    run_on(b, &device, &device_name)
}

/// [`run`] on a device already selected (`device_name` is printed).
///
/// # Errors
/// As [`run`], without the device selection.
pub fn run_on(b: &StepBench, device: &Device, device_name: &str) -> Result<String> {
    let o = &b.sizes;
    // candle sizes its CPU thread pools from this variable on first use.
    std::env::set_var("RAYON_NUM_THREADS", o["threads"].to_string());
    let device = device.clone();
    let dtype = b.dtype.resolve(!device.is_cpu());
    let (v, d, rows, t) = (o["vocab"], o["d"], o["batch"], o["seq"]);
    let cfg = LlamaConfig {
        model_type: "llama".into(),
        vocab_size: v,
        hidden_size: d,
        intermediate_size: o["ffn"],
        num_hidden_layers: o["layers"],
        num_attention_heads: o["heads"],
        num_key_value_heads: (o["kv_heads"] > 0).then_some(o["kv_heads"]),
        head_dim: None,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: t,
        tie_word_embeddings: o["tie"] > 0,
        attention_bias: false,
        extra: BTreeMap::new(),
    };
    let mut model = Llama::new_random(cfg, 0, 0.02, dtype, &device)?;
    let n_params = model.num_parameters();
    if o["lora"] > 0 {
        let settings = model::lora::LoraSettings {
            r: o["lora"],
            alpha: 2.0 * o["lora"] as f64,
            dropout: 0.0,
            target_modules: model::lora::LLAMA_PROJECTIONS.map(String::from).to_vec(),
            use_rslora: false,
        };
        if let Some(f) = b.quant {
            model.quantize_base(f)?;
        }
        let shapes = model.projection_shapes();
        let adapters = model::lora::adapter_dtype(dtype);
        let lora = model::lora::Lora::new(settings, &shapes, 0, adapters, &device)?;
        model.set_lora(lora);
    }
    // What the optimizer keeps moments for and the all-reduce moves (f32).
    let trainable = model.num_parameters();
    let batch = fixed_batch(rows, t, v);
    let scale = [1.0 / (rows * t) as f64];
    let mut opt = AdamW::new(AdamWConfig::default());
    let mut times = Vec::new();
    let mut loss = f64::NAN;
    let mut device_mib = 0f64;
    for _ in 0..=o["steps"] {
        let t0 = Instant::now();
        let out = model.forward_backward(&batch, &scale, LossOptions::default())?;
        opt.step(model.params(), &out.grads, 1e-3)?;
        device.synchronize()?;
        times.push(t0.elapsed().as_secs_f64());
        loss = out.report.objective;
        device_mib = device_mib.max(device_memory_mib(&device).unwrap_or(0.0));
    }
    let mut times = times.split_off(1);
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    let tokens = (rows * t) as f64;
    let flops = 6.0 * n_params as f64 * tokens / med;
    let gpu = crate::train::device::gpu_environment(&device);
    let peak = match (b.peak_tflops, &gpu) {
        (Some(p), _) if p > 0.0 => Some((p, "given")),
        (Some(_), _) => None,
        (None, Some(line)) => known_peak(line),
        (None, None) => None,
    };
    let mfu = peak.map_or("n/a".to_owned(), |(p, _)| {
        format!("{:.4}", flops / (p * 1e12))
    });
    let peak_text = peak.map_or("none".to_owned(), |(p, what)| {
        format!("{p}({})", what.replace(' ', "_"))
    });
    Ok(format!(
        "candle device={device_name} dtype={dtype:?} threads={} params={:.2}M n_params={n_params} \
         trainable={:.3}M \
         lora_r={} quant={} batch={rows} seq={t} step_median={med:.4}s tokens/s={:.0} \
         GFLOP/s={:.1} mfu={mfu} peak_tflops={peak_text} loss={loss:.3} peak_rss_mib={:.0} \
         device_mem_mib={device_mib:.0} adam_state_mib={:.1} all_reduce_mib={:.2}",
        o["threads"],
        n_params as f64 / 1e6,
        trainable as f64 / 1e6,
        o["lora"],
        b.quant.map_or("none".to_string(), |f| format!("{f:?}")),
        tokens / med,
        flops / 1e9,
        peak_rss_mib().unwrap_or(f64::NAN),
        2.0 * 4.0 * trainable as f64 / (1 << 20) as f64,
        4.0 * trainable as f64 / (1 << 20) as f64,
    ))
}

/// A fixed pseudo-random batch (SplitMix-style LCG; the values do not matter): `rows` rows of
/// `seq` positions, every position scored.
fn fixed_batch(rows: usize, seq: usize, vocab: usize) -> TokenBatch {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let ids: Vec<u32> = (0..rows * (seq + 1))
        .map(|_| {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            ((s >> 33) % vocab as u64) as u32
        })
        .collect();
    let mut input_ids = Vec::with_capacity(rows * seq);
    let mut labels = Vec::with_capacity(rows * seq);
    for r in 0..rows {
        let row = &ids[r * (seq + 1)..(r + 1) * (seq + 1)];
        input_ids.extend_from_slice(&row[..seq]);
        labels.extend_from_slice(&row[1..]);
    }
    TokenBatch {
        rows,
        seq_len: seq,
        input_ids,
        labels,
        loss_mask: vec![1; rows * seq],
        ..TokenBatch::default()
    }
}

/// Device memory in use on the GPU (`total - free`, MiB); `None` on the CPU.
fn device_memory_mib(device: &Device) -> Option<f64> {
    if device.is_cpu() {
        return None;
    }
    #[cfg(feature = "cuda")]
    {
        let (free, total) =
            candle_core::cuda_backend::cudarc::driver::result::mem_get_info().ok()?;
        Some((total - free) as f64 / (1 << 20) as f64)
    }
    #[cfg(not(feature = "cuda"))]
    {
        None
    }
}

/// Peak resident set size of this process (`VmHWM` of `/proc/self/status`), MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags_parse_and_bad_ones_are_named() {
        let b = parse(&args(
            "--d 64 --kv-heads 2 --device cpu --dtype bf16 --peak-tflops 312",
        ))
        .unwrap()
        .unwrap();
        assert_eq!((b.sizes["d"], b.sizes["kv_heads"]), (64, 2));
        assert_eq!(b.dtype, TrainDtype::Bf16);
        assert_eq!(b.peak_tflops, Some(312.0));
        assert!(parse(&args("--help")).unwrap().is_none());
        let e = parse(&args("--width 3")).unwrap_err().to_string();
        assert!(e.contains("--width"), "{e}");
        let e = parse(&args("--batch 0")).unwrap_err().to_string();
        assert!(e.contains("--batch must be at least 1"), "{e}");
        let e = parse(&args("--quant q8_0")).unwrap_err().to_string();
        assert!(e.contains("--lora"), "{e}");
        let b = parse(&args("--steps=3")).unwrap().unwrap();
        assert_eq!(b.sizes["steps"], 3);
        for (bad, says) in [
            ("extra", "unexpected argument `extra`"),
            ("--help-me", "unknown flag --help-me"),
            ("--d 20 --heads 3", "--heads 3 must divide --d 20"),
            ("--d 15 --heads 3", "even head size"),
            (
                "--heads 4 --kv-heads 3",
                "--kv-heads 3 must divide --heads 4",
            ),
            ("--tie 2", "--tie is 0"),
            ("--peak-tflops -1", "positive"),
            ("--peak-tflops NaN", "positive"),
            ("--peak-tflops inf", "positive"),
        ] {
            let e = parse(&args(bad)).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn known_peaks_come_from_the_gpu_name() {
        assert_eq!(
            known_peak("gpu: cuda:0 NVIDIA H200, driver CUDA 13.0")
                .unwrap()
                .0,
            989.4
        );
        assert_eq!(known_peak("NVIDIA A100-SXM4-80GB").unwrap().0, 312.0);
        assert!(known_peak("cpu").is_none());
    }

    #[test]
    fn a_tiny_step_runs_and_reports_its_shape() {
        let b = parse(&args(
            "--steps 1 --vocab 64 --d 16 --layers 1 --heads 2 --kv-heads 1 --ffn 32 --batch 2 \
             --seq 8 --tie 1 --threads 1",
        ))
        .unwrap()
        .unwrap();
        let line = run(&b).unwrap();
        assert!(line.starts_with("candle device=cpu dtype=F32"), "{line}");
        assert!(
            line.contains("batch=2 seq=8") && line.contains("mfu=n/a"),
            "{line}"
        );
        // Tied 64 x 16 embedding, 1 layer: q/o 16x16, k/v 8x16 (1 KV head), 3 FFN 32x16, 2 norms,
        // final norm.
        let params = 64 * 16 + 2 * 256 + 2 * 128 + 3 * 512 + 3 * 16;
        assert!(line.contains(&format!(" n_params={params} ")), "{line}");
    }
}
