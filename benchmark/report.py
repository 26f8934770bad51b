"""The study's claims checked against stored results: one markdown report, every number computed.

    python -m benchmark.report [--results results] [--out RESULTS/REPORT.md] [--plots plots]

Reads only the collected parquet files and the run.json files (through
`benchmark.tables`); no model is loaded. The report has: the scale of the
runs and their noise; per-exit dev accuracy per task; one section per claim
of the study with its evidence and a verdict decided by the rules below; the
early-exit summary table; links to the figures that exist.

Verdict rules (also written into the report):
- Noise of a mean dev accuracy over seeds (in points): the larger of the
  binomial standard error at that accuracy, sqrt(p(1-p)/n_dev), and the
  sample std over seeds. The std is not divided by sqrt(seeds): with 2-3
  seeds it is itself uncertain, so this errs on the side of "inconclusive".
  A speed-up's sampling noise comes from the spread of the exit layers
  (exit_counts.parquet, delta method), again the seed std when larger.
- The standard error of a difference is sqrt(se1^2 + se2^2) (unpaired, so
  conservative for two models scored on the same dev set).
- Claims of a difference (A beats B) hold when A - B > 2 se_diff, do not hold
  when B - A > 2 se_diff, and are inconclusive in between.
- Claims of closeness (gap within a margin) hold when the point estimate is
  within the margin, do not hold when it exceeds the margin by more than
  2 se, and are inconclusive in between.
- Without any noise estimate (dev size unknown, one seed) a comparison is
  inconclusive.
- "Best / among the best k" claims hold when at most k-1 competitors are not
  significantly below the method, do not hold when k or more are
  significantly above it, and are inconclusive otherwise.
- A claim with several parts (exits, thresholds, strategies) and a claim over
  several tasks: the common verdict when all parts with data agree, else
  "mixed"; parts without data are named and left out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark import style, tables

HOLDS = "holds"
NOT_HOLD = "does not hold"
INCONCLUSIVE = "inconclusive at this noise level"
MIXED = "mixed"
NO_DATA = "no data"
VERDICTS = (HOLDS, NOT_HOLD, INCONCLUSIVE, MIXED, NO_DATA)

Z = 2.0                 # a difference counts when it exceeds Z standard errors
COS_CONFLICT = 0.2      # gradients "conflict" when their cosine is below this (near zero or negative)
MAIN_MARGIN = 1.0       # points: "the main exit within about 1 point of fine-tuning"
RULE, SPLIT = "maxprob", "dev"
SPEEDUP_THRESHOLDS = (0.6, 0.7, 0.8, 0.9)
ALPHA_SPEEDUP_THRESHOLD = 0.8
CURVE_POINTS = 101      # speed-up grid of the accuracy-vs-speed-up comparison
TOLERANCE = 0.01        # early-exit summary: accuracy drop allowed (fraction)

METHOD, NOKD, FINETUNE, ORACLE, JOINT = "separate_reverse", "separate_reverse_nokd", "finetune", "oracle", "joint"
COMPETITORS = list(tables.EXISTING)  # the existing strategies the method is ranked against
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg")

TITLES = {
    1: "Joint training's exit gradients conflict",
    2: "Oracle beats joint training at the intermediate exits",
    3: "Branchwise and Separate lose main-exit accuracy; Two-stage's shallow exit is weak",
    4: "Separate Reverse is best or second-best at the shallowest exit",
    5: "Separate Reverse keeps the main exit within about 1 point of fine-tuning",
    6: "Without distillation (alpha = 0) the main exit drops",
    7: "Separate Reverse keeps higher speed-ups and a higher accuracy-vs-speed-up curve",
    8: "The balance coefficient alpha trades shallow-exit for main-exit accuracy",
}

RULES = {
    1: (f"Mean cosine (over probe steps) between the shallowest exit's gradient and each deeper exit's, on "
        f"the shared parameters. A pair conflicts when its cosine is below {COS_CONFLICT:g} (near zero or "
        f"negative); it does not when the cosine exceeds {COS_CONFLICT:g} by more than {Z:g} SE (SE over steps "
        "from gradient_cosine_steps.parquet when stored, else 0)."),
    2: f"At every intermediate exit: oracle - joint > {Z:g} SE holds, < -{Z:g} SE does not hold.",
    3: (f"Fine-tune's main exit minus Branchwise's and minus Separate's main exit > {Z:g} SE holds (each a "
        f"part); Two-stage's exit-1 accuracy below the median exit-1 accuracy of the other non-oracle "
        f"strategies by more than {Z:g} SE holds (SE: Two-stage's and the others' median SE)."),
    4: ("At the shallowest exit, against the existing strategies (" + ", ".join(COMPETITORS) + "): holds when "
        f"at most one of them is not below Separate Reverse by more than {Z:g} SE; does not hold when two or "
        f"more are above it by more than {Z:g} SE."),
    5: (f"Drop = fine-tune's main exit - Separate Reverse's main exit. Holds when the drop is at most "
        f"{MAIN_MARGIN:g} point; does not hold when it exceeds {MAIN_MARGIN:g} point by more than {Z:g} SE."),
    6: (f"Separate Reverse's main exit - the no-KD main exit, and fine-tune's main exit - the no-KD main "
        f"exit (two parts): > {Z:g} SE holds, < -{Z:g} SE does not hold."),
    7: (f"Rule '{RULE}', {SPLIT} split, layer speed-up. Part (a), at thresholds "
        + ", ".join(f"{t:g}" for t in SPEEDUP_THRESHOLDS)
        + f": Separate Reverse's speed-up above every existing strategy's by more than {Z:g} SE holds, any "
        f"strategy above it by more than {Z:g} SE does not hold. Part (b): the mean accuracy over the speed-up "
        "range every run reaches (area under the accuracy-vs-speed-up curve, linear interpolation, divided by "
        "the range), same rule against every existing strategy."),
    8: (f"Tested reading: a larger alpha keeps the main exit (distillation) and costs shallow-exit accuracy "
        f"(less CE weight). Between the smallest and the largest alpha present: main exit (largest - "
        f"smallest) and shallowest exit (smallest - largest), each > {Z:g} SE holds, < -{Z:g} SE does not "
        f"hold. Speed-up at threshold {ALPHA_SPEEDUP_THRESHOLD:g} is reported, not judged."),
}


# ---------------------------------------------------------------- noise and comparisons

@dataclass(frozen=True)
class Cell:
    """A mean over seeds of one accuracy (or speed-up), with its noise."""
    mean: float
    std: float = math.nan   # sample std over seeds
    seeds: int = 1
    sampling_se: float = math.nan  # binomial (accuracy) or delta-method (speed-up) SE

    @property
    def se(self) -> float:
        values = [v for v in (self.sampling_se, self.std) if not math.isnan(v)]
        return max(values) if values else math.nan


@dataclass(frozen=True)
class Diff:
    a: float
    b: float
    diff: float
    se: float

    @property
    def sign(self) -> int:
        """+1 when a - b > Z se, -1 when b - a > Z se, else 0 (also when the SE is unknown)."""
        if math.isnan(self.se):
            return 0
        return 1 if self.diff > Z * self.se else -1 if self.diff < -Z * self.se else 0

    def numbers(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_diff": self.diff, f"{prefix}_se": self.se}

    def text(self) -> str:
        return f"diff {self.diff:+.1f}, {_se_text(self.se)}"


def _se_text(se: float, decimals: int = 1) -> str:
    return "SE unknown" if math.isnan(se) else f"SE {se:.{decimals}f}"


def compare(a: Cell, b: Cell) -> Diff:
    return Diff(a.mean, b.mean, a.mean - b.mean, math.sqrt(a.se ** 2 + b.se ** 2))


def binomial_se(p: float, n: float) -> float:
    """Standard error of an accuracy p (fraction) measured on n examples, in points."""
    if not n or math.isnan(n) or math.isnan(p):
        return math.nan
    return 100 * math.sqrt(max(p * (1 - p), 0.0) / n)


def difference_verdict(d: Diff) -> str:
    return {1: HOLDS, -1: NOT_HOLD, 0: INCONCLUSIVE}[d.sign]


def closeness_verdict(value: float, margin: float, se: float) -> str:
    """Claim 'value <= margin': holds on the point estimate, fails only beyond margin + Z se."""
    if value <= margin:
        return HOLDS
    if math.isnan(se):  # no noise estimate: a gap beyond the margin cannot be told from noise
        return INCONCLUSIVE
    return NOT_HOLD if value - margin > Z * se else INCONCLUSIVE


def top_k_verdict(diffs: list[Diff], k: int) -> str:
    """diffs = competitor - method. Holds: at most k-1 not significantly below; fails: k or more above."""
    not_below = sum(d.sign != -1 for d in diffs)
    above = sum(d.sign == 1 for d in diffs)
    if not_below <= k - 1:
        return HOLDS
    if above >= k:
        return NOT_HOLD
    return INCONCLUSIVE


def combine(verdicts) -> str:
    """The common verdict of the parts with data, 'mixed' when they differ, 'no data' when none has data."""
    have = [v for v in verdicts if v != NO_DATA]
    if not have:
        return NO_DATA
    return have[0] if len(set(have)) == 1 else MIXED


# ---------------------------------------------------------------- the data behind the claims

Unit = tuple[str, str]  # (task, model)


class Data:
    """Stored results, read once: frames from tables.load_results, accuracy cells with their noise."""

    def __init__(self, results_dir: Path):
        self.results_dir = Path(results_dir)
        self.frames = tables.load_results(self.results_dir)
        acc, runs = self.frames["exit_accuracy"], self.frames["runs"]
        self.acc = acc if acc is not None and not acc.empty else None
        self.runs = runs
        self.n_dev = self._dev_rows()
        self.depth = tables.num_layers(self.acc, runs) if self.acc is not None else {}
        self.summary = None
        self.cells: dict[tuple, Cell] = {}
        if self.acc is not None:
            self.summary = tables.exit_accuracy_summary(self.acc, "accuracy", SPLIT)
            for row in self.summary.itertuples(index=False):
                unit = (row.task, row.model)
                self.cells[(*unit, row.strategy, int(row.exit_layer))] = Cell(
                    row.mean, row.std, int(row.n), binomial_se(row.mean / 100, self.n_dev.get(unit, math.nan)))
        self._sweeps: dict[Unit, pd.DataFrame] | None = None
        self.speedup_se = self._speedup_sampling_se()

    # -------- sizes

    def _dev_rows(self) -> dict[Unit, float]:
        """Dev examples per (task, model): run.json data.dev_rows (most common), else exit_counts sums."""
        n: dict[Unit, float] = {}
        counts = self.frames["exit_counts"]
        if counts is not None and not counts.empty:
            dev = counts[counts["split"] == SPLIT]
            per_run = dev.groupby(["task", "model", "strategy", "seed", "rule", "threshold"])["count"].sum()
            n.update(per_run.groupby(["task", "model"]).max().astype(float).to_dict())
        if self.runs is not None:
            rows = pd.DataFrame({"task": self.runs["task"], "model": self.runs["model"],
                                 "dev_rows": [d.get("dev_rows") for d in self.runs["data"]]}).dropna()
            for (task, model), group in rows.groupby(["task", "model"]):
                n[(task, model)] = float(group["dev_rows"].mode().iloc[0])
        return n

    def units(self) -> list[Unit]:
        if self.summary is None:
            return []
        return sorted(self.summary[["task", "model"]].drop_duplicates().itertuples(index=False, name=None))

    def shallowest(self, unit: Unit) -> int | None:
        layers = [k[3] for k in self.cells if k[:2] == unit and k[3] < self.depth.get(unit, 0)]
        return min(layers) if layers else None

    def cell(self, unit: Unit, strategy: str, layer: int | None) -> Cell | None:
        return None if layer is None else self.cells.get((*unit, strategy, int(layer)))

    def strategies(self, unit: Unit) -> list[str]:
        return style.ordered({k[2] for k in self.cells if k[:2] == unit})

    # -------- early exit

    def sweep(self, unit: Unit) -> pd.DataFrame:
        """The unit's sweep for RULE on SPLIT (empty when there is none)."""
        if self._sweeps is None:
            early = self.frames["early_exit"]
            self._sweeps = {} if early is None or early.empty else {
                (task, model): rows for (task, model), rows in
                early[(early["split"] == SPLIT) & (early["rule"] == RULE)].groupby(["task", "model"])}
        return self._sweeps.get(unit, pd.DataFrame())

    def early_units(self) -> list[Unit]:
        early = self.frames["early_exit"]
        if early is None or early.empty:
            return []
        rows = early[(early["split"] == SPLIT) & (early["rule"] == RULE)]
        return sorted(rows[["task", "model"]].drop_duplicates().itertuples(index=False, name=None))

    def _speedup_sampling_se(self) -> dict[tuple, float]:
        """(task, model, strategy, seed, threshold) -> SE of the layer speed-up from the exit-layer spread.

        S = L / mean(l): SE(S) = S * sd(l) / (sqrt(N) * mean(l)) (delta method). Shared-backbone
        strategies pay the exit layer; the oracle cascade is left out (it is never a competitor).
        """
        counts = self.frames["exit_counts"]
        if counts is None or counts.empty:
            return {}
        rows = counts[(counts["split"] == SPLIT) & (counts["rule"] == RULE) & (counts["strategy"] != ORACLE)]
        wanted = np.array([*SPEEDUP_THRESHOLDS, ALPHA_SPEEDUP_THRESHOLD])
        rows = rows[np.isclose(rows["threshold"].to_numpy(float)[:, None], wanted[None, :], atol=1e-6).any(axis=1)]
        if rows.empty:
            return {}
        keys = ["task", "model", "strategy", "seed", "threshold"]
        c, layer = rows["count"].to_numpy(float), rows["exit_layer"].to_numpy(float)
        sums = (rows.assign(c=c, cl=c * layer, cl2=c * layer ** 2, top=layer).groupby(keys)
                .agg(c=("c", "sum"), cl=("cl", "sum"), cl2=("cl2", "sum"), top=("top", "max")))
        sums = sums[sums["c"] > 0]
        mean = sums["cl"] / sums["c"]
        sd = np.sqrt(np.maximum(sums["cl2"] / sums["c"] - mean ** 2, 0.0))
        depth = [self.depth.get(key[:2]) or top for key, top in zip(sums.index, sums["top"])]
        se = np.asarray(depth, float) / mean * sd / (np.sqrt(sums["c"]) * mean)
        return {(*key[:4], round(float(key[4]), 4)): float(v) for key, v in zip(sums.index, se)}

    def speedup_cell(self, unit: Unit, strategy: str, threshold: float) -> Cell | None:
        sweep = self.sweep(unit)
        if sweep.empty:
            return None
        rows = sweep[(sweep["strategy"] == strategy) & np.isclose(sweep["threshold"], threshold, atol=1e-6)]
        if rows.empty:
            return None
        values = rows.groupby("seed")["speedup_layers"].mean()
        ses = [self.speedup_se[k] for k in ((*unit, strategy, seed, round(float(threshold), 4))
                                            for seed in values.index) if k in self.speedup_se]
        return Cell(float(values.mean()), float(values.std()) if len(values) > 1 else math.nan, len(values),
                    float(np.mean(ses)) if ses else math.nan)


