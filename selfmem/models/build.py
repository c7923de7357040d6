"""The generator model a config describes: fresh native, imported from Hugging Face, or run by HF."""

from __future__ import annotations

import torch

from selfmem.common.config import Config
from selfmem.common.tokenizer import Tokenizer
from selfmem.models.config import ModelConfig
from selfmem.models.hf_engine import HFSeq2Seq
from selfmem.models.hf_import import import_hf
from selfmem.models.seq2seq import Seq2SeqModel


def build_model(config: Config, tokenizer: Tokenizer) -> torch.nn.Module:
    """A fresh native model, a native model imported from a HF checkpoint, or an `engine: hf` model."""
    g = config.generator
    if g.joint_positions == "slots" and (g.engine == "hf" or g.init):
        raise ValueError("generator.joint_positions 'slots' is for native models trained from scratch; "
                         "an imported or Hugging Face model keeps the positions it was trained with")
    if g.engine == "hf":
        if not g.init:
            raise ValueError("generator.engine is 'hf' but generator.init (a checkpoint directory) is not set")
        if g.memory == "dual":
            raise ValueError("generator.engine 'hf' supports generator.memory none or joint, not dual")
        return HFSeq2Seq(g.init, tokenizer.pad_id)
    if g.init:
        return import_hf(g.init, memory=g.memory)
    joint_len = g.max_source_len + g.num_memories * g.max_memory_len + 1
    slots = g.joint_positions == "slots"
    return Seq2SeqModel(ModelConfig(
        vocab_size=tokenizer.vocab_size, d_model=g.d_model, encoder_layers=g.encoder_layers,
        decoder_layers=g.decoder_layers, heads=g.heads, ffn_dim=g.ffn_dim, pre_norm=g.pre_norm,
        positions=g.positions, max_positions=max(joint_len, g.max_target_len, g.max_memory_len) + 1,
        scale_embedding=g.scale_embedding, final_layer_norm=g.pre_norm, activation=g.activation,
        share_embeddings=g.share_embeddings, dropout=g.dropout, attention_dropout=g.attention_dropout,
        memory=g.memory, source_slot=g.max_source_len if slots else 0, memory_slot=g.max_memory_len if slots else 0,
        pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, sep_id=tokenizer.sep_id,
        decoder_start_id=tokenizer.bos_id,
    ))


def decoder_start_id(model: torch.nn.Module) -> int:
    """The token a native or HF generator starts decoding with."""
    return model.decoder_start_id if isinstance(model, HFSeq2Seq) else model.config.decoder_start_id
