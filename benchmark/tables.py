"""Paper tables from stored results (CSV + github markdown); no model is loaded.

    python -m benchmark.tables [--results results] [--out results/tables] [--rule maxprob]

Every number comes from the collected parquet files and the run.json files
under `results/runs/`. Each `table_*` function builds one table as a
DataFrame (the CSV content: plain numbers, `<x>_mean` / `<x>_std` column
pairs); `to_markdown` turns a table into the paper form ("mean ± std",
percent with one decimal, best non-reference strategy in bold).
`build_tables(results_dir)` returns every table that its inputs allow.

Conventions: accuracies are in percent; std is the sample std over seeds
(ddof=1; empty with one seed); per-exit tables use the 'dev' split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark import style

RESULT_FILES = ("exit_accuracy", "exit_counts", "early_exit", "gradient_cosine", "latency")

# The strategies the study compares against (DESIGN section 3), in table order.
EXISTING = ["joint", "weighted", "alternating", "sweet", "two_stage", "self_distill", "branchwise",
            "separate"]

RUN_KEYS = ["task", "model", "strategy", "seed"]
COST_KEYS = ["wall_time_s", "cpu_time_s", "peak_rss_mb", "peak_cuda_memory_mb"]
PARAM_KEYS = ["model_path", "num_layers", "exit_layers", "exit_pooling", "lr", "epochs", "batch_size",
              "max_length", "max_train_samples", "max_eval_samples", "calib_fraction", "strategy_params"]


# ---------------------------------------------------------------- loading

def load_runs(results_dir: Path) -> pd.DataFrame | None:
    """One row per finished run: its config and data dicts (failed/partial runs are ignored)."""
    rows = []
    for path in sorted((Path(results_dir) / "runs").rglob("run.json")):
        if any(part.startswith(".tmp-") for part in path.parts):  # a run still being written
            continue
        run = json.loads(path.read_text())
        if run.get("status") != "finished":
            continue
        config, env = run.get("config", {}), run.get("env", {})
        rows.append({**{k: config.get(k) for k in RUN_KEYS}, "num_layers": config.get("num_layers"),
                     "config": config, "data": run.get("data", {}), "timings": run.get("timings") or {},
                     **{k: run.get(k) for k in COST_KEYS}, "torch_threads": env.get("torch_threads"),
                     "device": env.get("device")})
    return pd.DataFrame(rows) if rows else None


def load_results(results_dir: Path) -> dict[str, pd.DataFrame | None]:
    """Every collected parquet file (None where missing) plus 'runs' from load_runs."""
    results_dir = Path(results_dir)
    frames = {}
    for name in RESULT_FILES:
        path = results_dir / f"{name}.parquet"
        frames[name] = pd.read_parquet(path) if path.exists() else None
    frames["runs"] = load_runs(results_dir)
    return frames


def num_layers(acc: pd.DataFrame, runs: pd.DataFrame | None) -> dict[tuple[str, str], int]:
    """L per (task, model): from the run configs, else the deepest exit seen in exit_accuracy."""
    depth = acc.groupby(["task", "model"])["exit_layer"].max().to_dict()
    if runs is not None:
        configured = runs.dropna(subset=["num_layers"]).groupby(["task", "model"])["num_layers"].max()
        depth.update({key: int(layers) for key, layers in configured.items()})
    return depth


# ---------------------------------------------------------------- per-exit accuracy

def exit_accuracy_summary(acc: pd.DataFrame, metric: str = "accuracy", split: str = "dev") -> pd.DataFrame:
    """Long form: task, model, strategy, exit_layer, mean, std (x100: percent), n (seeds)."""
    rows = acc[(acc["metric"] == metric) & (acc["split"] == split)]
    out = (rows.groupby(["task", "model", "metric", "strategy", "exit_layer"])["value"]
           .agg(mean="mean", std="std", n="count").reset_index())
    out[["mean", "std"]] *= 100
    return out


def _seed_caption(summary: pd.DataFrame, what: str = "Dev accuracy (%)") -> str:
    lo, hi = int(summary["n"].min()), int(summary["n"].max())
    seeds = f"{lo}" if lo == hi else f"{lo}-{hi}"
    return f"{what}, mean ± sample std over seeds (seeds per cell: {seeds})."


def _strategies_by_exit(summary: pd.DataFrame, strategies: list[str],
                        index=("task", "model", "exit_layer")) -> pd.DataFrame | None:
    """Rows `index`; a `<strategy>_mean`, `<strategy>_std` pair per strategy."""
    rows = summary[summary["strategy"].isin(strategies)]
    if rows.empty:
        return None
    wide = rows.pivot(index=list(index), columns="strategy", values=["mean", "std"])
    columns = [(stat, s) for s in style.ordered(rows["strategy"]) for stat in ("mean", "std")]
    wide = wide[columns]
    wide.columns = [f"{s}_{stat}" for stat, s in columns]
    wide = wide.reset_index().sort_values(list(index), ignore_index=True)
    wide.attrs["caption"] = _seed_caption(rows)
    return wide


def table_joint_vs_oracle(acc: pd.DataFrame) -> pd.DataFrame | None:
    """Joint training against independent truncated models, per exit: the cost of sharing layers."""
    summary = exit_accuracy_summary(acc)
    table = _strategies_by_exit(summary, ["joint", "oracle"])
    if table is None or not {"joint_mean", "oracle_mean"} <= set(table.columns):
        return None
    table["joint_minus_oracle"] = table["joint_mean"] - table["oracle_mean"]
    table.attrs["decimals"] = {"joint_minus_oracle": 1}
    table.attrs["caption"] += " joint_minus_oracle: difference of the means, in points."
    return table


def table_existing_strategies(acc: pd.DataFrame) -> pd.DataFrame | None:
    return _strategies_by_exit(exit_accuracy_summary(acc), EXISTING)


def table_kd_ablation(acc: pd.DataFrame) -> pd.DataFrame | None:
    """Separate Reverse with and without distillation and every alpha variant, per exit."""
    summary = exit_accuracy_summary(acc)
    family = [s for s in summary["strategy"].unique() if style.alpha_of(s) is not None]
    table = _strategies_by_exit(summary, family)
    if table is not None:
        alphas = ", ".join(f"{style.label(s)}: alpha={style.alpha_of(s)}" for s in style.ordered(family))
        table.attrs["caption"] += f" Balance coefficients: {alphas}."
    return table


def table_official_metric(acc: pd.DataFrame) -> pd.DataFrame | None:
    """The task's official GLUE metric where it is not accuracy (F1, MCC), x100, every strategy per exit."""
    metrics = [m for m in acc["metric"].unique() if m != "accuracy"]
    if not metrics:
        return None
    summary = pd.concat([exit_accuracy_summary(acc, metric) for metric in metrics])
    table = _strategies_by_exit(summary, list(summary["strategy"].unique()),
                                index=("task", "model", "metric", "exit_layer"))
    table.attrs["caption"] = _seed_caption(summary, "Dev official metric (x100)")
    return table


