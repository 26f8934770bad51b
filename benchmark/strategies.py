"""The strategy registry: each multi-exit training strategy is a short list of stages.

A strategy entry says where training starts (the pretrained encoder, or the fine-tuned
one, which is computed once and cached) and which stages follow; `training.train_stage`
runs every stage the same way. DESIGN.md section 3 defines each entry.

Names may carry parameters: `separate_reverse@alpha=0.3,tau=2` (see `resolve`).
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from torch import nn

from benchmark.model import ExitOutputs, MultiExitModel
from benchmark.training import Stage, StepInputs, train_stage

logger = logging.getLogger(__name__)


class StrategyError(ValueError):
    """Unknown strategy or bad strategy parameter: one line naming it."""


# --- losses --------------------------------------------------------------------------------------


def ce_at(layers, weights=None):
    """Weighted sum of the exits' cross-entropies (equal weights by default)."""

    def loss(s: StepInputs):
        parts = {f"ce@{e}": F.cross_entropy(s.outputs.at(e).float(), s.labels) for e in layers}
        w = weights or [1.0] * len(layers)
        return sum(wi * p for wi, p in zip(w, parts.values())), parts

    return loss


def kd_term(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)), mean over the batch."""
    return tau**2 * F.kl_div(
        F.log_softmax(student.float() / tau, -1), F.log_softmax(teacher.float() / tau, -1),
        reduction="batchmean", log_target=True,
    )


def alternating_loss(all_exits, main):
    """BERxiT: even steps train the main exit alone, odd steps all exits."""
    main_only, every = ce_at([main]), ce_at(all_exits)
    return lambda s: (main_only if s.step % 2 == 0 else every)(s)


def self_distill_loss(exits, main, tau):
    """FastBERT: intermediate exits match the (frozen) main exit's soft predictions, no labels."""

    def loss(s: StepInputs):
        target = s.teacher.at(main)
        parts = {f"kd@{e}": kd_term(s.outputs.at(e), target, tau) for e in exits}
        return sum(parts.values()), parts

    return loss


def separate_reverse_loss(e, deeper, alpha, tau, kd_target):
    """(1 - alpha) CE(y, S_e) + alpha * mean_j over deeper trained exits of the KD term(s)."""

    def loss(s: StepInputs):
        parts = {f"ce@{e}": F.cross_entropy(s.outputs.at(e).float(), s.labels)}
        if alpha == 0:
            return parts[f"ce@{e}"], parts
        for j in deeper:
            if kd_target in ("logits", "both"):
                parts[f"kd@{j}"] = kd_term(s.outputs.at(j), s.teacher.at(j), tau)
            if kd_target in ("hidden", "both"):
                h_s = s.outputs.hidden[s.outputs.layers.index(j)]
                h_t = s.teacher.hidden[s.teacher.layers.index(j)]
                parts[f"mse@{j}"] = F.mse_loss(h_s.float(), h_t.float())
        kd = sum(v for k, v in parts.items() if not k.startswith("ce")) / len(deeper)
        return (1 - alpha) * parts[f"ce@{e}"] + alpha * kd, parts

    return loss


# --- which modules train ---------------------------------------------------------------------------


def everything(m: MultiExitModel):
    return [m]


def layers_between(m: MultiExitModel, lo: int, hi: int, with_embeddings: bool):
    """Encoder layers (lo, hi], 1-based, plus the embeddings when asked."""
    return ([m.embeddings()] if with_embeddings else []) + list(m.layers()[lo:hi])


def intermediate_heads(m: MultiExitModel):
    return list(m.heads.values())


# --- the registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Strategy:
    name: str
    build: Callable[..., list[Stage]]  # (exits, L, **params) -> stages
    start: str = "pretrained"  # or "finetuned": begins from the cached fine-tuned model
    params: dict = field(default_factory=dict)  # parameter defaults, overridable by name@k=v
    description: str = ""


REGISTRY: dict[str, Strategy] = {}


def register(name, start="pretrained", **params):
    def wrap(build):
        REGISTRY[name] = Strategy(name, build, start, params, (build.__doc__ or "").strip())
        return build

    return wrap


def finetune_stage(L):
    return Stage("finetune", everything, ce_at([L]))


@register("finetune")
def finetune(exits, L):
    """Backbone + main exit trained end to end with CE: the shared first stage and the reference."""
    return [finetune_stage(L)]


@register("joint")
def joint(exits, L):
    """All exits and the backbone at once, sum of exit CEs."""
    return [Stage("joint", everything, ce_at([*exits, L]))]


@register("weighted")
def weighted(exits, L):
    """As joint, exit j's CE weighted by its layer index (PABEE)."""
    layers = [*exits, L]
    return [Stage("weighted", everything, ce_at(layers, [e / sum(layers) for e in layers]))]


