"""Paper figures from stored results; no model is loaded.

    python -m benchmark.plot [--results results] [--out plots] [--format png,pdf]
                             [--rule maxprob] [--strategy NAME] [--tasks sst2 mrpc]

One file per figure, task and model: `<figure>_<task>_<model>[_<rule>].<fmt>`
(the rule suffix only for a rule other than maxprob). Figures (DESIGN
section 5): gradient_cosine, speedup_vs_threshold, exit_shares,
accuracy_vs_speedup, balance_alpha, exit_accuracy, and with --strategy
accuracy_vs_speedup_rules_<strategy>. Curves are the mean over seeds with a
band of ±1 sample std (the legend title says so and gives the seed count).
Strategy figures show the named strategies; `name@...` variants appear in
the balance figure and the tables. Colours and legend order: benchmark.style.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from benchmark import style
from benchmark.tables import load_results

ONE_COLUMN, TWO_COLUMN = 3.4, 7.0  # inches; figures are saved at this size, so font sizes are final
SHARE_THRESHOLD = 0.6


class MissingInput(Exception):
    """The figure's input file exists but has no rows for what this figure needs."""


def _theme() -> None:
    # seaborn 'paper' context: 8.8-9.6 pt text at the saved size.
    sns.set_theme(context="paper", style="whitegrid")
    plt.rcParams.update({"savefig.dpi": 300, "legend.frameon": False, "axes.titlesize": 9})


def _select(frame: pd.DataFrame, task: str, model: str, **equal) -> pd.DataFrame:
    rows = frame[(frame["task"] == task) & (frame["model"] == model)]
    for column, value in equal.items():
        rows = rows[rows[column] == value]
    return rows


def _main_strategies(frame: pd.DataFrame) -> list[str]:
    return [s for s in style.ordered(frame["strategy"]) if "@" not in s]


def _band_note(rows: pd.DataFrame) -> str:
    if "seed" not in rows or rows["seed"].nunique() <= 1:
        return "1 seed"
    # seeds per strategy: a second seed for a few strategies must not read as two seeds for all
    per = rows.groupby("strategy")["seed"].nunique() if "strategy" in rows else rows[["seed"]].nunique()
    low, high = int(per.min()), int(per.max())
    return f"mean ± 1 sd, {low if low == high else f'{low}-{high}'} seeds"


def _mean_sd(rows: pd.DataFrame, by: str, value: str) -> pd.DataFrame:
    return rows.groupby(by)[value].agg(["mean", "std"]).sort_index()


def _line_band(ax, x, mean, sd, color, label, **line) -> None:
    """Mean line with a ±sd band; a lone point gets an error bar instead."""
    x, mean, sd = np.asarray(x, float), np.asarray(mean, float), np.nan_to_num(np.asarray(sd, float))
    if len(x) == 1:
        ax.errorbar(x, mean, yerr=sd, color=color, label=label, capsize=2, ls="none",
                    marker=line.get("marker", "o"), markersize=6)
        return
    ax.plot(x, mean, color=color, label=label, **line)
    if sd.any():
        ax.fill_between(x, mean - sd, mean + sd, color=color, alpha=0.2, linewidth=0)


def _height(n_entries: int) -> float:
    """Tall enough for a one-column legend of n entries beside the axes."""
    return max(2.6, 0.6 + 0.17 * n_entries)


def _legend(fig, title: str, order: list[str] = ()) -> None:
    """One legend for the figure, entries in `order` (canonical strategy order), extras after."""
    entries = {}
    for ax in fig.axes:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(text, handle)
    order = list(order)
    texts = sorted(entries, key=lambda t: order.index(t) if t in order else len(order))  # stable for extras
    # Outside the axes, in the figure's own width: the saved size stays the column width.
    fig.legend([entries[t] for t in texts], texts, loc="outside right upper", title=title)


def _labels(strategies) -> list[str]:
    return [style.label(s) for s in strategies]


def _threshold_label(rule: str) -> str:
    return {"maxprob": "threshold (max prob.)", "entropy": "threshold (entropy)",
            "patience": "patience"}.get(rule, f"threshold ({rule})")


def _title(task: str, model: str, what: str = "") -> str:
    return f"{style.task_label(task)} · {model}" + (f": {what}" if what else "")


# ---------------------------------------------------------------- figures