def _fmt_task(unit: Unit, multi_model: bool) -> str:
    return f"{style.task_label(unit[0])} ({unit[1]})" if multi_model else style.task_label(unit[0])


def _row(claim: int, unit: Unit | None, verdict: str, text: str, evidence: dict | None = None,
         parts: dict | None = None) -> dict:
    return {"claim": claim, "title": TITLES[claim], "task": unit[0] if unit else "overall",
            "model": unit[1] if unit else None, "verdict": verdict, "evidence": evidence or {},
            "parts": parts or {}, "text": text}


def _pct(x: float) -> str:
    return f"{x:.1f}"


def _parts_text(parts: dict[str, str]) -> str:
    """'holds at exit 1; inconclusive at exits 2, 3' style summary of part verdicts."""
    by_verdict: dict[str, list[str]] = {}
    for name, verdict in parts.items():
        by_verdict.setdefault(verdict, []).append(name)
    return "; ".join(f"{v}: {', '.join(names)}" for v, names in by_verdict.items())


# ---------------------------------------------------------------- the claims

def claim_gradient_conflict(data: Data) -> tuple[list[dict], str]:
    gc = data.frames["gradient_cosine"]
    if gc is None or gc.empty:
        return [], f"{data.results_dir / 'gradient_cosine.parquet'} is missing (run benchmark.gradients)"
    steps_path = data.results_dir / "gradient_cosine_steps.parquet"
    steps = pd.read_parquet(steps_path) if steps_path.exists() else None
    rows = []
    for unit, group in gc.groupby(["task", "model"]):
        pairs = group[group["exit_i"] != group["exit_j"]].assign(
            lo=lambda f: f[["exit_i", "exit_j"]].min(axis=1), hi=lambda f: f[["exit_i", "exit_j"]].max(axis=1))
        cos = pairs.groupby(["lo", "hi"])["cosine"].mean()
        se = {}
        if steps is not None and {"task", "model", "step"} <= set(steps.columns):
            s = steps[(steps["task"] == unit[0]) & (steps["model"] == unit[1]) & (steps["exit_i"] != steps["exit_j"])]
            s = s.assign(lo=s[["exit_i", "exit_j"]].min(axis=1), hi=s[["exit_i", "exit_j"]].max(axis=1))
            s = s.drop_duplicates(["step", "lo", "hi"])
            se = s.groupby(["lo", "hi"])["cosine"].agg(lambda v: v.std() / math.sqrt(len(v)) if len(v) > 1
                                                       else math.nan).to_dict()
        if cos.empty:
            rows.append(_row(1, unit, NO_DATA, "no pair of distinct exits in gradient_cosine.parquet"))
            continue
        first = int(min(cos.index.get_level_values(0)))
        parts, evidence, shown = {}, {"shallowest_exit": first}, []
        for (lo, hi), value in cos.items():
            if lo != first:
                continue
            s = se.get((lo, hi), math.nan)
            if value < COS_CONFLICT:
                verdict = HOLDS
            elif value - COS_CONFLICT > Z * (0.0 if math.isnan(s) else s):
                verdict = NOT_HOLD
            else:
                verdict = INCONCLUSIVE
            parts[f"exits {lo}-{hi}"] = verdict
            evidence[f"cos_{lo}_{hi}"] = float(value)
            shown.append(f"{lo}-{hi}: {value:.2f}" + ("" if math.isnan(s) else f" (SE {s:.2f})"))
        off = cos.to_numpy()
        evidence["mean_cos_all_pairs"] = float(off.mean())
        verdict = combine(parts.values())
        text = (f"cosine between exit {first} and deeper exits: " + ", ".join(shown)
                + f"; mean over all {len(off)} exit pairs {off.mean():.2f}")
        if len(parts) > 1 and verdict == MIXED:
            text += f" ({_parts_text(parts)})"
        rows.append(_row(1, unit, verdict, text, evidence, parts))
    return rows, ""


