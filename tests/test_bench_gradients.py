"""The gradient-conflict probe and the speed benchmarks, run on the tiny model (mechanics, not timings)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark import bench, gradients, storage
from benchmark.model import MultiExitModel

ROOT = Path(__file__).resolve().parents[1]
GLUE_DIR = os.environ.get("GLUE_DIR") or str(ROOT.parent / "shared" / "glue")


def test_probe_writes_symmetric_cosines(tmp_path, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", GLUE_DIR)
    results = tmp_path / "results"
    args = ["--profile", "smoke", "--task", "rte", "--steps", "3", "--results", str(results),
            "--checkpoints", str(tmp_path / "ck")]
    assert gradients.main(args) == 0
    mean = pd.read_parquet(results / "gradient_cosine.parquet")
    assert list(mean.columns) == ["task", "model", "exit_i", "exit_j", "cosine", "steps"]
    assert set(mean.exit_i) == {1, 2, 3, 4} and (mean.steps == 3).all()
    matrix = mean.pivot(index="exit_i", columns="exit_j", values="cosine")
    assert np.allclose(matrix.values, matrix.values.T)
    assert np.allclose(np.diag(matrix.values), 1.0)
    assert (mean.cosine.abs() <= 1 + 1e-6).all()
    per_step = pd.read_parquet(results / "gradient_cosine_steps.parquet")
    assert sorted(per_step.step.unique()) == [0, 1, 2]
    # a second probe of another model keeps the first one's rows
    assert gradients.main([*args, "--steps", "2", "--exits", "1,2"]) == 0
    assert len(pd.read_parquet(results / "gradient_cosine.parquet")) == 9  # 3x3 of the replacement (same model)


def test_recorder_cosine_matches_a_hand_computation(tiny_bert_dir):
    model = MultiExitModel.from_backbone(tiny_bert_dir, 2, (1, 2), "mean")
    ids = torch.randint(5, 100, (4, 9))
    mask = torch.ones_like(ids)
    out = model(ids, mask)
    labels = torch.tensor([0, 1, 0, 1])
    parts = {f"ce@{e}": torch.nn.functional.cross_entropy(logits, labels) for e, logits in zip(out.layers, out.logits)}
    recorder = gradients.CosineRecorder()
    recorder(model, parts)
    params = gradients.shared_parameters(model)
    g1 = torch.cat([g.flatten() for g in torch.autograd.grad(parts["ce@1"], params, retain_graph=True)])
    g4 = torch.cat([g.flatten() for g in torch.autograd.grad(parts["ce@4"], params, retain_graph=True)])
    expected = torch.nn.functional.cosine_similarity(g1, g4, dim=0).item()
    row = next(r for r in recorder.rows if (r["exit_i"], r["exit_j"]) == (1, 4))
    assert row["cosine"] == pytest.approx(expected, abs=1e-6)


def test_teacher_bench_keeps_metrics_identical(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GLUE_DIR", GLUE_DIR)
    args = ["teacher", "--profile", "smoke", "--repeats", "1", "--rows", "64", "--results", str(tmp_path / "r"),
            "--checkpoints", str(tmp_path / "ck")]
    assert bench.main(args) == 0
    df = pd.read_parquet(tmp_path / "r" / "bench" / "teacher.parquet")
    assert set(df["mode"]) == {"cached", "per_step"} and df["identical_metrics"].all()
    assert "identical: True" in capsys.readouterr().out


def test_latency_bench_matches_layer_counts(tmp_path, monkeypatch):
    monkeypatch.setenv("GLUE_DIR", GLUE_DIR)
    args = ["latency", "--profile", "smoke", "--repeats", "1", "--rows", "16", "--results", str(tmp_path / "r"),
            "--checkpoints", str(tmp_path / "ck")]
    assert bench.main(args) == 0
    df = pd.read_parquet(tmp_path / "r" / "latency.parquet")
    assert set(df.batch_size) == {1, 32} and set(df.task) == {"sst2", "rte"}
    assert np.allclose(sorted(df.threshold.unique()), bench.THRESHOLDS)
    assert (df.layer_speedup >= 1).all() and (df.layer_speedup <= 4).all()
    assert np.allclose(df.ratio, df.measured_speedup / df.layer_speedup)
    # the saved model is reused by a second call instead of being trained again
    assert (tmp_path / "ck" / "models" / "rte" / "tiny-bert" / "separate_reverse" / "seed0" / "config.json").exists()


def test_gpu_check_script_runs_on_cpu_tiny(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--tiny", "--rows", "64", "--repeats", "1",
           "--latency-rows", "16"]
    subprocess.run(cmd,
                   env=env, check=True, capture_output=True, timeout=300)
    rows = pd.read_json(tmp_path / "gpu_check.json")
    assert set(rows.measure) == {"finetune_throughput", "early_exit_latency"}
    assert (rows.dropna(subset=["samples_per_s"]).samples_per_s > 0).all()


def test_resume_skips_stored_probe_and_bench_and_keeps_other_models(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GLUE_DIR", GLUE_DIR)
    results = tmp_path / "results"
    other = pd.DataFrame({"mode": ["cached"], "seconds": [1.0], "model": ["minilm-l6"]})
    storage.write_table(other, results / "bench" / "teacher.parquet")  # another model's numbers
    common = ["--profile", "smoke", "--results", str(results), "--checkpoints", str(tmp_path / "ck")]
    bench_args = ["teacher", *common, "--repeats", "1", "--rows", "32", "--skip-existing"]
    assert bench.main(bench_args) == 0
    stored = pd.read_parquet(results / "bench" / "teacher.parquet")
    assert set(stored["model"]) == {"minilm-l6", "tiny-bert"}  # added beside, not over
    assert bench.main(bench_args) == 0  # second time: kept, nothing rewritten
    assert "already holds tiny-bert" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_parquet(results / "bench" / "teacher.parquet"), stored)

    probe_args = ["--task", "rte", "--steps", "2", "--skip-existing", *common]
    assert gradients.main(probe_args) == 0
    first = pd.read_parquet(results / "gradient_cosine_steps.parquet")
    assert gradients.main(probe_args) == 0
    assert "already holds rte / tiny-bert" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_parquet(results / "gradient_cosine_steps.parquet"), first)
