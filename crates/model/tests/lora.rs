//! LoRA adapters (PEFT semantics): a fresh adapter leaves the model bit for bit unchanged,
//! merged == unmerged, the scale and init follow PEFT's formulas, gradients of A and B match
//! finite differences, the base is frozen (no base-weight gradient is even computed), and the
//! PEFT directory round-trips with PEFT's key names and shapes.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{max_abs_diff, perturb_lora_b};
use model::checkpoint::{load_adapter, save_adapter, AdapterConfig};
use model::lora::{adapter_name, LoraSettings, LLAMA_PROJECTIONS};
use model::{CausalLm, Llama, LlamaConfig, LossOptions, Model, TokenBatch};
use std::collections::BTreeMap;

fn settings(r: usize, modules: &[&str]) -> LoraSettings {
    LoraSettings {
        r,
        alpha: 16.0,
        dropout: 0.0,
        target_modules: modules.iter().map(|m| m.to_string()).collect(),
        use_rslora: false,
    }
}

fn base(dtype: DType) -> Model {
    // d = 24, ffn = 40 (so no activation gradient is (24, 24)-, (40, 24)- or (24, 40)-shaped
    // by accident), vocab 50, 2 layers, GQA.
    let mut cfg = LlamaConfig::tiny(50, 24, 2, 4, 2);
    cfg.intermediate_size = 40;
    cfg.tie_word_embeddings = false;
    Llama::new_random(cfg, 5, 0.2, dtype, &Device::Cpu)
        .unwrap()
        .into()
}

fn batch() -> TokenBatch {
    let ids: Vec<u32> = (0..14).map(|i| (i * 7 + 3) % 50).collect();
    let mut b = TokenBatch::from_sequence(&ids, 4, 0);
    b.task_ids.iter_mut().skip(9).for_each(|t| *t = 1);
    b
}

fn all() -> Vec<&'static str> {
    LLAMA_PROJECTIONS.to_vec()
}

#[test]
fn a_fresh_adapter_leaves_the_logits_bit_for_bit_unchanged() {
    let plain = base(DType::F32);
    let want = plain.logits(&batch()).unwrap().flatten_all().unwrap();
    let mut m = base(DType::F32);
    m.attach_lora(settings(4, &all()), 1, None).unwrap();
    let got = m.logits(&batch()).unwrap().flatten_all().unwrap();
    assert_eq!(
        want.to_vec1::<f32>().unwrap(),
        got.to_vec1::<f32>().unwrap()
    );
}

#[test]
fn init_bounds_scale_and_names_follow_peft() {
    let mut m = base(DType::F32);
    m.attach_lora(settings(4, &["q_proj", "down_proj"]), 1, None)
        .unwrap();
    let names: Vec<&String> = m.params().keys().collect();
    // PEFT's keys: q_proj (24 -> 24) and down_proj (40 -> 24) of both layers, A and B.
    let mut want = Vec::new();
    for i in 0..2 {
        for mo in ["down_proj", "q_proj"] {
            want.push(adapter_name(i, mo, 'A'));
            want.push(adapter_name(i, mo, 'B'));
        }
    }
    want.sort();
    assert_eq!(names, want.iter().collect::<Vec<_>>());
    assert_eq!(
        adapter_name(0, "q_proj", 'A'),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    );
    assert_eq!(
        adapter_name(1, "down_proj", 'B'),
        "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"
    );
    for (n, v) in m.params() {
        let vals = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        if n.contains("lora_B") {
            assert!(vals.iter().all(|x| *x == 0.0), "{n}");
        } else {
            let fan_in = v.dims()[1] as f32;
            let bound = 1.0 / fan_in.sqrt();
            assert_eq!(v.dims()[0], 4);
            assert!(vals.iter().all(|x| x.abs() <= bound), "{n}");
            // Uniform on ±bound: the spread reaches well past half the bound.
            let max = vals.iter().fold(0f32, |a, x| a.max(x.abs()));
            assert!(max > 0.8 * bound, "{n}: max {max} of bound {bound}");
        }
    }
    assert_eq!(settings(4, &all()).scale(), 16.0 / 4.0);
    let rs = LoraSettings {
        use_rslora: true,
        ..settings(4, &all())
    };
    assert_eq!(rs.scale(), 16.0 / 2.0);
}

