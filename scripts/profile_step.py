"""Where a training step's time goes: torch.profiler over a few steps of two stages.

    python scripts/profile_step.py [--rows 256] [--steps 8]

Profiles the `finetune` stage and a Separate Reverse stage (the deepest new exit, KD on)
of MiniLM-L6 on SST-2 rows, and prints the operators that take the most CPU time plus the
share spent in the model's forward/backward versus everything else (data, optimizer, the
teacher lookup). GLUE_DIR must point at the GLUE files.
"""

from __future__ import annotations

import argparse
import os
import sys

from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from benchmark import data  # noqa: E402
from benchmark.model import MultiExitModel, bundled_minilm  # noqa: E402
from benchmark.strategies import stages_for  # noqa: E402
from benchmark.training import TrainingArguments, make_collator, train_stage  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=True)
    a = p.parse_args()
    from transformers import AutoTokenizer

    path = bundled_minilm()
    tok = AutoTokenizer.from_pretrained(path)
    train, _ = data.split_train(data.load_glue("sst2")["train"], a.rows)
    train = data.tokenize(train, tok, "sst2")
    args = TrainingArguments(learning_rate=1e-4, per_device_train_batch_size=32, group_by_length=a.group_by_length)
    model = MultiExitModel.from_backbone(path, 2, (1, 2, 3), "mean")
    stages = {"finetune": stages_for("finetune", (1, 2, 3), 6)[0],
              "separate_reverse@3": stages_for("separate_reverse", (1, 2, 3), 6)[0]}
    for name, stage in stages.items():
        train_stage(model, stage, train, make_collator(tok), args, max_steps=2)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof, record_function(f"stage {name}"):
            train_stage(model, stage, train, make_collator(tok), args, max_steps=a.steps)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
        print(f"\n=== {name}: {a.steps} steps, batch 32, group_by_length={a.group_by_length}\n{table}")


if __name__ == "__main__":
    main()
