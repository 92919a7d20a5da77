#!/usr/bin/env python3
"""Checks `coba-dist merge` against PEFT's merge formula, reading every file with the
`safetensors` package (PyPI) and numpy, not with coba-dist's code.

    scripts/peft-merge-check.py ADAPTER_DIR BASE_DIR MERGED_DIR

PEFT (peft 0.21, `LoraLayer.get_delta_weight` / `merge_and_unload`, fan_in_fan_out false):
for each module with `lora_A (r, in)` and `lora_B (out, r)`,
`W_merged = W + (B @ A) * scaling`, `scaling = lora_alpha / r` (`lora_alpha / sqrt(r)` with
`use_rslora`); every other weight is the base's. The adapter keys are
`base_model.model.<module>.lora_A.weight`, the module's weight `<module>.weight`.

Prints one JSON line: the number of adapted and copied tensors and the largest absolute
difference of each kind (computed in float64); exits 1 when an adapted weight differs by more
than 1e-5 (times max(1, |W|)), a copied one differs at all, or a tensor is missing.
"""
import json
import math
import os
import sys

import numpy as np
from safetensors.numpy import load_file


def load_dir(d):
    tensors = {}
    for name in sorted(os.listdir(d)):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(d, name)))
    return tensors


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    adapter_dir, base_dir, merged_dir = sys.argv[1:]
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        cfg = json.load(f)
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    adapters = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    base, merged = load_dir(base_dir), load_dir(merged_dir)
    prefix = "base_model.model."
    expected = {k: v.astype(np.float64) for k, v in base.items()}
    adapted = set()
    for key in sorted(adapters):
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len(prefix):-len(".lora_A.weight")]
        a = adapters[key].astype(np.float64)
        b = adapters[prefix + module + ".lora_B.weight"].astype(np.float64)
        w = module + ".weight"
        expected[w] = expected[w] + (b @ a) * scaling
        adapted.add(w)
    # A tied head is written by neither side or by both.
    missing = sorted(set(expected) ^ set(merged))
    worst = {"adapted": 0.0, "copied": 0.0}
    bad = []
    for name in sorted(set(expected) & set(merged)):
        got = merged[name].astype(np.float64)
        want = expected[name]
        if got.shape != want.shape:
            bad.append(f"{name}: shape {got.shape} vs {want.shape}")
            continue
        diff = float(np.max(np.abs(got - want))) if got.size else 0.0
        kind = "adapted" if name in adapted else "copied"
        worst[kind] = max(worst[kind], diff)
        limit = 1e-5 * max(1.0, float(np.max(np.abs(want)))) if kind == "adapted" else 0.0
        if diff > limit:
            bad.append(f"{name}: max |diff| {diff:.3e} > {limit:.1e}")
    print(json.dumps({
        "adapted": len(adapted),
        "copied": len(set(expected) & set(merged)) - len(adapted),
        "max_abs_diff": worst,
        "missing": missing,
        "errors": bad,
        "scaling": scaling,
    }))
    return 1 if bad or missing or not adapted else 0


if __name__ == "__main__":
    sys.exit(main())