#[test]
fn merged_equals_unmerged() {
    let mut m = base(DType::F32);
    m.attach_lora(settings(3, &all()), 2, None).unwrap();
    perturb_lora_b(&m, 0.05);
    let unmerged = m.logits(&batch()).unwrap();
    let Model::Llama(l) = &m else { unreachable!() };
    let merged = Llama::from_tensors(
        l.config().clone(),
        m.merged_tensors().unwrap(),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let plain = base(DType::F32).logits(&batch()).unwrap();
    let merged = merged.logits(&batch()).unwrap();
    let diff = max_abs_diff;
    assert!(
        diff(&unmerged, &plain) > 1e-2,
        "the adapter changes the output"
    );
    assert!(
        diff(&unmerged, &merged) < 1e-5,
        "{}",
        diff(&unmerged, &merged)
    );
}

/// Central differences (h = 1e-5, f64) of `objective` at the first, middle and last element
/// of every adapter matrix against `grads` (relative error < 1e-5).
fn check_against_finite_differences(
    m: &Model,
    grads: &BTreeMap<String, Tensor>,
    objective: impl Fn(&Model) -> f64,
) {
    for (name, var) in m.params().clone() {
        let g = grads[&name]
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let orig = var.as_tensor().copy().unwrap();
        let at = |v: Vec<f64>| Tensor::from_vec(v, orig.dims(), &Device::Cpu).unwrap();
        for i in [0, g.len() / 2, g.len() - 1] {
            let h = 1e-5;
            let mut v = orig.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            v[i] += h;
            var.set(&at(v.clone())).unwrap();
            let up = objective(m);
            v[i] -= 2.0 * h;
            var.set(&at(v)).unwrap();
            let down = objective(m);
            var.set(&orig).unwrap();
            let fd = (up - down) / (2.0 * h);
            let err = (fd - g[i]).abs() / fd.abs().max(1e-6);
            assert!(err < 1e-5, "{name}[{i}]: analytic {} vs fd {fd}", g[i]);
        }
    }
}

/// Task scales of the gradient checks.
const SCALE: [f64; 2] = [0.6, 1.4];

/// Loss options of the gradient checks (chunks of 3 tokens).
fn opts() -> LossOptions {
    LossOptions {
        chunk_elems: 3 * 50,
    }
}

/// The weighted training objective's gradients (dropout masks of `b` included) exist exactly
/// for the adapters and equal its finite differences. Returns the objective.
fn check_training_gradients(m: &Model, b: &TokenBatch) -> f64 {
    let out = m.forward_backward(b, &SCALE, opts()).unwrap();
    assert_eq!(
        out.grads.keys().collect::<Vec<_>>(),
        m.params().keys().collect::<Vec<_>>()
    );
    let objective = |m: &Model| {
        m.forward_backward(b, &SCALE, opts())
            .unwrap()
            .report
            .objective
    };
    check_against_finite_differences(m, &out.grads, objective);
    out.report.objective
}

#[test]
fn adapter_gradients_match_finite_differences_and_the_base_gets_none() {
    let mut m = base(DType::F64);
    m.attach_lora(settings(2, &["v_proj", "up_proj", "o_proj"]), 3, None)
        .unwrap();
    perturb_lora_b(&m, 0.1);
    let b = batch();
    let scale = [0.6, 1.4];
    let opts = LossOptions {
        chunk_elems: 3 * 50,
    };
    let out = m.forward_backward(&b, &scale, opts).unwrap();
    assert_eq!(
        out.grads.keys().collect::<Vec<_>>(),
        m.params().keys().collect::<Vec<_>>(),
        "gradients exactly for the adapters"
    );
    let objective = |m: &Model| -> f64 {
        let r = m.evaluate(&b, opts).unwrap();
        r.per_task
            .iter()
            .enumerate()
            .map(|(k, t)| scale[k] * t.nll_sum)
            .sum()
    };
    check_against_finite_differences(&m, &out.grads, objective);

    // The graph's gradient store: no tensor shaped like a base weight (the frozen matmul and
    // head return no weight gradient; candle's composed matmul would have made them).
    let h = m.hidden(&b, true).unwrap();
    let (lm, _) = m.head(true);
    let loss = h
        .broadcast_matmul(&lm.t().unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let store = loss.backward().unwrap();
    let base_shapes: Vec<Vec<usize>> = vec![
        vec![24, 24],
        vec![12, 24],
        vec![40, 24],
        vec![24, 40],
        vec![50, 24],
    ];
    for id in store.get_ids() {
        let g = store.get_id(*id).unwrap();
        assert!(
            !base_shapes.contains(&g.dims().to_vec()),
            "a base-weight-shaped gradient {:?} in the store",
            g.dims()
        );
    }
}

#[test]
fn peft_directory_round_trips_with_peft_keys_shapes_and_metadata() {
    let mut m = base(DType::F32);
    let s = settings(4, &all());
    m.attach_lora(s.clone(), 1, None).unwrap();
    perturb_lora_b(&m, 0.01);
    let dir = tempfile::tempdir().unwrap();
    let tensors: BTreeMap<String, Tensor> = m
        .params()
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
        .collect();
    let cfg = AdapterConfig::new(&s, Some("base".into()));
    save_adapter(dir.path(), &cfg, &tensors).unwrap();
    // The file itself: metadata {"format": "pt"}, f32 tensors, PEFT's key set and shapes,
    // read with the safetensors crate (not ours).
    let bytes = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get("format"))
            .map(String::as_str),
        Some("pt")
    );
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut shapes: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (n, view) in st.tensors() {
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{n}");
        shapes.insert(n, view.shape().to_vec());
    }
    // PEFT's key/shape list for LlamaForCausalLM with target_modules = all seven projections.
    let mut want = BTreeMap::new();
    for i in 0..2 {
        for (mo, out_f, in_f) in [
            ("q_proj", 24, 24),
            ("k_proj", 12, 24),
            ("v_proj", 12, 24),
            ("o_proj", 24, 24),
            ("gate_proj", 40, 24),
            ("up_proj", 40, 24),
            ("down_proj", 24, 40),
        ] {
            let parent =
                if mo.ends_with("proj") && ["gate_proj", "up_proj", "down_proj"].contains(&mo) {
                    "mlp"
                } else {
                    "self_attn"
                };
            let p = format!("base_model.model.model.layers.{i}.{parent}.{mo}");
            want.insert(format!("{p}.lora_A.weight"), vec![4, in_f]);
            want.insert(format!("{p}.lora_B.weight"), vec![out_f, 4]);
        }
    }
    assert_eq!(shapes, want);
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["peft_type"], "LORA");
    assert_eq!(json["task_type"], "CAUSAL_LM");
    assert_eq!(json["r"], 4);
    assert_eq!(json["lora_alpha"], 16.0);
    assert_eq!(json["bias"], "none");

    let (back_cfg, back) = load_adapter(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(back_cfg, cfg);
    let mut m2 = base(DType::F32);
    m2.attach_lora(back_cfg.settings(), 99, Some(back)).unwrap();
    let (a, b) = (m.logits(&batch()).unwrap(), m2.logits(&batch()).unwrap());
    assert_eq!(
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
}

#[test]
fn lora_settings_errors_name_the_setting() {
    let bad = |s: LoraSettings| s.validate().unwrap_err().to_string();
    assert!(bad(settings(0, &all())).contains("lora.r"));
    assert!(bad(settings(4, &["qproj"])).contains("unknown module `qproj`"));
    assert!(bad(LoraSettings {
        dropout: 1.5,
        ..settings(4, &all())
    })
    .contains("lora.dropout"));
    // Dropout is a training setting: adapters trained with it load (for eval and merge).
    assert!(LoraSettings {
        dropout: 0.05,
        ..settings(4, &all())
    }
    .validate()
    .is_ok());
    let mut phi: Model = model::Phi::new_random(
        model::PhiConfig::tiny(50, 16, 1, 2),
        1,
        0.02,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
    .into();
    assert!(phi
        .attach_lora(settings(2, &all()), 1, None)
        .unwrap_err()
        .to_string()
        .contains("is not a projection of this model"));
}

/// The fused node against `x W^T (+ b) + s ((x ⊙ M) A^T) B^T` composed from plain candle ops
/// (f64): values and the gradients of x, A and B at 1e-12.
fn check_fused_lora_linear(with_bias: bool, mask: Option<Vec<f32>>) {
    use candle_core::Var;
    let dev = Device::Cpu;
    let rnd = |shape: &[usize], seed: u64| {
        let mut rng = model::init::SplitMix64::new(seed);
        let n: usize = shape.iter().product();
        Tensor::from_vec(rng.normal_vec(n, 0.5), shape, &dev).unwrap()
    };
    let (inf, outf, r, s) = (5, 7, 3, 1.7);
    let x = Var::from_tensor(&rnd(&[2, 3, inf], 1)).unwrap();
    let w = rnd(&[outf, inf], 2);
    let bias = with_bias.then(|| rnd(&[outf], 3));
    let a = Var::from_tensor(&rnd(&[r, inf], 4)).unwrap();
    let bm = Var::from_tensor(&rnd(&[outf, r], 5)).unwrap();
    let mask = mask.map(|m| {
        Tensor::from_vec(m, (2, 3, inf), &dev)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
    });
    let probe = rnd(&[2, 3, outf], 6);
    let grads = |y: &Tensor| {
        let store = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        [x.as_tensor(), a.as_tensor(), bm.as_tensor()].map(|t| {
            store
                .get(t)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        })
    };
    let fused = {
        let w = model::quantized::Frozen::Dense(w.clone());
        model::fused::lora_linear(&x, &w, bias.as_ref(), &a, &bm, s, mask.as_ref()).unwrap()
    };
    let x2 = x.reshape((6, inf)).unwrap();
    let xm = match &mask {
        Some(m) => (x.as_tensor() * m).unwrap().reshape((6, inf)).unwrap(),
        None => x2.clone(),
    };
    let base = x2.matmul(&w.t().unwrap()).unwrap();
    let base = match &bias {
        Some(b) => base.broadcast_add(b).unwrap(),
        None => base,
    };
    let composed = (base
        + xm.matmul(&a.t().unwrap())
            .unwrap()
            .affine(s, 0.0)
            .unwrap()
            .matmul(&bm.t().unwrap())
            .unwrap())
    .unwrap()
    .reshape((2, 3, outf))
    .unwrap();
    assert!(max_abs_diff(&fused, &composed) < 1e-12);
    for (gf, gc) in grads(&fused).iter().zip(grads(&composed).iter()) {
        for (f, c) in gf.iter().zip(gc) {
            assert!((f - c).abs() < 1e-12, "{f} vs {c}");
        }
    }
}

#[test]
fn fused_lora_linear_equals_the_composed_form_in_value_and_gradient() {
    check_fused_lora_linear(true, None);
}

#[test]
fn fused_lora_linear_with_a_dropout_mask_equals_the_composed_form() {
    let mask = model::lora::dropout_mask(&[11, 12], (2, 3, 5), 0, "q_proj", 0.4);
    check_fused_lora_linear(false, Some(mask));
}

#[test]
fn dropout_masks_drop_at_rate_p_scale_the_kept_and_depend_only_on_their_key() {
    let p = 0.25;
    let m = model::lora::dropout_mask(&[7, 8, 9, 10], (4, 50, 500), 3, "up_proj", p);
    let dropped = m.iter().filter(|v| **v == 0.0).count() as f64 / m.len() as f64;
    // 100000 Bernoulli(0.25) draws: standard deviation 0.0014.
    assert!((dropped - p).abs() < 0.01, "dropped {dropped}");
    assert!(m
        .iter()
        .all(|v| *v == 0.0 || *v == (1.0 / (1.0 - p)) as f32));
    // A row's mask is a function of its key only (not of its place in the micro-batch).
    let alone = model::lora::dropout_mask(&[9], (1, 50, 500), 3, "up_proj", p);
    assert_eq!(alone[..], m[2 * 25_000..3 * 25_000]);
    // Other layers, projections and keys draw other masks.
    let other_layer = model::lora::dropout_mask(&[9], (1, 50, 500), 4, "up_proj", p);
    let other_module = model::lora::dropout_mask(&[9], (1, 50, 500), 3, "down_proj", p);
    assert_ne!(alone, other_layer);
    assert_ne!(alone, other_module);
    assert_ne!(m[..25_000], m[25_000..50_000]);
}

#[test]
fn gradients_with_dropout_match_finite_differences_and_eval_has_none() {
    let mut m = base(DType::F64);
    let s = LoraSettings {
        dropout: 0.3,
        ..settings(2, &["q_proj", "up_proj"])
    };
    m.attach_lora(s, 3, None).unwrap();
    perturb_lora_b(&m, 0.1);
    let mut b = batch();
    b.dropout_keys = vec![42];
    let (scale, opts) = (SCALE, opts());
    let trained = check_training_gradients(&m, &b);
    // Dropout changes the training forward; evaluation (no graph) has none.
    let mut no_keys = b.clone();
    no_keys.dropout_keys.clear();
    let plain = m
        .forward_backward(&no_keys, &scale, opts)
        .unwrap()
        .report
        .objective;
    assert!((plain - trained).abs() > 1e-6);
    let eval: f64 = m
        .evaluate(&b, opts)
        .unwrap()
        .per_task
        .iter()
        .enumerate()
        .map(|(k, t)| scale[k] * t.nll_sum)
        .sum();
    assert!((eval - plain).abs() < 1e-10, "{eval} vs {plain}");
}

fn phi(dtype: DType) -> Model {
    let mut cfg = model::PhiConfig::tiny(50, 24, 2, 2);
    cfg.intermediate_size = 40;
    model::Phi::new_random(cfg, 6, 0.2, dtype, &Device::Cpu)
        .unwrap()
        .into()
}

#[test]
fn phi_adapters_use_its_projection_names_and_match_finite_differences() {
    use model::lora::PHI_PROJECTIONS;
    let b = batch();
    // A fresh adapter on every Phi projection leaves the logits bit for bit unchanged.
    let want = phi(DType::F32).logits(&b).unwrap();
    let mut m = phi(DType::F32);
    assert_eq!(m.lora_projections(), &PHI_PROJECTIONS);
    m.attach_lora(settings(3, &PHI_PROJECTIONS), 1, None)
        .unwrap();
    assert_eq!(
        want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        m.logits(&b)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    );
    // PEFT's names for Phi's modules, e.g. `...self_attn.dense.lora_A.weight` (r, in).
    let names: Vec<&String> = m.params().keys().collect();
    assert_eq!(names.len(), 2 * 6 * 2);
    let dense_a = &m.params()["base_model.model.model.layers.1.self_attn.dense.lora_A.weight"];
    assert_eq!(dense_a.dims(), [3, 24]);
    let fc2_b = &m.params()["base_model.model.model.layers.0.mlp.fc2.lora_B.weight"];
    assert_eq!(fc2_b.dims(), [24, 3]);

    // Merged == unmerged, and the adapters change the output.
    perturb_lora_b(&m, 0.05);
    let unmerged = m.logits(&b).unwrap();
    let merged = m.merged().unwrap();
    assert!(merged.lora().is_none());
    let diff = max_abs_diff(&unmerged, &merged.logits(&b).unwrap());
    assert!(diff < 1e-5, "{diff}");
    assert!(max_abs_diff(&unmerged, &want) > 1e-2);

    // Gradients (f64, dropout on) only for the adapters, equal to finite differences.
    let mut m = phi(DType::F64);
    let mut s = settings(2, &["dense", "fc1", "q_proj"]);
    s.dropout = 0.25;
    m.attach_lora(s, 3, None).unwrap();
    perturb_lora_b(&m, 0.1);
    let mut b = batch();
    b.dropout_keys = vec![11, 12, 13, 14];
    check_training_gradients(&m, &b);

    // A Llama module name on Phi is refused, naming what Phi has.
    let err = phi(DType::F32)
        .attach_lora(settings(2, &["gate_proj"]), 1, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("gate_proj") && err.contains("fc1"), "{err}");
}
