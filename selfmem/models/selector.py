"""The memory selector S: a cross-encoder that scores a (source, candidate) pair.

Input ``[cls] source [sep] candidate [sep]`` (or the HF backbone's own pair format); the
first token's final state goes through a classification head with one output
(dropout -> dense -> tanh -> dense). Backbones:

- ``generator``: the trained generator's encoder (and its tokenizer: bilingual, nothing to
  download), with the tokenizer's bos as cls and its memory separator as sep;
- ``hf``: any Hugging Face encoder directory loaded with ``AutoModel`` (XLM-R, RoBERTa,
  all-MiniLM-L6-v2, ...), with its tokenizer's special tokens.

A pair longer than the budget keeps its candidate and loses the end of its source first.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from selfmem.common.config import Config
from selfmem.common.io import atomic_directory
from selfmem.common.records import CheckpointError
from selfmem.common.run import RunPaths
from selfmem.common.tokenizer import HFTokenizer, Tokenizer, load_tokenizer
from selfmem.models.config import ModelConfig
from selfmem.models.hf_weights import from_pretrained_safe
from selfmem.models.seq2seq import WEIGHTS_NAME, Encoder, load_weights, save_weights
from selfmem.models.vocabulary import check_native_tokenizer, check_tokenizer

SELECTOR_CONFIG = "selector.json"


def pair_ids(source: list[int], candidate: list[int], cls_id: int, sep_id: int, max_len: int) -> list[int]:
    """``[cls] source [sep] candidate [sep]`` within ``max_len`` tokens, cutting the source first."""
    candidate = candidate[: max_len - 3]
    source = source[: max_len - 3 - len(candidate)]
    return [cls_id, *source, sep_id, *candidate, sep_id]


def pair_encoder(selector: Selector, tokenizer, max_len: int) -> Callable[[str, str], list[int]]:
    """How ``selector`` reads a (source, candidate) text pair, within ``max_len`` tokens (or
    the backbone's positions), cutting the source first: ``pair_ids`` with the run
    tokenizer's bos and separator, or the HF tokenizer's own pair format (``[CLS] a [SEP] b
    [SEP]``, ``<s> a </s></s> b </s>``, ...). Refused if ``tokenizer`` is not the backbone's."""
    selector.backbone.check_tokenizer(tokenizer)
    max_len = min(max_len, selector.backbone.max_positions)
    if isinstance(selector.backbone, GeneratorEncoderBackbone):
        # an encoder trained with slotted positions reads the candidate in the memory's slot, so
        # each part must fit its slot with its separator, as the generator's source and memory
        # did (cls takes a place in the source's)
        source_len, candidate_len = selector.backbone.slots
        return lambda source, candidate: pair_ids(tokenizer.encode(source)[:source_len],
                                                  tokenizer.encode(candidate)[:candidate_len],
                                                  tokenizer.bos_id, tokenizer.sep_id, max_len)
    hf = tokenizer.hf
    # the tokenizer's own limit too: RoBERTa-like models hold two positions more than they read
    max_len = min(max_len, hf.model_max_length)
    room = max_len - hf.num_special_tokens_to_add(pair=True)

    def encode(source: str, candidate: str) -> list[int]:
        if len(hf.encode(candidate, add_special_tokens=False)) >= room:
            # the candidate fills the budget alone: no source, the candidate cut (HF's
            # "only_first" truncation cannot empty the source, and refuses the pair)
            return hf("", candidate, truncation="only_second", max_length=max_len)["input_ids"]
        return hf(source, candidate, truncation="only_first", max_length=max_len)["input_ids"]

    return encode


def check_selector_backbone(config: Config) -> None:
    """Refuse a backbone S cannot be built from: the generator's encoder of an HF generator, or
    an HF encoder without its directory."""
    cfg = config.selector
    if cfg.backbone == "generator" and config.generator.engine != "native":
        raise ValueError("selector.backbone 'generator' copies the native generator's encoder; with "
                         "generator.engine hf set selector.backbone=hf and selector.path to an encoder directory")
    if cfg.backbone == "hf" and not cfg.path:
        raise ValueError("selector.backbone is 'hf' but selector.path (an encoder directory) is not set")


def selector_tokenizer(config: Config, paths: RunPaths) -> Tokenizer:
    """The run's tokenizer for the generator backbone; the HF encoder's own for ``hf``."""
    check_selector_backbone(config)
    if config.selector.backbone == "generator":
        return load_tokenizer(paths.tokenizer)
    return HFTokenizer(config.selector.path)


class ClassificationHead(nn.Module):
    """First-token state -> dropout -> dense -> tanh -> dense -> one score; with
    ``num_features``, plus the candidate's feature values times learned weights."""

    def __init__(self, hidden: int, dropout: float, num_features: int = 0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, 1)
        # start at 1: the untrained selector ranks by the features, and learns what to add
        self.feature_weights = nn.Parameter(torch.ones(num_features)) if num_features else None

    def forward(self, first_token: Tensor, features: Tensor | None = None) -> Tensor:
        score = self.out_proj(torch.tanh(self.dense(self.dropout(first_token)))).squeeze(-1)
        if self.feature_weights is None:
            return score
        if features is None or features.shape != (len(score), len(self.feature_weights)):
            raise ValueError(f"this selector adds {len(self.feature_weights)} feature(s) of each candidate: pass "
                             f"features of shape ({len(score)}, {len(self.feature_weights)})")
        return score + features.to(score.dtype) @ self.feature_weights.to(score.dtype)


class GeneratorEncoderBackbone(nn.Module):
    """The generator's encoder as the selector's backbone."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_id))

    @classmethod
    def from_generator(cls, generator) -> GeneratorEncoderBackbone:
        """A copy of a trained ``Seq2SeqModel``'s encoder (the selector trains its own weights)."""
        backbone = cls(generator.config)
        backbone.encoder.load_state_dict(generator.encoder.state_dict())
        return backbone

    @property
    def hidden_size(self) -> int:
        return self.config.d_model

    @property
    def max_positions(self) -> int:
        return self.config.max_positions

    def check_tokenizer(self, tokenizer) -> None:
        """Refuse a tokenizer other than the generator's (the run's ``tokenizer/``)."""
        check_native_tokenizer(tokenizer, self.config, "the selector's generator-encoder backbone read with the "
                                                       "run's tokenizer")

    @property
    def slots(self) -> tuple[int | None, int | None]:
        """The most source and candidate tokens a pair may hold with slotted positions (None: no
        limit but ``max_positions``): ``cls source sep`` fill the source's slot, ``candidate sep``
        the first memory's, as ``source sep memory eos`` did in the generator."""
        source_slot, memory_slot = self.config.joint_slots
        if not source_slot:
            return None, None
        return source_slot - 2, memory_slot - 1

    def forward(self, ids: Tensor) -> Tensor:
        states, _ = self.encoder(ids)
        return states


def hf_encoder_class(path: str | Path) -> tuple[type, dict]:
    """The ``AutoModel`` class of the encoder checkpoint ``path`` and the arguments that build it
    without a pooling layer where the class has one.

    The selector reads the first token's final state, so a pooler (BERT, RoBERTa, XLM-R) would
    get no gradient, and DDP, which expects a gradient for every parameter, fails at the second
    step. The checkpoint's pooler weights are then left out on purpose: a subclass of the same
    name tells transformers not to report them.
    """
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    if type(config) not in MODEL_MAPPING:
        raise ValueError(f"{path}: transformers has no AutoModel (an encoder) for model type {config.model_type!r}")
    model_class = MODEL_MAPPING[type(config)]
    if "add_pooling_layer" not in inspect.signature(model_class.__init__).parameters:
        return model_class, {"config": config}
    ignored = [*(model_class._keys_to_ignore_on_load_unexpected or []), r"^pooler\."]
    without_pooler = type(model_class.__name__, (model_class,), {"_keys_to_ignore_on_load_unexpected": ignored})
    return without_pooler, {"config": config, "add_pooling_layer": False}


class HFEncoderBackbone(nn.Module):
    """A Hugging Face encoder (``AutoModel``, without a pooler) as the selector's backbone."""

    def __init__(self, path: str | Path, pad_id: int):
        super().__init__()
        model_class, arguments = hf_encoder_class(path)
        self.hf = from_pretrained_safe(model_class, path, loader="AutoModel", **arguments)
        self.pad_id = pad_id

    @property
    def hidden_size(self) -> int:
        return self.hf.config.hidden_size

    @property
    def max_positions(self) -> int:
        return self.hf.config.max_position_embeddings

    def check_tokenizer(self, tokenizer) -> None:
        """Refuse a tokenizer with more pieces than the encoder's table or another pad id."""
        check_tokenizer(tokenizer, self.hf.config.vocab_size, {"pad": self.pad_id},
                        "the selector's Hugging Face backbone read with the tokenizer in selector.path", padded=True)

    def forward(self, ids: Tensor) -> Tensor:
        return self.hf(input_ids=ids, attention_mask=ids.ne(self.pad_id)).last_hidden_state


class Selector(nn.Module):
    """Scores a batch of encoded pairs (batch, length), right-padded with ``pad_id``, and, with
    ``features``, the candidates' values of them (batch, features): (batch,)."""

    def __init__(self, backbone: nn.Module, dropout: float = 0.1, features: list[str] = ()):
        super().__init__()
        self.backbone = backbone
        self.features = list(features)  # names of the per-candidate inputs ``forward`` then needs
        self.head = ClassificationHead(backbone.hidden_size, dropout, len(self.features))

    def forward(self, ids: Tensor, features: Tensor | None = None) -> Tensor:
        return self.head(self.backbone(ids)[:, 0], features)

    def save(self, directory: str | Path) -> None:
        """The backbone in ``backbone/`` (in its own format), the head's weights in
        ``model.safetensors`` and ``selector.json``, replacing ``directory`` as one unit: a
        crash never leaves a new backbone beside an old head."""
        with atomic_directory(directory) as staging:
            if isinstance(self.backbone, GeneratorEncoderBackbone):
                save_weights(self.backbone, staging / "backbone")
                self.backbone.config.save(staging / "backbone")
                meta = {"backbone": "generator"}
            else:
                self.backbone.hf.save_pretrained(staging / "backbone")
                meta = {"backbone": "hf", "pad_id": self.backbone.pad_id}
            save_weights(self.head, staging)
            meta["dropout"] = self.head.dropout.p
            meta["features"] = self.features
            (staging / SELECTOR_CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> Selector:
        """A selector written by ``save``, in eval mode on ``map_location``."""
        directory = Path(directory)
        if not (directory / SELECTOR_CONFIG).exists():
            raise CheckpointError(f"{directory}: no trained selector ({SELECTOR_CONFIG} missing)")
        meta = json.loads((directory / SELECTOR_CONFIG).read_text(encoding="utf-8"))
        if meta["backbone"] == "generator":
            backbone = GeneratorEncoderBackbone(ModelConfig.load(directory / "backbone"))
            load_weights(backbone, directory / "backbone" / WEIGHTS_NAME)
        else:
            backbone = HFEncoderBackbone(directory / "backbone", meta["pad_id"])
        selector = cls(backbone, meta["dropout"], meta.get("features", []))
        load_weights(selector.head, directory / WEIGHTS_NAME)
        return selector.to(map_location).eval()