def _need(data: Data, unit: Unit, wants: list[tuple[str, int | None, str]]) -> tuple[list[Cell | None], list[str]]:
    """Cells for (strategy, layer, name); the names of those missing."""
    cells, missing = [], []
    for strategy, layer, name in wants:
        cell = data.cell(unit, strategy, layer)
        cells.append(cell)
        if cell is None:
            missing.append(name)
    return cells, missing


def _no_acc(data: Data) -> str:
    return f"{data.results_dir / 'exit_accuracy.parquet'} is missing or has no dev accuracy rows"


def claim_oracle_vs_joint(data: Data) -> tuple[list[dict], str]:
    rows = []
    for unit in data.units():
        depth = data.depth.get(unit, 0)
        exits = sorted({k[3] for k in data.cells if k[:2] == unit and k[2] in (ORACLE, JOINT) and k[3] < depth})
        exits = [e for e in exits if data.cell(unit, ORACLE, e) and data.cell(unit, JOINT, e)]
        if not exits:
            missing = [s for s in (ORACLE, JOINT) if s not in data.strategies(unit)] or ["intermediate exits"]
            rows.append(_row(2, unit, NO_DATA, f"no dev accuracy for {', '.join(missing)}"))
            continue
        parts, evidence, shown = {}, {}, []
        for e in exits:
            o, j = data.cell(unit, ORACLE, e), data.cell(unit, JOINT, e)
            d = compare(o, j)
            parts[f"exit {e}"] = difference_verdict(d)
            evidence.update({f"oracle_exit{e}": o.mean, f"joint_exit{e}": j.mean, **d.numbers(f"exit{e}")})
            shown.append(f"exit {e}: oracle {_pct(o.mean)} vs joint {_pct(j.mean)} ({d.text()})")
        verdict = combine(parts.values())
        text = "; ".join(shown) + (f" — {_parts_text(parts)}" if verdict == MIXED else "")
        rows.append(_row(2, unit, verdict, text, evidence, parts))
    return rows, "" if rows else _no_acc(data)


