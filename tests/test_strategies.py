"""Tests for benchmark.strategies (and the parts of benchmark.training they rely on): each
strategy's defining property on a tiny 4-layer BERT, checked on which parameters a stage moves,
which it leaves bit-identical, and on losses recomputed by hand. CPU, offline, a few steps each."""

from __future__ import annotations

import copy
import dataclasses
import os

import pytest
import torch

from benchmark.model import ExitOutputs, MultiExitModel, frozen_copy
from benchmark.strategies import (
    REGISTRY,
    OracleCascade,
    StrategyError,
    TrainContext,
    canonical_name,
    finetuned_model,
    kd_term,
    resolve,
    stages_for,
    train_strategy,
)
from benchmark.training import (
    Stage,
    StepInputs,
    TeacherOutputs,
    TrainingArguments,
    TrainingDiverged,
    predict_logits,
    train_loader,
    train_stage,
)

EXITS, L = (1, 2, 3), 4
ARGS = TrainingArguments(learning_rate=1e-3, num_train_epochs=1, per_device_train_batch_size=16,
                         per_device_eval_batch_size=64, seed=0)
STEPS = 3


@pytest.fixture(scope="module")
def base(tiny_bert_dir):
    """A 4-layer tiny BERT with random heads at 1, 2, 3 and mean pooling (not trained)."""
    torch.manual_seed(0)
    return MultiExitModel.from_backbone(tiny_bert_dir, 2, EXITS, "mean")


@pytest.fixture
def model(base):
    return copy.deepcopy(base)


@pytest.fixture(scope="module")
def batch(tiny_ds, collator):
    return next(iter(train_loader(tiny_ds, collator, ARGS)))


def inputs(batch):
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


# --- which parameter groups a stage moved ----------------------------------------------------------------


def groups(m: MultiExitModel) -> dict[str, torch.nn.Module]:
    """Embeddings, each layer, each intermediate head and the main head: together every parameter, once."""
    g = {"emb": m.embeddings(), **{f"layer{i}": lay for i, lay in enumerate(m.layers(), start=1)},
         **{f"head{e}": m.head(e) for e in m.exits}, "main": m.main_head}
    ids = [id(p) for mod in g.values() for p in mod.parameters()]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    return g


def snapshot(m: MultiExitModel) -> dict[str, list[torch.Tensor]]:
    return {k: [p.detach().clone() for p in mod.parameters()] for k, mod in groups(m).items()}


def moved(m: MultiExitModel, before) -> dict[str, str]:
    """Per group: 'same' (bit-identical), 'all' (every tensor changed) or 'some'."""
    out = {}
    for k, mod in groups(m).items():
        diff = [not torch.equal(p, q) for p, q in zip(mod.parameters(), before[k])]
        out[k] = "all" if all(diff) else "same" if not any(diff) else "some"
    return out


def expect(trained=(), layers=(), emb=False):
    """The expected `moved` result: named heads ('head2', 'main') and layers all changed, the rest same."""
    want = {"emb": "all" if emb else "same"}
    want |= {f"layer{i}": "all" if i in layers else "same" for i in range(1, L + 1)}
    want |= {f"head{e}": "same" for e in EXITS} | {"main": "same"}
    want |= {k: "all" for k in trained}
    return want


def run(model, stage, ds, collator, args=ARGS, steps=STEPS, **kw):
    return train_stage(model, stage, ds, collator, args, max_steps=steps, **kw)


def head_name(e):
    return "main" if e == L else f"head{e}"


# --- Separate Reverse -----------------------------------------------------------------------------------


def test_separate_reverse_stages_go_deep_to_shallow():
    stages = stages_for("separate_reverse", EXITS, L)
    assert [s.name for s in stages] == ["reverse@3", "reverse@2", "reverse@1"]
    assert [s.teacher_exits for s in stages] == [(4,), (3, 4), (2, 3, 4)]
    assert all(s.max_layer is None and not s.teacher_hidden and s.prepare is None for s in stages)
    nokd = stages_for("separate_reverse_nokd", EXITS, L)
    assert [(s.name, s.max_layer, s.teacher_exits) for s in nokd] == [
        ("reverse@3", 3, ()), ("reverse@2", 2, ()), ("reverse@1", 1, ())]
    assert [s.max_layer for s in stages_for("separate_reverse@alpha=0", EXITS, L)] == [3, 2, 1]


