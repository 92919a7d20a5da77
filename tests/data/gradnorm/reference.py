#!/usr/bin/env python3
"""GradNorm reference vectors, written from Chen et al. 2018 ("GradNorm: Gradient
Normalization for Adaptive Loss Balancing in Deep Multitask Networks", Sec. 3.2 and Alg. 1),
independent of coba-dist's Rust code.

A tiny linear multi-task regression: x in R^4, shared layer W in R^{3x4} (the paper's W, the
last shared layer), task heads v_i in R^3, prediction y_i = v_i . (W x), loss L_i = mean over
the batch of (y_i - t_i)^2, K = 3 tasks with different scales and noise. Each step t:
  G_i(t)   = || dL_i / dW ||_2                     (Frobenius norm, unweighted task loss)
  G_W^i(t) = w_i(t) * G_i(t),  Gbar = mean_i G_W^i(t)
  Ltil_i   = L_i(t) / L_i(0),  r_i = Ltil_i / mean_j Ltil_j
  L_grad   = sum_i | G_W^i(t) - Gbar * r_i^alpha |   (target held constant)
  dL_grad/dw_i = sign(G_W^i - target_i) * G_i   (sign(0) = 0)
  w <- Adam(w, dL_grad/dw; lr 0.025, beta 0.9/0.999, eps 1e-8, bias-corrected)
  w <- max(w, 1e-6); w <- K * w / sum(w)
The network then takes an SGD step on sum_i w_i(t) L_i (the weights before this update, as
in Alg. 1). alpha = 1.5.

Writes vectors.json: per step the losses L(t), the norms G(t) and the weights w(t+1) / K
(summing to 1) the rule must produce after observing step t. Run: python3 reference.py
"""
import json
import numpy as np

ALPHA = 1.5
LR_W = 0.025
B1, B2, EPS = 0.9, 0.999, 1e-8
W_FLOOR = 1e-6


def main():
    rng = np.random.default_rng(20181231)
    K, d_in, h, n = 3, 4, 3, 16
    X = rng.normal(size=(n, d_in))
    true = [rng.normal(size=d_in) * s for s in (1.0, 3.0, 0.3)]
    T = np.stack([X @ t + rng.normal(scale=s, size=n) for t, s in zip(true, (0.1, 0.5, 0.05))])
    W = rng.normal(scale=0.5, size=(h, d_in))
    V = rng.normal(scale=0.5, size=(K, h))
    w = np.ones(K)
    m = np.zeros(K)
    v = np.zeros(K)
    L0 = None
    steps = []
    for t in range(1, 31):
        Z = X @ W.T                      # (n, h)
        Y = Z @ V.T                      # (n, K)
        E = Y - T.T                      # (n, K)
        L = (E ** 2).mean(axis=0)        # (K,)
        if L0 is None:
            L0 = L.copy()
        # dL_i/dW = (2/n) sum_b e_bi v_i x_b^T ; dL_i/dv_i = (2/n) sum_b e_bi z_b
        gW = [(2.0 / n) * np.outer(V[i], E[:, i] @ X) for i in range(K)]
        gV = [(2.0 / n) * (E[:, i] @ Z) for i in range(K)]
        G = np.array([np.linalg.norm(g) for g in gW])
        # GradNorm update of w (Sec. 3.2).
        GW = w * G
        Gbar = GW.mean()
        Ltil = L / L0
        r = Ltil / Ltil.mean()
        target = Gbar * r ** ALPHA
        grad = np.sign(GW - target) * G
        m = B1 * m + (1 - B1) * grad
        v = B2 * v + (1 - B2) * grad ** 2
        mhat = m / (1 - B1 ** t)
        vhat = v / (1 - B2 ** t)
        w_used = w.copy()
        w = w - LR_W * mhat / (np.sqrt(vhat) + EPS)
        w = np.maximum(w, W_FLOOR)
        w = K * w / w.sum()
        # The network's SGD step on the weighted loss with the weights of this step.
        W = W - 0.05 * sum(w_used[i] * gW[i] for i in range(K))
        V = V - 0.05 * np.stack([w_used[i] * gV[i] for i in range(K)])
        steps.append({
            "step": t,
            "losses": L.tolist(),
            "grad_norms": G.tolist(),
            "weights_after": (w / K).tolist(),
        })
    doc = {
        "source": "tests/data/gradnorm/reference.py (numpy, from Chen et al. 2018 Sec. 3.2)",
        "alpha": ALPHA,
        "lr": LR_W,
        "initial_losses": L0.tolist(),
        "steps": steps,
    }
    with open("vectors.json", "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
