"""The claims report from a synthetic results folder: sections, verdict rules, numbers, CLI."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark import report

try:  # tests/ as a package or as a plain folder on sys.path
    from tests.synthetic_results import MODEL, NUM_LAYERS, write_synthetic_results
except ImportError:
    from synthetic_results import MODEL, NUM_LAYERS, write_synthetic_results

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("sst2", "mrpc")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return write_synthetic_results(tmp_path_factory.mktemp("results"), seeds=(0, 1), tasks=TASKS)


@pytest.fixture(scope="module")
def text(results) -> str:
    return report.build_report(results)


@pytest.fixture
def copy(results, tmp_path) -> Path:
    """A fresh copy of the results folder to modify."""
    return Path(shutil.copytree(results, tmp_path / "copy"))


def _dev_acc(root: Path) -> pd.DataFrame:
    acc = pd.read_parquet(root / "exit_accuracy.parquet")
    return acc[(acc["metric"] == "accuracy") & (acc["split"] == "dev")]


def _set_acc(root: Path, task: str, strategy: str, layers, value: float) -> None:
    """Every seed's dev accuracy of `strategy` at `layers` on `task` := value (fraction)."""
    acc = pd.read_parquet(root / "exit_accuracy.parquet")
    rows = ((acc["task"] == task) & (acc["strategy"] == strategy) & acc["exit_layer"].isin(list(layers))
            & (acc["metric"] == "accuracy") & (acc["split"] == "dev"))
    assert rows.any()
    acc.loc[rows, "value"] = value
    acc.to_parquet(root / "exit_accuracy.parquet", index=False)


def _drop_strategies(root: Path, keep) -> None:
    acc = pd.read_parquet(root / "exit_accuracy.parquet")
    acc[acc["strategy"].map(keep)].to_parquet(root / "exit_accuracy.parquet", index=False)


def _verdict(rows: list[dict], claim: int, task: str = "overall") -> dict:
    [row] = [r for r in rows if r["claim"] == claim and r["task"] == task]
    return row


def _section(text: str, claim: int) -> str:
    start = text.index(f"### Claim {claim}:")
    end = text.find("\n### ", start + 1)
    return text[start: end if end > 0 else len(text)]


# ---------------------------------------------------------------- structure


def test_report_has_every_section_claim_and_verdict(results, text):
    for heading in ("## 1. Scale and noise", "## 2. Per-exit dev accuracy", "## 3. The study's claims",
                    "### Verdict rules", "## 4. Early-exit summary", "## 5. Figures"):
        assert heading in text
    rows = report.claims(results)
    for claim in report.TITLES:
        section = _section(text, claim)
        overall = _verdict(rows, claim)
        assert overall["verdict"] in report.VERDICTS
        assert f"- Overall: **{overall['verdict']}**" in section
        assert f"Rule: {report.RULES[claim]}" in section
        per_task = [r for r in rows if r["claim"] == claim and r["task"] != "overall"]
        assert per_task and all(r["verdict"] in report.VERDICTS for r in per_task)
        for r in per_task:
            assert f"**{r['verdict']}**" in section
    # one per-exit table per task, every strategy a row
    for task in ("SST-2", "MRPC"):
        assert f"### {task} ({MODEL}" in text
    assert "Separate Reverse (α=0.9)" in text
    assert "Largest layer speed-up" in text  # the early-exit summary from benchmark.tables
    assert "Measured wall-clock speed-up" in text  # latency.parquet