def test_separate_reverse_freezes_all_but_layers_up_to_e_and_head_e(model, tiny_ds, collator):
    for stage in stages_for("separate_reverse", EXITS, L):
        e = int(stage.name.split("@")[1])
        before = snapshot(model)
        model = run(model, stage, tiny_ds, collator)
        assert moved(model, before) == expect([head_name(e)], layers=range(1, e + 1)), stage.name
        assert all(p.requires_grad for p in model.parameters())  # unfrozen again for the next stage


def _layer_call_counter(model):
    calls = [0] * L

    def hook(i):
        def f(*_):
            calls[i] += 1
        return f

    return calls, [lay.register_forward_hook(hook(i)) for i, lay in enumerate(model.layers())]


def test_separate_reverse_nokd_never_computes_layers_above_e(model, tiny_ds, collator):
    stage = stages_for("separate_reverse_nokd", EXITS, L)[1]  # reverse@2
    calls, handles = _layer_call_counter(model)
    before = snapshot(model)
    model = run(model, stage, tiny_ds, collator)
    for h in handles:
        h.remove()
    assert calls == [STEPS, STEPS, 0, 0]
    assert moved(model, before) == expect(["head2"], layers=(1, 2))


def test_kd_term():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    for tau in (1.0, 2.0, 0.5):
        assert kd_term(x, x, tau).abs().item() < 1e-7
        assert kd_term(x, y, tau).item() > 0
        # tau^2 * KL(softmax(y/tau) || softmax(x/tau)), mean over rows, by hand
        pt = (y / tau).softmax(-1)
        want = tau**2 * (pt * (pt.log() - (x / tau).log_softmax(-1))).sum(-1).mean()
        torch.testing.assert_close(kd_term(x, y, tau), want)
    assert kd_term(x, x + 5.0, 1.0).abs().item() < 1e-6  # shift-invariant, as softmax


def _perturbed_student_and_teacher(model, batch, hidden=False):
    teacher = frozen_copy(model)
    with torch.no_grad():  # the student's layers 1..2 drift away from the teacher's
        for p in model.layers()[:2].parameters():
            p.add_(0.5 * torch.randn_like(p))
    model.eval()
    s = model(**inputs(batch), return_hidden=hidden)
    with torch.no_grad():
        t = teacher(**inputs(batch), return_hidden=hidden)
    return s, t


def _ce(logits, y):
    return -logits.log_softmax(-1)[torch.arange(len(y)), y].mean()