def _median_cell(cells: list[Cell]) -> Cell:
    return Cell(float(np.median([c.mean for c in cells])), sampling_se=float(np.median([c.se for c in cells])))


def claim_existing_weaknesses(data: Data) -> tuple[list[dict], str]:
    rows = []
    for unit in data.units():
        depth, first = data.depth.get(unit), data.shallowest(unit)
        parts, evidence, shown, missing = {}, {}, [], []
        for strategy in ("branchwise", "separate"):
            (ft, other), miss = _need(data, unit, [(FINETUNE, depth, "finetune"), (strategy, depth, strategy)])
            if miss:
                missing.append(f"{'/'.join(miss)} main exit")
                parts[f"{strategy} main exit"] = NO_DATA
                continue
            d = compare(ft, other)
            parts[f"{strategy} main exit"] = difference_verdict(d)
            evidence.update({"finetune_main": ft.mean, f"{strategy}_main": other.mean,
                             **d.numbers(f"finetune_minus_{strategy}")})
            shown.append(f"main exit: fine-tune {_pct(ft.mean)} vs {style.label(strategy)} "
                         f"{_pct(other.mean)} ({d.text()})")
        two = data.cell(unit, "two_stage", first)
        others = {s: data.cell(unit, s, first) for s in [*COMPETITORS, METHOD] if s != "two_stage"}
        others = {s: c for s, c in others.items() if c is not None}
        if two is None or not others:
            missing.append("two_stage exit 1" if two is None else "other strategies at exit 1")
            parts["two_stage shallow exit"] = NO_DATA
        else:
            median = _median_cell(list(others.values()))
            d = compare(median, two)
            parts["two_stage shallow exit"] = difference_verdict(d)
            evidence.update({f"two_stage_exit{first}": two.mean, f"others_median_exit{first}": median.mean,
                             **d.numbers("others_median_minus_two_stage")})
            listed = ", ".join(f"{style.label(s)} {_pct(c.mean)}" for s, c in others.items())
            shown.append(f"exit {first}: Two-stage {_pct(two.mean)} vs median of the others {_pct(median.mean)} "
                         f"({d.text()}; others: {listed})")
        verdict = combine(parts.values())
        text = "; ".join(shown) if shown else "—"
        if missing:
            text += f"; no data for {', '.join(missing)}"
        if verdict == MIXED:
            text += f" — {_parts_text({k: v for k, v in parts.items() if v != NO_DATA})}"
        rows.append(_row(3, unit, verdict, text, evidence, parts))
    return rows, "" if rows else _no_acc(data)


