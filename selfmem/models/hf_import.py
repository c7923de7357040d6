"""Build a ``Seq2SeqModel`` from a local Hugging Face BART, mBART, Marian or Pegasus checkpoint.

What each family computes (transformers' ``modeling_{bart,mbart,marian,pegasus}.py``):

* BART: post-norm; learned positions whose table starts at row 2; a layer norm on the
  embeddings; no final layer norms.
* mBART: as BART, but pre-norm with a final layer norm closing each stack.
* Marian: post-norm; sinusoidal positions in Marian's layout (rebuilt, not stored in the
  checkpoint), no offset; embeddings usually scaled by sqrt(d_model); usually swish
  (= silu); decoding starts from pad.
* Pegasus: pre-norm with final layer norms; sinusoidal positions; scaled embeddings.

All four scale attention by head_dim ** -0.5, add a fixed ``final_logits_bias`` to the
logits, and (by default) share one token embedding between encoder, decoder and output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModelForSeq2SeqLM, PreTrainedModel

from selfmem.models.config import ModelConfig
from selfmem.models.hf_weights import from_pretrained_safe
from selfmem.models.seq2seq import Seq2SeqModel

FAMILIES: dict[str, dict[str, Any]] = {
    "bart": dict(pre_norm=False, positions="learned", position_offset=2, layernorm_embedding=True,
                 final_layer_norm=False),
    "mbart": dict(pre_norm=True, positions="learned", position_offset=2, layernorm_embedding=True,
                  final_layer_norm=True),
    "marian": dict(pre_norm=False, positions="sinusoidal", position_offset=0, layernorm_embedding=False,
                   final_layer_norm=False),
    "pegasus": dict(pre_norm=True, positions="sinusoidal", position_offset=0, layernorm_embedding=False,
                    final_layer_norm=True),
}

HF_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "silu": "silu", "swish": "silu"}


def import_hf(path: str | Path, memory: str = "none") -> Seq2SeqModel:
    """Our model with the weights of the HF checkpoint directory ``path``, in eval mode.

    ``memory`` 'none' and 'joint' give the checkpoint's architecture unchanged; 'dual' adds
    a memory cross-attention to every decoder layer, initialised as a copy of that layer's
    source cross-attention (and its layer norm).
    """
    hf_config = AutoConfig.from_pretrained(path, local_files_only=True)
    if hf_config.model_type not in FAMILIES:
        raise ValueError(
            f"{path}: cannot import model type {hf_config.model_type!r}; supported: {', '.join(FAMILIES)} "
            "(generator.engine: hf runs any AutoModelForSeq2SeqLM)"
        )
    hf_model = from_pretrained_safe(AutoModelForSeq2SeqLM, path)
    model = Seq2SeqModel(_model_config(hf_model, memory, path))
    model.load_state_dict(_state_dict(hf_model, model, path), strict=True)
    return model.eval()


def _model_config(hf_model: PreTrainedModel, memory: str, path: str | Path) -> ModelConfig:
    c = hf_model.config
    for ours, (enc, dec) in {"heads": ("encoder_attention_heads", "decoder_attention_heads"),
                             "ffn_dim": ("encoder_ffn_dim", "decoder_ffn_dim")}.items():
        if getattr(c, enc) != getattr(c, dec):
            raise ValueError(f"{path}: {enc} = {getattr(c, enc)} differs from {dec} = {getattr(c, dec)}; "
                             f"our model has one {ours} for both stacks")
    if getattr(c, "decoder_vocab_size", c.vocab_size) != c.vocab_size:
        raise ValueError(f"{path}: a decoder vocabulary of {c.decoder_vocab_size} besides the encoder's "
                         f"{c.vocab_size} is not supported (one vocabulary for both sides)")
    if c.activation_function not in HF_ACTIVATIONS:
        raise ValueError(f"{path}: activation {c.activation_function!r} is not supported; "
                         f"supported: {', '.join(HF_ACTIVATIONS)}")
    if not isinstance(c.eos_token_id, int):
        raise ValueError(f"{path}: expected a single eos_token_id, got {c.eos_token_id!r}")

    # Marian has bos_token_id None; transformers 5's PegasusConfig has no such attribute
    bos = getattr(c, "bos_token_id", None)
    # Tied weights are one Parameter object. transformers 5 unties everything, the
    # encoder/decoder embedding share included, when tie_word_embeddings is false.
    decoder_embed = hf_model.model.decoder.embed_tokens.weight
    return ModelConfig(
        vocab_size=c.vocab_size,
        d_model=c.d_model,
        encoder_layers=c.encoder_layers,
        decoder_layers=c.decoder_layers,
        heads=c.encoder_attention_heads,
        ffn_dim=c.encoder_ffn_dim,
        max_positions=c.max_position_embeddings,
        scale_embedding=bool(c.scale_embedding),
        activation=HF_ACTIVATIONS[c.activation_function],
        share_embeddings=hf_model.model.encoder.embed_tokens.weight is decoder_embed,
        tie_output=hf_model.lm_head.weight is decoder_embed,
        final_logits_bias=True,
        dropout=float(c.dropout),
        attention_dropout=float(c.attention_dropout),
        activation_dropout=float(c.activation_dropout),
        memory=memory,
        pad_id=c.pad_token_id,
        bos_id=bos if bos is not None else c.pad_token_id,
        eos_id=c.eos_token_id,
        sep_id=c.eos_token_id,  # BART-family tokenizers separate segments with eos
        # mBART may leave the start to generation (a language code); eos is fairseq's default
        decoder_start_id=c.decoder_start_token_id if c.decoder_start_token_id is not None else c.eos_token_id,
        init_std=float(c.init_std),
        **FAMILIES[c.model_type],
    )


def _hf_name(name: str) -> str:
    """The HF state-dict key that initialises our parameter or buffer ``name``."""
    if name == "output_projection.weight":
        return "lm_head.weight"
    if name == "final_logits_bias":
        return name
    # memory_attn and memory_attn_layer_norm start as copies of the source cross-attention
    return "model." + name.replace(".memory_attn", ".encoder_attn")


def _state_dict(hf_model: PreTrainedModel, model: Seq2SeqModel, path: str | Path) -> dict:
    hf_state = hf_model.state_dict()
    state = {name: hf_state[_hf_name(name)].reshape(tensor.shape) for name, tensor in model.state_dict().items()}
    # Every HF weight that HF computes with must reach our model (tied copies count
    # once). Left out: the sinusoidal tables, which both sides rebuild from the config,
    # and model.shared, which HF's forward only reads through the stacks' embed_tokens.
    used = {t.data_ptr() for t in state.values()}
    sinusoidal = model.config.positions == "sinusoidal"
    unused = [name for name, t in hf_state.items()
              if t.data_ptr() not in used and name != "model.shared.weight"
              and not (sinusoidal and "embed_positions" in name)]
    if unused:
        raise ValueError(f"{path}: weights the importer does not understand: {', '.join(unused)}")
    return state