def cosine_matrix(rows: pd.DataFrame) -> pd.DataFrame:
    """Symmetric exit x exit matrix of mean cosines, diagonal 1, from pairs stored in either order."""
    swapped = rows.rename(columns={"exit_i": "exit_j", "exit_j": "exit_i"})
    both = pd.concat([rows, swapped])  # the file may hold each pair once, in either order
    matrix = both.groupby(["exit_i", "exit_j"])["cosine"].mean().unstack()
    layers = sorted(set(matrix.index) | set(matrix.columns))
    matrix = matrix.reindex(index=layers, columns=layers)
    for layer in layers:  # a gradient's cosine with itself, when the file leaves it out
        if pd.isna(matrix.loc[layer, layer]):
            matrix.loc[layer, layer] = 1.0
    return matrix


def fig_gradient_cosine(gc: pd.DataFrame, task: str, model: str):
    """1. Cosine between exits' gradients on the shared parameters (joint training probe)."""
    rows = _select(gc, task, model)
    if rows.empty:
        raise MissingInput("no rows in gradient_cosine.parquet")
    matrix = cosine_matrix(rows)
    fig, ax = plt.subplots(figsize=(ONE_COLUMN, 2.8), layout="constrained")
    sns.heatmap(matrix, ax=ax, annot=True, fmt=".2f", annot_kws={"size": 8}, cmap="vlag", vmin=-1, vmax=1,
                square=True, cbar_kws={"label": "cosine similarity", "ticks": [-1, -0.5, 0, 0.5, 1]})
    ax.set(xlabel="exit layer", ylabel="exit layer")
    steps = f", mean over {int(rows['steps'].mean())} steps" if "steps" in rows else ""
    fig.suptitle(f"{_title(task, model)}\ngradient cosine{steps}", fontsize=9)
    return fig


def fig_speedup_vs_threshold(early: pd.DataFrame, latency: pd.DataFrame | None, task: str, model: str,
                             rule: str = "maxprob"):
    """2. Layer speed-up against the threshold; measured wall-clock speed-up dashed where available."""
    rows = _select(early, task, model, rule=rule, split="dev")
    if rows.empty:
        raise MissingInput(f"no '{rule}' dev rows in early_exit.parquet")
    height = _height(len(_main_strategies(rows)) + 2)  # room for measured series
    fig, ax = plt.subplots(figsize=(TWO_COLUMN, height), layout="constrained")
    for s in _main_strategies(rows):
        curve = _mean_sd(rows[rows["strategy"] == s], "threshold", "speedup_layers")
        _line_band(ax, curve.index, curve["mean"], curve["std"], style.color(s), style.label(s),
                   ls=style.linestyle(s))
    # Wall-clock speed-ups were measured with the max-prob rule only.
    measured = _select(latency, task, model) if latency is not None and rule == "maxprob" else None
    for (s, batch), run in [] if measured is None else measured.groupby(["strategy", "batch_size"]):
        curve = run.groupby("threshold")["measured_speedup"].mean()
        single = batch == 1  # batch 1 and batch 32 told apart by line and marker, same colour
        ax.plot(curve.index, curve.values, ls="--" if single else ":", marker="x" if single else "o",
                markersize=4, color=style.color(s), label=f"{style.label(s)}, measured wall clock (batch {batch})")
    ax.set(xlabel=_threshold_label(rule), ylabel="speed-up (layers)")
    ax.set_title(_title(task, model))
    _legend(fig, _band_note(rows), _labels(_main_strategies(rows)))
    return fig


def fig_exit_shares(counts: pd.DataFrame, task: str, model: str, rule: str = "maxprob",
                    threshold: float = SHARE_THRESHOLD):
    """3. Share of dev samples leaving at each exit at one threshold, bars grouped by exit."""
    rows = _select(counts, task, model, rule=rule, split="dev")
    rows = rows[np.isclose(rows["threshold"], threshold)]
    if rows.empty:
        raise MissingInput(f"no '{rule}' dev rows at threshold {threshold} in exit_counts.parquet")
    # fine-tuning has one exit: all of its samples leave at L, which says nothing about exits
    rows = rows[rows["strategy"].isin(_main_strategies(rows)) & (rows["strategy"] != "finetune")]
    # A writer may drop zero counts: complete each run's exits with zeros before averaging shares.
    full = rows.pivot_table(index=["strategy", "seed"], columns="exit_layer", values="count", aggfunc="sum")
    shares = full.fillna(0).div(full.sum(axis=1), axis=0).mul(100).stack().rename("share").reset_index()
    order = _main_strategies(rows)
    fig, ax = plt.subplots(figsize=(TWO_COLUMN, _height(len(order))), layout="constrained")
    sns.barplot(shares, x="exit_layer", y="share", hue="strategy", hue_order=order,
                palette={s: style.color(s) for s in order}, errorbar="sd", err_kws={"linewidth": 0.8},
                capsize=0.1, ax=ax, legend=False)
    for s in order:  # legend entries with display labels, in canonical order
        ax.bar(np.nan, np.nan, color=style.color(s), label=style.label(s))
    ax.set(xlabel="exit layer", ylabel="samples leaving (%)")
    ax.set_title(_title(task, model, f"threshold {threshold:g}"))
    _legend(fig, _band_note(rows), _labels(order))
    return fig