def claim_shallow_rank(data: Data) -> tuple[list[dict], str]:
    rows = []
    for unit in data.units():
        first = data.shallowest(unit)
        method = data.cell(unit, METHOD, first)
        rivals = {s: data.cell(unit, s, first) for s in COMPETITORS}
        rivals = {s: c for s, c in rivals.items() if c is not None}
        if method is None or len(rivals) < 2:
            why = "separate_reverse at the shallowest exit" if method is None else \
                "at least two existing strategies at the shallowest exit"
            rows.append(_row(4, unit, NO_DATA, f"needs {why}"))
            continue
        diffs = {s: compare(c, method) for s, c in rivals.items()}
        verdict = top_k_verdict(list(diffs.values()), k=2)
        rank = 1 + sum(c.mean > method.mean for c in rivals.values())
        above = [s for s, d in diffs.items() if d.sign == 1]
        not_below = [s for s, d in diffs.items() if d.sign != -1]
        ranked = sorted(rivals.items(), key=lambda kv: -kv[1].mean)
        evidence = {f"{METHOD}_exit{first}": method.mean, "rank": rank, "competitors": len(rivals),
                    "significantly_above": len(above), "not_significantly_below": len(not_below),
                    **{f"{s}_exit{first}": c.mean for s, c in rivals.items()}}
        text = (f"exit {first}: Separate Reverse {_pct(method.mean)} ({_se_text(method.se)}), rank {rank} of "
                f"{len(rivals) + 1} by mean; " + ", ".join(f"{style.label(s)} {_pct(c.mean)}" for s, c in ranked)
                + f". Significantly above it: {', '.join(map(style.label, above)) or 'none'}; "
                f"not significantly below it: {', '.join(map(style.label, not_below)) or 'none'}")
        rows.append(_row(4, unit, verdict, text, evidence))
    return rows, "" if rows else _no_acc(data)


def claim_main_exit_kept(data: Data) -> tuple[list[dict], str]:
    rows = []
    for unit in data.units():
        depth = data.depth.get(unit)
        (ft, method), missing = _need(data, unit, [(FINETUNE, depth, "finetune"), (METHOD, depth, METHOD)])
        if missing:
            rows.append(_row(5, unit, NO_DATA, f"no main-exit dev accuracy for {', '.join(missing)}"))
            continue
        d = compare(ft, method)
        verdict = closeness_verdict(d.diff, MAIN_MARGIN, d.se)
        evidence = {"finetune_main": ft.mean, f"{METHOD}_main": method.mean, "drop": d.diff, "drop_se": d.se}
        text = (f"main exit (layer {depth}): fine-tune {_pct(ft.mean)}, Separate Reverse {_pct(method.mean)}; "
                f"drop {d.diff:+.1f} points ({_se_text(d.se)}"
                + ("" if math.isnan(d.se) else f"; {Z:g}-SE upper bound {d.diff + Z * d.se:.1f}") + ")")
        rows.append(_row(5, unit, verdict, text, evidence))
    return rows, "" if rows else _no_acc(data)


def claim_kd_ablation(data: Data) -> tuple[list[dict], str]:
    rows = []
    for unit in data.units():
        depth = data.depth.get(unit)
        nokd = data.cell(unit, NOKD, depth)
        if nokd is None:
            rows.append(_row(6, unit, NO_DATA, "no main-exit dev accuracy for separate_reverse_nokd"))
            continue
        parts, evidence, shown = {}, {f"{NOKD}_main": nokd.mean}, []
        for ref in (METHOD, FINETUNE):
            cell = data.cell(unit, ref, depth)
            if cell is None:
                parts[f"vs {ref}"] = NO_DATA
                shown.append(f"no data for {ref}")
                continue
            d = compare(cell, nokd)
            parts[f"vs {ref}"] = difference_verdict(d)
            evidence.update({f"{ref}_main": cell.mean, **d.numbers(f"{ref}_minus_nokd")})
            shown.append(f"{style.label(ref)} {_pct(cell.mean)} vs no KD {_pct(nokd.mean)} ({d.text()})")
        verdict = combine(parts.values())
        text = f"main exit (layer {depth}): " + "; ".join(shown)
        if verdict == MIXED:
            text += f" — {_parts_text({k: v for k, v in parts.items() if v != NO_DATA})}"
        rows.append(_row(6, unit, verdict, text, evidence, parts))
    return rows, "" if rows else _no_acc(data)


def curve_mean_accuracy(sweep: pd.DataFrame, lo: float, hi: float) -> float:
    """Mean accuracy (fraction) of one run's accuracy-vs-speed-up curve over [lo, hi]."""
    curve = sweep.groupby("speedup_layers")["accuracy"].mean().sort_index()
    x, y = curve.index.to_numpy(float), curve.to_numpy(float)
    grid = np.linspace(lo, hi, CURVE_POINTS)
    values = np.interp(grid, x, y)
    return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(grid)) / (hi - lo))  # trapezoid rule


def claim_speedup(data: Data) -> tuple[list[dict], str]:
    rows = []
    units = data.early_units()
    if not units:
        return [], f"{data.results_dir / 'early_exit.parquet'} is missing or has no '{RULE}' {SPLIT} rows"
    for unit in units:
        sweep = data.sweep(unit)
        present = set(sweep["strategy"])
        rivals = [s for s in COMPETITORS if s in present]
        if METHOD not in present or not rivals:
            why = "separate_reverse" if METHOD not in present else "any existing strategy"
            rows.append(_row(7, unit, NO_DATA, f"no '{RULE}' {SPLIT} sweep for {why}"))
            continue
        parts, evidence, shown = {}, {}, []
        # (a) speed-up at medium-to-high thresholds
        for t in SPEEDUP_THRESHOLDS:
            method = data.speedup_cell(unit, METHOD, t)
            cells = {s: data.speedup_cell(unit, s, t) for s in rivals}
            cells = {s: c for s, c in cells.items() if c is not None}
            if method is None or not cells:
                parts[f"speed-up at {t:g}"] = NO_DATA
                continue
            diffs = {s: Diff(c.mean, method.mean, c.mean - method.mean, math.sqrt(c.se ** 2 + method.se ** 2))
                     for s, c in cells.items()}
            parts[f"speed-up at {t:g}"] = top_k_verdict(list(diffs.values()), k=1)
            best = max(cells, key=lambda s: cells[s].mean)
            evidence.update({f"speedup_{METHOD}_t{t:g}": method.mean, f"speedup_best_other_t{t:g}": cells[best].mean})
            shown.append(f"t={t:g}: {method.mean:.2f}× vs best other {cells[best].mean:.2f}× "
                         f"({style.label(best)}, {_se_text(diffs[best].se, 2)} of the difference)")
        # (b) accuracy over the common speed-up range
        runs = {(s, seed): g for (s, seed), g in sweep.groupby(["strategy", "seed"]) if s in [METHOD, *rivals]}
        lo = max(g["speedup_layers"].min() for g in runs.values())
        hi = min(g["speedup_layers"].max() for g in runs.values())
        if hi - lo < 1e-6:
            parts["curve"] = NO_DATA
            shown.append("no common speed-up range for the curves")
        else:
            n = data.n_dev.get(unit, math.nan)
            curve: dict[str, Cell] = {}
            for strategy in [METHOD, *rivals]:
                values = [100 * curve_mean_accuracy(g, lo, hi) for (s, _), g in runs.items() if s == strategy]
                if values:
                    mean = float(np.mean(values))
                    curve[strategy] = Cell(mean, float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
                                           len(values), binomial_se(mean / 100, n))
            method = curve[METHOD]
            others = {s: c for s, c in curve.items() if s != METHOD}
            parts["curve"] = top_k_verdict([compare(c, method) for c in others.values()], k=1)
            best = max(others, key=lambda s: others[s].mean)
            evidence.update({"curve_lo": lo, "curve_hi": hi, f"curve_{METHOD}": method.mean,
                             **{f"curve_{s}": c.mean for s, c in others.items()}})
            shown.append(f"mean accuracy over speed-ups {lo:.2f}–{hi:.2f}×: Separate Reverse {_pct(method.mean)} "
                         f"vs best other {_pct(others[best].mean)} ({style.label(best)}; "
                         f"{compare(method, others[best]).text()})")
        verdict = combine(parts.values())
        text = "; ".join(shown)
        if verdict == MIXED:
            text += f" — {_parts_text({k: v for k, v in parts.items() if v != NO_DATA})}"
        rows.append(_row(7, unit, verdict, text, evidence, parts))
    return rows, ""


