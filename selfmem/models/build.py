"""The generator model a config describes: fresh native, started from a native checkpoint,
imported from Hugging Face, or run by HF."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from selfmem.common.config import Config, GeneratorConfig
from selfmem.common.tokenizer import Tokenizer
from selfmem.models.config import CONFIG_NAME, ModelConfig
from selfmem.models.hf_engine import HFSeq2Seq
from selfmem.models.seq2seq import WEIGHTS_NAME, Seq2SeqModel, load_weights

# ModelConfig fields that only training reads: a native checkpoint may differ in them, and the
# config's values are used
TRAINING_ONLY = ("dropout", "attention_dropout", "activation_dropout", "init_std")


def is_native_checkpoint(path: str | Path) -> bool:
    """True for a directory a native generator was saved to: its config.json is a ModelConfig,
    which, unlike a Hugging Face config, has no ``model_type``."""
    config_file = Path(path) / CONFIG_NAME
    return config_file.is_file() and "model_type" not in json.loads(config_file.read_text(encoding="utf-8"))


def starts_from_native_checkpoint(g: GeneratorConfig) -> bool:
    """True where a native model starts from ``generator.init``, a native generator directory."""
    return g.engine == "native" and g.init is not None and is_native_checkpoint(g.init)


def check_model_settings(g: GeneratorConfig) -> None:
    """Refuse generator settings no model can be built from (before a run's first stage)."""
    if g.joint_positions == "slots" and (g.engine == "hf" or (g.init and not starts_from_native_checkpoint(g))):
        raise ValueError("generator.joint_positions 'slots' is for native models, trained from scratch or "
                         "from a native checkpoint; an imported or Hugging Face model keeps the positions it "
                         "was trained with")
    if g.engine == "hf" and not g.init:
        raise ValueError("generator.engine is 'hf' but generator.init (a checkpoint directory) is not set")
    if g.engine == "hf" and g.memory == "dual":
        raise ValueError("generator.engine 'hf' supports generator.memory none or joint, not dual")
    if g.engine == "native" and g.init is None and g.d_model % g.heads:
        raise ValueError(f"generator.d_model ({g.d_model}) must be divisible by generator.heads ({g.heads}): "
                         f"each head takes an equal share")


def build_model(config: Config, tokenizer: Tokenizer) -> torch.nn.Module:
    """A fresh native model, one started from the native checkpoint ``generator.init`` (a
    trained run's ``generator/``), one imported from a HF checkpoint, or an `engine: hf` model."""
    g = config.generator
    check_model_settings(g)
    native_init = starts_from_native_checkpoint(g)
    if g.engine == "hf":
        return HFSeq2Seq(g.init, tokenizer.pad_id)
    if g.init and not native_init:
        # transformers takes seconds to import; runs of native models never need it
        from selfmem.models.hf_import import import_hf

        return import_hf(g.init, memory=g.memory)
    model = Seq2SeqModel(native_model_config(g, tokenizer))
    if native_init:
        _check_same_architecture(ModelConfig.load(g.init), model.config, g.init)
        load_weights(model, Path(g.init) / WEIGHTS_NAME)  # float16 weights are cast to the model's
    return model


def _check_same_architecture(saved: ModelConfig, expected: ModelConfig, path: str) -> None:
    # the slots as the model reads them (ModelConfig.joint_slots): a no-memory twin ignores its own
    differ = [f"{f.name} {getattr(saved, f.name)!r} (the config builds {getattr(expected, f.name)!r})"
              for f in dataclasses.fields(ModelConfig)
              if f.name not in TRAINING_ONLY and getattr(saved, f.name) != getattr(expected, f.name)
              and not (f.name in ("source_slot", "memory_slot") and saved.joint_slots == expected.joint_slots)]
    if differ:
        raise ValueError(f"generator.init {path} holds a native generator other than the one this config "
                         f"describes: {'; '.join(differ)}. Set the generator section (and the tokenizer) to "
                         f"match its {CONFIG_NAME}")


def native_model_config(g: GeneratorConfig, tokenizer: Tokenizer) -> ModelConfig:
    """The architecture of a native generator with the settings ``g`` and the vocabulary of ``tokenizer``."""
    joint_len = g.max_source_len + g.num_memories * g.max_memory_len + 1
    slots = g.joint_positions == "slots"
    return ModelConfig(
        vocab_size=tokenizer.vocab_size, d_model=g.d_model, encoder_layers=g.encoder_layers,
        decoder_layers=g.decoder_layers, heads=g.heads, ffn_dim=g.ffn_dim, pre_norm=g.pre_norm,
        positions=g.positions, max_positions=max(joint_len, g.max_target_len, g.max_memory_len) + 1,
        scale_embedding=g.scale_embedding, final_layer_norm=g.pre_norm, activation=g.activation,
        share_embeddings=g.share_embeddings, dropout=g.dropout, attention_dropout=g.attention_dropout,
        memory=g.memory, source_slot=g.max_source_len if slots else 0, memory_slot=g.max_memory_len if slots else 0,
        pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, sep_id=tokenizer.sep_id,
        decoder_start_id=tokenizer.bos_id,
    )

