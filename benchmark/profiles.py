"""Profiles: named defaults for a whole study (model, tasks, data caps, epochs, lr, pooling).

Every setting can be overridden on the command line of `python -m benchmark.run`. The
`cpu` profile is the CPU reproduction (about 3 hours on 2 cores); `paper` is the study's
own setting (BERT-base, six GLUE tasks, several seeds, a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmark.strategies import REGISTRY

ALL_STRATEGIES = list(REGISTRY)
# with separate_reverse (0.5) and _nokd (0): DESIGN's balance sweep; the strongest KD first
ALPHA_SWEEP = (0.9, 0.7, 0.3, 0.1)


@dataclass
class Profile:
    model: str
    tasks: list[str]
    exits: list[int]
    exit_pooling: str
    lr: float
    epochs: dict[str, float]  # per task; "*" for the rest
    max_train_samples: dict[str, int | None] = field(default_factory=dict)
    max_eval_samples: int | None = None
    strategies: list[str] = field(default_factory=lambda: list(ALL_STRATEGIES))
    alpha_sweep_tasks: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    batch_size: int = 32
    max_length: int = 128
    group_by_length: bool = False

    def per_task(self, table: dict, task: str):
        return table.get(task, table.get("*"))


PROFILES = {
    # CPU profiles batch by length: on SST-2, random batches of 32 pad to 3x the real tokens
    "smoke": Profile("tiny-bert", ["rte"], [1, 2, 3], "mean", 1e-3, {"*": 1}, {"*": 256}, max_eval_samples=128,
                     group_by_length=True),
    "quick": Profile("minilm-l6", ["sst2"], [1, 2, 3], "mean", 1e-4, {"*": 1}, {"*": 4000},
                     strategies=["finetune", "joint", "two_stage", "separate_reverse", "separate_reverse_nokd",
                                 "oracle"], group_by_length=True),
    "cpu": Profile("minilm-l6", ["sst2", "mrpc"], [1, 2, 3], "mean", 1e-4, {"sst2": 2, "mrpc": 3},
                   {"sst2": 8000}, alpha_sweep_tasks=["sst2"], group_by_length=True),
    "paper": Profile("bert-base-uncased", ["rte", "mrpc", "sst2", "qnli", "qqp", "mnli"], [2, 4, 6], "cls", 2e-5,
                     {"*": 3}, alpha_sweep_tasks=["rte", "mrpc"], seeds=[0, 1, 2]),
}