def claim_alpha(data: Data) -> tuple[list[dict], str]:
    rows = []
    for unit in data.units():
        depth, first = data.depth.get(unit), data.shallowest(unit)
        family: dict[float, str] = {}
        for strategy in data.strategies(unit):  # canonical order: the named member wins a tie on alpha
            alpha = style.alpha_of(strategy)
            if alpha is not None and data.cell(unit, strategy, depth) and data.cell(unit, strategy, first):
                family.setdefault(alpha, strategy)
        if len(family) < 2:
            have = ", ".join(f"alpha={a:g}" for a in sorted(family)) or "none"
            rows.append(_row(8, unit, NO_DATA, f"needs two or more alpha values with main and shallow exits "
                                               f"(present: {have})"))
            continue
        alphas = sorted(family)
        lines, evidence = [], {}
        for a in alphas:
            s = family[a]
            main, shallow = data.cell(unit, s, depth), data.cell(unit, s, first)
            speed = data.speedup_cell(unit, s, ALPHA_SPEEDUP_THRESHOLD)
            evidence.update({f"alpha{a:g}_main": main.mean, f"alpha{a:g}_exit{first}": shallow.mean})
            line = f"α={a:g}: main {_pct(main.mean)}, exit {first} {_pct(shallow.mean)}"
            if speed is not None:
                evidence[f"alpha{a:g}_speedup"] = speed.mean
                line += f", speed-up at {ALPHA_SPEEDUP_THRESHOLD:g} {speed.mean:.2f}×"
            lines.append(line)
        lo, hi = family[alphas[0]], family[alphas[-1]]
        d_main = compare(data.cell(unit, hi, depth), data.cell(unit, lo, depth))
        d_shallow = compare(data.cell(unit, lo, first), data.cell(unit, hi, first))
        parts = {"main exit": difference_verdict(d_main), "shallow exit": difference_verdict(d_shallow)}
        evidence.update({**d_main.numbers("main_hi_minus_lo"), **d_shallow.numbers("shallow_lo_minus_hi")})
        verdict = combine(parts.values())
        text = ("; ".join(lines) + f". α={alphas[-1]:g} vs α={alphas[0]:g}: main exit {d_main.text()}; "
                f"exit {first} (α={alphas[0]:g} minus α={alphas[-1]:g}) {d_shallow.text()}")
        if verdict == MIXED:
            text += f" — {_parts_text(parts)}"
        rows.append(_row(8, unit, verdict, text, evidence, parts))
    return rows, "" if rows else _no_acc(data)


CLAIMS: dict[int, Callable[[Data], tuple[list[dict], str]]] = {
    1: claim_gradient_conflict, 2: claim_oracle_vs_joint, 3: claim_existing_weaknesses, 4: claim_shallow_rank,
    5: claim_main_exit_kept, 6: claim_kd_ablation, 7: claim_speedup, 8: claim_alpha,
}


def _overall(claim: int, rows: list[dict], why: str, multi_model: bool) -> dict:
    if not rows:
        return _row(claim, None, NO_DATA, why)
    verdict = combine(r["verdict"] for r in rows)
    by_verdict: dict[str, list[str]] = {}
    for r in rows:
        by_verdict.setdefault(r["verdict"], []).append(_fmt_task((r["task"], r["model"]), multi_model))
    text = "; ".join(f"{v} on {', '.join(tasks)}" if v != NO_DATA else f"no data for {', '.join(tasks)}"
                     for v, tasks in by_verdict.items())
    return _row(claim, None, verdict, text, {"tasks": len(rows)})


def _evaluate(data: Data) -> list[dict]:
    multi_model = len({u[1] for u in data.units()} | {u[1] for u in data.early_units()}) > 1
    out = []
    for claim, evaluate in CLAIMS.items():
        rows, why = evaluate(data)
        out += rows
        out.append(_overall(claim, rows, why, multi_model))
    return out


def claims(results_dir: Path) -> list[dict]:
    """One dict per claim and task, plus one 'overall' per claim: claim, title, task, model, verdict,
    evidence (numbers, accuracies in percent), parts (sub-verdicts), text (the evidence sentence)."""
    return _evaluate(Data(results_dir))


# ---------------------------------------------------------------- the report

def _disagreement(row: dict) -> str:
    if row["verdict"] == NOT_HOLD:
        return " The data disagree with the study here."
    if row["verdict"] == MIXED and NOT_HOLD in row["parts"].values():
        return " The data partly disagree with the study here."
    return ""


def _read_wall_times(results_dir: Path) -> tuple[float, int, int]:
    """Sum of wall_time_s over finished runs; counts of finished and of unfinished run.json files."""
    total, finished, other = 0.0, 0, 0
    for path in sorted((Path(results_dir) / "runs").rglob("run.json")):
        if any(part.startswith(".tmp-") for part in path.parts):
            continue
        run = json.loads(path.read_text())
        if run.get("status") == "finished":
            finished += 1
            total += float(run.get("wall_time_s") or 0.0)
        else:
            other += 1
    return total, finished, other


