"""GLUE data for the benchmark: task registry, loading, train/calibration split, tokenization.

Every task comes back with exactly the schema of the Hugging Face hub's ``nyu-mll/glue`` config
(the task's text columns, ``label`` as a ClassLabel with the hub's integer ids, ``idx``), whichever
of the two sources it was read from:

1. A folder in the classic GLUE TSV layout (``--data-dir``, else the ``GLUE_DIR`` environment
   variable), as written by the original ``download_glue_data.py``: ``DIR/RTE/train.tsv``,
   ``DIR/RTE/dev.tsv``, ``DIR/MNLI/dev_matched.tsv`` ... The files are parsed strictly (quoting off,
   every row checked, nothing dropped) and each split is stored once in the datasets cache with
   ``save_to_disk``, keyed by the file's path, mtime and size. Later loads are memory-mapped from
   there, so ``Dataset.map`` (tokenization) caches its results on disk like it does for the hub.
2. Otherwise the hub, through ``datasets.load_dataset("nyu-mll/glue", task)``.

Splits are ``train`` and ``validation`` (MNLI: the matched dev set). GLUE's test sets have no labels
and are not exposed. Problems with the data raise :class:`DataError`, whose message is one line
naming the problem and the fix; ``python -m benchmark.data TASK`` prints a JSON summary of a task.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

HUB_DATASET = "nyu-mll/glue"
_LAYOUT_HINT = "a folder in the classic GLUE TSV layout (DIR/RTE/train.tsv, DIR/RTE/dev.tsv, ...)"


class DataError(ValueError):
    """Unusable task name or data; the message is one line naming the problem and the fix."""


@dataclass(frozen=True)
class TaskSpec:
    name: str  # hub config name, e.g. 'rte'
    text_fields: tuple[str, ...]  # hub column names, one or two
    label_names: tuple[str, ...]  # hub ClassLabel names, in id order
    metric: str  # official GLUE metric besides accuracy: 'f1', 'mcc' or 'accuracy'

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), "accuracy"),
        TaskSpec("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), "f1"),
        TaskSpec("sst2", ("sentence",), ("negative", "positive"), "accuracy"),
        TaskSpec("qnli", ("question", "sentence"), ("entailment", "not_entailment"), "accuracy"),
        TaskSpec("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), "f1"),
        TaskSpec("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), "accuracy"),
        TaskSpec("cola", ("sentence",), ("unacceptable", "acceptable"), "mcc"),
    )
}


@dataclass(frozen=True)
class _TsvLayout:
    """Where a task's columns live in its classic GLUE TSV files."""

    folder: str  # e.g. 'SST-2'
    columns: dict[str, str]  # hub column (text fields and 'label') -> file column
    label_by_name: bool  # file labels are the hub's label names ('entailment'), not ids ('0')
    dev_file: str = "dev.tsv"
    headerless: tuple[str, ...] | None = None  # column names of a file without a header row


