"""The study runner (benchmark.run): a real smoke grid, resume after kills, failures, sharding, bad input.

Everything trains the `smoke` profile's tiny random BERT on 64 RTE rows for one epoch, offline, on CPU.
One finished grid (joint + two_stage, with a calibration split) is shared by the module; the tests that
change results work on copies of it. GLUE_DIR: $GLUE_DIR, else ../shared/glue beside the repository.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pandas as pd
import pytest

from benchmark import collect, profiles, run, storage
from benchmark.data import get_task
from benchmark.model import resolve_model
from benchmark.strategies import REGISTRY, Strategy
from benchmark.training import Stage

REPO = Path(__file__).resolve().parents[1]
GLUE_DIR = Path(os.environ.get("GLUE_DIR") or Path(__file__).resolve().parents[2] / "shared" / "glue").resolve()
MODEL = "tiny-bert"
NUM_LAYERS = 4  # the tiny BERT; exits 1, 2, 3 + main exit 4
EXIT_LAYERS = [1, 2, 3, 4]
DEV_ROWS = 32
SMALL = ["--profile", "smoke", "--model", MODEL, "--tasks", "rte", "--max-train-samples", "64",
         "--max-eval-samples", str(DEV_ROWS), "--epochs", "1"]
GRID_STRATEGIES = ["joint", "two_stage"]
GRID_FLAGS = [*SMALL, "--strategies", ",".join(GRID_STRATEGIES), "--calib-fraction", "0.2"]
COLUMNS = {
    "exit_accuracy": ["task", "model", "strategy", "seed", "split", "exit_layer", "metric", "value"],
    "exit_counts": ["task", "model", "strategy", "seed", "split", "rule", "threshold", "exit_layer", "count"],
    "early_exit": ["task", "model", "strategy", "seed", "split", "rule", "threshold", "accuracy", "speedup_layers",
                   "speedup_cost"],
}


# --- fixtures and helpers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def offline_env(tmp_path_factory):
    """Offline, real GLUE TSVs, and a private datasets cache (also for subprocesses)."""
    if not (GLUE_DIR / "RTE" / "train.tsv").is_file():
        pytest.fail(f"GLUE TSVs not found at {GLUE_DIR}; set GLUE_DIR to the shared/glue folder")
    cache = tmp_path_factory.mktemp("hf_datasets_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
        for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "GLUE_DIR": str(GLUE_DIR),
                           "HF_DATASETS_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "false"}.items():
            mp.setenv(key, value)
        yield cache


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """A checkpoints folder with the tiny BERT already built (as after any first run)."""
    path = tmp_path_factory.mktemp("checkpoints")
    resolve_model(MODEL, path)
    return path


def run_main(argv) -> tuple[int, str, str]:
    """benchmark.run.main in this process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def where(results: Path, checkpoints: Path) -> list[str]:
    return ["--results", str(results), "--checkpoints", str(checkpoints)]


def folder(results: Path, strategy: str, seed: int = 0, task: str = "rte") -> Path:
    return storage.run_dir(results, task, MODEL, strategy, seed)


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under root: (mtime in ns, content)."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def plan_lines(stdout: str) -> list[str]:
    return [line[4:] for line in stdout.splitlines() if line.startswith("  - ")]


@pytest.fixture(scope="module")
def grid(tmp_path_factory, checkpoints):
    """The shared finished smoke grid: joint and two_stage on RTE, seed 0, 20% of train held out for calib."""
    results = tmp_path_factory.mktemp("grid") / "results"
    argv = [*GRID_FLAGS, *where(results, checkpoints)]
    rc, out, err = run_main(argv)
    assert rc == 0, f"smoke grid failed ({rc}):\n{out}\n{err[-3000:]}"
    return SimpleNamespace(results=results, checkpoints=checkpoints, argv=argv, stdout=out, stderr=err)


# --- 1. a smoke grid ---------------------------------------------------------------------------------------


