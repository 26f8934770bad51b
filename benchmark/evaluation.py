"""Per-exit metrics and early-exit sweeps, computed from per-example exit probabilities.

Everything here works on arrays (probabilities of every exit for every example), never
on a model, so any threshold, exit rule or curve can be recomputed from stored results.

Speed-ups (DESIGN.md section 2):
- layer speed-up  S(t) = N * L / sum_i l_i(t), with l_i the layers sample i paid for;
- cost-aware speed-up: the same in FLOPs, adding every exit head evaluated on the way,
  against the plain backbone (L layers and its one head).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

METRICS = {"accuracy": accuracy_score, "f1": f1_score, "mcc": matthews_corrcoef}
THRESHOLDS = np.round(np.arange(201) * 0.005, 3)  # 0.000 .. 1.000


def exit_metrics(probs: np.ndarray, labels: np.ndarray, exit_layers, metric: str = "accuracy") -> pd.DataFrame:
    """Accuracy, and the task's official metric, of every exit: rows (exit_layer, metric, value)."""
    names = ["accuracy"] + ([metric] if metric != "accuracy" else [])
    preds = probs.argmax(-1)
    return pd.DataFrame(
        [(e, name, float(METRICS[name](labels, preds[:, k]))) for k, e in enumerate(exit_layers) for name in names],
        columns=["exit_layer", "metric", "value"],
    )


# --- exit rules: which exit each sample leaves at ------------------------------------------------------


def _first_true(leave: np.ndarray) -> np.ndarray:
    """Index of the first exit where `leave` holds; the last (main) exit otherwise. leave: [..., N, K]."""
    leave = leave.copy()
    leave[..., -1] = True
    return leave.argmax(-1)


def maxprob_exit(probs: np.ndarray, thresholds) -> np.ndarray:
    """Leave at the first exit whose max softmax probability is >= t. Returns [T, N] exit indices."""
    confidence = probs.max(-1)  # [N, K]
    return _first_true(confidence[None] >= np.asarray(thresholds)[:, None, None])


def entropy_exit(probs: np.ndarray, thresholds) -> np.ndarray:
    """DeeBERT: leave when the normalised entropy (entropy / log C, in [0, 1]) is <= t."""
    p = np.clip(probs, 1e-12, 1.0)
    entropy = -(p * np.log(p)).sum(-1) / np.log(probs.shape[-1])
    return _first_true(entropy[None] <= np.asarray(thresholds)[:, None, None])


def patience_exit(probs: np.ndarray, patiences) -> np.ndarray:
    """PABEE: leave at the first exit where the last p exits (this one included) agree on the label."""
    preds = probs.argmax(-1)  # [N, K]
    n, k = preds.shape
    run = np.ones((n, k), dtype=int)  # length of the run of equal predictions ending at each exit
    for j in range(1, k):
        run[:, j] = np.where(preds[:, j] == preds[:, j - 1], run[:, j - 1] + 1, 1)
    return _first_true(run[None] >= np.asarray(patiences)[:, None, None])


RULES = {
    "maxprob": (maxprob_exit, lambda k: THRESHOLDS),
    "entropy": (entropy_exit, lambda k: THRESHOLDS),
    "patience": (patience_exit, lambda k: np.arange(1, k + 1, dtype=float)),
}


# --- cost ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CostModel:
    """FLOPs of one encoder layer and one exit head for a sequence of n tokens (multiply-add = 2)."""

    hidden_size: int
    intermediate_size: int
    num_labels: int

    def layer(self, n):
        h, i = self.hidden_size, self.intermediate_size
        return 2 * n * (4 * h * h + 2 * h * i) + 4 * n * n * h  # projections + FFN + attention scores/values

    def head(self, n):
        h = self.hidden_size
        return 2 * (h * h + h * self.num_labels) + n * h  # dense + classifier (+ pooling)


def sweep(
    probs: np.ndarray,
    labels: np.ndarray,
    exit_layers,
    num_layers: int,
    layers_paid=None,
    num_tokens: np.ndarray | None = None,
    cost: CostModel | None = None,
    rule: str = "maxprob",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Early-exit sweep over the rule's grid.

    Returns (curve, counts): curve has one row per threshold (threshold, accuracy,
    speedup_layers, speedup_cost); counts one row per threshold and exit (exit_layer, count).
    `layers_paid[k]` is what leaving at exit k costs in layers (the exit layer for a shared
    model; e_1 + ... + e_k for the oracle cascade).
    """
    n, k, _ = probs.shape
    layers_paid = np.asarray(layers_paid if layers_paid is not None else exit_layers, dtype=float)
    exit_fn, grid_of = RULES[rule]
    grid = grid_of(k)
    chosen = exit_fn(probs, grid)  # [T, N]
    correct = probs.argmax(-1) == labels[:, None]  # [N, K]
    rows = np.arange(n)
    accuracy = correct[rows[None], chosen].mean(1)
    speedup_layers = n * num_layers / layers_paid[chosen].sum(1)
    if cost is not None and num_tokens is not None:
        layer_cost, head_cost = cost.layer(num_tokens.astype(float)), cost.head(num_tokens.astype(float))
        full = (num_layers * layer_cost + head_cost).sum()
        paid = layers_paid[chosen] * layer_cost[None] + (chosen + 1) * head_cost[None]
        speedup_cost = full / paid.sum(1)
    else:
        speedup_cost = np.full(len(grid), np.nan)
    curve = pd.DataFrame({"threshold": grid, "accuracy": accuracy, "speedup_layers": speedup_layers,
                          "speedup_cost": speedup_cost})
    counts = np.stack([(chosen == j).sum(1) for j in range(k)], 1)  # [T, K]
    counts = pd.DataFrame(
        [(t, e, int(counts[i, j])) for i, t in enumerate(grid) for j, e in enumerate(exit_layers)],
        columns=["threshold", "exit_layer", "count"],
    )
    return curve, counts