def tables_per_exit_layer(acc: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One table per (model, exit layer): strategies as rows, tasks as columns."""
    summary = exit_accuracy_summary(acc)
    tables = {}
    for (model, layer), rows in summary.groupby(["model", "exit_layer"]):
        wide = rows.pivot(index="strategy", columns="task", values=["mean", "std"])
        tasks = sorted(rows["task"].unique())
        wide = wide[[(stat, t) for t in tasks for stat in ("mean", "std")]]
        wide.columns = [f"{t}_{stat}" for t in tasks for stat in ("mean", "std")]
        wide = wide.loc[style.ordered(wide.index)].reset_index()
        wide.attrs["caption"] = (f"{model}, exit at layer {layer}. " + _seed_caption(rows)
                                 + " Bold: best strategy other than oracle and fine-tune.")
        wide.attrs["bold_best"] = True
        tables[f"accuracy_exit{layer}_{style.slug(model)}"] = wide
    return tables


def best_mask(table: pd.DataFrame) -> pd.DataFrame:
    """True where a `<col>_mean` is the highest among non-reference strategies (ties all True)."""
    candidates = ~table["strategy"].map(style.is_reference)
    mask = {}
    for col in [c for c in table.columns if c.endswith("_mean")]:
        best = table.loc[candidates, col].max()
        mask[col[: -len("_mean")]] = candidates & np.isclose(table[col], best) & table[col].notna()
    return pd.DataFrame(mask, index=table.index)


# ---------------------------------------------------------------- data and configs

def _label_counts(counts: dict | None) -> str:
    if not counts:
        return ""
    return ", ".join(f"{k}: {counts[k]}" for k in sorted(counts, key=lambda k: int(k)))


def table_dataset_statistics(runs: pd.DataFrame) -> pd.DataFrame:
    """Rows and label counts per task as the runs saw them (distinct settings get their own row)."""
    rows = []
    for task, data in zip(runs["task"], runs["data"], strict=True):
        dev_counts = data.get("dev_label_counts") or {}
        dev_rows = data.get("dev_rows")
        rows.append({
            "task": task, "train_rows": data.get("train_rows"), "calib_rows": data.get("calib_rows"),
            "dev_rows": dev_rows, "num_labels": data.get("num_labels"),
            "train_label_counts": _label_counts(data.get("train_label_counts")),
            "dev_label_counts": _label_counts(dev_counts),
            # The majority-class accuracy: the floor any exit must beat.
            "dev_majority_pct": (100 * max(dev_counts.values()) / dev_rows
                                 if dev_counts and dev_rows else np.nan),
        })
    table = pd.DataFrame(rows).drop_duplicates().sort_values(["task", "train_rows"], ignore_index=True)
    table.attrs["caption"] = "Dataset statistics from the runs' run.json (label counts by label id)."
    table.attrs["decimals"] = {"dev_majority_pct": 1}
    return table


def _param_value(config: dict, key: str):
    if key == "exit_layers":
        # The exits the model really has, main included (fine-tune: only L); older
        # configs only list the requested intermediate `exits`.
        layers = config.get("exit_layers") or [*(config.get("exits") or []), config.get("num_layers")]
        return ",".join(str(e) for e in layers if e is not None)
    if key == "strategy_params":
        return json.dumps(config.get(key) or {}, sort_keys=True)
    return config.get(key)


def table_training_parameters(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct (task, model, strategy, configuration); the seeds that share it."""
    rows = [{"task": c.get("task"), "model": c.get("model"), "strategy": c.get("strategy"),
             **{k: _param_value(c, k) for k in PARAM_KEYS}, "seed": c.get("seed")}
            for c in runs["config"]]
    frame = pd.DataFrame(rows)
    keys = ["task", "model", "strategy", *PARAM_KEYS]
    table = (frame.groupby(keys, dropna=False, sort=False)["seed"]
             .agg(lambda s: ",".join(str(x) for x in sorted(s))).rename("seeds").reset_index())
    table["_order"] = table["strategy"].map(style.sort_key)
    table = table.sort_values(["task", "model", "_order"], ignore_index=True).drop(columns="_order")
    table.attrs["caption"] = "Training configuration of the runs (one row per distinct configuration)."
    return table


def _stage_times(timings: list[dict]) -> str:
    """'stage s, ...' averaged over seeds; a shared fine-tune loaded from the cache costs 0 s here."""
    names = list(dict.fromkeys(name for t in timings for name in t))
    return ", ".join(f"{name} {np.mean([t.get(name, 0.0) for t in timings]):.0f} s" for name in names)


def table_training_cost(runs: pd.DataFrame) -> pd.DataFrame:
    """Wall time, per-stage times and peak memory per (task, model, strategy), mean over seeds.

    cpu_busy = process CPU time / (wall time x torch threads), on CPU runs: near 1 when the run had
    the cores to itself; well below when another job shared them or the run was paused, so its
    wall time overstates what the strategy costs. Older run.json files lack cpu_time_s (empty).
    """
    frame = runs.copy()
    for key in COST_KEYS:
        frame[key] = pd.to_numeric(frame[key], errors="coerce")
    threads = pd.to_numeric(frame["torch_threads"], errors="coerce")
    frame["cpu_busy"] = np.where(frame["device"] == "cpu", frame["cpu_time_s"] / (frame["wall_time_s"] * threads),
                                 np.nan)
    groups = frame.groupby(["task", "model", "strategy"], sort=False)
    table = groups.agg(seeds=("seed", "count"), wall_time_s=("wall_time_s", "mean"),
                       cpu_busy=("cpu_busy", "mean"), peak_rss_mb=("peak_rss_mb", "max"),
                       peak_cuda_memory_mb=("peak_cuda_memory_mb", "max")).reset_index()
    table.insert(5, "stages", [_stage_times(list(g["timings"])) for _, g in groups])
    if table["peak_cuda_memory_mb"].isna().all():
        table = table.drop(columns="peak_cuda_memory_mb")
    table["_order"] = table["strategy"].map(style.sort_key)
    table = table.sort_values(["task", "model", "_order"], ignore_index=True).drop(columns="_order")
    table.attrs["caption"] = (
        "Training cost per run, mean over seeds: wall time of training + evaluation (the shared fine-tune "
        "counts once, in the run that trained it; 0 s where loaded from the cache), per-stage times, "
        "process peak memory. cpu_busy = CPU time / (wall time x threads): well below 1 means the run "
        "shared the cores or was paused and its wall time overstates the cost (empty: not recorded).")
    table.attrs["decimals"] = {"wall_time_s": 0, "cpu_busy": 2, "peak_rss_mb": 0, "peak_cuda_memory_mb": 0}
    return table


# ---------------------------------------------------------------- speed-up summary

def speedup_at_tolerance(acc: pd.DataFrame, early: pd.DataFrame, runs: pd.DataFrame | None = None,
                         rule: str = "maxprob", tolerance: float = 0.01) -> pd.DataFrame:
    """Per run: the largest layer speed-up whose accuracy is within `tolerance` of the reference.

    Reference = fine-tune's main-exit accuracy (same task, model, seed), else the
    strategy's own main exit. The threshold is chosen on 'calib' when both the
    run's sweep and the reference have calib rows, else on 'dev' (optimistic:
    chosen and reported on the same data). Reported numbers are always dev.
    Ties on the chosen split's speed-up go to the higher accuracy, then to the
    higher (more cautious) threshold.
    """
    depth = num_layers(acc, runs)
    keys = acc[["task", "model", "exit_layer"]].itertuples(index=False)
    is_main = np.array([layer == depth[(t, m)] for t, m, layer in keys], dtype=bool)
    main = acc[(acc["metric"] == "accuracy") & is_main]
    main_acc = main.set_index([*RUN_KEYS, "split"])["value"].to_dict()

    rows = []
    for (task, model, strategy, seed), sweep in early[early["rule"] == rule].groupby(RUN_KEYS):
        has_finetune = (task, model, "finetune", seed, "dev") in main_acc
        ref_strategy = "finetune" if has_finetune else strategy
        use_calib = "calib" in set(sweep["split"]) and (task, model, ref_strategy, seed, "calib") in main_acc
        split = "calib" if use_calib else "dev"
        reference = main_acc.get((task, model, ref_strategy, seed, split), np.nan)
        row = {"task": task, "model": model, "strategy": strategy, "seed": seed,
               "reference": "finetune" if has_finetune else "own main exit",
               "threshold_chosen_on": "calib" if use_calib else "dev (optimistic)",
               "reference_accuracy": 100 * reference,
               "dev_reference_accuracy": 100 * main_acc.get((task, model, ref_strategy, seed, "dev"), np.nan),
               "threshold": np.nan, "dev_accuracy": np.nan, "speedup_layers": np.nan, "speedup_cost": np.nan}
        # Small epsilon: accuracies are ratios of counts, 'within 1 point' must include exactly 1 point.
        ok = sweep[(sweep["split"] == split) & (sweep["accuracy"] >= reference - tolerance - 1e-9)]
        if not ok.empty:
            best = ok.sort_values(["speedup_layers", "accuracy", "threshold"], ascending=False).iloc[0]
            dev = sweep[(sweep["split"] == "dev") & np.isclose(sweep["threshold"], best["threshold"])]
            row["threshold"] = best["threshold"]
            if not dev.empty:
                first = dev.iloc[0]
                row.update(dev_accuracy=100 * first["accuracy"], speedup_layers=first["speedup_layers"],
                           speedup_cost=first["speedup_cost"])
        rows.append(row)
    return pd.DataFrame(rows)


def _joined(values: pd.Series) -> str:
    return "; ".join(sorted({str(v) for v in values}))


def table_speedup_summary(per_seed: pd.DataFrame, rule: str = "maxprob",
                          tolerance: float = 0.01) -> pd.DataFrame:
    """Mean ± std over seeds of speedup_at_tolerance; seeds with no qualifying threshold are counted apart."""
    groups = per_seed.groupby(["task", "model", "strategy"])
    table = groups.agg(
        speedup_layers_mean=("speedup_layers", "mean"), speedup_layers_std=("speedup_layers", "std"),
        speedup_cost_mean=("speedup_cost", "mean"), speedup_cost_std=("speedup_cost", "std"),
        dev_accuracy_mean=("dev_accuracy", "mean"), dev_accuracy_std=("dev_accuracy", "std"),
        dev_reference_accuracy_mean=("dev_reference_accuracy", "mean"),
        dev_reference_accuracy_std=("dev_reference_accuracy", "std"),
        thresholds=("threshold", lambda s: ",".join(f"{t:g}" for t in s.dropna())),
        seeds_within=("speedup_layers", "count"), seeds=("seed", "count"),
        threshold_chosen_on=("threshold_chosen_on", _joined), reference=("reference", _joined),
    ).reset_index()
    table["_order"] = table["strategy"].map(style.sort_key)
    table = table.sort_values(["task", "model", "_order"], ignore_index=True).drop(columns="_order")
    table.attrs["caption"] = (
        f"Largest layer speed-up (and cost-aware speed-up at the same threshold, rule '{rule}') whose "
        f"accuracy stays within {100 * tolerance:g} point(s) of the reference main-exit accuracy; "
        "dev numbers, mean ± sample std over the seeds that have such a threshold (seeds_within of seeds). "
        "Threshold chosen on the calib split unless marked 'dev (optimistic)'.")
    return table


# ---------------------------------------------------------------- all tables

def build_tables(results_dir: Path, rule: str = "maxprob", tolerance: float = 0.01,
                 log=print) -> dict[str, pd.DataFrame]:
    """Every table whose inputs exist; one log line per table skipped and why."""
    results_dir = Path(results_dir)
    frames = load_results(results_dir)
    acc, early, runs = frames["exit_accuracy"], frames["early_exit"], frames["runs"]
    where = {"exit_accuracy": results_dir / "exit_accuracy.parquet",
             "early_exit": results_dir / "early_exit.parquet",
             "runs": results_dir / "runs/**/run.json (finished runs)"}

    def have(name: str, *inputs: str) -> bool:
        missing = [str(where[i]) for i in inputs if frames[i] is None or frames[i].empty]
        if missing:
            log(f"skip table {name}: missing {', '.join(missing)}")
        return not missing

    tables: dict[str, pd.DataFrame] = {}

    def add(name: str, table: pd.DataFrame | None, why_empty: str) -> None:
        if table is None or table.empty:
            log(f"skip table {name}: {why_empty}")
        else:
            tables[name] = table

    if have("joint_vs_oracle", "exit_accuracy"):
        add("joint_vs_oracle", table_joint_vs_oracle(acc), "no joint and oracle dev accuracy rows")
    if have("existing_strategies", "exit_accuracy"):
        add("existing_strategies", table_existing_strategies(acc),
            f"none of {', '.join(EXISTING)} in the results")
    if have("dataset_statistics", "runs"):
        add("dataset_statistics", table_dataset_statistics(runs), "no run data")
    if have("training_parameters", "runs"):
        add("training_parameters", table_training_parameters(runs), "no run configs")
    if have("training_cost", "runs"):
        add("training_cost", table_training_cost(runs), "no finished runs")
    if have("accuracy_exit<L>", "exit_accuracy"):
        for name, table in tables_per_exit_layer(acc).items():
            add(name, table, "no dev accuracy rows")
    if have("official_metric", "exit_accuracy"):
        add("official_metric", table_official_metric(acc), "no metric other than accuracy (F1 / MCC) stored")
    if have("kd_ablation", "exit_accuracy"):
        add("kd_ablation", table_kd_ablation(acc), "no separate_reverse runs")
    if have("speedup_summary", "exit_accuracy", "early_exit"):
        per_seed = speedup_at_tolerance(acc, early, runs, rule=rule, tolerance=tolerance)
        summary = None if per_seed.empty else table_speedup_summary(per_seed, rule, tolerance)
        add("speedup_summary", summary, f"no '{rule}' rows in early_exit.parquet")
        if "speedup_summary" in tables:
            per_seed.attrs["caption"] = "Per-seed detail of speedup_summary (accuracies in %)."
            tables["speedup_per_seed"] = per_seed
    return tables


# ---------------------------------------------------------------- markdown

def _header(prefix: str) -> str:
    """Strategy and task names get their display labels; other columns keep their names."""
    if prefix in style.TASK_LABELS:
        return style.task_label(prefix)
    if style.base_name(prefix) in style.STRATEGY_LABELS:
        return style.label(prefix)
    return prefix


def _mean_std(mean: float, std: float, decimals: int) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.{decimals}f}" if pd.isna(std) else f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _plain(value, decimals: int | None = None) -> str:
    if isinstance(value, float | np.floating):
        if np.isnan(value):
            return "–"
        return f"{value:.4g}" if decimals is None else f"{value:.{decimals}f}"
    return "" if value is None else str(value)


