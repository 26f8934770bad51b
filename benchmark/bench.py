"""Speed benchmarks, each measured side by side in one process (these machines are noisy).

    python -m benchmark.bench {train,latency,teacher,memory,all} [--repeats 5] [--results results]

- train:   one epoch of `finetune` through the harness vs a minimal plain PyTorch loop (same model,
           batches, optimizer, schedule); and what length-grouped batching saves on real GLUE lengths.
- latency: real layer-skipping early exit vs full-depth inference of the plain backbone (no exit
           heads), batch 1 and 32, thresholds 0.5..0.95: measured vs layer speed-up.
- teacher: a Separate Reverse run with the teacher's outputs computed once per stage vs every step.
- memory:  peak memory of one run of each strategy (each in its own process).

Every figure is the median over repeats with its min-max spread; rows go to results/bench/*.parquet
(latency also to results/latency.parquet, which the speed-up figure reads).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, get_linear_schedule_with_warmup

from benchmark import data, storage
from benchmark.model import MultiExitModel, resolve_model
from benchmark.profiles import PROFILES
from benchmark.strategies import REGISTRY, TrainContext, train_strategy
from benchmark.training import TrainingArguments, eval_loader, make_collator, predict_logits, train_loader, train_stage

logger = logging.getLogger("benchmark.bench")
THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)


def spread(values) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "repeats": len(values)}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


class Setup:
    """Model, tokenizer and tokenized data shared by the benchmarks."""

    def __init__(self, a):
        prof = PROFILES[a.profile]
        self.profile = prof
        self.model_name, self.model_path = resolve_model(a.model or prof.model, a.checkpoints)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.collator = make_collator(self.tokenizer)
        self.checkpoints = Path(a.checkpoints)
        self.a = a

    def split(self, task, split, rows=None):
        ds = data.load_glue(task, self.a.data_dir)[split]
        if rows and rows < len(ds):
            ds = ds.shuffle(seed=0).select(range(rows)) if split == "train" else ds.select(range(rows))
        return data.tokenize(ds, self.tokenizer, task)

    def args(self, **kw):
        p = self.profile
        return TrainingArguments(**{"learning_rate": p.lr, "num_train_epochs": 1,
                                    "per_device_train_batch_size": p.batch_size, "seed": 0, **kw})


# --- 1. training overhead -----------------------------------------------------------------------------


def plain_epoch(model, dataset, collator, args: TrainingArguments):
    """The reference: a minimal PyTorch loop over the same batches with the same optimizer and schedule."""
    loader = train_loader(dataset, collator, args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, len(loader))
    model.train()
    for batch in loader:
        labels = batch.pop("labels")
        batch.pop("idx")
        loss = F.cross_entropy(model(**batch).logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


def bench_train(s: Setup, repeats: int, rows: int) -> pd.DataFrame:
    task = "sst2"
    train = s.split(task, "train", rows)
    base = MultiExitModel.from_backbone(s.model_path, 2, (), s.profile.exit_pooling)
    stage = REGISTRY["finetune"].build((), base.num_layers)[0]
    out = []
    for grouped in (False, True):
        args = s.args(group_by_length=grouped)
        harness, plain = [], []
        for _ in range(repeats):  # interleaved, so drifts in machine load hit both sides alike
            harness.append(timed(partial(train_stage, copy.deepcopy(base), stage, train, s.collator, args)))
            plain.append(timed(partial(plain_epoch, copy.deepcopy(base.backbone), train, s.collator, args)))
        ratios = [h / p for h, p in zip(harness, plain)]
        out.append({"task": task, "rows": len(train), "group_by_length": grouped,
                    **{f"harness_s_{k}": v for k, v in spread(harness).items()},
                    **{f"plain_s_{k}": v for k, v in spread(plain).items() if k != "repeats"},
                    **{f"ratio_{k}": v for k, v in spread(ratios).items() if k != "repeats"}})
    df = pd.DataFrame(out)
    saving = df.loc[0, "harness_s_median"] / df.loc[1, "harness_s_median"]
    print(f"train ({task}, {len(train)} rows, 1 epoch, {repeats} repeats): harness / plain loop = "
          + ", ".join(f"{r.ratio_median:.3f} [{r.ratio_min:.3f}-{r.ratio_max:.3f}] "
                      f"({'length-grouped' if r.group_by_length else 'random'} batches)" for r in df.itertuples())
          + f"; length grouping makes the epoch {saving:.2f}x faster")
    print(f"padding: {padding_waste(s)}")
    return df.assign(grouping_speedup=saving)


def padding_waste(s: Setup) -> str:
    """Padded tokens / real tokens for random and length-grouped batches of the profile's batch size."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    parts = []
    for task in ("sst2", "mrpc", "rte"):
        lengths = np.array([len(x) for x in s.split(task, "train", 8000)["input_ids"]])
        g = torch.Generator().manual_seed(0)
        bs = s.profile.batch_size
        orders = {"random": torch.randperm(len(lengths), generator=g).numpy(),
                  "grouped": np.array(list(LengthGroupedSampler(bs, lengths=lengths.tolist(), generator=g)))}
        waste = {k: sum(lengths[o[i:i + bs]].max() * len(o[i:i + bs]) for i in range(0, len(o), bs)) / lengths.sum()
                 for k, o in orders.items()}
        parts.append(f"{task} {waste['random']:.2f}x random, {waste['grouped']:.2f}x grouped")
    return "; ".join(parts)