@register("alternating")
def alternating(exits, L):
    """Steps alternate between the main exit's CE and the sum of all exit CEs (BERxiT)."""
    return [Stage("alternating", everything, alternating_loss([*exits, L], L))]


@register("two_stage", start="finetuned")
def two_stage(exits, L):
    """Fine-tune; then backbone and main head frozen, intermediate heads trained on their CE (DeeBERT)."""
    return [Stage("heads", intermediate_heads, ce_at(exits), max_layer=max(exits))]


def _check_tau(tau):
    if not tau > 0:
        raise StrategyError(f"tau={tau} must be positive")


@register("self_distill", start="finetuned", tau=1.0)
def self_distill(exits, L, tau):
    """Fine-tune; then backbone frozen, intermediate heads distil the main exit's predictions (FastBERT)."""
    _check_tau(tau)
    return [Stage("distill", intermediate_heads, self_distill_loss(exits, L, tau), max_layer=max(exits),
                  teacher_exits=(L,))]


@register("branchwise")
def branchwise(exits, L):
    """Shallow to deep: stage k trains layers (e_{k-1}, e_k] + head k, everything below frozen."""
    bounds = [0, *exits, L]
    return [
        Stage(f"branch@{hi}", lambda m, lo=lo, hi=hi: layers_between(m, lo, hi, lo == 0) + [m.head(hi)],
              ce_at([hi]), max_layer=hi)
        for lo, hi in itertools.pairwise(bounds)
    ]


@register("separate")
def separate(exits, L):
    """Shallow to deep: stage k trains layers 1..e_k + head k on CE_k, nothing frozen from before."""
    return [
        Stage(f"separate@{e}", lambda m, e=e: layers_between(m, 0, e, True) + [m.head(e)], ce_at([e]), max_layer=e)
        for e in [*exits, L]
    ]


@register("sweet")
def sweet(exits, L):
    """Joint, but block (e_{k-1}, e_k] gets gradient only from exit k's loss (SWEET)."""
    return [Stage("sweet", everything, ce_at([*exits, L]), detach_between_exits=True)]


def _copy_main_head(e):
    def prepare(m: MultiExitModel):
        m.heads[str(e)].load_state_dict(copy.deepcopy(m.main_head.state_dict()))

    return prepare


@register("separate_reverse", start="finetuned", alpha=0.5, tau=1.0, init="random", kd="logits")
def separate_reverse(exits, L, alpha, tau, init, kd):
    """Fine-tune; then exits deep to shallow, each stage distilling the deeper exits from the previous model."""
    if not 0 <= alpha <= 1:
        raise StrategyError(f"alpha={alpha} must lie in [0, 1]")
    _check_tau(tau)
    if init not in ("random", "copy_main"):
        raise StrategyError(f"init='{init}' unknown: choose random or copy_main")
    if kd not in ("logits", "hidden", "both"):
        raise StrategyError(f"kd='{kd}' unknown: choose logits, hidden or both")
    stages = []
    for e in reversed(exits):
        deeper = tuple(d for d in [*exits, L] if d > e)
        kd_on = alpha > 0
        stages.append(Stage(
            f"reverse@{e}",
            lambda m, e=e: layers_between(m, 0, e, False) + [m.head(e)],
            separate_reverse_loss(e, deeper, alpha, tau, kd),
            # without KD nothing above e is read: skip those layers
            max_layer=None if kd_on else e,
            teacher_exits=deeper if kd_on else (),
            teacher_hidden=kd_on and kd in ("hidden", "both"),
            prepare=_copy_main_head(e) if init == "copy_main" else None,
        ))
    return stages


REGISTRY["separate_reverse_nokd"] = Strategy(
    "separate_reverse_nokd", separate_reverse, "finetuned", {**REGISTRY["separate_reverse"].params, "alpha": 0.0},
    "Separate Reverse without distillation (alpha = 0): the ablation.",
)


@register("oracle", start="oracle")
def oracle(exits, L):
    """An independent model truncated to e_k layers for every exit, each fine-tuned on its own."""
    return [finetune_stage(e) for e in exits]  # the full-depth member is the cached fine-tuned model


# --- names with parameters ------------------------------------------------------------------------


def _parse_value(text: str, default):
    if isinstance(default, float):
        return float(text)
    if isinstance(default, int):
        return int(text)
    return text


