"""Tests for benchmark.model: real early exit against the post-hoc rule, the main exit against the
plain backbone, persistence in Hugging Face format, adapters and input validation. Tiny random
models only (hidden 32, 4 layers), CPU, offline."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from benchmark.model import EXIT_HEADS_FILE, ModelError, MultiExitModel, check_exits

VOCAB = 120
SMALL = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=64, num_labels=3, initializer_range=0.2)


def backbone(arch: str = "bert", seed: int = 0):
    torch.manual_seed(seed)
    if arch == "bert":
        return BertForSequenceClassification(BertConfig(vocab_size=VOCAB, **SMALL))
    if arch == "roberta":
        return RobertaForSequenceClassification(
            RobertaConfig(vocab_size=VOCAB, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1,
                          **{**SMALL, "max_position_embeddings": 66}))
    if arch == "distilbert":
        return DistilBertForSequenceClassification(
            DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=4, n_heads=2, hidden_dim=64,
                             max_position_embeddings=64, num_labels=3, initializer_range=0.2))
    raise AssertionError(arch)


def sharpen(model: MultiExitModel, factor: float = 3.0) -> MultiExitModel:
    """Scale every exit's last linear layer so confidences spread over about (0.4, 0.99)."""
    with torch.no_grad():
        for e in model.exit_layers:
            model.head(e)[-1].weight.mul_(factor)
    return model.eval()


def multi_exit(arch="bert", pooling="mean", exits=(1, 2, 3), seed=0) -> MultiExitModel:
    return sharpen(MultiExitModel(backbone(arch, seed), exits, pooling))


def padded_batch(n: int = 12, seed: int = 0, arch: str = "bert") -> dict:
    """n sequences of lengths 3..16, right-padded; pad id 0 (1 for RoBERTa), first token a [CLS]-like id."""
    g = torch.Generator().manual_seed(seed)
    lengths = [3 + (i * 5) % 14 for i in range(n)]
    width = max(lengths)
    pad = 1 if arch == "roberta" else 0
    ids = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, k in enumerate(lengths):
        ids[i, :k] = torch.randint(3, VOCAB, (k,), generator=g)
        ids[i, 0] = 2
        mask[i, :k] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if arch == "bert":
        batch["token_type_ids"] = torch.zeros_like(ids)
    return batch


def simulate(model: MultiExitModel, batch: dict, threshold: float):
    """The post-hoc rule on full-depth logits: first exit (shallow to deep) with max prob >= t, else main."""
    with torch.no_grad():
        out = model(**batch)
    probs = torch.stack(out.logits, 1).float().softmax(-1)  # [N, K, C]
    leave = probs.max(-1).values >= threshold
    leave[:, -1] = True
    k = leave.int().argmax(1)  # first True
    chosen = probs[torch.arange(len(k)), k]
    return chosen.argmax(-1), torch.tensor(out.layers)[k], chosen


def early_exit_in_chunks(model, batch, threshold, batch_size):
    n = batch["input_ids"].shape[0]
    parts = [model.early_exit(**{k: v[i:i + batch_size] for k, v in batch.items()}, threshold=threshold)
             for i in range(0, n, batch_size)]
    return tuple(torch.cat(x) for x in zip(*parts))


def assert_matches_simulation(model, batch, thresholds=(0.0, 0.5, 0.8, 1.0), batch_sizes=(1, 7, None)):
    n = batch["input_ids"].shape[0]
    for t in thresholds:
        want_pred, want_layer, want_probs = simulate(model, batch, t)
        for bs in batch_sizes:
            pred, layer, probs = early_exit_in_chunks(model, batch, t, bs or n)
            assert torch.equal(pred, want_pred), (t, bs)
            assert torch.equal(layer, want_layer), (t, bs)
            torch.testing.assert_close(probs, want_probs, atol=1e-5, rtol=0)


