"""Figures and tables from a synthetic results folder: files, numbers, skips, CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from benchmark import plot, style, tables

try:  # tests/ as a package or as a plain folder on sys.path
    from tests.synthetic_results import MODEL, NUM_LAYERS, write_synthetic_results
except ImportError:
    from synthetic_results import MODEL, NUM_LAYERS, write_synthetic_results

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("sst2", "mrpc")
FIGURES = ["speedup_vs_threshold", "exit_shares", "accuracy_vs_speedup", "balance_alpha", "exit_accuracy",
           "accuracy_vs_speedup_rules_separate_reverse"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return write_synthetic_results(tmp_path_factory.mktemp("results"), seeds=(0, 1), tasks=TASKS)


@pytest.fixture(scope="module")
def drawn(results, tmp_path_factory):
    out, log = tmp_path_factory.mktemp("plots"), []
    written = plot.draw_all(results, out, ["png"], strategy="separate_reverse", log=log.append)
    return out, written, log


@pytest.fixture(scope="module")
def built(results):
    log = []
    return tables.build_tables(results, log=log.append), log


@pytest.fixture
def copy_of(results, tmp_path):
    """A fresh copy of the results folder to break."""
    def make() -> Path:
        target = tmp_path / "copy"
        shutil.copytree(results, target)
        return target
    return make


def _acc(results: Path) -> pd.DataFrame:
    acc = pd.read_parquet(results / "exit_accuracy.parquet")
    return acc[(acc["metric"] == "accuracy") & (acc["split"] == "dev")]


# ---------------------------------------------------------------- figures

def test_every_figure_is_drawn_at_paper_width(drawn):
    out, written, log = drawn
    expected = {out / f"gradient_cosine_{TASKS[0]}_{MODEL}.png"}  # the probe ran on one task only
    expected |= {out / f"{name}_{task}_{MODEL}.png" for name in FIGURES for task in TASKS}
    assert set(written) == expected
    assert log == [str(p) for p in written]  # every file printed, nothing skipped
    for path in written:
        assert path.stat().st_size > 0
        width_in = matplotlib.image.imread(path).shape[1] / 300
        assert width_in == pytest.approx(plot.ONE_COLUMN, abs=0.05) or width_in == pytest.approx(
            plot.TWO_COLUMN, abs=0.05)


def test_cosine_matrix_is_symmetric_with_or_without_diagonal(tmp_path):
    with_diag = write_synthetic_results(tmp_path / "d", seeds=(0,), tasks=("sst2",), gradient_diagonal=True,
                                        strategies=("finetune",))
    rows = pd.read_parquet(with_diag / "gradient_cosine.parquet")
    full = plot.cosine_matrix(rows)
    upper_only = plot.cosine_matrix(rows[rows["exit_i"] < rows["exit_j"]])
    pd.testing.assert_frame_equal(full, upper_only)
    assert np.allclose(full.to_numpy(), full.to_numpy().T)
    assert np.allclose(np.diag(full.to_numpy()), 1.0)
    assert list(full.index) == [1, 2, 3, NUM_LAYERS]


def test_missing_input_skips_only_its_figure(copy_of, tmp_path):
    broken = copy_of()
    (broken / "gradient_cosine.parquet").unlink()
    (broken / "latency.parquet").unlink()  # optional: its absence is not a skip
    log = []
    written = plot.draw_all(broken, tmp_path / "p", ["png"], tasks=["mrpc"], log=log.append)
    skips = [line for line in log if line.startswith("skip")]
    assert len(skips) == 1 and "gradient_cosine.parquet" in skips[0]
    assert {p.name for p in written} == {f"{name}_mrpc_{MODEL}.png" for name in FIGURES[:-1]}


# ---------------------------------------------------------------- tables

def test_every_table_is_written(built, tmp_path):
    built_tables, log = built
    assert log == []
    expected = {"joint_vs_oracle", "existing_strategies", "dataset_statistics", "training_parameters",
                "training_cost", "kd_ablation", "official_metric", "speedup_summary", "speedup_per_seed"}
    expected |= {f"accuracy_exit{layer}_{MODEL}" for layer in (1, 2, 3, NUM_LAYERS)}
    assert set(built_tables) == expected
    written = tables.write_tables(built_tables, tmp_path, log=lambda _: None)
    assert {p.name for p in written} == {f"{n}.{ext}" for n in expected for ext in ("csv", "md")}
    assert all(p.stat().st_size > 0 for p in written)


@pytest.mark.parametrize("task, strategy, layer", [("sst2", "joint", 2), ("mrpc", "oracle", 1),
                                                   ("mrpc", "joint", NUM_LAYERS)])
def test_joint_vs_oracle_cell_equals_parquet(results, built, tmp_path, task, strategy, layer):
    acc = _acc(results)
    cell = (acc["task"] == task) & (acc["strategy"] == strategy) & (acc["exit_layer"] == layer)
    values = acc.loc[cell, "value"]
    mean, std = 100 * values.mean(), 100 * values.std(ddof=1)
    tables.write_tables({"joint_vs_oracle": built[0]["joint_vs_oracle"]}, tmp_path, log=lambda _: None)
    csv = pd.read_csv(tmp_path / "joint_vs_oracle.csv")
    row = csv[(csv["task"] == task) & (csv["exit_layer"] == layer)].iloc[0]
    assert row[f"{strategy}_mean"] == pytest.approx(mean)
    assert row[f"{strategy}_std"] == pytest.approx(std)
    assert f"{mean:.1f} ± {std:.1f}" in (tmp_path / "joint_vs_oracle.md").read_text()


def _markdown_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[:1] + lines[2:]]


@pytest.mark.parametrize("layer", [1, 2, 3, NUM_LAYERS])
def test_bold_cell_is_best_non_reference_strategy(results, built, layer):
    acc = _acc(results)
    rows = _markdown_rows(tables.to_markdown(built[0][f"accuracy_exit{layer}_{MODEL}"]))
    header, body = rows[0], rows[1:]
    for task in TASKS:
        means = (acc[(acc["task"] == task) & (acc["exit_layer"] == layer)]
                 .groupby("strategy")["value"].mean())
        means = means[[not style.is_reference(s) for s in means.index]]
        column = header.index(style.task_label(task))
        bold = [r[0] for r in body if r[column].startswith("**")]
        best = means[np.isclose(means, means.max())].index  # ties (ratios of counts) are all bold
        assert set(bold) == {style.label(s) for s in best}
        cell = next(r[column] for r in body if r[0] == bold[0])
        assert cell.startswith(f"**{100 * means.max():.1f} ± ")


def _brute_force_speedups(results: Path, tolerance=0.01) -> dict:
    """Per (task, strategy, seed): dev speed-up at the calib-chosen threshold, by plain loops."""
    acc = pd.read_parquet(results / "exit_accuracy.parquet").to_dict("records")
    sweep = pd.read_parquet(results / "early_exit.parquet").to_dict("records")
    reference = {(r["task"], r["seed"]): r["value"] for r in acc
                 if r["strategy"] == "finetune" and r["split"] == "calib" and r["metric"] == "accuracy"
                 and r["exit_layer"] == NUM_LAYERS}
    best = {}
    for r in sweep:
        if r["rule"] != "maxprob" or r["split"] != "calib":
            continue
        key = (r["task"], r["strategy"], r["seed"])
        if r["accuracy"] >= reference[(r["task"], r["seed"])] - tolerance - 1e-9:
            # ties on calib speed-up: the more accurate, then the higher (more cautious) threshold
            candidate = (r["speedup_layers"], r["accuracy"], r["threshold"])
            if key not in best or candidate > best[key]:
                best[key] = candidate
    dev = {(r["task"], r["strategy"], r["seed"], r["threshold"]): r["speedup_layers"] for r in sweep
           if r["rule"] == "maxprob" and r["split"] == "dev"}
    return {key: dev[(*key, threshold)] for key, (_, _, threshold) in best.items()}


def test_speedup_summary_equals_brute_force(results, built):
    expected = _brute_force_speedups(results)
    per_seed = built[0]["speedup_per_seed"]
    assert (per_seed["threshold_chosen_on"] == "calib").all() and (per_seed["reference"] == "finetune").all()
    found = {(r.task, r.strategy, r.seed): r.speedup_layers for r in per_seed.itertuples()
             if r.speedup_layers > 0}  # NaN: no threshold within tolerance
    assert found.keys() == expected.keys()
    assert all(found[k] == pytest.approx(v) for k, v in expected.items())
    summary = built[0]["speedup_summary"].set_index(["task", "strategy"])
    for task, strategy in [("sst2", "separate_reverse"), ("mrpc", "joint"), ("sst2", "finetune")]:
        values = [v for (t, s, _), v in expected.items() if (t, s) == (task, strategy)]
        if values:
            assert summary.loc[(task, strategy), "speedup_layers_mean"] == pytest.approx(np.mean(values))
            assert summary.loc[(task, strategy), "seeds_within"] == len(values)


def test_speedup_summary_without_calib_or_finetune(copy_of):
    broken = copy_of()
    early = pd.read_parquet(broken / "early_exit.parquet")
    early = early[early["strategy"] != "finetune"]
    early[early["split"] == "dev"].to_parquet(broken / "early_exit.parquet")
    acc = pd.read_parquet(broken / "exit_accuracy.parquet")
    acc[acc["strategy"] != "finetune"].to_parquet(broken / "exit_accuracy.parquet")
    per_seed = tables.build_tables(broken, log=lambda _: None)["speedup_per_seed"]
    assert (per_seed["threshold_chosen_on"] == "dev (optimistic)").all()
    assert (per_seed["reference"] == "own main exit").all()
    own = _acc(broken)
    own = own[own["exit_layer"] == NUM_LAYERS].set_index(["task", "strategy", "seed"])["value"]
    for r in per_seed.itertuples():
        assert r.reference_accuracy == pytest.approx(100 * own[(r.task, r.strategy, r.seed)])
        # chosen and reported on dev: the reported accuracy honours the tolerance
        assert np.isnan(r.dev_accuracy) or r.dev_accuracy >= r.reference_accuracy - 1 - 1e-6


def test_missing_input_skips_only_its_table(copy_of):
    broken = copy_of()
    (broken / "early_exit.parquet").unlink()
    shutil.rmtree(broken / "runs")
    log = []
    built_tables = tables.build_tables(broken, log=log.append)
    assert not {"speedup_summary", "dataset_statistics", "training_parameters", "training_cost"} & set(built_tables)
    assert {"joint_vs_oracle", "kd_ablation", f"accuracy_exit1_{MODEL}"} <= set(built_tables)
    assert len(log) == 4
    assert "early_exit.parquet" in next(line for line in log if "speedup_summary" in line)


def test_dataset_and_parameter_tables_ignore_failed_runs(built):
    params = built[0]["training_parameters"]
    assert "sweet" not in set(params["strategy"])  # only a failed sweet run exists
    assert set(params["seeds"]) == {"0,1"}
    exits = params.set_index(["task", "strategy"])["exit_layers"]
    assert exits[("sst2", "finetune")] == str(NUM_LAYERS)
    assert exits[("sst2", "joint")] == f"1,2,3,{NUM_LAYERS}"
    stats = built[0]["dataset_statistics"].set_index("task")
    assert stats.loc["sst2", "train_rows"] == 8000 and stats.loc["mrpc", "dev_rows"] == 240


def test_training_cost_averages_seeds_and_flags_shared_cores(built):
    cost = built[0]["training_cost"].set_index(["task", "strategy"])
    row = cost.loc[("sst2", "joint")]  # synthetic run.json: seeds 0 and 1, wall 150 + seed, cpu = wall
    assert row["seeds"] == 2 and row["wall_time_s"] == pytest.approx(150.5)
    assert row["cpu_busy"] == pytest.approx(0.5)  # cpu / (wall x 2 threads)
    assert row["peak_rss_mb"] == pytest.approx(1010.0)
    assert row["stages"] == "finetune 100 s, exits 50 s"
    assert "sweet" not in set(cost.index.get_level_values("strategy"))  # failed runs cost nothing here


def test_style_is_deterministic():
    assert style.alpha_of("separate_reverse") == 0.5 and style.alpha_of("separate_reverse_nokd") == 0.0
    assert style.alpha_of("separate_reverse@alpha=0.9,init=copy_main") == 0.9
    assert style.alpha_of("joint") is None
    assert style.color("mystery@x=1") == style.color("mystery@x=1") != style.color("joint")
    order = style.ordered(["separate_reverse_nokd", "separate_reverse@alpha=0.3", "zzz", "oracle",
                           "separate_reverse", "finetune"])
    assert order == ["finetune", "oracle", "separate_reverse", "separate_reverse@alpha=0.3",
                     "separate_reverse_nokd", "zzz"]


# ---------------------------------------------------------------- CLI

def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, check=False)


@pytest.mark.parametrize("module", ["benchmark.plot", "benchmark.tables"])
def test_cli_missing_results_folder_exits_2(module, tmp_path):
    done = _cli(module, "--results", str(tmp_path / "nope"))
    assert done.returncode == 2
    assert len(done.stdout.strip().splitlines()) == 1 and "does not exist" in done.stdout


def test_cli_empty_results_folder_says_nothing_to_draw(tmp_path):
    done = _cli("benchmark.plot", "--results", str(tmp_path), "--out", str(tmp_path / "plots"))
    assert done.returncode == 0 and "nothing to draw" in done.stdout


def test_cli_writes_and_prints_files(results, tmp_path):
    done = _cli("benchmark.plot", "--results", str(results), "--out", str(tmp_path / "plots"),
                "--tasks", "sst2", "--format", "png,pdf", "--rule", "entropy")
    assert done.returncode == 0, done.stderr
    printed = [Path(line) for line in done.stdout.splitlines() if not line.startswith("skip")]
    assert f"speedup_vs_threshold_sst2_{MODEL}_entropy.pdf" in {p.name for p in printed}
    assert printed and all(p.exists() and p.stat().st_size > 0 for p in printed)
    done = _cli("benchmark.tables", "--results", str(results), "--out", str(tmp_path / "tables"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "tables" / "speedup_summary.md").exists()


def test_modules_do_not_load_model_code():
    code = ("import sys, benchmark.plot, benchmark.tables; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          check=False)
    assert done.stdout.split() == ["False", "False"], done.stderr


def test_band_note_counts_seeds_per_strategy():
    rows = pd.DataFrame({"strategy": ["joint", "joint", "oracle"], "seed": [0, 1, 0]})
    assert plot._band_note(rows) == "mean ± 1 sd, 1-2 seeds"  # not "2 seeds" for every curve
    assert plot._band_note(rows[rows.strategy == "joint"]) == "mean ± 1 sd, 2 seeds"
    assert plot._band_note(rows[rows.strategy == "oracle"]) == "1 seed"
