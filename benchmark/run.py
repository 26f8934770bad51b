"""The study runner: profiles x tasks x strategies x seeds, resumable, one folder per run.

    python -m benchmark.run --profile cpu
    python -m benchmark.run --profile smoke --strategies joint,separate_reverse@alpha=0.3 --seeds 0,1
    accelerate launch -m benchmark.run --profile paper          # every GPU of the machine (DDP, bf16)
    python -m benchmark.run --profile paper --shard 2/8         # slice 2 of 8 of the grid (0-based)

A profile (PROFILES) sets the defaults; every flag overrides it. Finished runs are skipped
(`--force` redoes them); the fine-tuned model shared by several strategies is trained once
per (task, model, seed, hyper-parameters) and kept under `--checkpoints`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from benchmark import data, storage
from benchmark.evaluation import exit_metrics
from benchmark.model import ModelError, check_exits, num_layers_of, resolve_model
from benchmark.profiles import ALPHA_SWEEP, PROFILES, Profile
from benchmark.strategies import (
    REGISTRY,
    StrategyError,
    TrainContext,
    canonical_name,
    resolve,
    stages_for,
    train_strategy,
)
from benchmark.training import (
    TrainingArguments,
    TrainingDiverged,
    get_accelerator,
    make_collator,
    predict_logits,
)

logger = logging.getLogger("benchmark.run")

class UsageError(ValueError):
    """Bad command-line input: reported in one line, exit code 2, nothing written."""


# --- the grid ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    task: str
    strategy: str  # canonical name, e.g. separate_reverse@alpha=0.3
    seed: int


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard '{text}' must look like i/n, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard {text}: need 0 <= i < n (slices are numbered from 0)")
    return i, n


def build_grid(tasks, strategies, seeds, alpha_sweep_tasks=()) -> list[RunSpec]:
    """Every (task, strategy, seed); the alpha sweep comes after the main comparison on every task,
    so that a grid stopped part-way has compared all strategies first."""
    names = list(dict.fromkeys(canonical_name(s) for s in strategies))
    sweep = [canonical_name(f"separate_reverse@alpha={a:g}") for a in ALPHA_SWEEP]
    grid = [RunSpec(t, s, seed) for t in tasks for seed in dict.fromkeys(seeds) for s in names]
    grid += [RunSpec(t, s, seed) for t in tasks if t in alpha_sweep_tasks for seed in dict.fromkeys(seeds)
             for s in sweep if s not in names]
    return grid


def shard(grid: list[RunSpec], i: int, n: int) -> list[RunSpec]:
    """Slice i of n. Runs that share a fine-tuned model (same task and seed) stay together where possible."""
    groups = sorted({(r.task, r.seed) for r in grid})
    if len(groups) >= n:
        mine = set(groups[i::n])
        return [r for r in grid if (r.task, r.seed) in mine]
    return grid[i::n]


# --- one run -------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """Everything that determines a run's numbers, besides task, strategy and seed."""

    model: str
    model_path: str
    exits: list[int]
    exit_pooling: str
    lr: float
    epochs: float
    max_train_samples: int | None
    max_eval_samples: int | None
    calib_fraction: float
    batch_size: int
    max_length: int
    group_by_length: bool
    data_dir: str | None


