"""Gather every finished run folder into the study's tables.

    python -m benchmark.collect [--results DIR]

Writes, under DIR:
- exit_accuracy.parquet  task, model, strategy, seed, split, exit_layer, metric, value
- exit_counts.parquet    task, model, strategy, seed, split, rule, threshold, exit_layer, count
- early_exit.parquet     task, model, strategy, seed, split, rule, threshold, accuracy, speedup_layers, speedup_cost

Early-exit curves are recomputed from the stored per-example probabilities for every exit
rule (max-probability, entropy, patience), so no model is needed. Folders that are
unfinished, failed or corrupt are named, never silently dropped or fatal.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from benchmark import storage
from benchmark.evaluation import RULES, CostModel, sweep

KEYS = ["task", "model", "strategy", "seed"]


def run_folders(results: Path):
    return sorted(p for p in Path(results).glob("runs/*/*/*/*") if p.is_dir())


def load_run(folder: Path):
    """(run.json, metrics, predictions) of a finished run; raises ValueError saying what is wrong."""
    if folder.name.startswith(storage.TMP_PREFIX):
        raise ValueError("unfinished (a run was killed or is still writing)")
    run = storage.read_run(folder)
    if run is None:
        raise ValueError(f"missing or unreadable {storage.RUN_FILE}")
    if run.get("status") != storage.FINISHED:
        raise ValueError(f"status '{run.get('status')}': {run.get('error', '')}".rstrip(": "))
    try:
        metrics = pd.read_parquet(folder / storage.METRICS_FILE)
        predictions = pd.read_parquet(folder / storage.PREDICTIONS_FILE)
    except Exception as e:  # pyarrow raises several types for truncated or missing files
        raise ValueError(f"corrupt or missing parquet ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return run, metrics, predictions


def run_curves(run: dict, predictions: pd.DataFrame):
    """Early-exit curves and exit counts of one run, for each split and rule."""
    c = run["config"]
    cost = CostModel(c["hidden_size"], c["intermediate_size"], c["num_labels"])
    curves, counts = [], []
    for split in predictions["split"].unique():
        probs, labels, num_tokens, exit_layers = storage.probs_array(predictions, split)
        paid = [c["layers_paid"][c["exit_layers"].index(e)] for e in exit_layers]
        for rule in RULES:
            curve, count = sweep(probs, labels, exit_layers, c["num_layers"], paid, num_tokens, cost, rule)
            curves.append(curve.assign(split=split, rule=rule))
            counts.append(count.assign(split=split, rule=rule))
    return pd.concat(curves), pd.concat(counts)


def collect(results: Path) -> dict[str, pd.DataFrame]:
    results = Path(results)
    accuracy, curves, counts, problems = [], [], [], []
    for folder in run_folders(results):
        try:
            run, metrics, predictions = load_run(folder)
        except ValueError as e:
            problems.append(f"{folder}: {e}")
            continue
        c = run["config"]
        keys = {"task": c["task"], "model": c["model"], "strategy": c["strategy"], "seed": c["seed"]}
        accuracy.append(metrics.assign(**keys))
        curve, count = run_curves(run, predictions)
        curves.append(curve.assign(**keys))
        counts.append(count.assign(**keys))
    for problem in problems:
        print(f"skipped {problem}")
    if not accuracy:
        print(f"no finished runs under {results}/runs")
        return {}
    tables = {
        "exit_accuracy": pd.concat(accuracy)[[*KEYS, "split", "exit_layer", "metric", "value"]],
        "exit_counts": pd.concat(counts)[[*KEYS, "split", "rule", "threshold", "exit_layer", "count"]],
        "early_exit": pd.concat(curves)[[*KEYS, "split", "rule", "threshold", "accuracy", "speedup_layers",
                                         "speedup_cost"]],
    }
    for name, df in tables.items():
        storage.write_table(df.reset_index(drop=True), results / f"{name}.parquet")
    print(f"collected {len(accuracy)} runs into {results}/{{{','.join(tables)}}}.parquet"
          + (f"; {len(problems)} folder(s) skipped" if problems else ""))
    return tables


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.collect", description=__doc__.split("\n")[0])
    p.add_argument("--results", default="results")
    a = p.parse_args(argv)
    if not Path(a.results).is_dir():
        print(f"error: results folder {a.results} does not exist", file=sys.stderr)
        return 2
    collect(Path(a.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