# --- real early exit == simulation -----------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_early_exit_equals_posthoc_rule(pooling):
    model = multi_exit(pooling=pooling)
    batch = padded_batch(12)
    assert_matches_simulation(model, batch)
    # the thresholds are not vacuous: 0.8 sends samples to more than one exit, 0 all to exit 1
    _, layers, _ = simulate(model, batch, 0.8)
    assert len(set(layers.tolist())) >= 2, layers
    assert set(simulate(model, batch, 0.0)[1].tolist()) == {1}
    # a threshold halfway between the two middle confidences of exit 1 splits the batch there
    with torch.no_grad():
        conf1 = model(**batch).logits[0].softmax(-1).max(-1).values.sort().values
    t = (conf1[5] + conf1[6]).item() / 2
    assert_matches_simulation(model, batch, thresholds=(t,), batch_sizes=(1, 5, None))
    assert (simulate(model, batch, t)[1] == 1).sum() == 6


def test_early_exit_ignores_padding():
    """A sample alone and unpadded gets the same exit, prediction and probabilities as inside a padded batch."""
    model = multi_exit(pooling="mean")
    batch = padded_batch(12)
    pred, layer, probs = model.early_exit(**batch, threshold=0.8)
    for i in range(12):
        k = int(batch["attention_mask"][i].sum())
        alone = {key: v[i:i + 1, :k] for key, v in batch.items()}
        p, lay, pr = model.early_exit(**alone, threshold=0.8)
        assert (p.item(), lay.item()) == (pred[i].item(), layer[i].item())
        torch.testing.assert_close(pr[0], probs[i], atol=1e-5, rtol=0)


def _count_rows_per_layer(model, fn):
    rows = [0] * model.num_layers
    calls = [0] * model.num_layers

    def hook(depth):
        def f(module, args, output):
            calls[depth] += 1
            rows[depth] += args[0].shape[0]
        return f

    handles = [layer.register_forward_hook(hook(d)) for d, layer in enumerate(model.layers())]
    try:
        result = fn()
    finally:
        for h in handles:
            h.remove()
    return calls, rows, result


def test_early_exit_really_skips_layers():
    model = multi_exit(pooling="mean")
    batch = padded_batch(12)
    # threshold 0: everyone leaves at exit 1, so only layer 1 runs
    calls, rows, _ = _count_rows_per_layer(model, lambda: model.early_exit(**batch, threshold=0.0))
    assert calls == [1, 0, 0, 0] and rows == [12, 0, 0, 0]
    # nobody confident enough: every layer once, on the whole batch
    calls, rows, _ = _count_rows_per_layer(model, lambda: model.early_exit(**batch, threshold=1.01))
    assert calls == [1, 1, 1, 1] and rows == [12] * 4
    # mixed: layer d runs exactly on the samples still alive (exit layer >= d)
    calls, rows, (_, layer, _) = _count_rows_per_layer(model, lambda: model.early_exit(**batch, threshold=0.8))
    assert rows == [int((layer >= d).sum()) for d in range(1, 5)]
    assert sum(rows) < 12 * 4
    # the full forward, by contrast, computes every layer for every sample
    calls, rows, _ = _count_rows_per_layer(model, lambda: model(**batch))
    assert rows == [12] * 4


def test_forward_max_layer_stops_early():
    model = multi_exit()
    batch = padded_batch(5)
    calls, _, out = _count_rows_per_layer(model, lambda: model(**batch, max_layer=2))
    assert out.layers == [1, 2] and calls == [1, 1, 0, 0]
    full = model(**batch, return_hidden=True)
    assert full.layers == [1, 2, 3, 4] and len(full.hidden) == 4
    torch.testing.assert_close(out.at(2), full.at(2), atol=1e-6, rtol=0)


# --- main exit == the plain backbone ----------------------------------------------------------------


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
def test_main_exit_is_backbone_head_with_cls_pooling(arch):
    model = MultiExitModel(backbone(arch), (1, 2), "cls").eval()
    batch = padded_batch(6, arch=arch)
    with torch.no_grad():
        ours = model(**batch).logits[-1]
        theirs = model.backbone(**batch).logits
    assert torch.equal(ours, theirs), (ours - theirs).abs().max()


