"""The one training routine every strategy stage goes through.

A stage (see strategies.py) says which parameters train, which loss, how deep the forward
pass must go and which frozen-teacher outputs the loss reads. This module runs it with
`accelerate` (device placement, DDP, bf16 autocast) and a linear schedule from
`transformers`; nothing here is strategy-specific.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup

from benchmark.model import ExitOutputs, MultiExitModel, freeze_all_but, frozen_copy, trainable_parameters

logger = logging.getLogger(__name__)


@dataclass
class TrainingArguments:
    """Hyper-parameters shared by every stage of every strategy (defaults: HF Trainer's)."""

    learning_rate: float = 1e-4
    num_train_epochs: float = 3.0
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 128
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    group_by_length: bool = False  # batches of similar length waste less padding
    teacher_outputs: str = "cached"  # "cached": once per stage; "per_step": recomputed every step


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run is recorded as failed."""


@dataclass
class StepInputs:
    """What a stage's loss function sees at one step."""

    outputs: ExitOutputs
    labels: torch.Tensor
    teacher: ExitOutputs | None
    step: int


LossFn = Callable[[StepInputs], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class Stage:
    """One training stage: trainable modules, loss, and what the forward pass needs."""

    name: str
    trainable: Callable[[MultiExitModel], list[torch.nn.Module]]
    loss: LossFn
    max_layer: int | None = None  # deepest layer the loss reads (None: all)
    detach_between_exits: bool = False
    teacher_exits: tuple[int, ...] = ()  # exits of a frozen copy of the model the loss reads
    teacher_hidden: bool = False  # the loss also reads the teacher's hidden states (per step only)
    prepare: Callable[[MultiExitModel], None] | None = None  # e.g. initialise the new head
    extra: dict = field(default_factory=dict)


_accelerator: Accelerator | None = None


def get_accelerator() -> Accelerator:
    """One Accelerator per process: DDP across GPUs under `accelerate launch`, bf16 where supported.

    BENCHMARK_MIXED_PRECISION=no|bf16|fp16 overrides the choice (benchmarks compare them).
    """
    global _accelerator
    if _accelerator is None:
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        _accelerator = Accelerator(
            mixed_precision=os.environ.get("BENCHMARK_MIXED_PRECISION") or ("bf16" if bf16 else "no"),
            # a stage freezes most parameters; heads outside the loss get no gradient
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
    return _accelerator


def make_collator(tokenizer):
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=None)


def _model_inputs(batch) -> dict:
    keys = ("input_ids", "attention_mask", "token_type_ids")
    return {k: batch[k] for k in keys if k in batch}


def train_loader(dataset, collator, args: TrainingArguments) -> DataLoader:
    generator = torch.Generator().manual_seed(args.seed)
    if args.group_by_length:
        from transformers.trainer_pt_utils import LengthGroupedSampler

        lengths = [len(x) for x in dataset["input_ids"]]
        sampler = LengthGroupedSampler(args.per_device_train_batch_size, lengths=lengths, generator=generator)
        return DataLoader(dataset, args.per_device_train_batch_size, sampler=sampler, collate_fn=collator)
    return DataLoader(
        dataset, args.per_device_train_batch_size, shuffle=True, generator=generator, collate_fn=collator,
        pin_memory=torch.cuda.is_available(),
    )


def eval_loader(dataset, collator, batch_size: int) -> DataLoader:
    # its own generator: iterating a DataLoader draws a seed, which would shift every later dropout mask
    return DataLoader(dataset, batch_size, shuffle=False, collate_fn=collator, generator=torch.Generator(),
                      pin_memory=torch.cuda.is_available())


@torch.no_grad()
def predict_logits(model, dataset, collator, batch_size: int = 128, max_layer=None) -> torch.Tensor:
    """Logits of every exit for every row, in dataset order: [rows, exits, classes] (float32, CPU)."""
    accelerator = get_accelerator()
    model = model.to(accelerator.device).eval()
    # batches of similar length pad less (3x fewer tokens on SST-2); rows go back to dataset order below
    order = np.argsort([len(x) for x in dataset["input_ids"]], kind="stable")
    chunks = []
    for batch in eval_loader(dataset.select(order), collator, batch_size):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            out = model(**_model_inputs(batch), max_layer=max_layer)
        chunks.append(torch.stack(out.logits, 1).float().cpu())
    logits = torch.empty_like(torch.cat(chunks))
    logits[torch.as_tensor(order)] = torch.cat(chunks)
    return logits


class TeacherOutputs:
    """A frozen copy of the model, queried per batch.

    The teacher is in eval mode, so its outputs for an example never change within a stage:
    in "cached" mode they are computed once, over the whole training set, and looked up by
    example id; "per_step" runs the teacher on every batch (same numbers, more compute).
    """

    def __init__(self, model, stage: Stage, dataset, collator, args: TrainingArguments):
        self.layers = list(stage.teacher_exits)
        self.teacher = frozen_copy(model)
        self.per_step = args.teacher_outputs == "per_step" or stage.teacher_hidden
        self.hidden = stage.teacher_hidden
        if not self.per_step:
            max_layer = max(self.layers)
            logits = predict_logits(self.teacher, dataset, collator, args.per_device_eval_batch_size, max_layer)
            keep = [self.teacher.exit_layers.index(e) for e in self.layers]
            self.logits = logits[:, keep]
            ids = torch.as_tensor(dataset["idx"])
            self.row_of_id = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long)
            self.row_of_id[ids] = torch.arange(len(ids))
            del self.teacher

    def __call__(self, batch) -> ExitOutputs:
        if self.per_step:
            with torch.no_grad():
                out = self.teacher(**_model_inputs(batch), max_layer=max(self.layers), return_hidden=self.hidden)
            keep = [out.layers.index(e) for e in self.layers]
            hidden = [out.hidden[i] for i in keep] if self.hidden else None
            return ExitOutputs(self.layers, [out.logits[i].float() for i in keep], hidden)
        rows = self.row_of_id[batch["idx"].cpu()]
        logits = self.logits[rows].to(batch["input_ids"].device)
        return ExitOutputs(self.layers, list(logits.unbind(1)))


def train_stage(
    model: MultiExitModel,
    stage: Stage,
    train_dataset,
    collator,
    args: TrainingArguments,
    on_step: Callable[[MultiExitModel, dict], None] | None = None,
    max_steps: int | None = None,
) -> MultiExitModel:
    """Train `model` in place for one stage and return it (unwrapped)."""
    accelerator = get_accelerator()
    set_seed(args.seed)  # every stage reproducible on its own, also when resumed from a cached model
    if stage.prepare is not None:
        stage.prepare(model)
    freeze_all_but(model, stage.trainable(model))
    params = trainable_parameters(model)
    logger.info("stage %s: %d trainable parameters", stage.name, sum(p.numel() for p in params))

    teacher = None
    if stage.teacher_exits:
        teacher = TeacherOutputs(model.to(accelerator.device), stage, train_dataset, collator, args)
        if teacher.per_step:
            teacher.teacher.to(accelerator.device)

    loader = train_loader(train_dataset, collator, args)
    steps_per_epoch = len(loader)
    total_steps = max_steps or math.ceil(args.num_train_epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * total_steps), total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()

    step, on_gpu = 0, accelerator.device.type == "cuda"
    nonfinite = torch.zeros((), dtype=torch.bool, device=accelerator.device)
    progress = tqdm(total=total_steps, desc=stage.name, leave=False, disable=not accelerator.is_local_main_process)
    while step < total_steps:
        for batch in loader:
            with accelerator.autocast():
                outputs = model(
                    **_model_inputs(batch),
                    max_layer=stage.max_layer,
                    detach_between_exits=stage.detach_between_exits,
                    return_hidden=stage.teacher_hidden,
                )
                teacher_out = teacher(batch) if teacher is not None else None
                loss, parts = stage.loss(StepInputs(outputs, batch["labels"], teacher_out, step))
            nonfinite |= ~torch.isfinite(loss.detach())
            # reading the flag syncs host and device: every step on CPU (free), every 50 on a GPU
            if (not on_gpu or step % 50 == 0 or step + 1 == total_steps) and nonfinite.item():
                raise TrainingDiverged(f"non-finite loss in stage '{stage.name}' at or before step {step}")
            if on_step is not None:
                on_step(accelerator.unwrap_model(model), parts)
            accelerator.backward(loss)
            if args.max_grad_norm:
                accelerator.clip_grad_norm_(params, args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            progress.update()
            if step >= total_steps:
                break
    progress.close()
    model = accelerator.unwrap_model(model)
    accelerator.free_memory()
    model.requires_grad_(True)
    return model.eval()