def resolve(name: str) -> tuple[Strategy, dict]:
    """'separate_reverse@alpha=0.3,tau=2' -> (entry, {alpha: 0.3, tau: 2.0, ...defaults})."""
    base, _, arg_text = name.partition("@")
    if base not in REGISTRY:
        raise StrategyError(f"unknown strategy '{base}': choose from {', '.join(REGISTRY)}")
    strategy = REGISTRY[base]
    params = dict(strategy.params)
    for item in filter(None, arg_text.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in params:
            raise StrategyError(
                f"bad parameter '{item}' for {base}: it takes {', '.join(params) or 'no parameters'} as key=value"
            )
        try:
            params[key] = _parse_value(value, params[key])
        except ValueError:
            raise StrategyError(f"bad value '{value}' for {base} parameter {key}") from None
    strategy.build((1,), 2, **params)  # the entry's own checks of its values, before anything trains
    return strategy, params


def canonical_name(name: str) -> str:
    """A stable name for storage: parameters that differ from the defaults, in a fixed order."""
    strategy, params = resolve(name)
    changed = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
               for k, v in params.items() if v != strategy.params[k]]
    return strategy.name + ("@" + ",".join(changed) if changed else "")


def stages_for(name: str, exits, L) -> list[Stage]:
    strategy, params = resolve(name)
    return strategy.build(tuple(exits), L, **params)


# --- oracle cascade --------------------------------------------------------------------------------


class OracleCascade(nn.Module):
    """Oracle members evaluated together: exit k is member k's main exit.

    No computation is shared, so in an early-exit sweep a sample leaving at exit k has paid
    e_1 + ... + e_k layers (`layers_paid`).
    """

    def __init__(self, members: list[MultiExitModel]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.exit_layers = [m.num_layers for m in members]
        self.num_layers = self.exit_layers[-1]

    @property
    def layers_paid(self) -> list[int]:
        return [sum(self.exit_layers[: k + 1]) for k in range(len(self.exit_layers))]

    def forward(self, input_ids, attention_mask, token_type_ids=None, max_layer=None, **_) -> ExitOutputs:
        logits = [m(input_ids, attention_mask, token_type_ids).logits[-1] for m in self.members]
        return ExitOutputs(list(self.exit_layers), logits)


# --- running an entry -----------------------------------------------------------------------------


@dataclass
class TrainContext:
    """Everything a strategy needs to train one model for one (task, model, seed)."""

    model_name_or_path: str
    num_labels: int
    exits: tuple[int, ...]
    pooling: str
    train_dataset: object
    collator: object
    args: object  # training.TrainingArguments
    finetune_cache: Path | None = None  # folder of the cached fine-tuned model for these settings
    timings: dict = field(default_factory=dict)


@contextmanager
def _timed(ctx: TrainContext, name: str):
    start = time.perf_counter()
    yield
    ctx.timings[name] = ctx.timings.get(name, 0.0) + time.perf_counter() - start


def _finetune(ctx: TrainContext, num_layers: int | None = None) -> MultiExitModel:
    set_seed(ctx.args.seed)  # a checkpoint without a classifier gets its head from the seed, not from history
    model = MultiExitModel.from_backbone(ctx.model_name_or_path, ctx.num_labels, (), ctx.pooling, num_layers)
    return train_stage(model, finetune_stage(model.num_layers), ctx.train_dataset, ctx.collator, ctx.args)


def finetuned_model(ctx: TrainContext) -> MultiExitModel:
    """The fine-tuned backbone + main exit, trained once per settings and reused from disk."""
    path = ctx.finetune_cache
    if path is not None and (path / "config.json").exists():
        logger.info("reusing fine-tuned model from %s", path)
        ctx.timings.setdefault("finetune", 0.0)
        return MultiExitModel.from_pretrained(path)
    with _timed(ctx, "finetune"):
        model = _finetune(ctx)
    if path is not None:
        # written to a temporary folder, then renamed: a killed run leaves no half-saved model
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        model.save_pretrained(tmp)
        ctx.collator.tokenizer.save_pretrained(tmp)  # a self-contained folder: without it AutoTokenizer guesses
        try:
            tmp.rename(path)
        except OSError:  # another process finished it first
            shutil.rmtree(tmp, ignore_errors=True)
    return model


def train_strategy(name: str, ctx: TrainContext, on_step=None):
    """Train the strategy `name`; returns a MultiExitModel, or an OracleCascade for `oracle`."""
    strategy, params = resolve(name)
    if strategy.start == "oracle":
        members = []
        for e in ctx.exits:
            with _timed(ctx, f"oracle@{e}"):
                members.append(_finetune(ctx, num_layers=e))
        return OracleCascade([*members, finetuned_model(ctx)])
    if strategy.name == "finetune":
        return finetuned_model(ctx)
    if strategy.start == "finetuned":
        base = finetuned_model(ctx)
        set_seed(ctx.args.seed)  # new heads are initialised the same way whatever ran before
        model = MultiExitModel(base.backbone, ctx.exits, ctx.pooling)
    else:
        set_seed(ctx.args.seed)
        model = MultiExitModel.from_backbone(ctx.model_name_or_path, ctx.num_labels, ctx.exits, ctx.pooling)
    for stage in strategy.build(ctx.exits, model.num_layers, **params):
        with _timed(ctx, stage.name):
            model = train_stage(model, stage, ctx.train_dataset, ctx.collator, ctx.args, on_step=on_step)
    return model