# --- persistence ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_save_and_reload(tmp_path, pooling):
    model = multi_exit(pooling=pooling, exits=(1, 3))
    model.save_pretrained(tmp_path)
    assert (tmp_path / EXIT_HEADS_FILE).is_file() and (tmp_path / "config.json").is_file()
    loaded = MultiExitModel.from_pretrained(tmp_path).eval()
    assert loaded.exits == (1, 3) and loaded.pooling == pooling and loaded.num_layers == 4
    batch = padded_batch(6)
    with torch.no_grad():
        a, b = model(**batch), loaded(**batch)
    assert a.layers == b.layers == [1, 3, 4]
    for x, y in zip(a.logits, b.logits):
        assert torch.equal(x, y)
    # the folder is a plain Hugging Face sequence classifier: its logits are the main exit's (cls)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        plain_logits = plain(**batch).logits
    if pooling == "cls":
        assert torch.equal(plain_logits, a.logits[-1])
    else:  # the plain model pools the first token, so it reads the same weights differently
        assert not torch.allclose(plain_logits, a.logits[-1])


def test_from_pretrained_plain_backbone_gets_fresh_heads(tmp_path):
    plain = backbone("bert")
    plain.save_pretrained(tmp_path)
    model = MultiExitModel.from_pretrained(tmp_path, exits=(2,), pooling="cls").eval()
    assert model.exits == (2,) and model.exit_layers == [2, 4]
    batch = padded_batch(4)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits[-1], plain.eval()(**batch).logits)


# --- adapters and validation ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["roberta", "distilbert"])
def test_other_adapters_forward_and_early_exit(arch):
    model = multi_exit(arch=arch, pooling="mean", exits=(1, 2))
    batch = padded_batch(9, arch=arch)
    out = model(**batch)
    assert out.layers == [1, 2, 4] and all(x.shape == (9, 3) for x in out.logits)
    assert_matches_simulation(model, batch, thresholds=(0.0, 0.8, 1.0), batch_sizes=(4, None))


def test_unsupported_architecture_is_named(tmp_path):
    gpt2 = GPT2ForSequenceClassification(GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2,
                                                    n_positions=32, num_labels=2))
    with pytest.raises(ModelError, match="gpt2"):
        MultiExitModel(gpt2, (1,))
    gpt2.config.save_pretrained(tmp_path)  # config only: from_backbone must fail before loading weights
    with pytest.raises(ModelError, match="gpt2") as err:
        MultiExitModel.from_backbone(str(tmp_path), 2, (1,))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("exits", [[0], [4], [5], [-1], [2, 1], [1, 1], [1, 2, 2]])
def test_bad_exits_raise(exits):
    with pytest.raises(ModelError, match="exit layers"):
        check_exits(exits, 4)
    with pytest.raises(ModelError):
        MultiExitModel(backbone(), exits)


def test_good_exits_and_bad_pooling():
    assert check_exits([1, 2, 3], 4) == (1, 2, 3)
    assert check_exits([], 4) == ()
    with pytest.raises(ModelError, match="pooling 'max'"):
        MultiExitModel(backbone(), (1,), pooling="max")


def test_from_backbone_truncates(tiny_bert_dir):
    full = MultiExitModel.from_backbone(tiny_bert_dir, 2)
    short = MultiExitModel.from_backbone(tiny_bert_dir, 2, exits=(1,), num_layers=2)
    assert short.num_layers == 2 and len(short.layers()) == 2 and short.exit_layers == [1, 2]
    for a, b in zip(short.layers().parameters(), list(full.layers()[:2].parameters())):
        assert torch.equal(a, b)
    with pytest.raises(ModelError):
        MultiExitModel.from_backbone(tiny_bert_dir, 2, exits=(2,), num_layers=2)