def test_scale_numbers_recomputed(results, text):
    runs = [json.loads(p.read_text()) for p in (results / "runs").rglob("run.json")]
    wall = sum(r["wall_time_s"] for r in runs if r["status"] == "finished")
    assert f"total wall time {wall / 3600:.2f} h ({wall:,.0f} s)" in text
    assert f"{sum(r['status'] == 'finished' for r in runs)} finished runs" in text
    acc = _dev_acc(results)
    for task, label in (("sst2", "SST-2"), ("mrpc", "MRPC")):
        ft = acc[(acc["task"] == task) & (acc["strategy"] == "finetune")]["value"]
        n = next(r["data"]["dev_rows"] for r in runs if r["config"]["task"] == task)
        se = 100 * math.sqrt(ft.mean() * (1 - ft.mean()) / n)
        [line] = [ln for ln in text.splitlines() if ln.startswith(f"| {label} ")]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == str(n) and cells[5].startswith(f"{100 * ft.mean():.1f}") and cells[6] == f"{se:.2f}"
        stds = acc[acc["task"] == task].groupby(["strategy", "exit_layer"])["value"].std() * 100
        assert cells[8] == f"{stds.median():.2f} / {stds.max():.2f}"


def test_claim_numbers_recomputed(results, text):
    acc = _dev_acc(results)
    rows = report.claims(results)

    def mean(task, strategy, layer):
        sel = acc[(acc["task"] == task) & (acc["strategy"] == strategy) & (acc["exit_layer"] == layer)]
        return 100 * sel["value"].mean()

    row = _verdict(rows, 2, "sst2")
    oracle, joint = mean("sst2", "oracle", 1), mean("sst2", "joint", 1)
    assert row["evidence"]["oracle_exit1"] == pytest.approx(oracle)
    assert row["evidence"]["exit1_diff"] == pytest.approx(oracle - joint)
    assert f"exit 1: oracle {oracle:.1f} vs joint {joint:.1f}" in _section(text, 2)

    row = _verdict(rows, 5, "mrpc")
    drop = mean("mrpc", "finetune", NUM_LAYERS) - mean("mrpc", "separate_reverse", NUM_LAYERS)
    assert row["evidence"]["drop"] == pytest.approx(drop)
    assert f"drop {drop:+.1f} points" in _section(text, 5)

    early = pd.read_parquet(results / "early_exit.parquet")
    sel = early[(early["task"] == "sst2") & (early["strategy"] == "separate_reverse") & (early["split"] == "dev")
                & (early["rule"] == "maxprob") & np.isclose(early["threshold"], 0.8)]
    speed = sel["speedup_layers"].mean()
    assert _verdict(rows, 7, "sst2")["evidence"]["speedup_separate_reverse_t0.8"] == pytest.approx(speed)
    assert f"t=0.8: {speed:.2f}×" in _section(text, 7)

    gc = pd.read_parquet(results / "gradient_cosine.parquet")
    cos = gc[(gc["exit_i"] == 1) & (gc["exit_j"] == NUM_LAYERS)]["cosine"].mean()
    assert _verdict(rows, 1, "sst2")["evidence"][f"cos_1_{NUM_LAYERS}"] == pytest.approx(cos)
    assert f"1-{NUM_LAYERS}: {cos:.2f}" in _section(text, 1)


# ---------------------------------------------------------------- verdict rules


def test_rule_helpers():
    a, b = report.Cell(80.0, sampling_se=1.0), report.Cell(75.0, sampling_se=1.0)
    d = report.compare(a, b)
    assert d.se == pytest.approx(math.sqrt(2)) and report.difference_verdict(d) == report.HOLDS
    assert report.difference_verdict(report.compare(b, a)) == report.NOT_HOLD
    assert report.difference_verdict(report.compare(a, report.Cell(79.0, sampling_se=1.0))) == report.INCONCLUSIVE
    assert report.Cell(80.0, std=3.0, sampling_se=1.0).se == 3.0  # the seed std when larger
    assert report.difference_verdict(report.compare(report.Cell(90.0), report.Cell(10.0))) == report.INCONCLUSIVE
    assert report.closeness_verdict(0.9, 1.0, 5.0) == report.HOLDS
    assert report.closeness_verdict(3.0, 1.0, 5.0) == report.INCONCLUSIVE
    assert report.closeness_verdict(12.0, 1.0, 5.0) == report.NOT_HOLD
    assert report.combine([report.HOLDS, report.NO_DATA, report.HOLDS]) == report.HOLDS
    assert report.combine([report.HOLDS, report.INCONCLUSIVE]) == report.MIXED
    assert report.combine([report.NO_DATA]) == report.NO_DATA
    sig_above, tie, sig_below = (report.Diff(0, 0, x, 1.0) for x in (5.0, 0.0, -5.0))
    assert report.top_k_verdict([sig_below, tie, sig_below], k=2) == report.HOLDS
    assert report.top_k_verdict([tie, tie, sig_below], k=2) == report.INCONCLUSIVE
    assert report.top_k_verdict([sig_above, sig_above, tie], k=2) == report.NOT_HOLD