_LAYOUTS: dict[str, _TsvLayout] = {
    "rte": _TsvLayout("RTE", {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}, True),
    "mrpc": _TsvLayout("MRPC", {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"}, False),
    "sst2": _TsvLayout("SST-2", {"sentence": "sentence", "label": "label"}, False),
    "qnli": _TsvLayout("QNLI", {"question": "question", "sentence": "sentence", "label": "label"}, True),
    "qqp": _TsvLayout("QQP", {"question1": "question1", "question2": "question2", "label": "is_duplicate"}, False),
    "mnli": _TsvLayout(
        "MNLI", {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"}, True, "dev_matched.tsv"
    ),
    "cola": _TsvLayout(
        "CoLA", {"sentence": "sentence", "label": "label"}, False,
        headerless=("source", "label", "original_label", "sentence"),
    ),
}

# Bump when the TSV parsing changes, so copies cached by an older version are not reused.
_CACHE_VERSION = 1


def get_task(name: str) -> TaskSpec:
    """Look up a task; accepts the hub name ('sst2') and the folder spelling ('SST-2')."""
    key = name.lower().replace("-", "")
    if key == "stsb":
        raise DataError(
            "stsb is a regression task: its head gives no class confidence, so early exit does not apply; "
            f"pick one of {', '.join(TASKS)}"
        )
    if key not in TASKS:
        raise DataError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[key]


def resolve_data_dir(data_dir: str | None) -> str | None:
    """The GLUE folder to read: ``data_dir`` (--data-dir), else $GLUE_DIR, else None (use the hub)."""
    chosen = data_dir or os.environ.get("GLUE_DIR") or None
    return os.path.expanduser(chosen) if chosen else None


def _features(spec: TaskSpec) -> Features:
    # Same types as the hub config, so both sources are interchangeable downstream.
    return Features(
        {
            **{f: Value("string") for f in spec.text_fields},
            "label": ClassLabel(names=list(spec.label_names)),
            "idx": Value("int32"),
        }
    )


def _read_tsv(path: Path, spec: TaskSpec, layout: _TsvLayout) -> dict[str, list]:
    """Parse one GLUE TSV file into hub columns, refusing anything malformed (nothing is skipped)."""
    label_ids = {(name if layout.label_by_name else str(i)): i for i, name in enumerate(spec.label_names)}
    out: dict[str, list] = {f: [] for f in (*spec.text_fields, "label", "idx")}
    empty = DataError(f"{path} is empty (no data rows); re-download the GLUE {layout.folder} files")
    try:
        # utf-8-sig drops MRPC's byte-order mark; newline="\n" keeps a stray '\r' inside a sentence.
        with open(path, encoding="utf-8-sig", newline="\n") as f:
            # Quoting off: MRPC/SST-2 sentences contain '"' that a CSV quote parser would swallow.
            # Streamed line by line: MNLI's train.tsv carries parse trees and is large.
            rows = (line.rstrip("\r\n").split("\t") for line in f)
            if layout.headerless:
                names, first_line = list(layout.headerless), 1
            else:
                names, first_line = next(rows, None), 2
                if names is None:
                    raise empty
                missing = [c for c in layout.columns.values() if c not in names]
                if missing:
                    raise DataError(
                        f"{path}: header lacks column(s) {missing} (found {names}); "
                        f"expected the classic GLUE {layout.folder} file"
                    )
            pos = {hub: names.index(col) for hub, col in layout.columns.items()}
            for i, fields in enumerate(rows):
                line = first_line + i
                if len(fields) != len(names):
                    raise DataError(
                        f"{path}, line {line}: {len(fields)} tab-separated fields, expected {len(names)} "
                        f"({', '.join(names)}); fix or re-download the file"
                    )
                value = fields[pos["label"]]
                if value not in label_ids:
                    raise DataError(
                        f"{path}, line {line}: unknown label {value!r}, allowed: {', '.join(label_ids)}; "
                        "fix or re-download the file"
                    )
                for f in spec.text_fields:
                    out[f].append(fields[pos[f]])
                out["label"].append(label_ids[value])
                out["idx"].append(i)
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text (after {len(out['idx'])} rows); re-download the file") from None
    if not out["idx"]:
        raise empty
    return out


def _load_tsv_split(path: Path, spec: TaskSpec, layout: _TsvLayout) -> Dataset:
    """One split, parsed once and then memory-mapped from the datasets cache."""
    stat = path.stat()
    identity = [_CACHE_VERSION, spec.name, str(path.resolve()), stat.st_mtime_ns, stat.st_size]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    target = Path(datasets.config.HF_DATASETS_CACHE) / "benchmark_glue_tsv" / f"{spec.name}-{path.stem}-{key}"
    if not (target / "state.json").exists():
        ds = Dataset.from_dict(_read_tsv(path, spec, layout), features=_features(spec))
        # Write beside the target and rename, so a crash or a concurrent run never leaves half a copy.
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        ds.save_to_disk(str(tmp))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
            if not (target / "state.json").exists():
                raise
    # Memory-mapped from cache files: map() then writes and reuses its own cache files there.
    return Dataset.load_from_disk(str(target))


def _load_tsv_dir(data_dir: str, spec: TaskSpec) -> DatasetDict:
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"GLUE data dir {root} does not exist; pass --data-dir or set GLUE_DIR to {_LAYOUT_HINT}")
    layout = _LAYOUTS[spec.name]
    folder = root / layout.folder
    if not folder.is_dir():
        raise DataError(
            f"no {layout.folder} folder in GLUE data dir {root} (expected {folder / 'train.tsv'}); "
            f"add the {layout.folder} files there, or unset GLUE_DIR/--data-dir to load from the hub"
        )
    paths = {"train": folder / "train.tsv", "validation": folder / layout.dev_file}
    for path in paths.values():  # check both before parsing either: fail fast on the layout
        if not path.is_file():
            raise DataError(f"missing {path}; add the GLUE {layout.folder} {path.name} file there")
    return DatasetDict({split: _load_tsv_split(path, spec, layout) for split, path in paths.items()})


def _offline() -> bool:
    # Read the environment now: datasets.config only looked at it when datasets was imported.
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("HF_DATASETS_OFFLINE", ""))
    return datasets.config.HF_HUB_OFFLINE or any(v.upper() in ("1", "ON", "YES", "TRUE") for v in flags)


def _load_hub(spec: TaskSpec) -> DatasetDict:
    no_data = (
        f"no GLUE data available for {spec.name}: the Hugging Face hub cannot be reached; "
        f"set GLUE_DIR (or pass --data-dir) to {_LAYOUT_HINT}"
    )
    if _offline():
        raise DataError(no_data + " (offline mode is on)")
    try:
        raw = datasets.load_dataset(HUB_DATASET, spec.name)
    except ConnectionError as e:  # datasets turns offline mode and network failures into ConnectionError
        raise DataError(f"{no_data} ({e})".replace("\n", " ")) from None
    return DatasetDict(
        train=raw["train"], validation=raw["validation_matched" if spec.name == "mnli" else "validation"]
    )


def load_glue(task: str, data_dir: str | None = None) -> DatasetDict:
    """Splits 'train' and 'validation' of a GLUE task, with the hub's columns and label ids."""
    spec = get_task(task)
    data_dir = resolve_data_dir(data_dir)
    if not data_dir:
        return _load_hub(spec)
    has_task = (Path(data_dir) / _LAYOUTS[spec.name].folder).is_dir()
    if Path(data_dir).is_dir() and not has_task and not _offline():
        # a GLUE folder without this task (e.g. RTE/MRPC/SST-2 only): the hub supplies the others
        return _load_hub(spec)
    return _load_tsv_dir(data_dir, spec)


def split_train(
    train: Dataset, max_train_samples: int | None = None, calib_fraction: float = 0.0, seed: int = 0
) -> tuple[Dataset, Dataset | None]:
    """Hold out a seeded calibration slice, then cap the rest at ``max_train_samples``.

    The calibration set is drawn before capping, so it depends only on (seed, calib_fraction), never
    on the cap. One seeded permutation serves both: its head is the calibration set, the next
    ``max_train_samples`` entries the training subset (a random subset, not the first rows; growing
    the cap only adds rows). Both keep the original row order. Returns (train, calib or None).
    """
    if not 0.0 <= calib_fraction < 1.0:
        raise DataError(f"calib_fraction must be in [0, 1), got {calib_fraction}; use e.g. 0.1")
    if max_train_samples is not None and max_train_samples < 1:
        raise DataError(f"max_train_samples must be a positive count, got {max_train_samples}; or leave it unset")
    order = np.random.default_rng(seed).permutation(len(train))
    n_calib = round(calib_fraction * len(train))
    if calib_fraction > 0 and n_calib == 0:
        n_calib = 1  # a requested calibration set is never silently empty
    if n_calib >= len(train):
        raise DataError(f"calib_fraction {calib_fraction} leaves no training rows out of {len(train)}; lower it")
    rest = order[n_calib:] if max_train_samples is None else order[n_calib : n_calib + max_train_samples]
    calib = train.select(np.sort(order[:n_calib])) if n_calib else None
    return train.select(np.sort(rest)), calib


def _encode(batch: dict, tokenizer, text_fields: tuple[str, ...], max_length: int) -> dict:
    # No padding: the collator pads each batch to its own longest sequence at train time.
    return tokenizer(*(batch[f] for f in text_fields), truncation=True, max_length=max_length)


def tokenize(ds: Dataset | DatasetDict, tokenizer, task: str, max_length: int = 128) -> Dataset | DatasetDict:
    """Tokenize text columns (batched, cached on disk), keeping 'idx' and renaming 'label' to 'labels'."""
    spec = get_task(task)
    columns = ds.column_names if isinstance(ds, Dataset) else next(iter(ds.values())).column_names
    missing = [c for c in (*spec.text_fields, "label") if c not in columns]
    if missing:
        raise DataError(f"dataset lacks column(s) {missing} for {spec.name}; pass a dataset from load_glue()")
    encoded = ds.map(
        _encode,
        batched=True,
        fn_kwargs={"tokenizer": tokenizer, "text_fields": spec.text_fields, "max_length": max_length},
        remove_columns=list(spec.text_fields),
        desc=f"Tokenizing {spec.name}",
    )
    # 'labels' is the name transformers models and Trainer expect.
    return encoded.rename_column("label", "labels")


def describe(task: str, data_dir: str | None = None) -> dict:
    """{split: {"rows": n, "labels": {label_id: count}}} for a task."""
    spec = get_task(task)
    out = {}
    for split, ds in load_glue(task, data_dir).items():
        counts = Counter(ds["label"])
        out[split] = {"rows": len(ds), "labels": {i: counts.get(i, 0) for i in range(spec.num_labels)}}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.data", description="Print a JSON summary (rows, label counts) of a GLUE task."
    )
    parser.add_argument("task", help=f"one of {', '.join(TASKS)}")
    parser.add_argument("--data-dir", help="folder in the classic GLUE TSV layout (default: $GLUE_DIR, else the hub)")
    args = parser.parse_args(argv)
    datasets.disable_progress_bars()  # keep stderr for errors
    try:
        summary = describe(args.task, args.data_dir)
    except DataError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