def fig_accuracy_vs_speedup(early: pd.DataFrame, task: str, model: str, rule: str = "maxprob"):
    """4. Accuracy against layer speed-up, one point per threshold, averaged over seeds per threshold."""
    rows = _select(early, task, model, rule=rule, split="dev")
    if rows.empty:
        raise MissingInput(f"no '{rule}' dev rows in early_exit.parquet")
    fig, ax = plt.subplots(figsize=(TWO_COLUMN, _height(len(_main_strategies(rows)))), layout="constrained")
    for s in _main_strategies(rows):
        curve = rows[rows["strategy"] == s].groupby("threshold").agg(
            x=("speedup_layers", "mean"), mean=("accuracy", "mean"), std=("accuracy", "std")).sort_values("x")
        _line_band(ax, curve["x"], 100 * curve["mean"], 100 * curve["std"], style.color(s), style.label(s),
                   ls=style.linestyle(s), marker=style.marker(s), markevery=0.1)
    ax.set(xlabel="speed-up (layers)", ylabel="dev accuracy (%)")
    ax.set_title(_title(task, model, style.RULE_LABELS.get(rule, rule)))
    _legend(fig, _band_note(rows) + " (accuracy)", _labels(_main_strategies(rows)))
    return fig


def fig_rules(early: pd.DataFrame, task: str, model: str, strategy: str):
    """4b. One strategy, every exit rule in the sweep: accuracy against layer speed-up."""
    rows = _select(early, task, model, strategy=strategy, split="dev")
    if rows.empty:
        raise MissingInput(f"no dev rows for strategy '{strategy}' in early_exit.parquet")
    fig, ax = plt.subplots(figsize=(ONE_COLUMN, 2.6), layout="constrained")
    known = list(style.RULE_COLORS)
    rules = sorted(rows["rule"].unique(), key=lambda r: (known.index(r) if r in known else len(known), r))
    for rule in rules:
        by_rule = rows[rows["rule"] == rule]
        curve = by_rule.groupby("threshold").agg(
            x=("speedup_layers", "mean"), mean=("accuracy", "mean"), std=("accuracy", "std")).sort_values("x")
        _line_band(ax, curve["x"], 100 * curve["mean"], 100 * curve["std"], style.rule_color(rule),
                   style.RULE_LABELS.get(rule, rule), marker="o" if len(curve) < 10 else None)
    ax.set(xlabel="speed-up (layers)", ylabel="dev accuracy (%)")
    ax.set_title(_title(task, model, style.label(strategy)))
    ax.legend(title=_band_note(rows), loc="best")  # a few rules fit inside a one-column figure
    return fig


def _alpha_label(strategy: str) -> str:
    extra = {k: v for k, v in style.variant_params(strategy).items() if k != "alpha"}
    text = f"α={style.alpha_of(strategy):g}" + "".join(f", {k}={v}" for k, v in extra.items())
    return text + (" (no KD)" if style.base_name(strategy) == "separate_reverse_nokd" else "")


