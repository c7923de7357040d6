"""The generator's architecture: one dataclass, saved as ``config.json`` beside the weights."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from selfmem.common.io import atomic_write_text

CONFIG_NAME = "config.json"


@dataclass
class ModelConfig:
    """Everything that fixes the shapes and the computation of a ``Seq2SeqModel``.

    The defaults are transformer-base (the paper's translation setting). Imported
    BART-family checkpoints set the family's flags (see ``hf_import``).
    """

    vocab_size: int
    d_model: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 6
    heads: int = 8
    ffn_dim: int = 2048
    pre_norm: bool = False  # layer norm before each sublayer (mBART, Pegasus) or after it
    positions: Literal["learned", "sinusoidal"] = "sinusoidal"
    position_offset: int = 0  # BART/mBART learned tables reserve their first 2 rows
    max_positions: int = 1024
    scale_embedding: bool = True  # token embeddings times sqrt(d_model)
    layernorm_embedding: bool = False  # a layer norm right after embedding (BART, mBART)
    final_layer_norm: bool = False  # a layer norm after the last layer of each stack (pre-norm families)
    activation: Literal["relu", "gelu", "silu"] = "relu"
    share_embeddings: bool = True  # encoder and decoder use one token embedding matrix
    tie_output: bool = True  # the output projection is the decoder token embedding
    final_logits_bias: bool = False  # a fixed (not trained) bias on the logits, as HF keeps it
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    memory: Literal["none", "joint", "dual"] = "none"
    # joint memory: 0 = positions continue through the input (as imported models were
    # trained); > 0 = positions as if the source and each memory were padded to these lengths
    source_slot: int = 0
    memory_slot: int = 0
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    sep_id: int = 4
    decoder_start_id: int = 1
    init_std: float = 0.02

    @property
    def joint_slots(self) -> tuple[int, int]:
        """(source_slot, memory_slot) as the model reads them: (0, 0), positions straight
        through, unless its memory is joint (a no-memory twin may be saved with the joint's)."""
        return (self.source_slot, self.memory_slot) if self.memory == "joint" else (0, 0)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), _HINTS[f.name])
        for name in ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "heads", "ffn_dim",
                     "max_positions"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.position_offset < 0:
            raise ValueError(f"ModelConfig.position_offset must be >= 0, got {self.position_offset}")
        if (self.source_slot > 0) != (self.memory_slot > 0) or min(self.source_slot, self.memory_slot) < 0:
            raise ValueError(f"ModelConfig: source_slot and memory_slot are both 0 or both positive, "
                             f"got {self.source_slot} and {self.memory_slot}")
        if self.d_model % self.heads:
            raise ValueError(f"ModelConfig: d_model {self.d_model} is not divisible by heads {self.heads}")
        for name in ("pad_id", "bos_id", "eos_id", "sep_id", "decoder_start_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"ModelConfig.{name} = {getattr(self, name)} is outside the vocabulary "
                                 f"of {self.vocab_size}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "ModelConfig") -> ModelConfig:
        """Build a config from a dict; an unknown key is an error, a missing one takes its default."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(known)}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as e:  # a wrong type or value: say which file holds it
            raise ValueError(f"{source}: {e}") from None

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/config.json`` atomically."""
        path = Path(directory) / CONFIG_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ModelConfig:
        """Read ``directory/config.json``."""
        path = Path(directory) / CONFIG_NAME
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return cls.from_dict(values, source=str(path))


_HINTS = typing.get_type_hints(ModelConfig)


def _check_type(name: str, value: Any, tp: Any) -> None:
    if typing.get_origin(tp) is Literal:
        ok = value in typing.get_args(tp)
        expected = " | ".join(repr(a) for a in typing.get_args(tp))
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        expected = "a number"
    else:
        # bool is a subclass of int, but True is not a layer count
        ok = isinstance(value, tp) and (tp is bool or not isinstance(value, bool))
        expected = tp.__name__
    if not ok:
        raise ValueError(f"ModelConfig.{name}: expected {expected}, got {value!r}")
