"""Shared look of the results: strategy order, colours, markers, labels.

Every figure and table sorts strategies with `sort_key` and colours them with
`color`, so a strategy has the same colour and the same place in every legend
and table. Strategy variants are named `<base>@key=value,key=value`
(e.g. `separate_reverse@alpha=0.3`); their balance coefficient comes from the
name (`alpha_of`). Pure Python + matplotlib colours: no model code here.
"""

from __future__ import annotations

import hashlib
import math

from matplotlib import colormaps, colors

# Canonical order: references first, then the existing strategies roughly by
# family (joint-style, then staged), the method last so it is easy to find.
STRATEGY_ORDER = [
    "finetune",
    "oracle",
    "joint",
    "weighted",
    "alternating",
    "sweet",
    "two_stage",
    "self_distill",
    "branchwise",
    "separate",
    "separate_reverse",
    "separate_reverse_nokd",
]

# tab10 hues for the existing strategies; black and grey for the two references
# (oracle is drawn dashed black everywhere); red for the method.
STRATEGY_COLORS = {
    "finetune": "#7f7f7f",
    "oracle": "#000000",
    "joint": "#1f77b4",
    "weighted": "#17becf",
    "alternating": "#bcbd22",
    "sweet": "#e377c2",
    "two_stage": "#ff7f0e",
    "self_distill": "#8c564b",
    "branchwise": "#2ca02c",
    "separate": "#9467bd",
    "separate_reverse": "#d62728",
    "separate_reverse_nokd": "#f4a3a3",
}

STRATEGY_MARKERS = {
    "finetune": "*",
    "oracle": "X",
    "joint": "o",
    "weighted": "v",
    "alternating": "^",
    "sweet": "<",
    "two_stage": "s",
    "self_distill": "D",
    "branchwise": "P",
    "separate": "p",
    "separate_reverse": "o",
    "separate_reverse_nokd": "o",
}

STRATEGY_LABELS = {
    "finetune": "Fine-tune",
    "oracle": "Oracle",
    "joint": "Joint",
    "weighted": "Weighted",
    "alternating": "Alternating",
    "sweet": "SWEET",
    "two_stage": "Two-stage",
    "self_distill": "Self-distill",
    "branchwise": "Branchwise",
    "separate": "Separate",
    "separate_reverse": "Separate Reverse",
    "separate_reverse_nokd": "Separate Reverse (no KD)",
}

TASK_LABELS = {
    "cola": "CoLA",
    "sst2": "SST-2",
    "mrpc": "MRPC",
    "qqp": "QQP",
    "mnli": "MNLI",
    "qnli": "QNLI",
    "rte": "RTE",
    "wnli": "WNLI",
}

# Balance coefficient of the two named members of the Separate Reverse family.
DEFAULT_ALPHA = {"separate_reverse": 0.5, "separate_reverse_nokd": 0.0}

# Distinct from the canonical colours above; a variant that is not a plain
# alpha sweep point gets one of these, chosen by a stable hash of its name.
_FALLBACK_COLORS = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#31a354", "#756bb1"]


def base_name(strategy: str) -> str:
    """`separate_reverse@alpha=0.3` -> `separate_reverse`."""
    return strategy.split("@", 1)[0]


def variant_params(strategy: str) -> dict[str, str]:
    """`x@alpha=0.9,init=copy_main` -> {'alpha': '0.9', 'init': 'copy_main'}."""
    if "@" not in strategy:
        return {}
    params = {}
    for item in strategy.split("@", 1)[1].split(","):
        key, _, value = item.partition("=")
        if key.strip():
            params[key.strip()] = value.strip()
    return params


def alpha_of(strategy: str) -> float | None:
    """Balance coefficient of a Separate Reverse run, None for other strategies."""
    base = base_name(strategy)
    if base not in DEFAULT_ALPHA:
        return None
    params = variant_params(strategy)
    return float(params["alpha"]) if "alpha" in params else DEFAULT_ALPHA[base]


def is_reference(strategy: str) -> bool:
    """Oracle and fine-tune are references, never the 'best strategy'."""
    return base_name(strategy) in ("oracle", "finetune")


def sort_key(strategy: str) -> tuple:
    """Canonical order; variants right after their base, by alpha then name; unknown names last."""
    base = base_name(strategy)
    rank = STRATEGY_ORDER.index(base) if base in STRATEGY_ORDER else len(STRATEGY_ORDER)
    alpha = alpha_of(strategy)
    return (rank, base if rank == len(STRATEGY_ORDER) else "", "@" in strategy,
            math.inf if alpha is None else alpha, strategy)


def ordered(strategies) -> list[str]:
    return sorted(set(strategies), key=sort_key)


def _stable_index(name: str, n: int) -> int:
    # hashlib, not hash(): Python's str hash changes between processes.
    return int(hashlib.md5(name.encode()).hexdigest(), 16) % n


def color(strategy: str) -> str:
    """Hex colour of a strategy, the same in every figure."""
    if strategy in STRATEGY_COLORS:
        return STRATEGY_COLORS[strategy]
    params = variant_params(strategy)
    if base_name(strategy) in DEFAULT_ALPHA and set(params) == {"alpha"}:
        # Plain alpha sweep points: a sequential map, so alpha reads as a gradient.
        return colors.to_hex(colormaps["viridis"](0.9 * float(params["alpha"])))
    return _FALLBACK_COLORS[_stable_index(strategy, len(_FALLBACK_COLORS))]


def marker(strategy: str) -> str:
    return STRATEGY_MARKERS.get(base_name(strategy), "o")


def linestyle(strategy: str) -> str:
    """The oracle is the upper reference: dashed wherever it is drawn."""
    return "--" if base_name(strategy) == "oracle" else "-"


# Exit rules, for the figure that compares rules on one strategy.
RULE_COLORS = {"maxprob": "#1b9e77", "entropy": "#d95f02", "patience": "#7570b3"}
RULE_LABELS = {"maxprob": "max prob.", "entropy": "entropy", "patience": "patience"}


def rule_color(rule: str) -> str:
    return RULE_COLORS.get(rule, _FALLBACK_COLORS[_stable_index(rule, len(_FALLBACK_COLORS))])


def label(strategy: str) -> str:
    """Human-readable name for legends and markdown tables."""
    base = base_name(strategy)
    text = STRATEGY_LABELS.get(base, base)
    params = variant_params(strategy)
    if not params:
        return text
    shown = [f"α={v}" if k == "alpha" else f"{k}={v}" for k, v in params.items()]
    return f"{text} ({', '.join(shown)})"


def task_label(task: str) -> str:
    return TASK_LABELS.get(task, task)


def slug(text: str) -> str:
    """File-name-safe form of a task or model name (a hub id may contain '/')."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in str(text)).strip("-")