def fig_balance(early: pd.DataFrame, task: str, model: str, rule: str = "maxprob"):
    """5. Separate Reverse per balance coefficient alpha: speed-up and accuracy against the threshold."""
    rows = _select(early, task, model, rule=rule, split="dev")
    family = [s for s in rows["strategy"].unique() if style.alpha_of(s) is not None]
    if len(family) < 2:
        raise MissingInput(f"fewer than two Separate Reverse alpha values in the '{rule}' dev rows")
    family.sort(key=lambda s: (style.alpha_of(s), style.sort_key(s)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(TWO_COLUMN, 2.5), layout="constrained")
    for s in family:
        by_t = rows[rows["strategy"] == s]
        speed, acc = _mean_sd(by_t, "threshold", "speedup_layers"), _mean_sd(by_t, "threshold", "accuracy")
        _line_band(left, speed.index, speed["mean"], speed["std"], style.color(s), _alpha_label(s))
        _line_band(right, acc.index, 100 * acc["mean"], 100 * acc["std"], style.color(s), None)
    left.set(xlabel=_threshold_label(rule), ylabel="speed-up (layers)")
    right.set(xlabel=_threshold_label(rule), ylabel="dev accuracy (%)")
    fig.suptitle(_title(task, model, "Separate Reverse, balance coefficient α"), fontsize=9)
    _legend(fig, _band_note(rows))
    return fig


def fig_exit_accuracy(acc: pd.DataFrame, task: str, model: str):
    """6. Dev accuracy at each exit; the oracle (independent truncated models) dashed black."""
    rows = _select(acc, task, model, metric="accuracy", split="dev")
    if rows.empty:
        raise MissingInput("no dev accuracy rows in exit_accuracy.parquet")
    fig, ax = plt.subplots(figsize=(TWO_COLUMN, _height(len(_main_strategies(rows)))), layout="constrained")
    for s in _main_strategies(rows):
        curve = _mean_sd(rows[rows["strategy"] == s], "exit_layer", "value")
        _line_band(ax, curve.index, 100 * curve["mean"], 100 * curve["std"], style.color(s), style.label(s),
                   ls=style.linestyle(s), marker=style.marker(s))
    ax.set_xticks(sorted(rows["exit_layer"].unique()))
    ax.set(xlabel="exit layer", ylabel="dev accuracy (%)")
    ax.set_title(_title(task, model))
    _legend(fig, _band_note(rows), _labels(_main_strategies(rows)))
    return fig


# ---------------------------------------------------------------- driver

def _save(fig, stem: Path, formats: list[str], log) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        fig.savefig(path)
        log(str(path))
        paths.append(path)
    plt.close(fig)
    return paths


def draw_all(results_dir: Path, out_dir: Path = Path("plots"), formats=("png",), rule: str = "maxprob",
             tasks=None, strategy: str | None = None, log=print) -> list[Path]:
    """Draw every figure the results allow; one log line per figure skipped; return the files written."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    frames = load_results(results_dir)
    _theme()
    suffix = "" if rule == "maxprob" else f"_{rule}"
    # name, input file, draw(task, model), file-name suffix
    figures: list[tuple[str, str, Callable, str]] = [
        ("gradient_cosine", "gradient_cosine",
         lambda t, m: fig_gradient_cosine(frames["gradient_cosine"], t, m), ""),
        ("speedup_vs_threshold", "early_exit",
         lambda t, m: fig_speedup_vs_threshold(frames["early_exit"], frames["latency"], t, m, rule), suffix),
        ("exit_shares", "exit_counts",
         lambda t, m: fig_exit_shares(frames["exit_counts"], t, m, rule), suffix),
        ("accuracy_vs_speedup", "early_exit",
         lambda t, m: fig_accuracy_vs_speedup(frames["early_exit"], t, m, rule), suffix),
        ("balance_alpha", "early_exit", lambda t, m: fig_balance(frames["early_exit"], t, m, rule), suffix),
        ("exit_accuracy", "exit_accuracy", lambda t, m: fig_exit_accuracy(frames["exit_accuracy"], t, m), ""),
    ]
    if strategy:
        figures.append((f"accuracy_vs_speedup_rules_{style.slug(strategy)}", "early_exit",
                        lambda t, m: fig_rules(frames["early_exit"], t, m, strategy), ""))
    written = []
    for name, source, draw, file_suffix in figures:
        frame = frames[source]
        if frame is None:
            log(f"skip {name}: {results_dir / source}.parquet is missing")
            continue
        pairs = frame[["task", "model"]].drop_duplicates().sort_values(["task", "model"])
        if tasks:
            pairs = pairs[pairs["task"].isin(tasks)]
        if pairs.empty:
            log(f"skip {name}: no rows for tasks {', '.join(tasks or [])} in {source}.parquet")
        for task, model in pairs.itertuples(index=False):
            try:
                fig = draw(task, model)
            except MissingInput as why:
                log(f"skip {name} for {task}/{model}: {why}")
                continue
            stem = out_dir / f"{name}_{style.slug(task)}_{style.slug(model)}{file_suffix}"
            written += _save(fig, stem, formats, log)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.plot", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="results folder (default results)")
    parser.add_argument("--out", type=Path, default=Path("plots"), help="output folder (default plots)")
    parser.add_argument("--format", default="png", help="comma-separated file formats, e.g. png,pdf")
    parser.add_argument("--rule", default="maxprob", help="early-exit rule of the sweep figures")
    parser.add_argument("--strategy", default=None, help="also compare every exit rule for this strategy")
    parser.add_argument("--tasks", nargs="+", default=None, help="only these tasks")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        print(f"results folder {args.results} does not exist")
        return 2
    formats = [f.strip().lstrip(".") for f in args.format.split(",") if f.strip()]
    written = draw_all(args.results, args.out, formats, args.rule, args.tasks, args.strategy)
    if not written:
        print(f"nothing to draw: no usable results in {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