def finetune_key(s: Settings, task: str) -> str:
    """What the shared fine-tuned model depends on (exits do not: it has only the main exit)."""
    keys = ("model_path", "exit_pooling", "lr", "epochs", "max_train_samples", "calib_fraction", "batch_size",
            "max_length", "group_by_length")
    blob = json.dumps({"task": task, **{k: getattr(s, k) for k in keys}}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


class TaskData:
    """Tokenized train / calibration / dev sets of one task, loaded once per process."""

    def __init__(self, task: str, s: Settings, tokenizer):
        spec = data.get_task(task)
        raw = data.load_glue(task, s.data_dir)
        train, calib = data.split_train(raw["train"], s.max_train_samples, s.calib_fraction, seed=0)
        dev = raw["validation"]
        if s.max_eval_samples and len(dev) > s.max_eval_samples:
            dev = dev.select(range(s.max_eval_samples))
        self.spec = spec
        self.train = data.tokenize(train, tokenizer, task, s.max_length)
        self.eval_splits = {"dev": data.tokenize(dev, tokenizer, task, s.max_length)}
        if calib is not None:
            self.eval_splits["calib"] = data.tokenize(calib, tokenizer, task, s.max_length)
        self.stats = {
            "train_rows": len(train), "dev_rows": len(dev), "calib_rows": len(calib) if calib is not None else 0,
            "num_labels": spec.num_labels,
            "train_label_counts": _counts(train["label"]), "dev_label_counts": _counts(dev["label"]),
        }


def _counts(labels) -> dict[int, int]:
    values, counts = np.unique(np.asarray(list(labels)), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def execute(run: RunSpec, s: Settings, task_data: TaskData, collator, checkpoints: Path,
            save_model: bool = False) -> tuple[dict, object, object]:
    """Train and evaluate one run; returns (run.json content, metrics frame, predictions frame)."""
    args = TrainingArguments(learning_rate=s.lr, num_train_epochs=s.epochs, per_device_train_batch_size=s.batch_size,
                             seed=run.seed, group_by_length=s.group_by_length)
    cache = checkpoints / "finetune" / run.task / s.model / finetune_key(s, run.task) / f"seed{run.seed}"
    cache.parent.mkdir(parents=True, exist_ok=True)
    ctx = TrainContext(s.model_path, task_data.spec.num_labels, tuple(s.exits), s.exit_pooling, task_data.train,
                       collator, args, finetune_cache=cache)
    start, cpu_start = time.perf_counter(), time.process_time()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    model = train_strategy(run.strategy, ctx)
    if save_model and hasattr(model, "save_pretrained"):
        folder = checkpoints / "models" / run.task / s.model / run.strategy / f"seed{run.seed}"
        model.save_pretrained(folder)
        collator.tokenizer.save_pretrained(folder)
    eval_start = time.perf_counter()
    metrics, predictions = [], []
    for split, dataset in task_data.eval_splits.items():
        probs = predict_logits(model, dataset, collator).softmax(-1).numpy()
        labels = np.asarray(list(dataset["labels"]))
        m = exit_metrics(probs, labels, model.exit_layers, task_data.spec.metric)
        metrics.append(m.assign(split=split))
        predictions.append(storage.predictions_frame(split, list(dataset["idx"]), labels,
                                             [len(x) for x in dataset["input_ids"]], model.exit_layers, probs))
    ctx.timings["evaluate"] = time.perf_counter() - eval_start
    config = model_config(model)
    run_json = {
        "status": storage.FINISHED,
        "config": {"task": run.task, "strategy": run.strategy, "seed": run.seed,
                   "strategy_params": resolve(run.strategy)[1], **dataclasses.asdict(s),
                   "num_layers": model.num_layers, "exit_layers": list(model.exit_layers),
                   "layers_paid": list(getattr(model, "layers_paid", model.exit_layers)), **config},
        "data": task_data.stats,
        "timings": ctx.timings,
        "wall_time_s": time.perf_counter() - start,
        # CPU seconds of all the process's threads: well below wall x torch threads means the run
        # shared the cores with another job (or was paused), and its wall time overstates the cost
        "cpu_time_s": time.process_time() - cpu_start,
        "peak_cuda_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        # process-lifetime peak: a run's own peak when it is the process's only run (see bench memory)
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    return run_json, pd.concat(metrics, ignore_index=True), pd.concat(predictions, ignore_index=True)


def model_config(model) -> dict:
    """Sizes the cost-aware speed-up needs."""
    backbone = model.members[-1].backbone if hasattr(model, "members") else model.backbone
    c = backbone.config
    return {"hidden_size": getattr(c, "hidden_size", getattr(c, "dim", None)),
            "intermediate_size": getattr(c, "intermediate_size", getattr(c, "hidden_dim", None)),
            "num_labels": c.num_labels}


def summary_line(run: RunSpec, model_name: str, run_json: dict, metrics) -> str:
    dev = metrics[(metrics["split"] == "dev") & (metrics["metric"] == "accuracy")]
    accs = " | ".join(f"exit {int(r.exit_layer)} {100 * r.value:.1f}" for r in dev.itertuples())
    return f"{run.task} {model_name} {run.strategy} seed{run.seed}: {accs} ({run_json['wall_time_s']:.0f} s)"


# --- command line --------------------------------------------------------------------------------------


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def parse_args(argv=None):
    p = OneLineParser(prog="python -m benchmark.run", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="cpu", help=f"defaults for everything below: {', '.join(PROFILES)}")
    p.add_argument("--tasks", help="comma-separated GLUE tasks")
    p.add_argument("--strategies", help="comma-separated names or variants (name@k=v,...), or 'all'")
    p.add_argument("--seeds", help="comma-separated integers")
    p.add_argument("--model", help="hub id, local folder, or an alias: minilm-l6, tiny-bert")
    p.add_argument("--exits", help="comma-separated intermediate exit layers, e.g. 2,4,6")
    p.add_argument("--exit-pooling", choices=["cls", "mean"])
    p.add_argument("--lr", type=float)
    p.add_argument("--epochs", type=float)
    p.add_argument("--max-train-samples", type=int)
    p.add_argument("--max-eval-samples", type=int)
    p.add_argument("--calib-fraction", type=float, default=0.0,
                   help="held-out share of the training set whose predictions are stored for choosing thresholds")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--data-dir", help="GLUE folder in the classic TSV layout (default: $GLUE_DIR, else the hub)")
    p.add_argument("--results", default="results")
    p.add_argument("--checkpoints", default="checkpoints", help="where shared fine-tuned models are kept")
    p.add_argument("--shard", help="i/n: run only slice i (0-based) of n of the grid")
    p.add_argument("--force", action="store_true", help="redo runs that are already finished")
    p.add_argument("--no-collect", action="store_true", help="skip collecting the tables at the end")
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    p.add_argument("--save-models", action="store_true",
                   help="also save every trained multi-exit model (HF format) under CHECKPOINTS/models/")
    return p.parse_args(argv)


def _split(text, cast=str):
    return [cast(x.strip()) for x in text.split(",") if x.strip()]


def plan_from_args(a) -> tuple[list[RunSpec], dict, Profile]:
    """Validate everything before anything is written."""
    if a.profile not in PROFILES:
        raise UsageError(f"unknown profile '{a.profile}': choose from {', '.join(PROFILES)}")
    prof = PROFILES[a.profile]
    tasks = list(dict.fromkeys(data.get_task(t).name for t in (_split(a.tasks) if a.tasks else prof.tasks)))
    strategies = prof.strategies if not a.strategies or a.strategies == "all" else _split_strategies(a.strategies)
    for s in strategies:
        resolve(s)
    try:
        seeds = _split(a.seeds, int) if a.seeds else prof.seeds
        exits = _split(a.exits, int) if a.exits else prof.exits
    except ValueError as e:
        raise UsageError(f"--seeds and --exits take comma-separated integers ({e})") from None
    if a.calib_fraction is not None and not 0 <= a.calib_fraction < 1:
        raise UsageError(f"--calib-fraction {a.calib_fraction} must lie in [0, 1)")
    sweep_tasks = prof.alpha_sweep_tasks if not a.strategies or a.strategies == "all" else []
    grid = build_grid(tasks, strategies, seeds, sweep_tasks)
    overrides = {"exits": exits}
    return grid, overrides, prof


def _split_strategies(text: str) -> list[str]:
    """Commas separate strategies, except inside a variant's parameters (name@a=1,b=2)."""
    names, current = [], ""
    for part in text.split(","):
        if current and "=" in part and "@" not in part and "@" in current:
            current += "," + part
        else:
            if current:
                names.append(current)
            current = part.strip()
    return names + ([current] if current else [])


def pick(flag, default):
    """A command-line value where given, else the profile's."""
    return default if flag is None else flag


def settings_for(a, prof: Profile, task: str, exits, model_name, model_path) -> Settings:
    return Settings(
        model=model_name, model_path=model_path, exits=exits,
        exit_pooling=pick(a.exit_pooling, prof.exit_pooling), lr=pick(a.lr, prof.lr),
        epochs=pick(a.epochs, prof.per_task(prof.epochs, task)),
        max_train_samples=pick(a.max_train_samples, prof.per_task(prof.max_train_samples, task)),
        max_eval_samples=pick(a.max_eval_samples, prof.max_eval_samples), calib_fraction=a.calib_fraction or 0.0,
        batch_size=pick(a.batch_size, prof.batch_size), max_length=prof.max_length,
        group_by_length=pick(a.group_by_length, prof.group_by_length), data_dir=data.resolve_data_dir(a.data_dir),
    )


def check_writable(results: Path) -> None:
    probe = results
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"results folder {results} is not writable; pass --results DIR")


def print_plan(grid, todo, model_name, results: Path, checkpoints: Path, settings: dict, shard_of, force):
    i, n = shard_of
    where = f"slice {i}/{n} of the grid: " if n > 1 else ""
    done = "redoing finished runs (--force)" if force else f"{len(grid) - len(todo)} already finished"
    print(f"Plan: {where}{len(grid)} run(s) of model {model_name}: {done}, {len(todo)} to do "
          f"(results in {results}/runs)")
    for r in todo:
        print(f"  - {r.task} {r.strategy} seed{r.seed}")
    shared = {}
    for r in todo:
        if REGISTRY[r.strategy.split("@")[0]].start != "pretrained" or r.strategy == "finetune":
            shared.setdefault((r.task, r.seed), []).append(r.strategy)
    for (task, seed), users in shared.items():
        cache = checkpoints / "finetune" / task / model_name / finetune_key(settings[task], task) / f"seed{seed}"
        state = "cached" if (cache / "config.json").exists() else "trained once"
        print(f"  shared stage: finetune {task} seed{seed} ({state}) used by {', '.join(users)}")


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("transformers", "datasets", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        a = parse_args(argv)
        grid, overrides, prof = plan_from_args(a)
        i, n = parse_shard(a.shard)
        results, checkpoints = Path(a.results), Path(a.checkpoints)
        check_writable(results)
        check_writable(checkpoints)
        model_name, model_path = resolve_model(a.model or prof.model, checkpoints)
        config = _load_config(model_path)
        exits = list(check_exits(overrides["exits"], num_layers_of(config)))
        grid = shard(grid, i, n)
        for name in dict.fromkeys(r.strategy for r in grid):  # the entries' own checks of their values
            stages_for(name, exits, num_layers_of(config))
        for task in dict.fromkeys(r.task for r in grid):  # a missing data folder fails now, not mid-grid
            data.load_glue(task, a.data_dir)
    except (UsageError, data.DataError, StrategyError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    settings = {t: settings_for(a, prof, t, exits, model_name, model_path) for t in dict.fromkeys(r.task for r in grid)}
    for tmp in storage.stale_temporaries(results) + stale_checkpoints(checkpoints):
        logger.info("removing %s left by a killed run", tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    todo = [r for r in grid if a.force or not storage.is_finished(
        storage.run_dir(results, r.task, model_name, r.strategy, r.seed))]
    print_plan(grid, todo, model_name, results, checkpoints, settings, (i, n), a.force)
    if a.dry_run:
        return 0
    try:
        failures = run_grid(todo, settings, model_name, model_path, results, checkpoints, a.save_models)
    except KeyboardInterrupt:
        print("error: interrupted; finished runs are kept, rerun the same command to resume", file=sys.stderr)
        return 130
    except data.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not a.no_collect and get_accelerator().is_main_process:
        from benchmark import collect

        collect.collect(results)
    if failures:
        print(f"{len(failures)} run(s) failed:", file=sys.stderr)
        for run, err in failures:
            print(f"  {run.task} {run.strategy} seed{run.seed}: {err}", file=sys.stderr)
        return 1
    return 0


def run_grid(todo, settings, model_name, model_path, results, checkpoints, save_models) -> list:
    """Train, evaluate and store every run of `todo`; a run that fails is recorded and the grid goes on."""
    from transformers import AutoTokenizer

    accelerator = get_accelerator()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    collator = make_collator(tokenizer)
    failures, task_cache = [], {}
    for run in tqdm(todo, desc="grid", disable=not accelerator.is_local_main_process):
        folder = storage.run_dir(results, run.task, model_name, run.strategy, run.seed)
        s = settings[run.task]
        if run.task not in task_cache:
            task_cache[run.task] = TaskData(run.task, s, tokenizer)
        try:
            run_json, metrics, predictions = execute(run, s, task_cache[run.task], collator, checkpoints, save_models)
        except (TrainingDiverged, RuntimeError, ValueError) as e:
            logger.error("run %s %s seed%d failed: %s", run.task, run.strategy, run.seed, e)
            failures.append((run, str(e)))
            if accelerator.is_main_process:
                config = {"task": run.task, "strategy": run.strategy, "seed": run.seed, **dataclasses.asdict(s)}
                storage.write_run(folder, {"status": storage.FAILED, "error": str(e), "config": config,
                                           "env": storage.environment()})
            continue
        run_json["env"] = storage.environment()
        if accelerator.is_main_process:
            storage.write_run(folder, run_json, metrics, predictions)
            tqdm.write(summary_line(run, model_name, run_json, metrics))
        accelerator.wait_for_everyone()
    return failures


def stale_checkpoints(checkpoints: Path) -> list[Path]:
    """Half-saved fine-tuned models of killed runs (seed<k>.tmp-<pid>, process gone)."""
    return [p for p in Path(checkpoints).glob("finetune/*/*/*/seed*.tmp-*")
            if not storage.process_alive(p.name.rsplit("-", 1)[-1])]


def _load_config(model_path):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_path)
    except OSError as e:
        raise ModelError(f"cannot load model '{model_path}' ({str(e).splitlines()[0]}); "
                         "pass a local folder or an alias (minilm-l6, tiny-bert) when offline") from None


if __name__ == "__main__":
    sys.exit(main())