@pytest.mark.parametrize("oracle, joint, expected", [
    (0.90, 0.60, report.HOLDS), (0.75, 0.75, report.INCONCLUSIVE), (0.60, 0.90, report.NOT_HOLD)])
def test_oracle_vs_joint_verdict(copy, oracle, joint, expected):
    _set_acc(copy, "sst2", "oracle", (1, 2, 3), oracle)
    _set_acc(copy, "sst2", "joint", (1, 2, 3), joint)
    rows = report.claims(copy)
    assert _verdict(rows, 2, "sst2")["verdict"] == expected
    assert set(_verdict(rows, 2, "sst2")["parts"].values()) == {expected}
    section = _section(report.build_report(copy), 2)
    assert f"- SST-2: **{expected}**" in section
    assert ("The data disagree with the study here." in section) == (expected == report.NOT_HOLD)


def test_gradient_conflict_verdicts(copy):
    gc = pd.read_parquet(copy / "gradient_cosine.parquet")
    gc["cosine"] = np.where(gc["exit_i"] == 1, 0.05, 0.5)
    gc.to_parquet(copy / "gradient_cosine.parquet", index=False)
    assert _verdict(report.claims(copy), 1, "sst2")["verdict"] == report.HOLDS
    gc["cosine"] = 0.6
    gc.to_parquet(copy / "gradient_cosine.parquet", index=False)
    assert _verdict(report.claims(copy), 1, "sst2")["verdict"] == report.NOT_HOLD
    (copy / "gradient_cosine.parquet").unlink()
    row = _verdict(report.claims(copy), 1)
    assert row["verdict"] == report.NO_DATA and "gradient_cosine.parquet" in row["text"]
    assert "- Overall: **no data**" in _section(report.build_report(copy), 1)


def test_main_exit_and_kd_verdicts(copy):
    _set_acc(copy, "sst2", "finetune", (NUM_LAYERS,), 0.95)
    _set_acc(copy, "sst2", "separate_reverse", (NUM_LAYERS,), 0.945)   # 0.5 point below: within 1 point
    _set_acc(copy, "sst2", "separate_reverse_nokd", (NUM_LAYERS,), 0.80)
    _set_acc(copy, "mrpc", "finetune", (NUM_LAYERS,), 0.95)
    _set_acc(copy, "mrpc", "separate_reverse", (NUM_LAYERS,), 0.80)    # 15 points below
    rows = report.claims(copy)
    assert _verdict(rows, 5, "sst2")["verdict"] == report.HOLDS
    assert _verdict(rows, 5, "mrpc")["verdict"] == report.NOT_HOLD
    assert _verdict(rows, 5)["verdict"] == report.MIXED
    assert _verdict(rows, 6, "sst2")["verdict"] == report.HOLDS
    assert _verdict(rows, 6, "sst2")["parts"] == {"vs separate_reverse": report.HOLDS, "vs finetune": report.HOLDS}


def test_shallow_rank_verdicts(copy):
    _set_acc(copy, "sst2", "separate_reverse", (1,), 0.97)
    for strategy in ("joint", "two_stage", "branchwise", "separate"):
        _set_acc(copy, "sst2", strategy, (1,), 0.60)
    _set_acc(copy, "mrpc", "separate_reverse", (1,), 0.50)
    _set_acc(copy, "mrpc", "joint", (1,), 0.90)
    _set_acc(copy, "mrpc", "separate", (1,), 0.90)
    rows = report.claims(copy)
    assert _verdict(rows, 4, "sst2")["verdict"] == report.HOLDS
    assert _verdict(rows, 4, "mrpc")["verdict"] == report.NOT_HOLD
    assert _verdict(rows, 4, "mrpc")["evidence"]["significantly_above"] >= 2