def _values(values) -> str:
    distinct = sorted({v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))},
                      key=lambda v: (str(type(v)), v))
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in distinct) or "–"


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h ({seconds:,.0f} s)"


def section_scale(data: Data) -> str:
    lines = ["## 1. Scale and noise", ""]
    runs = data.runs
    wall, finished, unfinished = _read_wall_times(data.results_dir)
    if runs is None:
        lines.append(f"No finished run.json under {data.results_dir / 'runs'}; sizes below come from the parquet "
                     "files.")
    else:
        configs = list(runs["config"])
        for model in sorted(runs["model"].dropna().unique()):
            mine = [c for c in configs if c.get("model") == model]
            layers = {e for c in mine for e in (c.get("exit_layers") or [*(c.get("exits") or []),
                                                                        c.get("num_layers")]) if e is not None}
            lines.append(f"- Model **{model}**: {_values(c.get('num_layers') for c in mine)} layers, exits at "
                         f"layers {', '.join(str(e) for e in sorted(layers))} (the last is the main exit).")
        lines.append(f"- Tasks: {', '.join(style.task_label(t) for t in sorted(runs['task'].unique()))}; "
                     f"seeds: {_values(runs['seed'])}; "
                     f"{runs['strategy'].nunique()} strategies ({', '.join(style.ordered(runs['strategy']))}).")
        lines.append(f"- Training: lr {_values(c.get('lr') for c in configs)}, epochs "
                     f"{_values(c.get('epochs') for c in configs)}, batch size "
                     f"{_values(c.get('batch_size') for c in configs)}, exit pooling "
                     f"{_values(c.get('exit_pooling') for c in configs)}.")
        lines.append(f"- {finished} finished runs, total wall time {_duration(wall)} (sum of run.json "
                     f"wall_time_s; per run and stage, and whether a run shared the cores: "
                     "tables/training_cost.md)"
                     + (f"; {unfinished} unfinished run.json ignored." if unfinished else "."))
    lines.append("")
    if data.summary is None:
        lines.append(f"No per-exit accuracy: {_no_acc(data)}.")
        return "\n".join(lines)
    table = []
    for unit in data.units():
        task_runs = runs[(runs["task"] == unit[0]) & (runs["model"] == unit[1])] if runs is not None else None
        train = _values(d.get("train_rows") for d in task_runs["data"]) if task_runs is not None else "–"
        majority = math.nan
        if task_runs is not None:
            for d in task_runs["data"]:
                counts, n = d.get("dev_label_counts"), d.get("dev_rows")
                if counts and n:
                    majority = 100 * max(counts.values()) / n
                    break
        ft = data.cell(unit, FINETUNE, data.depth.get(unit))
        level = ft.mean if ft else float(np.mean([c.mean for k, c in data.cells.items()
                                                  if k[:2] == unit and k[3] == data.depth.get(unit)]))
        n = data.n_dev.get(unit, math.nan)
        stds = [c.std for k, c in data.cells.items() if k[:2] == unit and not math.isnan(c.std)]
        seeds = sorted({c.seeds for k, c in data.cells.items() if k[:2] == unit})
        table.append({
            "task": style.task_label(unit[0]), "model": unit[1], "dev rows": f"{n:.0f}" if n == n else "–",
            "train rows": train, "majority class %": f"{majority:.1f}" if majority == majority else "–",
            "main-exit accuracy %": f"{level:.1f}" + ("" if ft else " (mean of strategies)"),
            "binomial SE (points)": f"{binomial_se(level / 100, n):.2f}" if n == n else "–",
            "seeds per cell": "-".join(str(s) for s in (seeds[0], seeds[-1])) if len(seeds) > 1 else str(seeds[0]),
            "seed std, median / max (points)": (f"{np.median(stds):.2f} / {np.max(stds):.2f}" if stds else
                                                "– (one seed)"),
        })
        if majority == majority and ft and ft.mean - majority <= Z * ft.se:
            table[-1]["main-exit accuracy %"] += " (at chance)"
    lines += ["Noise per task: the binomial standard error of one dev accuracy at the fine-tuned main exit's "
              "level, sqrt(p(1-p)/n), and the sample std over seeds of the per-exit accuracies (all strategies and "
              "exits). A task marked 'at chance' has a fine-tuned main exit within "
              f"{Z:g} SE of the majority class: its accuracy claims carry little information.", "",
              pd.DataFrame(table).to_markdown(index=False, tablefmt="github", disable_numparse=True)]
    return "\n".join(lines)


def section_accuracy(data: Data) -> str:
    lines = ["## 2. Per-exit dev accuracy", ""]
    if data.summary is None:
        return "\n".join(lines + [f"No data: {_no_acc(data)}."])
    lines.append("Dev accuracy (%) per exit layer, mean ± sample std over seeds; bold: best strategy other than "
                 "oracle and fine-tune at that exit.")
    for unit in data.units():
        rows = data.summary[(data.summary["task"] == unit[0]) & (data.summary["model"] == unit[1])]
        layers = sorted(rows["exit_layer"].unique())
        wide = pd.DataFrame({"strategy": style.ordered(rows["strategy"])})
        for layer in layers:
            at = rows[rows["exit_layer"] == layer].set_index("strategy")
            name = f"exit {layer}" + (" (main)" if layer == data.depth.get(unit) else "")
            wide[f"{name}_mean"] = wide["strategy"].map(at["mean"])
            wide[f"{name}_std"] = wide["strategy"].map(at["std"])
        wide.attrs["bold_best"] = True
        seeds = rows["n"]
        lines += ["", f"### {style.task_label(unit[0])} ({unit[1]}; seeds per cell: "
                      f"{seeds.min()}" + (f"-{seeds.max()}" if seeds.max() != seeds.min() else "") + ")", "",
                  tables.to_markdown(wide)]
    return "\n".join(lines)