def test_separate_reverse_loss_by_hand(model, batch):
    torch.manual_seed(1)
    stage = stages_for("separate_reverse@alpha=0.3,tau=2", EXITS, L)[1]  # reverse@2, deeper 3 and 4
    s, t = _perturbed_student_and_teacher(model, batch)
    teacher = ExitOutputs([3, 4], [t.at(3), t.at(4)])
    loss, parts = stage.loss(StepInputs(s, batch["labels"], teacher, 0))
    assert set(parts) == {"ce@2", "kd@3", "kd@4"}

    def kl(st, te, tau=2.0):
        pt = (te / tau).softmax(-1)
        return tau**2 * (pt * (pt.log() - (st / tau).log_softmax(-1))).sum(-1).mean()

    want = 0.7 * _ce(s.at(2), batch["labels"]) + 0.3 * (kl(s.at(3), t.at(3)) + kl(s.at(4), t.at(4))) / 2
    torch.testing.assert_close(loss, want)
    assert parts["kd@3"] > 0 and parts["kd@4"] > 0
    # student == teacher: the KD parts vanish and the loss is (1 - alpha) * CE
    same = ExitOutputs([3, 4], [s.at(3).detach(), s.at(4).detach()])
    loss, parts = stage.loss(StepInputs(s, batch["labels"], same, 0))
    assert parts["kd@3"].abs() < 1e-6 and parts["kd@4"].abs() < 1e-6
    torch.testing.assert_close(loss, 0.7 * _ce(s.at(2), batch["labels"]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kd", ["hidden", "both"])
def test_separate_reverse_hidden_distillation(model, batch, kd):
    torch.manual_seed(1)
    stage = stages_for(f"separate_reverse@kd={kd}", EXITS, L)[2]  # reverse@1, deeper 2, 3, 4
    assert stage.teacher_hidden and stage.teacher_exits == (2, 3, 4)
    s, t = _perturbed_student_and_teacher(model, batch, hidden=True)
    teacher = ExitOutputs([2, 3, 4], [t.at(j) for j in (2, 3, 4)], [t.hidden[t.layers.index(j)] for j in (2, 3, 4)])
    loss, parts = stage.loss(StepInputs(s, batch["labels"], teacher, 0))
    mse = [((s.hidden[j - 1] - t.hidden[j - 1]) ** 2).mean() for j in (2, 3, 4)]
    kl = [kd_term(s.at(j), t.at(j), 1.0) for j in (2, 3, 4)] if kd == "both" else [0.0] * 3
    want_keys = {"ce@1"} | {f"mse@{j}" for j in (2, 3, 4)} | ({f"kd@{j}" for j in (2, 3, 4)} if kd == "both" else set())
    assert set(parts) == want_keys
    assert all(m > 0 for m in mse)
    want = 0.5 * _ce(s.at(1), batch["labels"]) + 0.5 * sum(m + k for m, k in zip(mse, kl)) / 3
    torch.testing.assert_close(loss, want)


def test_separate_reverse_hidden_trains(model, tiny_ds, collator):
    stage = stages_for("separate_reverse@kd=both", EXITS, L)[0]  # reverse@3: per-step teacher with hidden states
    seen = []
    before = snapshot(model)
    model = run(model, stage, tiny_ds, collator, on_step=lambda m, parts: seen.append(sorted(parts)))
    assert seen[0] == ["ce@3", "kd@4", "mse@4"]
    assert moved(model, before) == expect(["head3"], layers=(1, 2, 3))


def test_cached_and_per_step_teacher_agree(model, tiny_ds, collator, batch, capsys):
    stage = stages_for("separate_reverse", EXITS, L)[1]  # reverse@2, deeper 3 and 4
    per_step_args = dataclasses.replace(ARGS, teacher_outputs="per_step")
    cached = TeacherOutputs(model, stage, tiny_ds, collator, ARGS)
    per_step = TeacherOutputs(model, stage, tiny_ds, collator, per_step_args)
    assert not cached.per_step and per_step.per_step
    a, b = cached(batch), per_step(batch)
    assert a.layers == b.layers == [3, 4]
    for x, y in zip(a.logits, b.logits):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)
    # ... and a short stage trained either way ends at the same parameters
    m1 = run(copy.deepcopy(model), stage, tiny_ds, collator, ARGS, steps=4)
    m2 = run(copy.deepcopy(model), stage, tiny_ds, collator, per_step_args, steps=4)
    logit_diff = max((x - y).abs().max().item() for x, y in zip(a.logits, b.logits))
    param_diff = max((p - q).abs().max().item() for p, q in zip(m1.parameters(), m2.parameters()))
    with capsys.disabled():
        print(f"\n[cached vs per-step teacher] max |logit diff| {logit_diff:.2e}, "
              f"max |param diff| after 4 steps {param_diff:.2e}")
    assert param_diff < 1e-6


def test_predict_logits_leaves_global_rng_alone(model, tiny_ds, collator):
    """The cached teacher is computed with predict_logits inside train_stage, after its set_seed: if
    that consumed the global RNG, the stage's dropout masks would differ from per-step mode."""
    torch.manual_seed(123)
    state = torch.get_rng_state()
    predict_logits(model, tiny_ds, collator, batch_size=32)
    assert torch.equal(torch.get_rng_state(), state)


def test_copy_main_init(model, tiny_ds, collator):
    stage = stages_for("separate_reverse@init=copy_main", EXITS, L)[0]  # reverse@3
    assert model.heads["3"][0].weight.ne(model.main_head[0].weight).any()
    seen = {}

    def on_step(m, parts):  # runs after the first forward, before the first update
        if not seen:
            seen.update({k: v.detach().clone() for k, v in m.heads["3"].state_dict().items()})
            seen["main"] = {k: v.detach().clone() for k, v in m.main_head.state_dict().items()}

    run(model, stage, tiny_ds, collator, steps=1, on_step=on_step)
    main = seen.pop("main")
    assert seen.keys() == main.keys()
    assert all(torch.equal(seen[k], main[k]) for k in main)


def test_separate_reverse_train_strategy_order(tiny_bert_dir, make_ds, collator, tmp_path):
    ctx = TrainContext(tiny_bert_dir, 2, EXITS, "mean", make_ds(32), collator, ARGS, finetune_cache=tmp_path / "ft")
    model = train_strategy("separate_reverse", ctx)
    assert list(ctx.timings) == ["finetune", "reverse@3", "reverse@2", "reverse@1"]
    assert isinstance(model, MultiExitModel) and model.exit_layers == [1, 2, 3, 4]
    # the main exit and the layer above the deepest exit are the fine-tuned model's, untouched
    ft = MultiExitModel.from_pretrained(tmp_path / "ft")
    assert all(torch.equal(p, q) for p, q in zip(model.main_head.parameters(), ft.main_head.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(model.layers()[3].parameters(), ft.layers()[3].parameters()))
    assert all(torch.equal(p, q) for p, q in zip(model.embeddings().parameters(), ft.embeddings().parameters()))


# --- the other strategies --------------------------------------------------------------------------------


def test_two_stage_trains_only_intermediate_heads(model, tiny_ds, collator):
    (stage,) = stages_for("two_stage", EXITS, L)
    assert REGISTRY["two_stage"].start == "finetuned"
    before = snapshot(model)
    model = run(model, stage, tiny_ds, collator)
    assert moved(model, before) == expect(["head1", "head2", "head3"])


def test_self_distill_frozen_backbone_and_no_labels(model, tiny_ds, collator):
    (stage,) = stages_for("self_distill", EXITS, L)
    assert REGISTRY["self_distill"].start == "finetuned" and stage.teacher_exits == (L,)
    shuffled = tiny_ds.map(lambda r: {"labels": 1 - r["labels"]})
    losses = [[], []]
    before = snapshot(model)
    m1 = run(copy.deepcopy(model), stage, tiny_ds, collator, on_step=lambda m, p: losses[0].append(sum(p.values())))
    m2 = run(copy.deepcopy(model), stage, shuffled, collator, on_step=lambda m, p: losses[1].append(sum(p.values())))
    assert moved(m1, before) == expect(["head1", "head2", "head3"])
    assert [x.item() for x in losses[0]] == [x.item() for x in losses[1]]
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))