def to_markdown(table: pd.DataFrame) -> str:
    """github table: `x_mean`/`x_std` pairs become 'mean ± std' (1 decimal, speed-ups 2), bold best."""
    bold = best_mask(table) if table.attrs.get("bold_best") else None
    out = pd.DataFrame(index=table.index)
    for col in table.columns:
        if col.endswith("_std") and f"{col[:-4]}_mean" in table.columns:
            continue  # folded into its mean column
        if col.endswith("_mean"):
            prefix = col[: -len("_mean")]
            decimals = 2 if prefix.startswith("speedup") else 1
            std = table.get(f"{prefix}_std", pd.Series(np.nan, index=table.index))
            cells = [_mean_std(m, s, decimals) for m, s in zip(table[col], std, strict=True)]
            if bold is not None and prefix in bold:
                cells = [f"**{c}**" if b else c for c, b in zip(cells, bold[prefix], strict=True)]
            out[_header(prefix)] = cells
        elif col == "strategy":
            out[col] = table[col].map(style.label)
        else:
            out[col] = [_plain(v, table.attrs.get("decimals", {}).get(col)) for v in table[col]]
    return out.to_markdown(index=False, tablefmt="github", disable_numparse=True)


def write_tables(tables: dict[str, pd.DataFrame], out_dir: Path, log=print) -> list[Path]:
    """`<name>.csv` (plain numbers) and `<name>.md` (caption + github table) per table."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in tables.items():
        csv, md = out_dir / f"{name}.csv", out_dir / f"{name}.md"
        table.to_csv(csv, index=False)
        md.write_text(f"# {name}\n\n{table.attrs.get('caption', '')}\n\n{to_markdown(table)}\n")
        for path in (csv, md):
            log(str(path))
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.tables", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="results folder (default results)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default RESULTS/tables)")
    parser.add_argument("--rule", default="maxprob", help="early-exit rule for the speed-up summary")
    parser.add_argument("--tolerance", type=float, default=0.01, help="accuracy drop allowed (fraction)")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        print(f"results folder {args.results} does not exist")
        return 2
    tables = build_tables(args.results, rule=args.rule, tolerance=args.tolerance)
    if not tables:
        print(f"nothing to tabulate in {args.results}: no usable result files")
        return 0
    write_tables(tables, args.out or args.results / "tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