def section_claims(rows: list[dict], multi_model: bool) -> str:
    lines = ["## 3. The study's claims", "", "### Verdict rules", "",
             "- Noise of a mean dev accuracy: the larger of the binomial SE at that accuracy, sqrt(p(1-p)/n_dev), "
             "and the sample std over seeds (not divided by sqrt(seeds): few seeds). Speed-ups: the delta-method SE "
             "from the spread of exit layers (exit_counts.parquet), or the seed std when larger.",
             "- SE of a difference: sqrt(se1² + se2²) (unpaired: conservative for two models on the same dev set).",
             f"- A claimed difference holds when it exceeds {Z:g} SE in the claimed direction, does not hold when it "
             f"exceeds {Z:g} SE in the other, and is inconclusive at this noise level otherwise.",
             f"- A claimed closeness holds when the point estimate is within the margin and does not hold when it "
             f"exceeds the margin by more than {Z:g} SE; inconclusive in between.",
             "- 'Best, or among the best k': holds when at most k-1 competitors are not significantly below the "
             "method, does not hold when k or more are significantly above it; inconclusive otherwise.",
             "- Several parts (exits, thresholds, strategies) or several tasks: the common verdict when all with "
             "data agree, 'mixed' otherwise; parts or tasks without data are named and left out.",
             "- Without any noise estimate (dev size unknown and a single seed) a comparison is inconclusive.",
             "", "### Summary", ""]
    overall = {r["claim"]: r for r in rows if r["task"] == "overall"}
    summary = [{"claim": f"{c}. {TITLES[c]}", "verdict": overall[c]["verdict"], "per task": overall[c]["text"]}
               for c in sorted(overall)]
    lines.append(pd.DataFrame(summary).to_markdown(index=False, tablefmt="github", disable_numparse=True))
    against = [r for r in rows if r["task"] != "overall" and _disagreement(r)]
    lines += ["", "**Where the data disagree with the study:** " + (
        "; ".join(f"claim {r['claim']} on {_fmt_task((r['task'], r['model']), multi_model)} ({r['verdict']})"
                  for r in against) if against else "nowhere (no claim has a part that does not hold).")]
    for c in sorted(overall):
        lines += ["", f"### Claim {c}: {TITLES[c]}", "", f"Rule: {RULES[c]}", ""]
        for r in rows:
            if r["claim"] == c and r["task"] != "overall":
                lines.append(f"- {_fmt_task((r['task'], r['model']), multi_model)}: **{r['verdict']}**. "
                             f"{r['text']}.{_disagreement(r)}")
        o = overall[c]
        lines.append(f"- Overall: **{o['verdict']}** ({o['text']}).")
    return "\n".join(lines)


def section_early_exit(data: Data) -> str:
    lines = ["## 4. Early-exit summary", ""]
    built = tables.build_tables(data.results_dir, rule=RULE, tolerance=TOLERANCE, log=lambda _: None)
    table = built.get("speedup_summary")
    if table is None:
        lines.append(f"No data: needs exit_accuracy.parquet and early_exit.parquet with '{RULE}' rows.")
    else:
        keep = ["task", "model", "strategy", "speedup_layers_mean", "speedup_layers_std", "speedup_cost_mean",
                "speedup_cost_std", "dev_accuracy_mean", "dev_accuracy_std", "dev_reference_accuracy_mean",
                "dev_reference_accuracy_std", "seeds_within", "seeds", "threshold_chosen_on"]
        compact = table[[c for c in keep if c in table.columns]].copy()
        compact.attrs = dict(table.attrs)
        lines += [table.attrs.get("caption", ""), "", tables.to_markdown(compact)]
    latency = data.frames["latency"]
    if latency is not None and not latency.empty:
        lat = latency.copy()
        if "ratio" not in lat.columns:
            lat["ratio"] = lat["measured_speedup"] / lat["layer_speedup"]
        lines += ["", "Measured wall-clock speed-up of real early-exit inference (latency.parquet): "
                  + "; ".join(f"{style.label(s)} on {style.task_label(t)} ({m}), batch {b}: measured / layer "
                              f"speed-up {g['ratio'].mean():.2f} on average over {len(g)} thresholds "
                              f"(measured {g['measured_speedup'].min():.2f}–{g['measured_speedup'].max():.2f}×)"
                              for (t, m, s, b), g in lat.groupby(["task", "model", "strategy", "batch_size"]))
                  + "."]
    return "\n".join(lines)


def section_figures(plots_dir: Path | None, report_dir: Path) -> str:
    lines = ["## 5. Figures", ""]
    files = sorted(p for p in Path(plots_dir).glob("*") if p.suffix in FIGURE_SUFFIXES) \
        if plots_dir is not None and Path(plots_dir).is_dir() else []
    if not files:
        return "\n".join(lines + [f"No figures in {plots_dir} (run `python -m benchmark.plot`)."])
    for path in files:
        rel = Path(os.path.relpath(path.resolve(), Path(report_dir).resolve())).as_posix()
        lines.append(f"- [{path.name}]({rel})")
    return "\n".join(lines)


def build_report(results_dir: Path, plots_dir: Path | None = Path("plots"), out_path: Path | None = None) -> str:
    """The whole report as markdown; figure links are relative to out_path's folder (default results_dir)."""
    results_dir = Path(results_dir)
    data = Data(results_dir)
    rows = _evaluate(data)
    multi_model = len({r["model"] for r in rows if r["model"] is not None}) > 1
    report_dir = Path(out_path).parent if out_path is not None else results_dir
    head = ["# Reproduction report: multi-exit training strategies", "",
            f"Generated by `python -m benchmark.report` from `{results_dir}`. Every number is computed from the "
            "stored results (parquet files and run.json); accuracies are dev-set percentages, differences are in "
            "points."]
    sections = [section_scale(data), section_accuracy(data), section_claims(rows, multi_model),
                section_early_exit(data), section_figures(plots_dir, report_dir)]
    return "\n\n".join(["\n".join(head), *sections]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.report", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder (default results)")
    parser.add_argument("--out", type=Path, default=None, help="report file (default RESULTS/REPORT.md)")
    parser.add_argument("--plots", type=Path, default=Path("plots"), help="figures folder to link (default plots)")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        print(f"results folder {args.results} does not exist")
        return 2
    out = args.out or args.results / "REPORT.md"
    text = build_report(args.results, args.plots, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