def test_smoke_grid_writes_complete_run_folders(grid):
    assert plan_lines(grid.stdout) == ["rte joint seed0", "rte two_stage seed0"]
    assert "Plan: 2 run(s) of model tiny-bert: 0 already finished, 2 to do" in grid.stdout
    for strategy in GRID_STRATEGIES:
        path = folder(grid.results, strategy)
        assert storage.is_finished(path), path
        assert re.search(rf"^rte tiny-bert {strategy} seed0: exit 1 [\d.]+ \| exit 2 [\d.]+ \| exit 3 [\d.]+ \| "
                         rf"exit 4 [\d.]+ \(\d+ s\)$", grid.stdout, re.M), grid.stdout
        meta = json.loads((path / "run.json").read_text())
        assert meta["status"] == "finished"
        c = meta["config"]
        assert (c["task"], c["strategy"], c["seed"], c["model"]) == ("rte", strategy, 0, MODEL)
        assert (c["num_layers"], c["exit_layers"], c["layers_paid"]) == (NUM_LAYERS, EXIT_LAYERS, EXIT_LAYERS)
        assert (c["exits"], c["exit_pooling"], c["epochs"]) == ([1, 2, 3], "mean", 1)
        assert (c["max_train_samples"], c["max_eval_samples"], c["calib_fraction"]) == (64, DEV_ROWS, 0.2)
        assert c["data_dir"] == str(GLUE_DIR)
        assert c["hidden_size"] == 64 and c["num_labels"] == 2
        d = meta["data"]
        assert (d["train_rows"], d["dev_rows"], d["calib_rows"], d["num_labels"]) == (64, DEV_ROWS, 498, 2)
        assert sum(d["train_label_counts"].values()) == 64 and sum(d["dev_label_counts"].values()) == DEV_ROWS
        env = meta["env"]
        assert re.fullmatch(r"[0-9a-f]{40}", env["git_commit"] or ""), env["git_commit"]
        assert isinstance(env["git_dirty"], bool)
        for package in ("benchmark", "torch", "transformers", "datasets", "numpy", "pandas"):
            assert env["packages"][package], package
        assert env["device"] == "cpu" and env["python"]
        stages = {"joint": {"joint"}, "two_stage": {"finetune", "heads"}}[strategy]
        assert stages | {"evaluate"} <= set(meta["timings"]), meta["timings"]
        assert all(v >= 0 for v in meta["timings"].values()) and meta["wall_time_s"] > 0
        assert 0 < meta["cpu_time_s"] and meta["peak_rss_mb"] > 0

        predictions = pd.read_parquet(path / "predictions.parquet")
        assert list(predictions.columns) == ["split", "example_id", "label", "num_tokens", "exit_layer", "probs"]
        assert set(predictions["split"]) == {"dev", "calib"}
        for split, rows in (("dev", DEV_ROWS), ("calib", 498)):
            part = predictions[predictions["split"] == split]
            assert len(part) == rows * len(EXIT_LAYERS)  # one row per example per exit
            assert part["example_id"].nunique() == rows
            per_example = part.groupby("example_id")["exit_layer"].apply(sorted)
            assert all(layers == EXIT_LAYERS for layers in per_example)
            assert (part["num_tokens"] > 0).all()
        probs = np.stack(predictions["probs"].to_numpy())
        assert probs.shape == (len(predictions), 2)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        assert (probs >= 0).all()

        metrics = pd.read_parquet(path / "exit_metrics.parquet")
        assert list(metrics.columns) == ["exit_layer", "metric", "value", "split"]
        for split in ("dev", "calib"):
            part = predictions[predictions["split"] == split]
            correct = np.stack(part["probs"].to_numpy()).argmax(1) == part["label"].to_numpy()
            expected = pd.Series(correct).groupby(part["exit_layer"].to_numpy()).mean()
            acc = metrics[(metrics["split"] == split) & (metrics["metric"] == "accuracy")]
            assert list(acc["exit_layer"]) == EXIT_LAYERS
            np.testing.assert_allclose(acc["value"].to_numpy(), expected.loc[EXIT_LAYERS].to_numpy())