def test_existing_weaknesses_verdict(copy):
    _set_acc(copy, "sst2", "finetune", (NUM_LAYERS,), 0.95)
    _set_acc(copy, "sst2", "branchwise", (NUM_LAYERS,), 0.70)
    _set_acc(copy, "sst2", "separate", (NUM_LAYERS,), 0.70)
    _set_acc(copy, "sst2", "two_stage", (1,), 0.50)
    for strategy in ("joint", "branchwise", "separate", "separate_reverse"):
        _set_acc(copy, "sst2", strategy, (1,), 0.85)
    row = _verdict(report.claims(copy), 3, "sst2")
    assert row["verdict"] == report.HOLDS and len(row["parts"]) == 3


def test_speedup_verdict(copy):
    """The method's sweep made faster and more accurate at every threshold: both parts hold."""
    early = pd.read_parquet(copy / "early_exit.parquet")
    mine = (early["task"] == "sst2") & (early["strategy"] == "separate_reverse") & (early["split"] == "dev") \
        & (early["rule"] == "maxprob")
    early.loc[mine, "speedup_layers"] = early.loc[mine, "speedup_layers"] * 3
    early.loc[mine, "accuracy"] = 1.0
    early.to_parquet(copy / "early_exit.parquet", index=False)
    row = _verdict(report.claims(copy), 7, "sst2")
    assert row["parts"]["curve"] == report.HOLDS
    assert row["verdict"] == report.HOLDS, row["text"]


def test_missing_strategies_give_no_data(copy):
    _drop_strategies(copy, lambda s: not s.startswith("separate_reverse@") and s != "separate_reverse_nokd")
    rows = report.claims(copy)
    row = _verdict(rows, 8, "sst2")
    assert row["verdict"] == report.NO_DATA and "alpha" in row["text"]
    assert _verdict(rows, 6, "sst2")["verdict"] == report.NO_DATA
    assert "separate_reverse_nokd" in _verdict(rows, 6, "sst2")["text"]
    assert _verdict(rows, 6)["verdict"] == report.NO_DATA
    assert _verdict(rows, 2)["verdict"] != report.NO_DATA  # the rest still judged


def test_alpha_verdict(copy):
    for task in TASKS:
        _set_acc(copy, task, "separate_reverse_nokd", (NUM_LAYERS,), 0.70)
        _set_acc(copy, task, "separate_reverse_nokd", (1,), 0.90)
        _set_acc(copy, task, "separate_reverse@alpha=0.9", (NUM_LAYERS,), 0.95)
        _set_acc(copy, task, "separate_reverse@alpha=0.9", (1,), 0.60)
    rows = report.claims(copy)
    assert _verdict(rows, 8)["verdict"] == report.HOLDS
    assert _verdict(rows, 8, "sst2")["evidence"]["alpha0_main"] == pytest.approx(70.0)


def test_empty_results_folder(tmp_path):
    text = report.build_report(tmp_path)
    rows = report.claims(tmp_path)
    assert {r["verdict"] for r in rows} == {report.NO_DATA}
    assert text.count("- Overall: **no data**") == len(report.TITLES)


# ---------------------------------------------------------------- CLI and figures


def test_cli_writes_report_with_figure_links(results, tmp_path):
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "exit_accuracy_sst2_minilm-l6.png").write_bytes(b"png")
    (plots / "notes.txt").write_text("not a figure")
    out = tmp_path / "out" / "REPORT.md"
    assert report.main(["--results", str(results), "--out", str(out), "--plots", str(plots)]) == 0
    text = out.read_text()
    assert "[exit_accuracy_sst2_minilm-l6.png](../plots/exit_accuracy_sst2_minilm-l6.png)" in text
    assert "notes.txt" not in text


def test_cli_missing_results_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmark.report", "--results", str(tmp_path / "nope")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0]
