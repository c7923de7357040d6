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

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from selfmem.common.config import Config
from selfmem.common.io import atomic_directory
from selfmem.common.run import RunPaths
from selfmem.common.tokenizer import HFTokenizer, Tokenizer, load_tokenizer
from selfmem.models.config import ModelConfig
from selfmem.models.seq2seq import WEIGHTS_NAME, Encoder, load_weights, save_weights

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
    [SEP]``, ``<s> a </s></s> b </s>``, ...)."""
    max_len = min(max_len, selector.backbone.max_positions)
    if isinstance(selector.backbone, GeneratorEncoderBackbone):
        # an encoder trained with slotted positions reads the candidate in the memory's slot, so
        # each part must fit its slot, as the generator's source and memory did (cls takes a place)
        source_len, candidate_len = selector.backbone.slots
        return lambda source, candidate: pair_ids(tokenizer.encode(source)[:source_len],
                                                  tokenizer.encode(candidate)[:candidate_len],
                                                  tokenizer.bos_id, tokenizer.sep_id, max_len)
    return lambda source, candidate: tokenizer.hf(source, candidate, truncation="only_first",
                                                  max_length=max_len)["input_ids"]


def selector_tokenizer(config: Config, paths: RunPaths) -> Tokenizer:
    """The run's tokenizer for the generator backbone; the HF encoder's own for ``hf``."""
    if config.selector.backbone == "generator":
        return load_tokenizer(paths.tokenizer)
    if not config.selector.path:
        raise ValueError("selector.backbone is 'hf' but selector.path (an encoder directory) is not set")
    return HFTokenizer(config.selector.path)


class ClassificationHead(nn.Module):
    """First-token state -> dropout -> dense -> tanh -> dense -> one score."""

    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, 1)

    def forward(self, first_token: Tensor) -> Tensor:
        return self.out_proj(torch.tanh(self.dense(self.dropout(first_token)))).squeeze(-1)


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

    @property
    def slots(self) -> tuple[int | None, int | None]:
        """The most source and candidate tokens a pair may hold with slotted positions (None: no
        limit but ``max_positions``)."""
        if not self.config.source_slot:
            return None, None
        return self.config.source_slot - 1, self.config.memory_slot

    def forward(self, ids: Tensor) -> Tensor:
        states, _ = self.encoder(ids)
        return states


class HFEncoderBackbone(nn.Module):
    """A Hugging Face encoder (``AutoModel``) as the selector's backbone."""

    def __init__(self, path: str | Path, pad_id: int):
        super().__init__()
        from transformers import AutoModel

        self.hf = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.pad_id = pad_id

    @property
    def hidden_size(self) -> int:
        return self.hf.config.hidden_size

    @property
    def max_positions(self) -> int:
        return self.hf.config.max_position_embeddings

    def forward(self, ids: Tensor) -> Tensor:
        return self.hf(input_ids=ids, attention_mask=ids.ne(self.pad_id)).last_hidden_state


class Selector(nn.Module):
    """Scores a batch of encoded pairs (batch, length), right-padded with ``pad_id``: (batch,)."""

    def __init__(self, backbone: nn.Module, dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.head = ClassificationHead(backbone.hidden_size, dropout)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.backbone(ids)[:, 0])

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
            (staging / SELECTOR_CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> Selector:
        """A selector written by ``save``, in eval mode on ``map_location``."""
        directory = Path(directory)
        if not (directory / SELECTOR_CONFIG).exists():
            raise FileNotFoundError(f"{directory}: no trained selector ({SELECTOR_CONFIG} missing)")
        meta = json.loads((directory / SELECTOR_CONFIG).read_text(encoding="utf-8"))
        if meta["backbone"] == "generator":
            backbone = GeneratorEncoderBackbone(ModelConfig.load(directory / "backbone"))
            load_weights(backbone, directory / "backbone" / WEIGHTS_NAME)
        else:
            backbone = HFEncoderBackbone(directory / "backbone", meta["pad_id"])
        selector = cls(backbone, meta["dropout"])
        load_weights(selector.head, directory / WEIGHTS_NAME)
        return selector.to(map_location).eval()
