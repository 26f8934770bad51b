"""A small, seeded, internally consistent results folder for plot/table tests.

Instead of drawing each parquet file's numbers independently, it simulates
per-example exit probabilities (a binary task, deeper exits better separated)
and derives every file from them the way the runner does: so counts sum to N,
speed-up at threshold 0 is L / e_1, speed-up falls with the max-prob
threshold, accuracies are ratios of counts, and the dev and calib splits
share their per-run quality but not their examples.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

MODEL = "minilm-l6"
NUM_LAYERS = 6
EXITS = [1, 2, 3]
HEAD_COST = 0.02  # an exit head's FLOPs as a fraction of one layer's
THRESHOLDS = np.round(np.arange(0, 201) * 0.005, 3)
SPLIT_ROWS = {"dev": 240, "calib": 120}

# Logit separation at exits 1, 2, 3 and L. finetune only has the main exit.
SKILL = {
    "finetune": [1.9],
    "oracle": [1.3, 1.6, 1.8, 2.0],
    "joint": [1.0, 1.35, 1.55, 1.8],
    "two_stage": [0.6, 0.9, 1.2, 2.0],
    "branchwise": [1.1, 1.3, 1.4, 1.5],
    "separate": [1.1, 1.45, 1.65, 1.75],
    "separate_reverse": [0.95, 1.3, 1.6, 1.95],
    "separate_reverse_nokd": [1.05, 1.4, 1.6, 1.65],
    "separate_reverse@alpha=0.9": [0.8, 1.2, 1.5, 2.0],
}
TASK_OFFSET = {"sst2": 0.3, "mrpc": -0.7}
POSITIVE_RATE = {"sst2": 0.55, "mrpc": 0.68}


def _rng(*parts) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(str(p).encode()) for p in parts])


def _simulate(task: str, strategy: str, seed: int, split: str):
    """Labels, per-exit P(class 1) (N, K) and exit layers for one run and split."""
    data = _rng("data", task, split)
    n = SPLIT_ROWS[split]
    y = (data.random(n) < POSITIVE_RATE.get(task, 0.5)).astype(int)
    difficulty = data.normal(size=n)  # shared by every strategy: the same examples are hard

    skill = np.array(SKILL[strategy]) + TASK_OFFSET.get(task, 0.0)
    skill = skill + _rng("seed", task, strategy, seed).normal(0, 0.08, size=len(skill))
    noise = _rng("noise", task, strategy, seed, split).normal(size=(n, len(skill)))
    z = np.where(y == 1, 1, -1)[:, None] * skill[None, :] + 0.9 * difficulty[:, None] + 0.7 * noise
    layers = [NUM_LAYERS] if strategy == "finetune" else [*EXITS, NUM_LAYERS]
    return y, 1 / (1 + np.exp(-1.5 * z)), np.array(layers)


def _exit_index(leave: np.ndarray) -> np.ndarray:
    """(T, N, K) 'may leave here' -> index of the first exit taken; the main exit always may."""
    leave = leave.copy()
    leave[..., -1] = True
    return leave.argmax(axis=-1)


def _patience_index(pred: np.ndarray, patience: int) -> np.ndarray:
    """PABEE: leave once `patience` consecutive exits repeat the previous prediction."""
    n, k = pred.shape
    idx = np.full(n, k - 1)
    counter = np.zeros(n, dtype=int)
    done = np.zeros(n, dtype=bool)
    for j in range(1, k):
        counter = np.where(pred[:, j] == pred[:, j - 1], counter + 1, 0)
        hit = ~done & (counter >= patience)
        idx[hit], done[hit] = j, True
    return idx[None, :]


def _sweeps(prob, layers):
    """Yield (rule, thresholds, exit index (T, N)) for every rule."""
    conf = np.maximum(prob, 1 - prob)
    entropy = -(prob * np.log2(np.clip(prob, 1e-12, 1)) + (1 - prob) * np.log2(np.clip(1 - prob, 1e-12, 1)))
    yield "maxprob", THRESHOLDS, _exit_index(conf[None] >= THRESHOLDS[:, None, None])
    yield "entropy", THRESHOLDS, _exit_index(entropy[None] <= THRESHOLDS[:, None, None])
    pred = (prob > 0.5).astype(int)
    patience = np.arange(1, len(layers))
    if len(patience):
        yield "patience", patience.astype(float), np.concatenate([_patience_index(pred, p) for p in patience])


def _run_rows(task: str, strategy: str, seed: int, split: str):
    y, prob, layers = _simulate(task, strategy, seed, split)
    key = {"task": task, "model": MODEL, "strategy": strategy, "seed": seed}
    pred = (prob > 0.5).astype(int)
    correct = pred == y[:, None]
    oracle = strategy == "oracle"

    acc = [{**key, "exit_layer": int(layer), "metric": "accuracy", "value": correct[:, k].mean(),
            "split": split} for k, layer in enumerate(layers)]
    if task == "mrpc":
        for k, layer in enumerate(layers):
            tp = ((pred[:, k] == 1) & (y == 1)).sum()
            f1 = 2 * tp / max(pred[:, k].sum() + y.sum(), 1)
            acc.append({**key, "exit_layer": int(layer), "metric": "f1", "value": f1, "split": split})

    # An oracle cascade pays every earlier model's layers; shared backbones pay only the depth reached.
    paid = np.cumsum(layers) if oracle else layers
    n = len(y)
    counts, early = [], []
    for rule, thresholds, idx in _sweeps(prob, layers):
        layer_sum = paid[idx].sum(axis=1)
        cost_sum = (paid[idx] + HEAD_COST * (idx + 1)).sum(axis=1)
        accuracy = correct[np.arange(n)[None, :], idx].mean(axis=1)
        for t, threshold in enumerate(thresholds):
            early.append({**key, "split": split, "rule": rule, "threshold": float(threshold),
                          "accuracy": accuracy[t], "speedup_layers": n * NUM_LAYERS / layer_sum[t],
                          "speedup_cost": n * (NUM_LAYERS + HEAD_COST) / cost_sum[t]})
            for k, layer in enumerate(layers):
                counts.append({**key, "split": split, "rule": rule, "threshold": float(threshold),
                               "exit_layer": int(layer), "count": int((idx[t] == k).sum())})
    return acc, counts, early, y


def _run_json(task: str, strategy: str, seed: int, labels: dict[str, np.ndarray], status: str = "finished"):
    params = {}
    if strategy.startswith("separate_reverse"):
        alpha = 0.0 if strategy == "separate_reverse_nokd" else 0.9 if "alpha=0.9" in strategy else 0.5
        params = {"alpha": alpha, "tau": 1.0, "init": "random"}
    train_rows = 8000 if task == "sst2" else 3300

    def counts(y):
        return {str(c): int((y == c).sum()) for c in (0, 1)}

    train_pos = round(train_rows * POSITIVE_RATE.get(task, 0.5))
    layers = [NUM_LAYERS] if strategy == "finetune" else [*EXITS, NUM_LAYERS]
    return {
        "status": status,
        "config": {"task": task, "model": MODEL, "model_path": f"/models/{MODEL}", "strategy": strategy,
                   "seed": seed, "exits": EXITS, "num_layers": NUM_LAYERS, "exit_layers": layers,
                   "layers_paid": [int(x) for x in np.cumsum(layers)] if strategy == "oracle" else layers,
                   "lr": 1e-4, "epochs": 2, "batch_size": 32, "max_length": 128, "exit_pooling": "mean",
                   "max_train_samples": 8000 if task == "sst2" else None, "calib_fraction": 0.1,
                   "strategy_params": params},
        "data": {"train_rows": train_rows, "dev_rows": len(labels["dev"]), "calib_rows": len(labels["calib"]),
                 "num_labels": 2, "train_label_counts": {"0": train_rows - train_pos, "1": train_pos},
                 "dev_label_counts": counts(labels["dev"])},
        "timings": {"finetune": 100.0 + seed, "exits": 50.0},
        "wall_time_s": 150.0 + seed,
        "cpu_time_s": 150.0 + seed,  # half of 2 threads: as if another job shared the cores
        "peak_rss_mb": 1000.0 + 10 * seed,
        "env": {"python": "3.11", "device": "cpu", "torch_threads": 2},
    }


def write_synthetic_results(root: Path, seeds=(0, 1), tasks=("sst2", "mrpc"),
                            strategies=tuple(SKILL), gradient_diagonal: bool = False) -> Path:
    """Write the collected parquet files and run.json files under `root`; return `root`."""
    root = Path(root)
    acc, counts, early = [], [], []
    for task in tasks:
        for strategy in strategies:
            for seed in seeds:
                labels = {}
                for split in SPLIT_ROWS:
                    a, c, e, labels[split] = _run_rows(task, strategy, seed, split)
                    acc += a
                    counts += c
                    early += e
                run_dir = root / "runs" / task / MODEL / strategy / f"seed{seed}"
                run_dir.mkdir(parents=True, exist_ok=True)
                run = _run_json(task, strategy, seed, labels)
                (run_dir / "run.json").write_text(json.dumps(run, indent=1))
        # A failed run leaves a folder but no rows: readers must ignore it.
        failed = root / "runs" / task / MODEL / "sweet" / f"seed{seeds[0]}"
        failed.mkdir(parents=True, exist_ok=True)
        failed_json = _run_json(task, "sweet", seeds[0], {"dev": np.zeros(1), "calib": np.zeros(1)}, "failed")
        (failed / "run.json").write_text(json.dumps(failed_json))

    early_frame = pd.DataFrame(early)
    pd.DataFrame(acc).to_parquet(root / "exit_accuracy.parquet", index=False)
    pd.DataFrame(counts).to_parquet(root / "exit_counts.parquet", index=False)
    early_frame.to_parquet(root / "early_exit.parquet", index=False)

    # The gradient probe runs on one task; cosine falls with the distance between exits.
    layers = [*EXITS, NUM_LAYERS]
    probe = _rng("probe", tasks[0])
    gc = [{"task": tasks[0], "model": MODEL, "exit_i": i, "exit_j": j, "steps": 200,
           "cosine": 1.0 if i == j else float(0.6 - 0.08 * abs(i - j) + probe.normal(0, 0.03))}
          for i in layers for j in layers if i < j or (gradient_diagonal and i == j)]
    pd.DataFrame(gc).to_parquet(root / "gradient_cosine.parquet", index=False)

    # Measured latency for the method on the first task, batch size 1.
    sweep = early_frame[(early_frame["task"] == tasks[0]) & (early_frame["strategy"] == "separate_reverse")
                        & (early_frame["seed"] == seeds[0]) & (early_frame["split"] == "dev")
                        & (early_frame["rule"] == "maxprob")]
    on_grid = np.isclose(sweep["threshold"] * 20, np.round(sweep["threshold"] * 20))  # every 0.05
    sweep = sweep[on_grid & (sweep["threshold"] >= 0.5)]
    latency = pd.DataFrame({"task": tasks[0], "model": MODEL, "strategy": "separate_reverse", "batch_size": 1,
                            "threshold": sweep["threshold"].to_numpy(),
                            "layer_speedup": sweep["speedup_layers"].to_numpy(),
                            "measured_speedup": 0.8 * sweep["speedup_layers"].to_numpy() + 0.1})
    latency.to_parquet(root / "latency.parquet", index=False)
    return root
