"""Gradient-conflict probe: do the exits of a jointly trained model pull shared weights apart?

    python -m benchmark.gradients --task rte [--model minilm-l6] [--steps 200] [--batch-size 8]

During joint training (the `joint` strategy's stage, unchanged), every step computes each
exit's loss gradient with respect to the parameters all exits share (embeddings and layers
1..e_1), then the cosine similarity between every pair of exits. The mean over steps goes to
`results/gradient_cosine.parquet` (task, model, exit_i, exit_j, cosine, steps) and every
step's value to `results/gradient_cosine_steps.parquet`. The paper measured RTE, batch 8.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from benchmark import data, storage
from benchmark.model import ModelError, MultiExitModel, resolve_model
from benchmark.profiles import PROFILES
from benchmark.strategies import REGISTRY
from benchmark.training import TrainingArguments, make_collator, train_stage

logger = logging.getLogger("benchmark.gradients")


def shared_parameters(model: MultiExitModel) -> list[torch.nn.Parameter]:
    """What every exit's loss reaches: the embeddings and the layers up to the first exit."""
    modules = [model.embeddings(), *model.layers()[: model.exits[0]]]
    return [p for m in modules for p in m.parameters()]


class CosineRecorder:
    """on_step hook: per-exit gradients on the shared parameters, pairwise cosines per step."""

    def __init__(self):
        self.rows = []
        self.step = 0

    def __call__(self, model: MultiExitModel, parts: dict[str, torch.Tensor]):
        params = shared_parameters(model)
        grads = {}
        for name, loss in parts.items():
            g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            # float64: a float32 dot product over millions of entries is off by ~1e-5
            grads[int(name.split("@")[1])] = torch.cat(
                [(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(g, params)]).double()
        for i, j in itertools.combinations_with_replacement(sorted(grads), 2):
            cos = F.cosine_similarity(grads[i], grads[j], dim=0).item()
            self.rows.append({"step": self.step, "exit_i": i, "exit_j": j, "cosine": cos})
        self.step += 1


def probe(task: str, model_path: str, exits, pooling: str, steps: int, batch_size: int, lr: float, seed: int,
          data_dir=None, max_length: int = 128) -> pd.DataFrame:
    """Per-step cosines between exits' gradients during joint training (both orders of every pair)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    spec = data.get_task(task)
    train = data.tokenize(data.load_glue(task, data_dir)["train"], tokenizer, task, max_length)
    model = MultiExitModel.from_backbone(model_path, spec.num_labels, exits, pooling)
    (stage,) = REGISTRY["joint"].build(model.exits, model.num_layers)
    args = TrainingArguments(learning_rate=lr, per_device_train_batch_size=batch_size, seed=seed,
                             num_train_epochs=1)
    recorder = CosineRecorder()
    train_stage(model, stage, train, make_collator(tokenizer), args, on_step=recorder, max_steps=steps)
    per_step = pd.DataFrame(recorder.rows)
    mirrored = per_step[per_step.exit_i != per_step.exit_j].rename(columns={"exit_i": "exit_j", "exit_j": "exit_i"})
    return pd.concat([per_step, mirrored], ignore_index=True)


def main(argv=None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    p = argparse.ArgumentParser(prog="python -m benchmark.gradients", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="cpu", help="model, exits, pooling and lr defaults from this runner profile")
    p.add_argument("--task", default="rte")
    p.add_argument("--model")
    p.add_argument("--exits")
    p.add_argument("--exit-pooling", choices=["cls", "mean"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir")
    p.add_argument("--results", default="results")
    p.add_argument("--checkpoints", default="checkpoints")
    p.add_argument("--skip-existing", action="store_true",
                   help="do nothing when the results already hold this task and model's cosines (run_all resumes)")
    a = p.parse_args(argv)
    try:
        if a.profile not in PROFILES:
            raise ModelError(f"unknown profile '{a.profile}': choose from {', '.join(PROFILES)}")
        prof = PROFILES[a.profile]
        model_name, model_path = resolve_model(a.model or prof.model, a.checkpoints)
        exits = [int(e) for e in a.exits.split(",")] if a.exits else prof.exits
        pooling, lr = a.exit_pooling or prof.exit_pooling, a.lr or prof.lr
        if a.steps < 1:
            raise ModelError(f"--steps {a.steps} must be at least 1")
        stored = Path(a.results) / "gradient_cosine.parquet"
        if a.skip_existing and storage.has_rows(stored, {"task": a.task, "model": model_name}):
            print(f"gradient probe: {stored} already holds {a.task} / {model_name}; kept (run without "
                  "--skip-existing to redo it)")
            return 0
        per_step = probe(a.task, model_path, exits, pooling, a.steps, a.batch_size, lr, a.seed, a.data_dir)
    except (data.DataError, ModelError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    keys = {"task": a.task, "model": model_name}
    per_step = per_step.assign(**keys)
    mean = (per_step.groupby(["exit_i", "exit_j"])["cosine"].agg(cosine="mean", steps="count")
            .reset_index().assign(**keys))[["task", "model", "exit_i", "exit_j", "cosine", "steps"]]
    results = Path(a.results)
    storage.replace_rows(results / "gradient_cosine.parquet", mean, keys)
    storage.replace_rows(results / "gradient_cosine_steps.parquet", per_step, keys)
    print(mean.pivot(index="exit_i", columns="exit_j", values="cosine").round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