def test_branchwise_trains_one_block_per_stage(model, tiny_ds, collator):
    stages = stages_for("branchwise", EXITS, L)
    assert [s.name for s in stages] == ["branch@1", "branch@2", "branch@3", "branch@4"]
    bounds = [0, *EXITS, L]
    for k, stage in enumerate(stages):
        lo, hi = bounds[k], bounds[k + 1]
        before = snapshot(model)
        model = run(model, stage, tiny_ds, collator)
        assert moved(model, before) == expect([head_name(hi)], layers=range(lo + 1, hi + 1), emb=lo == 0), stage.name


def test_separate_trains_layers_up_to_e_each_stage(model, tiny_ds, collator):
    stages = stages_for("separate", EXITS, L)
    assert [s.name for s in stages] == ["separate@1", "separate@2", "separate@3", "separate@4"]
    for stage, e in zip(stages, [*EXITS, L]):
        before = snapshot(model)
        model = run(model, stage, tiny_ds, collator)
        assert moved(model, before) == expect([head_name(e)], layers=range(1, e + 1), emb=True), stage.name


@pytest.mark.parametrize("name", ["joint", "weighted", "sweet"])
def test_joint_family_trains_everything(model, tiny_ds, collator, name):
    (stage,) = stages_for(name, EXITS, L)
    before = snapshot(model)
    model = run(model, stage, tiny_ds, collator)
    assert set(moved(model, before).values()) == {"all"}


def _exit_ces(out, y):
    return {e: _ce(out.at(e), y) for e in out.layers}


def test_joint_and_weighted_losses_by_hand(model, batch):
    y = batch["labels"]
    out = model.eval()(**inputs(batch))
    ce = _exit_ces(out, y)
    loss, parts = stages_for("joint", EXITS, L)[0].loss(StepInputs(out, y, None, 0))
    assert set(parts) == {"ce@1", "ce@2", "ce@3", "ce@4"}
    torch.testing.assert_close(loss, sum(ce.values()))
    loss, _ = stages_for("weighted", EXITS, L)[0].loss(StepInputs(out, y, None, 0))
    torch.testing.assert_close(loss, sum(e * ce[e] for e in ce) / sum(ce))
    # every exit's head gets gradient from the joint loss
    loss.backward()
    for e in out.layers:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head(e).parameters())