def test_smoke_grid_collects_documented_tables(grid):
    assert re.search(r"^collected 2 runs into .*\{exit_accuracy,exit_counts,early_exit\}\.parquet$", grid.stdout,
                     re.M), grid.stdout
    tables = {name: pd.read_parquet(grid.results / f"{name}.parquet") for name in COLUMNS}
    for name, columns in COLUMNS.items():
        assert list(tables[name].columns) == columns, name
        assert set(tables[name]["strategy"]) == set(GRID_STRATEGIES), name
        assert set(tables[name]["split"]) == {"dev", "calib"}, name
        assert set(tables[name]["task"]) == {"rte"} and set(tables[name]["model"]) == {MODEL}

    acc = tables["exit_accuracy"]
    stored = pd.read_parquet(folder(grid.results, "joint") / "exit_metrics.parquet")
    joint = acc[acc["strategy"] == "joint"]
    np.testing.assert_array_equal(joint["value"].to_numpy(), stored["value"].to_numpy())

    counts = tables["exit_counts"]
    assert set(counts["rule"]) == {"maxprob", "entropy", "patience"}
    sums = counts.groupby(["strategy", "split", "rule", "threshold"])["count"].sum()
    assert len(sums) == 2 * 2 * (201 + 201 + len(EXIT_LAYERS))
    for (strategy, split, rule, threshold), total in sums.items():
        assert total == {"dev": DEV_ROWS, "calib": 498}[split], (strategy, split, rule, threshold)

    curves = tables["early_exit"]
    assert len(curves[(curves["rule"] == "maxprob") & (curves["split"] == "dev")]) == 2 * 201
    for strategy in GRID_STRATEGIES:
        at0 = curves[(curves["strategy"] == strategy) & (curves["split"] == "dev") & (curves["rule"] == "maxprob")
                     & (curves["threshold"] == 0.0)]
        assert len(at0) == 1
        # every sample leaves at the first exit: S = L / e_1, exactly
        assert at0["speedup_layers"].iloc[0] == NUM_LAYERS / 1
        exit1 = acc[(acc["strategy"] == strategy) & (acc["split"] == "dev") & (acc["metric"] == "accuracy")
                    & (acc["exit_layer"] == 1)]["value"].iloc[0]
        assert at0["accuracy"].iloc[0] == pytest.approx(exit1)
        assert 1 < at0["speedup_cost"].iloc[0] < NUM_LAYERS  # exit heads cost something
        leave0 = counts[(counts["strategy"] == strategy) & (counts["split"] == "dev")
                        & (counts["rule"] == "maxprob") & (counts["threshold"] == 0.0)]
        assert dict(zip(leave0["exit_layer"], leave0["count"])) == {1: DEV_ROWS, 2: 0, 3: 0, 4: 0}


# --- 2. rerun skips, --force redoes ------------------------------------------------------------------------


