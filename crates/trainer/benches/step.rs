//! One training step of a randomly initialised Llama (forward, backward, AdamW) on a fixed
//! batch: the Rust side of `scripts/bench-step.sh`, which runs it alternately with the PyTorch
//! peer (`scripts/bench/torch_llama_step.py`) on the same shape.
//!
//! `cargo bench -p trainer --bench step -- [--threads 2 --steps 5 --vocab 8192 --d 256
//! --layers 8 --heads 8 --ffn 688 --batch 8 --seq 256 --lora R --quant q8_0]` prints one line: median step time
//! (seconds, first step excluded as warm-up), tokens/s, GFLOP/s (6 x params x tokens / time),
//! the final loss and the peak RSS (MiB, `VmHWM`). Every position is scored, one segment per
//! row, untied head: the same work as the peer (the defaults are the peer's shape, 10.5M
//! parameters; the initialisations differ, so the printed losses are not comparable).

use candle_core::{DType, Device};
use model::optim::{AdamW, AdamWConfig};
use model::{CausalLm, Llama, LlamaConfig, LossOptions, TokenBatch};
use std::collections::BTreeMap;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("step bench: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<()> {
    trainer::alloc::keep_freed_memory();
    let mut opts: BTreeMap<&str, usize> = [
        ("threads", 2),
        ("steps", 5),
        ("vocab", 8192),
        ("d", 256),
        ("layers", 8),
        ("heads", 8),
        ("ffn", 688),
        ("batch", 8),
        ("seq", 256),
        ("lora", 0),
    ]
    .into_iter()
    .collect();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "One training step of a random Llama (forward, backward, AdamW) on a fixed batch."
        );
        println!("Flags, with their defaults (the PyTorch peer's; --lora R > 0: LoRA rank R, alpha 2R, every projection, instead of full fine-tuning; --quant FORMAT with --lora: QLoRA, the projections quantized to q8_0, q4_0, ...):");
        for (k, v) in &opts {
            println!("  --{k} {v}");
        }
        return Ok(());
    }
    let mut quant = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let key = flag.trim_start_matches("--");
        if key == "quant" {
            let value = it
                .next()
                .ok_or_else(|| anyhow::anyhow!("--quant needs a block format"))?;
            quant = Some(model::quantized::parse_format(value).map_err(anyhow::Error::msg)?);
            continue;
        }
        let Some(slot) = opts.get_mut(key) else {
            anyhow::bail!(
                "unknown flag {flag}; known: {:?}",
                opts.keys().collect::<Vec<_>>()
            );
        };
        let value = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        *slot = value
            .parse()
            .map_err(|e| anyhow::anyhow!("{flag} {value}: {e}"))?;
    }
    if let Some((k, _)) = opts.iter().find(|(k, &v)| v == 0 && **k != "lora") {
        anyhow::bail!("--{k} must be at least 1");
    }
    if quant.is_some() && opts["lora"] == 0 {
        anyhow::bail!("--quant quantizes LoRA's frozen base: give --lora R too");
    }
    // candle sizes its thread pools from this variable on first use.
    std::env::set_var("RAYON_NUM_THREADS", opts["threads"].to_string());
    let (v, d, b, t) = (opts["vocab"], opts["d"], opts["batch"], opts["seq"]);
    let cfg = LlamaConfig {
        model_type: "llama".into(),
        vocab_size: v,
        hidden_size: d,
        intermediate_size: opts["ffn"],
        num_hidden_layers: opts["layers"],
        num_attention_heads: opts["heads"],
        num_key_value_heads: None,
        head_dim: None,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: t,
        tie_word_embeddings: false,
        attention_bias: false,
        extra: BTreeMap::new(),
    };
    let mut model = Llama::new_random(cfg, 0, 0.02, DType::F32, &Device::Cpu)?;
    let n_params = model.num_parameters();
    if opts["lora"] > 0 {
        let settings = model::lora::LoraSettings {
            r: opts["lora"],
            alpha: 2.0 * opts["lora"] as f64,
            dropout: 0.0,
            target_modules: model::lora::LLAMA_PROJECTIONS.map(String::from).to_vec(),
            use_rslora: false,
        };
        if let Some(f) = quant {
            model.quantize_base(f)?;
        }
        let shapes = model.projection_shapes();
        let lora = model::lora::Lora::new(settings, &shapes, 0, DType::F32, &Device::Cpu)?;
        model.set_lora(lora);
    }
    // What the optimizer keeps moments for and the all-reduce moves (f32).
    let trainable = model.num_parameters();
    // A fixed pseudo-random batch (SplitMix-style LCG; the values do not matter).
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let ids: Vec<u32> = (0..b * (t + 1))
        .map(|_| {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            ((s >> 33) % v as u64) as u32
        })
        .collect();
    let mut input_ids = Vec::with_capacity(b * t);
    let mut labels = Vec::with_capacity(b * t);
    for r in 0..b {
        let row = &ids[r * (t + 1)..(r + 1) * (t + 1)];
        input_ids.extend_from_slice(&row[..t]);
        labels.extend_from_slice(&row[1..]);
    }
    let batch = TokenBatch {
        rows: b,
        seq_len: t,
        input_ids,
        labels,
        loss_mask: vec![1; b * t],
        ..TokenBatch::default()
    };
    let scale = [1.0 / (b * t) as f64];
    let mut opt = AdamW::new(AdamWConfig::default());
    let mut times = Vec::new();
    let mut loss = f64::NAN;
    for _ in 0..=opts["steps"] {
        let t0 = Instant::now();
        let out = model.forward_backward(&batch, &scale, LossOptions::default())?;
        opt.step(model.params(), &out.grads, 1e-3)?;
        times.push(t0.elapsed().as_secs_f64());
        loss = out.report.objective;
    }
    let mut times = times.split_off(1);
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    let tokens = (b * t) as f64;
    println!(
        "candle threads={} params={:.2}M trainable={:.3}M lora_r={} quant={} step_median={med:.3}s tokens/s={:.0} GFLOP/s={:.1} loss={loss:.3} peak_rss_mib={:.0} adam_state_mib={:.1} all_reduce_mib={:.2}",
        opts["threads"],
        n_params as f64 / 1e6,
        trainable as f64 / 1e6,
        opts["lora"],
        quant.map_or("none".to_string(), |f| format!("{f:?}")),
        tokens / med,
        6.0 * n_params as f64 * tokens / med / 1e9,
        peak_rss_mib().unwrap_or(f64::NAN),
        2.0 * 4.0 * trainable as f64 / (1 << 20) as f64,
        4.0 * trainable as f64 / (1 << 20) as f64,
    );
    Ok(())
}

/// Peak resident set size of this process (`VmHWM` of `/proc/self/status`), MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
