"""Run folders: one per (task, model, strategy, seed), written atomically.

A run is written into a temporary sibling folder and renamed into place only when it is
complete, so a killed run never leaves a folder that looks finished; a rerun finds no
finished folder and redoes it. Layout:

    <results>/runs/<task>/<model>/<strategy>/seed<k>/
        run.json               config, data statistics, environment, timings, status
        exit_metrics.parquet   split, exit_layer, metric, value
        predictions.parquet    split, example_id, label, num_tokens, exit_layer, probs
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd
import torch

RUN_FILE = "run.json"
METRICS_FILE = "exit_metrics.parquet"
PREDICTIONS_FILE = "predictions.parquet"
TMP_PREFIX = ".tmp-"
FINISHED = "finished"
FAILED = "failed"


def run_dir(results: Path, task: str, model: str, strategy: str, seed: int) -> Path:
    return Path(results) / "runs" / task / model / strategy / f"seed{seed}"


def read_run(path: Path) -> dict | None:
    try:
        return json.loads((Path(path) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None


def is_finished(path: Path) -> bool:
    run = read_run(path)
    return bool(run) and run.get("status") == FINISHED and all(
        (Path(path) / f).exists() for f in (METRICS_FILE, PREDICTIONS_FILE)
    )


def environment() -> dict:
    """Package versions, git commit and device: enough to tell how a number was produced."""
    def pkg(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    def git(*args):
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                  cwd=Path(__file__).parent).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    return {
        "packages": {p: pkg(p) for p in ("benchmark", "torch", "transformers", "datasets", "accelerate",
                                         "scikit-learn", "numpy", "pandas")},
        "python": platform.python_version(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "hostname": platform.node(),
    }


def predictions_frame(split: str, example_ids, labels, num_tokens, exit_layers, probs: np.ndarray) -> pd.DataFrame:
    """Long format: one row per (example, exit) with that exit's class probabilities."""
    n, k, _ = probs.shape
    return pd.DataFrame({
        "split": split,
        "example_id": np.repeat(np.asarray(example_ids), k),
        "label": np.repeat(np.asarray(labels), k),
        "num_tokens": np.repeat(np.asarray(num_tokens), k),
        "exit_layer": np.tile(np.asarray(exit_layers), n),
        "probs": list(probs.reshape(n * k, -1).astype(np.float32)),
    })


def probs_array(predictions: pd.DataFrame, split: str):
    """Back from long format: (probs [N, K, C], labels [N], num_tokens [N], exit_layers [K])."""
    part = predictions[predictions["split"] == split].sort_values(["example_id", "exit_layer"])
    exit_layers = sorted(part["exit_layer"].unique())
    k = len(exit_layers)
    probs = np.stack(part["probs"].to_numpy()).reshape(-1, k, len(part["probs"].iloc[0]))
    first = part.iloc[::k]
    return probs, first["label"].to_numpy(), first["num_tokens"].to_numpy(), exit_layers


def write_run(final: Path, run: dict, metrics: pd.DataFrame | None = None, predictions: pd.DataFrame | None = None):
    """Write the run into a temporary sibling folder, then swap it into place."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if metrics is not None:
            metrics.to_parquet(tmp / METRICS_FILE, index=False)
        if predictions is not None:
            predictions.to_parquet(tmp / PREDICTIONS_FILE, index=False)
        (tmp / RUN_FILE).write_text(json.dumps(run, indent=2, default=str))  # last: it marks completeness
        if final.exists():  # a failed earlier attempt, or --force: moved aside, then removed
            old = final.parent / f"{TMP_PREFIX}{final.name}-old-{os.getpid()}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def stale_temporaries(results: Path) -> list[Path]:
    """Temporary folders left by killed runs (their process is gone)."""
    found = []
    for tmp in Path(results).glob(f"runs/*/*/*/{TMP_PREFIX}*"):
        if not process_alive(tmp.name.rsplit("-", 1)[-1]):
            found.append(tmp)
    return found


def process_alive(pid: str) -> bool:
    """Whether the process that named a temporary folder `...-<pid>` still runs."""
    if not pid.isdigit():
        return False
    pid = int(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_table(df: pd.DataFrame, path: Path) -> None:
    """Atomic parquet write (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)


def _matching(frame: pd.DataFrame, keys: dict) -> np.ndarray:
    """Rows of `frame` whose every `keys` column equals its value (none when a column is missing)."""
    same = np.ones(len(frame), dtype=bool)
    for column, value in keys.items():
        if column not in frame:
            return np.zeros(len(frame), dtype=bool)
        same &= (frame[column] == value).to_numpy()
    return same


def replace_rows(path: Path, new: pd.DataFrame, keys: dict) -> None:
    """Store `new`, replacing the stored rows that match `keys` (column -> value) and keeping every other row.

    The probe and the benchmarks of one model must not erase another model's (a smoke run on the
    tiny model next to the MiniLM results)."""
    path = Path(path)
    if path.exists():
        old = pd.read_parquet(path)
        new = pd.concat([old[~_matching(old, keys)], new], ignore_index=True)
    write_table(new, path)


def has_rows(path: Path, keys: dict) -> bool:
    """Whether the parquet file at `path` holds rows matching every `keys` column -> value."""
    path = Path(path)
    return path.exists() and bool(_matching(pd.read_parquet(path), keys).any())