def test_rerun_skips_finished_runs_and_force_redoes_them(grid, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(grid.results, results)
    argv = [*GRID_FLAGS, *where(results, grid.checkpoints)]
    before = snapshot(results / "runs")

    rc, out, err = run_main(argv)
    assert rc == 0, err[-2000:]
    assert "Plan: 2 run(s) of model tiny-bert: 2 already finished, 0 to do" in out
    assert plan_lines(out) == [] and "seed0: exit 1" not in out
    assert snapshot(results / "runs") == before

    rc, out, err = run_main([*argv, "--force"])
    assert rc == 0, err[-2000:]
    assert plan_lines(out) == ["rte joint seed0", "rte two_stage seed0"]
    after = snapshot(results / "runs")
    assert set(after) == set(before)
    for strategy in GRID_STRATEGIES:
        rel = str(folder(results, strategy).relative_to(results / "runs") / "run.json")
        assert after[rel][0] > before[rel][0], f"{strategy} was not redone"
        assert json.loads(after[rel][1])["status"] == "finished"
        assert storage.is_finished(folder(results, strategy))
    assert not list((results / "runs").rglob(".tmp-*"))


# --- 3. kill and resume ------------------------------------------------------------------------------------


KILL_STRATEGIES = ["joint", "weighted", "alternating", "sweet"]


def _start_grid(results: Path, checkpoints: Path, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "benchmark.run", *SMALL, "--strategies", ",".join(KILL_STRATEGIES),
            *where(results, checkpoints)]
    with open(log, "wb") as f:
        return subprocess.Popen(argv, cwd=REPO, env=dict(os.environ), stdout=f, stderr=subprocess.STDOUT)


def _wait_finished(proc: subprocess.Popen, path: Path, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not storage.is_finished(path):
        if proc.poll() is not None:
            pytest.fail(f"runner exited ({proc.returncode}) before {path} finished:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} not finished after {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def _check_no_false_finish(results: Path) -> None:
    """A run.json that says finished lies only in a complete folder (or a temporary one, never counted)."""
    for meta in (results / "runs").rglob("run.json"):
        if json.loads(meta.read_text()).get("status") == "finished":
            path = meta.parent
            assert path.name.startswith(".tmp-") or storage.is_finished(path), path


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_killed_grid_resumes_without_redoing_finished_runs(tmp_path, checkpoints):
    results = tmp_path / "results"
    paths = [folder(results, s) for s in KILL_STRATEGIES]
    live_tmp = paths[1].parent / f".tmp-seed0-{os.getpid()}"  # a writer that is still alive: kept
    stale = []
    kept: dict[str, tuple[int, bytes]] = {}
    for k, sig in enumerate([signal.SIGINT, signal.SIGTERM, signal.SIGKILL]):
        log = tmp_path / f"round{k}.log"
        proc = _start_grid(results, checkpoints, log)
        try:
            _wait_finished(proc, paths[k], log)
            assert proc.poll() is None, "the grid finished before it could be killed"
            proc.send_signal(sig)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert rc != 0, f"{sig.name}: exit code {rc}"
        _check_no_false_finish(results)
        assert [storage.is_finished(p) for p in paths] == [True] * (k + 1) + [False] * (3 - k), sig.name
        assert not (paths[k + 1] / "run.json").exists(), f"{sig.name}: the interrupted run left a run.json"
        now = snapshot(results / "runs")
        assert {f: now[f] for f in kept} == kept, f"{sig.name}: a finished run was rewritten by the resume"
        kept = {f: v for f, v in now.items() if not f.split("/")[-2].startswith(".tmp-")}
        for tmp in stale:
            assert not tmp.exists(), f"stale {tmp} was not removed"
        assert live_tmp.exists() == (k > 0)
        # a writer killed after run.json but before the rename: a finished-looking temporary folder
        tmp = paths[k + 1].parent / f".tmp-seed0-{_dead_pid()}"
        tmp.mkdir(parents=True)
        (tmp / "run.json").write_text(json.dumps({"status": "finished"}))
        stale.append(tmp)
        if k == 0:
            live_tmp.mkdir(parents=True)

    rc, out, err = run_main([*SMALL, "--strategies", ",".join(KILL_STRATEGIES), *where(results, checkpoints)])
    assert rc == 0, err[-3000:]
    assert "4 run(s) of model tiny-bert: 3 already finished, 1 to do" in out
    assert plan_lines(out) == ["rte sweet seed0"]
    assert all(storage.is_finished(p) for p in paths)
    now = snapshot(results / "runs")
    assert {f: now[f] for f in kept} == kept
    assert not any(t.exists() for t in stale), "stale temporary folders were not removed"
    assert live_tmp.exists(), "the temporary folder of a live process was removed"
    tables = pd.read_parquet(results / "exit_accuracy.parquet")
    assert set(tables["strategy"]) == set(KILL_STRATEGIES)
    shutil.rmtree(live_tmp)


# --- 4. a diverging strategy -------------------------------------------------------------------------------


def _nan_strategy(exits, L):
    def loss(s):
        return s.outputs.at(L).sum() * float("nan"), {}

    return [Stage("nan", lambda m: [m], loss)]


def test_nan_loss_is_recorded_as_failed_and_the_grid_goes_on(tmp_path, checkpoints, monkeypatch, capsys):
    monkeypatch.setitem(REGISTRY, "nan_loss", Strategy("nan_loss", _nan_strategy, "pretrained", {}, "test only"))
    results = tmp_path / "results"
    rc = run.main([*SMALL, "--strategies", "nan_loss,joint", *where(results, checkpoints)])
    out, err = capsys.readouterr()
    assert rc == 1

    failed = storage.read_run(folder(results, "nan_loss"))
    assert failed["status"] == "failed"
    assert "non-finite loss" in failed["error"]
    assert (failed["config"]["strategy"], failed["config"]["seed"]) == ("nan_loss", 0)
    assert failed["env"]["git_commit"]
    assert not storage.is_finished(folder(results, "nan_loss"))
    assert storage.is_finished(folder(results, "joint"))

    lines = err.splitlines()
    assert "1 run(s) failed:" in lines
    assert any(re.fullmatch(r"  rte nan_loss seed0: non-finite loss .*", line) for line in lines), err
    assert "Traceback" not in err

    assert re.search(r"^skipped .*nan_loss/seed0: status 'failed': non-finite loss", out, re.M), out
    assert "1 folder(s) skipped" in out
    tables = collect.collect(results)
    assert set(tables["exit_accuracy"]["strategy"]) == {"joint"}
    assert set(pd.read_parquet(results / "early_exit.parquet")["strategy"]) == {"joint"}


# --- 5. reproducible ---------------------------------------------------------------------------------------


def test_same_seed_gives_identical_results(grid, tmp_path):
    results = tmp_path / "results"
    rc, out, err = run_main([*SMALL, "--strategies", "joint", "--calib-fraction", "0.2",
                             *where(results, tmp_path / "checkpoints")])
    assert rc == 0, err[-2000:]
    first, again = folder(grid.results, "joint"), folder(results, "joint")
    pd.testing.assert_frame_equal(pd.read_parquet(again / "exit_metrics.parquet"),
                                  pd.read_parquet(first / "exit_metrics.parquet"), check_exact=True)
    p1, p2 = (pd.read_parquet(f / "predictions.parquet") for f in (first, again))
    np.testing.assert_array_equal(np.stack(p1["probs"].to_numpy()), np.stack(p2["probs"].to_numpy()))


# --- 6. bad input ------------------------------------------------------------------------------------------


BAD_INPUT = {
    "unknown profile": ["--profile", "nope"],
    "unknown task": ["--tasks", "nope"],
    "regression task": ["--tasks", "stsb"],
    "unknown strategy": ["--strategies", "nope"],
    "unknown strategy parameter": ["--strategies", "separate_reverse@beta=0.3"],
    "bad strategy parameter value": ["--strategies", "separate_reverse@alpha=high"],
    "strategy parameter out of range": ["--strategies", "separate_reverse@alpha=2"],
    "exit 0": ["--exits", "0"],
    "exit 99": ["--exits", "99"],
    "exits not increasing": ["--exits", "2,1"],
    "exits not integers": ["--exits", "a"],
    "shard out of range": ["--shard", "3/2"],
    "shard not i/n": ["--shard", "x"],
    "calib fraction 1": ["--calib-fraction", "1"],
    "calib fraction negative": ["--calib-fraction", "-0.1"],
    "calib fraction not a number": ["--calib-fraction", "lots"],
    "missing data dir": ["--data-dir", "/nonexistent/glue"],
    "seeds not integers": ["--seeds", "0,x"],
}


def _assert_rejected(rc, out, err, results: Path):
    assert rc == 2, f"exit code {rc}\nstdout: {out[-1500:]}\nstderr: {err[-1500:]}"
    assert len(err.splitlines()) == 1 and err.startswith("error: "), f"stderr: {err!r}"
    assert "Traceback" not in out + err
    assert out == "", f"stdout: {out!r}"
    assert not results.exists(), f"{results} was created"


@pytest.mark.parametrize("flags", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_is_one_line_exit_2_and_writes_nothing(flags, tmp_path, checkpoints, capsys):
    results = tmp_path / "results"
    before = snapshot(checkpoints)
    rc = run.main([*SMALL, "--strategies", "joint", *flags, *where(results, checkpoints)])
    out, err = capsys.readouterr()
    _assert_rejected(rc, out, err, results)
    assert snapshot(checkpoints) == before, "the checkpoints folder changed"


def test_bad_input_messages_name_the_problem(tmp_path, checkpoints, capsys):
    for flags, words in [(["--tasks", "stsb"], ["stsb", "regression"]), (["--exits", "2,1"], ["increasing"]),
                         (["--shard", "3/2"], ["0 <= i < n"]), (["--strategies", "nope"], ["nope", "joint"]),
                         (["--profile", "nope"], ["nope", "smoke", "paper"])]:
        rc = run.main([*SMALL, *flags, *where(tmp_path / "results", checkpoints)])
        _, err = capsys.readouterr()
        assert rc == 2 and all(w in err for w in words), (flags, err)


def test_results_under_a_regular_file_is_rejected(tmp_path, checkpoints, capsys):
    # Tests run as root, where chmod does not stop writes (os.access says yes): a path below a regular
    # file cannot be created by anyone.
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    results = blocker / "results"
    try:
        rc = run.main([*SMALL, "--strategies", "joint", *where(results, checkpoints)])
    except OSError as e:
        pytest.fail(f"main raised {e!r} instead of refusing the results folder up front")
    out, err = capsys.readouterr()
    assert rc == 2, out + err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and str(results) in err, err
    assert out == "" and blocker.read_text() == "x"


def test_bad_exits_with_a_fresh_checkpoints_folder_print_one_line(tmp_path, capsys):
    results = tmp_path / "results"
    rc = run.main([*SMALL, "--exits", "0", *where(results, tmp_path / "checkpoints")])
    out, err = capsys.readouterr()
    _assert_rejected(rc, out, err, results)


def test_bad_input_in_a_real_process(tmp_path, checkpoints):
    results = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "benchmark.run", *SMALL, "--exits", "2,1",
                           *where(results, checkpoints)], cwd=REPO, capture_output=True, text=True, timeout=120)
    _assert_rejected(proc.returncode, proc.stdout, proc.stderr, results)


# --- 7. shards ---------------------------------------------------------------------------------------------


def _check_partition(grid_, n):
    slices = [run.shard(grid_, i, n) for i in range(n)]
    for part in slices:
        assert len(set(part)) == len(part)
    for a, b in combinations(slices, 2):
        assert not set(a) & set(b)
    assert sum(map(len, slices)) == len(grid_)
    assert set().union(*map(set, slices)) == set(grid_)
    return slices


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_shards_partition_a_realistic_grid(n):
    tasks, seeds = ["rte", "mrpc", "sst2"], [0, 1, 2]
    full = run.build_grid(tasks, profiles.ALL_STRATEGIES, seeds, alpha_sweep_tasks=["rte"])
    assert len(full) == len(set(full)) == 3 * len(profiles.ALL_STRATEGIES) * 3 + 4 * 3
    assert sum(r.strategy.startswith("separate_reverse@alpha=") for r in full) == 12
    slices = _check_partition(full, n)
    if n == 1:
        assert slices[0] == full
    for task in tasks:  # 9 (task, seed) groups >= n: runs sharing a fine-tuned model share a slice
        for seed in seeds:
            owners = [i for i, part in enumerate(slices) if any((r.task, r.seed) == (task, seed) for r in part)]
            assert len(owners) == 1, (task, seed, owners)
    small = run.build_grid(["rte"], ["joint", "two_stage", "separate_reverse"], [0])  # one group < n
    _check_partition(small, n)


class _PlanPrinted(Exception):
    pass


def _plan(argv, monkeypatch, capsys) -> str:
    """The plan the runner prints, stopping it right after (before any model is trained)."""
    def stop():
        raise _PlanPrinted

    monkeypatch.setattr(run, "get_accelerator", stop)
    with pytest.raises(_PlanPrinted):
        run.main(argv)
    return capsys.readouterr().out


def test_cli_shards_print_disjoint_plans_covering_the_grid(tmp_path, checkpoints, monkeypatch, capsys):
    flags = [*SMALL, "--tasks", "rte,mrpc,sst2", "--strategies", "joint,two_stage", "--seeds", "0,1",
             *where(tmp_path / "results", checkpoints)]
    full = plan_lines(_plan(flags, monkeypatch, capsys))
    assert len(full) == len(set(full)) == 12
    for n in range(1, 6):
        parts = []
        for i in range(n):
            out = _plan([*flags, "--shard", f"{i}/{n}"], monkeypatch, capsys)
            lines = plan_lines(out)
            where_in_grid = f"slice {i}/{n} of the grid: " if n > 1 else ""
            header = f"Plan: {where_in_grid}{len(lines)} run(s) of model tiny-bert: 0 already finished"
            assert f"{header}, {len(lines)} to do" in out
            expected = run.shard(run.build_grid(["rte", "mrpc", "sst2"], ["joint", "two_stage"], [0, 1]), i, n)
            assert lines == [f"{r.task} {r.strategy} seed{r.seed}" for r in expected]
            for task, seed in {(r.task, r.seed) for r in expected}:
                shared = rf"^  shared stage: finetune {task} seed{seed} \((trained once|cached)\) used by two_stage$"
                assert re.search(shared, out, re.M), out
            parts.append(lines)
        assert sorted(sum(parts, [])) == sorted(full), n
        assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("flags, expected", [
    (["--strategies", "separate_reverse,separate_reverse@alpha=0.5"], [("rte", "separate_reverse", 0)]),
    (["--seeds", "0,0"], [("rte", "joint", 0)]),
    (["--tasks", "RTE"], [("rte", "joint", 0)]),
    (["--tasks", "rte,RTE"], [("rte", "joint", 0)]),
], ids=["same strategy spelled twice", "same seed twice", "folder spelling of a task", "same task twice"])
def test_grid_runs_are_unique_and_canonically_named(flags, expected):
    """A run listed twice is trained twice (or by two shards at once); a task spelled 'RTE' or 'SST-2' would
    be stored beside the canonical folder instead of resuming it."""
    grid_, _, _ = run.plan_from_args(run.parse_args(["--profile", "smoke", "--strategies", "joint", *flags]))
    assert [(r.task, r.strategy, r.seed) for r in grid_] == expected
    assert all(r.task == get_task(r.task).name for r in grid_)


# --- 8. collect over damaged folders -----------------------------------------------------------------------


def test_collect_names_corrupt_and_temporary_folders_and_keeps_the_rest(grid, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(grid.results, results)
    for name in COLUMNS:
        (results / f"{name}.parquet").unlink()
    corrupt = folder(results, "joint") / "predictions.parquet"
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])
    tmp = folder(results, "two_stage").parent / ".tmp-seed1-12345"
    shutil.copytree(folder(results, "two_stage"), tmp)

    tables = collect.collect(results)
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 2, out
    assert any(str(folder(results, "joint")) in s and "corrupt or missing parquet" in s for s in skipped), out
    assert any(str(tmp) in s and "unfinished" in s for s in skipped), out
    assert "collected 1 runs" in out and "2 folder(s) skipped" in out
    for name, columns in COLUMNS.items():
        on_disk = pd.read_parquet(results / f"{name}.parquet")
        assert list(on_disk.columns) == columns
        assert set(on_disk["strategy"]) == {"two_stage"} and set(on_disk["seed"]) == {0}, name
        assert len(on_disk) == len(tables[name])
    assert collect.main(["--results", str(results)]) == 0


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, checkpoints):
    results = tmp_path / "results"
    rc, out, err = run_main([*SMALL, "--strategies", "joint,two_stage", "--dry-run", *where(results, checkpoints)])
    assert rc == 0, err
    assert plan_lines(out) == ["rte joint seed0", "rte two_stage seed0"]
    assert not results.exists()