# --- 2. early-exit latency ------------------------------------------------------------------------------


def trained_model(s: Setup, task: str) -> MultiExitModel:
    """The Separate Reverse model the runner saved (--save-models), else one trained here on a few rows."""
    path = s.checkpoints / "models" / task / s.model_name / "separate_reverse" / "seed0"
    if not (path / "config.json").exists():
        rows = min(2000, s.profile.per_task(s.profile.max_train_samples, task) or 2000)
        logger.info("no saved separate_reverse model at %s: training one on %d %s rows", path, rows, task)
        spec = data.get_task(task)
        ctx = TrainContext(s.model_path, spec.num_labels, tuple(s.profile.exits), s.profile.exit_pooling,
                           s.split(task, "train", rows), s.collator, s.args(group_by_length=True))
        train_strategy("separate_reverse", ctx).save_pretrained(path)
        s.tokenizer.save_pretrained(path)
    return MultiExitModel.from_pretrained(path).eval()


@torch.inference_mode()
def run_full(plain, batches):
    for b in batches:
        plain(**b)


@torch.inference_mode()
def run_early(model, batches, threshold):
    return [model.early_exit(threshold=threshold, **b)[1] for b in batches]


def bench_latency(s: Setup, repeats: int, rows: int) -> pd.DataFrame:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = []
    for task in ("sst2", "rte"):
        model = trained_model(s, task).to(device)
        plain = model.backbone  # what a user would otherwise deploy: full depth, one head
        dev = s.split(task, "validation", rows)
        for bs in (1, 32):
            batches = [{k: v.to(device) for k, v in b.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                       for b in eval_loader(dev, s.collator, bs)]

            full = partial(run_full, plain, batches)
            full()  # warm-up
            layer_speedup = {}
            for t in THRESHOLDS:
                layers = run_early(model, batches, t)
                layer_speedup[t] = model.num_layers * len(dev) / torch.cat(layers).sum().item()
            times = {t: [] for t in THRESHOLDS}
            full_times = []
            for _ in range(repeats):  # interleaved: each repeat times full depth and every threshold
                full_times.append(timed(full))
                for t in THRESHOLDS:
                    times[t].append(timed(partial(run_early, model, batches, t)))
            for t in THRESHOLDS:
                measured = [f / e for f, e in zip(full_times, times[t])]
                sp = spread(measured)
                out.append({"task": task, "model": s.model_name, "strategy": "separate_reverse", "batch_size": bs,
                            "threshold": float(t), "rows": len(dev), "device": device,
                            "measured_speedup": sp["median"], "measured_min": sp["min"], "measured_max": sp["max"],
                            "layer_speedup": layer_speedup[t], "ratio": sp["median"] / layer_speedup[t],
                            "full_ms_per_example": 1000 * statistics.median(full_times) / len(dev),
                            "early_ms_per_example": 1000 * statistics.median(times[t]) / len(dev),
                            "repeats": repeats})
    df = pd.DataFrame(out)
    print("latency: measured speed-up [min-max] vs layer speed-up, real early exit against the plain backbone")
    print(df[["task", "batch_size", "threshold", "measured_speedup", "measured_min", "measured_max", "layer_speedup",
              "ratio"]].round(3).to_string(index=False))
    return df


# --- 3. teacher outputs once per stage vs every step ----------------------------------------------------


def bench_teacher(s: Setup, repeats: int, rows: int) -> pd.DataFrame:
    task = "sst2"
    train, dev = s.split(task, "train", rows), s.split(task, "validation")
    labels = np.asarray(list(dev["labels"]))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ["cached", "per_step"] * repeats:
            # the profile's epochs: the cached teacher pays once per stage, the per-step one once per epoch
            args = s.args(teacher_outputs=mode, group_by_length=True,
                          num_train_epochs=s.profile.per_task(s.profile.epochs, task))
            ctx = TrainContext(s.model_path, 2, tuple(s.profile.exits), s.profile.exit_pooling, train, s.collator,
                               args, finetune_cache=Path(tmp) / "ft")
            model = train_strategy("separate_reverse", ctx)
            # the stages' own time (teacher pass included), not the shared fine-tuning
            seconds = sum(v for k, v in ctx.timings.items() if k != "finetune")
            acc = (predict_logits(model, dev, s.collator).argmax(-1).numpy() == labels[:, None]).mean(0)
            out.append({"mode": mode, "seconds": seconds, "accuracy_per_exit": acc.tolist()})
    df = pd.DataFrame(out)
    cached, per_step = (df[df["mode"] == m]["seconds"].tolist() for m in ("cached", "per_step"))
    ratios = [p / c for c, p in zip(cached, per_step)]
    same = all(a == df["accuracy_per_exit"].iloc[0] for a in df["accuracy_per_exit"])
    print(f"teacher ({task}, {len(train)} rows, Separate Reverse stages only): "
          f"per-step {spread(per_step)['median']:.1f}s"
          f" vs cached {spread(cached)['median']:.1f}s: cached is {spread(ratios)['median']:.2f}x faster "
          f"[{min(ratios):.2f}-{max(ratios):.2f}]; per-exit dev accuracies identical: {same} "
          f"({df['accuracy_per_exit'].iloc[0]})")
    return df.assign(identical_metrics=same, accuracy_per_exit=df["accuracy_per_exit"].map(json.dumps))


# --- 4. peak memory per strategy ------------------------------------------------------------------------


def bench_memory(s: Setup, repeats: int, rows: int) -> pd.DataFrame:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in REGISTRY:  # finetune first: the others reuse its cached model, as in a real grid
            cmd = [sys.executable, "-m", "benchmark.run", "--profile", s.a.profile, "--model", s.model_name,
                   "--tasks", "sst2", "--strategies", strategy, "--max-train-samples", str(rows),
                   "--max-eval-samples", "128", "--epochs", "1", "--results", f"{tmp}/results",
                   "--checkpoints", str(Path(tmp) / "checkpoints"), "--no-collect"]
            env = {**os.environ, "TQDM_DISABLE": "1"}
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            _, status, usage = os.wait4(proc.pid, 0)
            run = storage.read_run(storage.run_dir(Path(tmp) / "results", "sst2", s.model_name, strategy, 0)) or {}
            out.append({"strategy": strategy, "peak_rss_mb": usage.ru_maxrss / 1024, "exit_status": status,
                        "peak_cuda_mb": run.get("peak_cuda_memory_mb")})
    df = pd.DataFrame(out)
    print("memory: peak RSS of one run per strategy (MB)")
    print(df.round(0).to_string(index=False))
    return df


BENCHES = {"train": bench_train, "latency": bench_latency, "teacher": bench_teacher, "memory": bench_memory}
DEFAULT_ROWS = {"train": 2048, "latency": 400, "teacher": 1000, "memory": 256}


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    import transformers

    transformers.logging.set_verbosity_error()
    p = argparse.ArgumentParser(prog="python -m benchmark.bench", description=__doc__.split("\n")[0])
    p.add_argument("which", choices=[*BENCHES, "all"])
    p.add_argument("--profile", default="cpu", choices=list(PROFILES))
    p.add_argument("--model")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rows", type=int, help="rows per benchmark (defaults: " + str(DEFAULT_ROWS) + ")")
    p.add_argument("--data-dir")
    p.add_argument("--results", default="results")
    p.add_argument("--checkpoints", default="checkpoints")
    p.add_argument("--skip-existing", action="store_true",
                   help="skip a benchmark whose results already hold this model (run_all resumes)")
    a = p.parse_args(argv)
    try:
        s = Setup(a)
        for name in BENCHES if a.which == "all" else [a.which]:
            # the smoke profile checks the mechanics on the tiny model: a few rows, two repeats
            smoke = a.profile == "smoke"
            rows = a.rows or (min(DEFAULT_ROWS[name], 64) if smoke else DEFAULT_ROWS[name])
            # rows are kept per model: a smoke run on the tiny model leaves the MiniLM numbers alone
            keys = {"model": s.model_name}
            path = Path(a.results) / "bench" / f"{name}.parquet"
            if a.skip_existing and storage.has_rows(path, keys):
                print(f"bench {name}: {path} already holds {s.model_name}; kept (run without --skip-existing "
                      "to redo it)")
                continue
            df = BENCHES[name](s, min(a.repeats, 2) if smoke else a.repeats, rows).assign(**keys)
            storage.replace_rows(path, df, keys)
            if name == "latency":
                storage.replace_rows(Path(a.results) / "latency.parquet", df, keys)
    except data.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