def test_alternating_even_steps_main_only(model, tiny_ds, collator, batch):
    (stage,) = stages_for("alternating", EXITS, L)
    y = batch["labels"]
    out = model.eval()(**inputs(batch))
    ce = _exit_ces(out, y)
    loss0, parts0 = stage.loss(StepInputs(out, y, None, 0))
    loss1, parts1 = stage.loss(StepInputs(out, y, None, 1))
    assert set(parts0) == {"ce@4"} and set(parts1) == {"ce@1", "ce@2", "ce@3", "ce@4"}
    torch.testing.assert_close(loss0, ce[4])
    torch.testing.assert_close(loss1, sum(ce.values()))
    loss0.backward()
    assert all(p.grad is None for e in EXITS for p in model.head(e).parameters())
    # in training: one (even) step leaves the intermediate heads alone, the next (odd) one moves them
    before = snapshot(model)
    m1 = run(copy.deepcopy(model), stage, tiny_ds, collator, steps=1)
    assert moved(m1, before) == expect(["main"], layers=range(1, L + 1), emb=True)
    m2 = run(copy.deepcopy(model), stage, tiny_ds, collator, steps=2)
    assert set(moved(m2, before).values()) == {"all"}


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    has = {}
    for k, mod in groups(model).items():
        has[k] = any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())
    return has


def test_sweet_blocks_get_gradient_only_from_their_exit(model, batch):
    (stage,) = stages_for("sweet", EXITS, L)
    assert stage.detach_between_exits
    y = batch["labels"]
    model.eval()

    def loss_at(e, detach=True):
        out = model(**inputs(batch), detach_between_exits=detach)
        return _ce(out.at(e), y)

    g = _grads(model, loss_at(4))  # main exit: only block (3, 4] and the main head
    assert {k for k, v in g.items() if v} == {"layer4", "main"}
    g = _grads(model, loss_at(1))  # exit 1: embeddings, layer 1, head 1
    assert {k for k, v in g.items() if v} == {"emb", "layer1", "head1"}
    g = _grads(model, loss_at(3))
    assert {k for k, v in g.items() if v} == {"layer3", "head3"}
    g = _grads(model, loss_at(4, detach=False))  # without the cut the main loss reaches everything below
    assert {k for k, v in g.items() if v} == {"emb", "layer1", "layer2", "layer3", "layer4", "main"}


# --- oracle and the fine-tuned model cache --------------------------------------------------------------


def test_oracle_cascade_and_finetune_cache(tiny_bert_dir, make_ds, collator, tmp_path):
    cache = tmp_path / "ft"
    ds = make_ds(32)
    ctx = TrainContext(tiny_bert_dir, 2, (1, 2), "mean", ds, collator, ARGS, finetune_cache=cache)
    cascade = train_strategy("oracle", ctx)
    assert isinstance(cascade, OracleCascade)
    assert [m.num_layers for m in cascade.members] == [1, 2, 4]
    assert [len(m.layers()) for m in cascade.members] == [1, 2, 4]
    assert all(m.exits == () for m in cascade.members)
    assert cascade.exit_layers == [1, 2, 4] and cascade.layers_paid == [1, 3, 7] and cascade.num_layers == 4
    assert {"oracle@1", "oracle@2", "finetune"} <= set(ctx.timings) and ctx.timings["finetune"] > 0
    # the full-depth member is the cached fine-tuned model
    assert (cache / "config.json").is_file()
    cached = MultiExitModel.from_pretrained(cache)
    assert all(torch.equal(p, q) for p, q in zip(cascade.members[-1].parameters(), cached.parameters()))
    batch = collator([ds[i] for i in range(5)])
    out = cascade(**inputs(batch))
    assert out.layers == [1, 2, 4] and all(x.shape == (5, 2) for x in out.logits)
    torch.testing.assert_close(out.logits[-1], cached.eval()(**inputs(batch)).logits[-1])
    # a later strategy that starts from the fine-tuned model reuses it: no retraining, folder untouched
    stamp = os.stat(cache / "model.safetensors").st_mtime_ns
    ctx2 = TrainContext(tiny_bert_dir, 2, (1, 2), "mean", ds, collator, ARGS, finetune_cache=cache)
    model = train_strategy("two_stage", ctx2)
    assert ctx2.timings["finetune"] == 0.0
    assert os.stat(cache / "model.safetensors").st_mtime_ns == stamp
    assert all(torch.equal(p, q) for p, q in zip(model.backbone.parameters(), cached.backbone.parameters()))


