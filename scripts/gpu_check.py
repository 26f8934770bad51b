"""One-shot GPU check for a lent accelerator machine (no hub there, no GLUE files).

    python scripts/gpu_check.py                # bert-base size, random init: ~5 minutes on one H200
    python scripts/gpu_check.py --tiny         # the same mechanics on a tiny model (CPU smoke test)

Measures, side by side in one run:
1. fine-tune throughput (samples/s) through the harness's training routine, fp32 (TF32 matmuls)
   vs bf16 autocast, on random token ids with SST-2-like lengths;
2. real early-exit latency vs full-depth inference of the plain backbone at batch 1 and 32:
   measured speed-up, layer speed-up and their ratio (random heads, so the thresholds are
   only there to spread samples over the exits).
Prints one JSON object per measurement and writes them to $OUT/gpu_check.json when $OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from functools import partial

import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from benchmark.model import MultiExitModel  # noqa: E402
from benchmark.strategies import REGISTRY  # noqa: E402
from benchmark.training import TrainingArguments, eval_loader, make_collator, train_stage  # noqa: E402


class PadOnly:
    """The collator's tokenizer role without a vocabulary file: pads with id 0."""

    pad_token_id, padding_side, model_input_names = 0, "right", ["input_ids", "token_type_ids", "attention_mask"]

    def pad(self, features, **kw):
        n = max(len(f["input_ids"]) for f in features)
        out = {k: torch.tensor([f[k] + [0] * (n - len(f[k])) for f in features])
               for k in ("input_ids", "token_type_ids", "attention_mask")}
        out.update({k: torch.tensor([f[k] for f in features]) for k in ("labels", "idx")})
        return out


def random_dataset(rows: int, vocab: int, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, 64, (rows,), generator=g).tolist()
    ids = [[101] + torch.randint(1000, vocab, (n - 2,), generator=g).tolist() + [102] for n in lengths]
    return Dataset.from_dict({"input_ids": ids, "token_type_ids": [[0] * len(x) for x in ids],
                              "attention_mask": [[1] * len(x) for x in ids],
                              "labels": torch.randint(0, 2, (rows,), generator=g).tolist(), "idx": list(range(rows))})


def config(tiny: bool) -> BertConfig:
    if tiny:
        return BertConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128)
    return BertConfig()  # bert-base-uncased's architecture: 12 layers, hidden 768


def throughput(a) -> dict:
    """Runs in its own process per precision (the accelerator's precision is fixed per process)."""
    cfg = config(a.tiny)
    torch.manual_seed(0)
    model = MultiExitModel(BertForSequenceClassification(cfg), (), "cls")
    data = random_dataset(a.rows, cfg.vocab_size)
    stage = REGISTRY["finetune"].build((), model.num_layers)[0]
    args = TrainingArguments(learning_rate=2e-5, per_device_train_batch_size=32, num_train_epochs=1)
    train_stage(model, stage, data, make_collator(PadOnly()), args, max_steps=5)  # warm-up, allocator
    start = time.perf_counter()
    train_stage(model, stage, data, make_collator(PadOnly()), args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"measure": "finetune_throughput", "precision": os.environ.get("BENCHMARK_MIXED_PRECISION", "default"),
            "samples_per_s": a.rows / seconds, "seconds": seconds, "rows": a.rows,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def run_full(model, batches):
    return [model.backbone(**b) for b in batches]


def run_early(model, batches, threshold):
    return [model.early_exit(threshold=threshold, **b)[1] for b in batches]


@torch.inference_mode()
def latency(a) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = config(a.tiny)
    torch.manual_seed(0)
    exits = (1, 2, 3) if a.tiny else (2, 4, 6)
    model = MultiExitModel(BertForSequenceClassification(cfg), exits, "cls").to(device).eval()
    for head in model.heads.values():  # sharper random heads: confidences spread over (0.5, 1)
        head[-1].weight.mul_(20)
    data = random_dataset(a.latency_rows, cfg.vocab_size, seed=1)
    rows = []
    for bs in (1, 32):
        batches = [{k: v.to(device) for k, v in b.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                   for b in eval_loader(data, make_collator(PadOnly()), bs)]

        def timed(fn):
            fn()  # warm-up
            times = []
            for _ in range(a.repeats):
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                fn()
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            return statistics.median(times)

        full = timed(partial(run_full, model, batches))
        for t in (0.6, 0.8, 0.9, 0.95):
            layers = torch.cat(run_early(model, batches, t))
            early = timed(partial(run_early, model, batches, t))
            layer_speedup = model.num_layers * len(layers) / layers.sum().item()
            rows.append({"measure": "early_exit_latency", "batch_size": bs, "threshold": t,
                         "measured_speedup": full / early, "layer_speedup": layer_speedup,
                         "ratio": full / early / layer_speedup, "device": device})
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--latency-rows", type=int, default=256)
    p.add_argument("--only", choices=["throughput", "latency"])
    a = p.parse_args()
    if a.only == "throughput":
        print(json.dumps(throughput(a)))
        return
    results = []
    for precision in ("no", "bf16"):  # one process each
        env = {**os.environ, "BENCHMARK_MIXED_PRECISION": precision}
        cmd = [sys.executable, __file__, "--only", "throughput", "--rows", str(a.rows)] + (["--tiny"] * a.tiny)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    for row in latency(a):
        results.append(row)
        print(json.dumps(row), flush=True)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu_check.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