# --- names and parameters --------------------------------------------------------------------------------


def test_resolve_and_canonical_name():
    strategy, params = resolve("separate_reverse@alpha=0.3,tau=2")
    assert strategy.name == "separate_reverse"
    assert params == {"alpha": 0.3, "tau": 2.0, "init": "random", "kd": "logits"}
    assert canonical_name("separate_reverse@tau=2,alpha=0.3") == "separate_reverse@alpha=0.3,tau=2"
    assert canonical_name("separate_reverse@alpha=0.5,tau=1") == "separate_reverse"
    assert canonical_name("separate_reverse@kd=both,init=random") == "separate_reverse@kd=both"
    assert canonical_name("joint") == "joint"
    assert resolve("separate_reverse_nokd")[1]["alpha"] == 0.0
    assert canonical_name("separate_reverse_nokd") == "separate_reverse_nokd"
    assert resolve("self_distill@tau=3")[1] == {"tau": 3.0}
    expected = {"finetune", "joint", "weighted", "alternating", "two_stage", "self_distill", "branchwise",
                "separate", "sweet", "oracle", "separate_reverse", "separate_reverse_nokd"}
    assert expected <= set(REGISTRY)


@pytest.mark.parametrize("name, match", [
    ("nope", "unknown strategy 'nope'"),
    ("separate_reverse@beta=1", "bad parameter 'beta=1'"),
    ("separate_reverse@alpha", "bad parameter 'alpha'"),
    ("separate_reverse@alpha=high", "bad value 'high'"),
    ("joint@alpha=0.1", "no parameters"),
])
def test_bad_names_raise_one_line(name, match):
    with pytest.raises(StrategyError, match=match) as err:
        resolve(name)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["separate_reverse@alpha=1.5", "separate_reverse@alpha=-0.1",
                                  "separate_reverse@init=zeros", "separate_reverse@kd=attention"])
def test_bad_parameter_values_raise(name):
    with pytest.raises(StrategyError) as err:
        stages_for(name, EXITS, L)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["separate_reverse@alpha=1.5", "separate_reverse@kd=attention"])
def test_bad_parameter_values_fail_at_validation(name):
    """run.py validates names with `resolve` (and stores them with `canonical_name`) before any
    training: a value the strategy will reject must already fail there, not after fine-tuning."""
    with pytest.raises(StrategyError):
        resolve(name)


# --- training loop guards --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_raises(model, tiny_ds, collator, bad):
    def loss(s):
        return s.outputs.at(L).sum() * bad, {}

    with pytest.raises(TrainingDiverged, match="stage 'broken' at or before step 0"):
        run(model, Stage("broken", lambda m: [m], loss), tiny_ds, collator)


def test_same_seed_same_parameters(tiny_bert_dir, make_ds, collator):
    ds = make_ds(32)

    def train(seed):
        args = dataclasses.replace(ARGS, seed=seed)
        ctx = TrainContext(tiny_bert_dir, 2, (1, 2), "mean", ds, collator, args)
        return train_strategy("separate_reverse", ctx)

    a, b, c = train(0), train(0), train(1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_finetune_does_not_depend_on_global_rng(tmp_path, tok, make_ds, collator):
    """A backbone checkpoint without a classification head (such as the bundled MiniLM, a BertModel)
    gets its head initialised at load time: that must follow args.seed, not whatever ran before."""
    from conftest import TINY
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, **TINY)).save_pretrained(tmp_path / "encoder")
    ds = make_ds(16)

    def finetune(global_seed):
        torch.manual_seed(global_seed)  # e.g. another strategy or model ran before in this process
        ctx = TrainContext(str(tmp_path / "encoder"), 2, (1, 2), "mean", ds, collator, ARGS)
        return finetuned_model(ctx)

    a, b = finetune(1), finetune(2)
    assert torch.equal(a.main_head[-1].weight, b.main_head[-1].weight)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
