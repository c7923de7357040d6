"""The generator: an encoder-decoder Transformer with no, joint or dual memory.

Memory modes (``ModelConfig.memory``):

* ``none``: a plain encoder-decoder.
* ``joint``: the caller feeds ``source <sep> memory`` as one encoder input, so the model
  sees a single input. With ``source_slot`` and ``memory_slot`` set, positions go as if the
  source and each memory were padded to those lengths: memory token i then always sits at
  the same distance from target token i, which lets a small model learn to copy by
  position (with positions that simply continue, that distance changes with every source).
* ``dual``: the memories go through the same encoder (shared weights), each one encoded
  on its own, and every decoder layer attends to all of them together in an extra
  cross-attention (with its own layer norm) after the source cross-attention.

Inputs are right-padded with ``pad_id``. Attention masks are boolean (True = attend) and
go to ``scaled_dot_product_attention`` as such, so no additive -inf/-1e9 mask can
overflow in fp16. Decoder self-attention is causal only: right padding in the decoder
input never reaches a real token.

Dual memory contract: ``memory_ids`` has shape (batch, num_memories, mem_len), and every
example has at least one memory with at least one non-pad token (the data side encodes an
empty memory as just eos), so no attention row is fully masked. Extra memory slots that
are entirely padding are allowed; they are masked out.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from selfmem.common.io import atomic_directory
from selfmem.common.records import CheckpointError
from selfmem.models.config import ModelConfig
from selfmem.models.linear import linear

WEIGHTS_NAME = "model.safetensors"

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}


@dataclass
class EncoderOut:
    """The encoder's output as the decoder reads it; masks are True at real tokens."""

    source: Tensor  # (batch, src_len, d_model)
    source_mask: Tensor  # (batch, src_len), bool
    memory: Tensor | None = None  # (batch, num_memories * mem_len, d_model), dual only
    memory_mask: Tensor | None = None  # (batch, num_memories * mem_len), bool

    def select(self, index: Tensor) -> EncoderOut:
        """Batch rows ``index``, e.g. the examples still decoding."""
        return EncoderOut(*(None if (t := getattr(self, f.name)) is None else t.index_select(0, index)
                            for f in dataclasses.fields(self)))

    def refill(self, examples: Tensor, new: EncoderOut) -> EncoderOut:
        """In place where it can: rows ``examples`` replaced by ``new``'s rows (``put_rows``)."""
        return EncoderOut(*(None if (t := getattr(self, f.name)) is None else put_rows(t, examples, getattr(new, f.name))
                            for f in dataclasses.fields(self)))

    def trim(self, source_len: int | None, memory_len: int | None) -> EncoderOut:
        """The output cut to ``source_len`` source and ``memory_len`` memory positions (padding;
        None keeps them all)."""
        memory = None if self.memory is None else (self.memory[:, :memory_len], self.memory_mask[:, :memory_len])
        return EncoderOut(self.source[:, :source_len], self.source_mask[:, :source_len], *(memory or ()))


def pad_to(t: Tensor, length: int, dim: int = 1) -> Tensor:
    """``t`` zero-padded (False for booleans) at the end of ``dim`` to ``length``."""
    return t if t.size(dim) == length else F.pad(t, (0, 0) * (t.dim() - dim - 1) + (0, length - t.size(dim)))


INPUT_ROOM = 8  # spare positions when an input entering a batch is longer than its inputs


def put_rows(t: Tensor, index: Tensor, new: Tensor, dim: int = 1) -> Tensor:
    """``t`` with rows ``index`` replaced by ``new``, written in place unless ``new`` is longer
    along ``dim``: then ``t`` is padded first, with ``INPUT_ROOM`` more (the inputs of a
    length-sorted stream grow a little at a time). ``new`` is padded to ``t``'s length."""
    if new.size(dim) > t.size(dim):
        t = pad_to(t, new.size(dim) + INPUT_ROOM, dim)
    t[index] = pad_to(new, t.size(dim), dim)
    return t


@dataclass
class LayerCache:
    """One decoder layer's attention keys and values.

    The cross-attention entries, each (batch, heads, length, head_dim), are projected once
    from the encoder output. The self-attention entries share one buffer ``self_kv``
    (batch, 2, heads, room, head_dim): keys at index 0 of its second axis, values at 1, so
    that a batch row's keys and values move as one block (beam search copies rows every
    step). Positions ``< length`` hold the decoded tokens' entries and each step writes
    after them, so a step copies no past keys. The room is small (``GROWTH`` positions at a
    time), since beam search copies whole rows when it reorders beams. A step writes into
    the buffer it was given: continue from each cache once, or ``select`` (which copies) to
    branch.

    Rows may start decoding at different steps (beam search giving a done example's rows to
    the next input): with ``starts`` (batch,), row i's entries begin at position
    ``starts[i]``, the positions before it are hidden from its queries, and its tokens'
    positions count from there. The cross-attention entries of such a batch are padded to
    its longest input.
    """

    source_k: Tensor
    source_v: Tensor
    memory_k: Tensor | None = None
    memory_v: Tensor | None = None
    self_kv: Tensor | None = None
    length: int = 0
    starts: Tensor | None = None

    GROWTH: ClassVar[int] = 16

    def append(self, kv: Tensor) -> LayerCache:
        """This cache with the keys/values ``kv`` (batch, 2, heads, new, head_dim) of new tokens
        written after the past ones."""
        if self.self_kv is None:
            return dataclasses.replace(self, self_kv=kv, length=kv.size(3))
        end = self.length + kv.size(3)
        self_kv = self.self_kv
        if end > self_kv.size(3):
            room = end + self.GROWTH
            self_kv = torch.cat([self_kv[:, :, :, :self.length],
                                 self_kv.new_empty(*self_kv.shape[:3], room - self.length, self_kv.size(4))], dim=3)
        self_kv[:, :, :, self.length:end] = kv
        return dataclasses.replace(self, self_kv=self_kv, length=end)

    def past(self) -> tuple[Tensor, Tensor]:
        """The self-attention keys and values of every decoded token."""
        past = self.self_kv[:, :, :, :self.length]
        return past[:, 0], past[:, 1]

    def copy_rows(self, source: Tensor, target: Tensor) -> None:
        """In place: the self-attention entries of rows ``source`` become those of rows ``target``
        (beam search: a beam's second child takes over the row of a beam without children)."""
        # whole rows, spare room included: one contiguous block per row is faster to copy
        self.self_kv.index_copy_(0, target, self.self_kv.index_select(0, source))

    def select(self, rows: Tensor, examples: Tensor | None = None) -> LayerCache:
        """The self-attention entries narrowed to batch rows ``rows``; the cross-attention
        entries to ``examples``, or left as they are when None (beam search keeps one
        cross-attention row per example, shared by its beams)."""
        def pick(t: Tensor | None, index: Tensor | None) -> Tensor | None:
            return t if t is None or index is None else t.index_select(0, index)

        return LayerCache(pick(self.source_k, examples), pick(self.source_v, examples),
                          pick(self.memory_k, examples), pick(self.memory_v, examples),
                          pick(self.self_kv, rows), self.length, pick(self.starts, rows))

    def refill(self, examples: Tensor, rows: Tensor, new: LayerCache) -> LayerCache:
        """This cache with the examples ``examples`` replaced by those of ``new`` (a fresh
        cross-attention cache, nothing decoded), in place where it can (``put_rows``): their
        self-attention rows ``rows`` start at ``length``. What those rows hold before it is
        hidden from them (and finite: every row was written at every position)."""
        def put(t: Tensor | None, fresh: Tensor | None) -> Tensor | None:
            return None if t is None else put_rows(t, examples, fresh, dim=2)

        starts = self.self_kv.new_zeros(self.self_kv.size(0), dtype=torch.long) if self.starts is None else self.starts
        starts = starts.index_fill(0, rows, self.length)
        return LayerCache(put(self.source_k, new.source_k), put(self.source_v, new.source_v),
                          put(self.memory_k, new.memory_k), put(self.memory_v, new.memory_v),
                          self.self_kv, self.length, starts)

    def trim(self, first: int, source_len: int | None, memory_len: int | None) -> LayerCache:
        """This cache without self-attention positions before ``first`` (before every row's
        start) and cross-attention entries cut to ``source_len``/``memory_len`` (padding; None
        keeps them all)."""
        def cut(t: Tensor | None, length: int | None) -> Tensor | None:
            return None if t is None else t[:, :, :length]

        return LayerCache(cut(self.source_k, source_len), cut(self.source_v, source_len),
                          cut(self.memory_k, memory_len), cut(self.memory_v, memory_len),
                          self.self_kv[:, :, :, first:], self.length - first,
                          None if self.starts is None else self.starts - first)


DecoderCache = list[LayerCache]  # one entry per decoder layer



def sinusoidal_table(num_positions: int, dim: int) -> Tensor:
    """Marian/Pegasus sinusoids: sin of every frequency in the first half, cos in the second."""
    # float64 as in HF's numpy construction, so imported checkpoints see the same table
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    sin_freqs = torch.arange((dim + 1) // 2, dtype=torch.float64)
    cos_freqs = torch.arange(dim // 2, dtype=torch.float64)
    sin = torch.sin(position / torch.pow(10000.0, 2 * sin_freqs / dim))
    cos = torch.cos(position / torch.pow(10000.0, 2 * cos_freqs / dim))
    return torch.cat([sin, cos], dim=1).float()


def _check_positions(end: int, max_positions: int) -> None:
    if end > max_positions:
        raise ValueError(f"a sequence reaching position {end} exceeds max_positions = {max_positions}")


def _check_position_tensor(positions: Tensor, max_positions: int) -> None:
    """``_check_positions`` for a tensor of positions, read on the CPU only: on an accelerator
    the read would make the step wait for the device, and an index past the table fails
    there anyway (a device-side assert), only with a less helpful message."""
    if positions.device.type == "cpu":
        _check_positions(int(positions.max()) + 1, max_positions)


class LearnedPositionalEmbedding(nn.Embedding):
    """A trained position table; position ``i`` is row ``offset + i`` (BART keeps 2 spare rows)."""

    def __init__(self, max_positions: int, dim: int, offset: int) -> None:
        super().__init__(max_positions + offset, dim)
        self.max_positions = max_positions
        self.offset = offset

    def forward(self, start: int, length: int) -> Tensor:
        """Embeddings of positions ``start .. start + length - 1``, shape (length, dim)."""
        _check_positions(start + length, self.max_positions)
        rows = torch.arange(start + self.offset, start + length + self.offset, device=self.weight.device)
        return super().forward(rows)

    def at(self, positions: Tensor) -> Tensor:
        """Embeddings of arbitrary ``positions`` (any shape), shape ``positions.shape + (dim,)``."""
        _check_position_tensor(positions, self.max_positions)
        return super().forward(positions + self.offset)


class SinusoidalPositionalEmbedding(nn.Module):
    """Fixed sinusoidal positions (``sinusoidal_table``); not saved, rebuilt from the config."""

    def __init__(self, max_positions: int, dim: int) -> None:
        super().__init__()
        self.max_positions = max_positions
        self.register_buffer("table", sinusoidal_table(max_positions, dim), persistent=False)

    def forward(self, start: int, length: int) -> Tensor:
        """Embeddings of positions ``start .. start + length - 1``, shape (length, dim)."""
        _check_positions(start + length, self.max_positions)
        return self.table[start:start + length]

    def at(self, positions: Tensor) -> Tensor:
        """Embeddings of arbitrary ``positions`` (any shape), shape ``positions.shape + (dim,)``."""
        _check_position_tensor(positions, self.max_positions)
        return self.table[positions]


def project(x: Tensor, *layers: nn.Linear) -> Tensor:
    """``x`` through ``layers`` side by side (one matrix product; see ``selfmem.models.linear``)."""
    return linear(x, [layer.weight for layer in layers], [layer.bias for layer in layers])


class MultiheadAttention(nn.Module):
    """Multi-head scaled dot-product attention with biased q/k/v/out projections.

    The projections that read the same input run as one matrix product over their stacked
    weights (q/k/v for self-attention, k/v for cross-attention): fewer, larger kernels. The
    weights stay separate parameters, so checkpoints keep their layout and names.
    """

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split_heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, T, d) -> (B, H, T, d/H)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Project ``x`` (batch, length, d_model) to per-head keys and values."""
        k, v = project(x, self.k_proj, self.v_proj).chunk(2, dim=-1)
        return self._split_heads(k), self._split_heads(v)

    def queries_keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Self-attention's projections of ``x`` (batch, length, d_model): the queries as they
        are, and the keys and values per head side by side, (batch, 2, heads, length, head_dim)."""
        qkv = project(x, self.q_proj, self.k_proj, self.v_proj)
        d = qkv.size(-1) // 3
        kv = qkv[..., d:].unflatten(-1, (2, self.heads, -1)).permute(0, 2, 3, 1, 4)
        return qkv[..., :d], kv

    def forward(self, x: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None = None,
                causal: bool = False) -> Tensor:
        """Attend from ``x`` to ``keys``/``values``; ``mask`` is boolean, True = attend."""
        return self.attend(project(x, self.q_proj), keys, values, mask, causal)

    def attend(self, queries: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None = None,
               causal: bool = False) -> Tensor:
        """Attend from projected ``queries`` (batch, length, d_model) to ``keys``/``values``.

        ``keys`` may have fewer batch rows than ``queries`` when consecutive rows share
        them (the beams of one example attending to its encoder output): those rows' queries
        are then stacked along the length axis, so the shared keys are never copied per beam.
        """
        stacked = queries if keys.size(0) == queries.size(0) else queries.reshape(keys.size(0), -1,
                                                                                   queries.size(-1))
        out = F.scaled_dot_product_attention(
            self._split_heads(stacked), keys, values, attn_mask=mask, is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return project(out.transpose(1, 2).flatten(2), self.out_proj).reshape(queries.shape)


class TransformerLayer(nn.Module):
    """Residual wiring (pre- or post-norm) and the feed-forward block shared by both layer kinds."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.pre_norm = config.pre_norm
        self.dropout = nn.Dropout(config.dropout)
        self.activation = ACTIVATIONS[config.activation]
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.fc1 = nn.Linear(config.d_model, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, config.d_model)
        self.final_layer_norm = nn.LayerNorm(config.d_model)  # the feed-forward block's norm (fairseq's name)

    def sublayer_input(self, x: Tensor, norm: nn.LayerNorm) -> Tensor:
        """What a sublayer reads: normalised first under pre-norm."""
        return norm(x) if self.pre_norm else x

    def residual(self, x: Tensor, y: Tensor, norm: nn.LayerNorm) -> Tensor:
        """Add a sublayer's output ``y`` to ``x``; post-norm normalises the sum."""
        x = x + self.dropped(y, self.dropout)
        return x if self.pre_norm else norm(x)

    def dropped(self, x: Tensor, dropout: nn.Dropout) -> Tensor:
        """``x`` through ``dropout`` when training; as it is otherwise, without the call (an
        identity in eval mode that still costs a few microseconds: 13 calls a decoding step)."""
        return dropout(x) if self.training else x

    def feed_forward(self, x: Tensor) -> Tensor:
        h = self.sublayer_input(x, self.final_layer_norm)
        h = project(self.dropped(self.activation(project(h, self.fc1)), self.activation_dropout), self.fc2)
        return self.residual(x, h, self.final_layer_norm)


class EncoderLayer(TransformerLayer):
    """Self-attention, then feed-forward."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.self_attn = MultiheadAttention(config.d_model, config.heads, config.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        h = self.sublayer_input(x, self.self_attn_layer_norm)
        queries, kv = self.self_attn.queries_keys_values(h)
        x = self.residual(x, self.self_attn.attend(queries, kv[:, 0], kv[:, 1], mask=key_mask),
                          self.self_attn_layer_norm)
        return self.feed_forward(x)


class DecoderLayer(TransformerLayer):
    """Causal self-attention, source cross-attention, memory cross-attention (dual), feed-forward."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        d, heads, p = config.d_model, config.heads, config.attention_dropout
        self.self_attn = MultiheadAttention(d, heads, p)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.encoder_attn = MultiheadAttention(d, heads, p)
        self.encoder_attn_layer_norm = nn.LayerNorm(d)
        dual = config.memory == "dual"
        self.memory_attn = MultiheadAttention(d, heads, p) if dual else None
        self.memory_attn_layer_norm = nn.LayerNorm(d) if dual else None

    def cross_cache(self, encoder_out: EncoderOut) -> LayerCache:
        """Project the encoder output to this layer's cross-attention keys and values, once."""
        source_k, source_v = self.encoder_attn.keys_values(encoder_out.source)
        if self.memory_attn is None:
            return LayerCache(source_k, source_v)
        return LayerCache(source_k, source_v, *self.memory_attn.keys_values(encoder_out.memory))

    def forward(self, x: Tensor, cache: LayerCache, source_mask: Tensor, memory_mask: Tensor | None,
                self_mask: Tensor | None, causal: bool) -> tuple[Tensor, LayerCache]:
        h = self.sublayer_input(x, self.self_attn_layer_norm)
        queries, kv = self.self_attn.queries_keys_values(h)
        cache = cache.append(kv)
        x = self.residual(x, self.self_attn.attend(queries, *cache.past(), mask=self_mask, causal=causal),
                          self.self_attn_layer_norm)

        h = self.sublayer_input(x, self.encoder_attn_layer_norm)
        x = self.residual(x, self.encoder_attn(h, cache.source_k, cache.source_v, mask=source_mask),
                          self.encoder_attn_layer_norm)

        if self.memory_attn is not None:
            h = self.sublayer_input(x, self.memory_attn_layer_norm)
            x = self.residual(x, self.memory_attn(h, cache.memory_k, cache.memory_v, mask=memory_mask),
                              self.memory_attn_layer_norm)

        return self.feed_forward(x), cache


class TransformerStack(nn.Module):
    """Embedding (tokens, positions, optional layer norm) and the optional final layer norm
    around a stack of layers."""

    def __init__(self, config: ModelConfig, embed_tokens: nn.Embedding, layers: list[nn.Module]) -> None:
        super().__init__()
        self.embed_tokens = embed_tokens
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        if config.positions == "learned":
            self.embed_positions = LearnedPositionalEmbedding(config.max_positions, config.d_model,
                                                              config.position_offset)
        else:
            self.embed_positions = SinusoidalPositionalEmbedding(config.max_positions, config.d_model)
        self.layernorm_embedding = nn.LayerNorm(config.d_model) if config.layernorm_embedding else None
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(layers)
        self.layer_norm = nn.LayerNorm(config.d_model) if config.final_layer_norm else None

    def embed(self, ids: Tensor, start: int = 0, positions: Tensor | None = None) -> Tensor:
        """Token plus position embeddings of ``ids`` (batch, length): positions from ``start``,
        or ``positions`` (batch, length) where given."""
        position_embeddings = (self.embed_positions(start, ids.size(1)) if positions is None
                               else self.embed_positions.at(positions))
        x = self.embed_tokens(ids) * self.embed_scale + position_embeddings
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        return self.dropout(x)

    def final_norm(self, x: Tensor) -> Tensor:
        return x if self.layer_norm is None else self.layer_norm(x)


def slotted_positions(ids: Tensor, sep_id: int, source_slot: int, memory_slot: int) -> Tensor:
    """Positions (batch, length) of a joint input ``source sep memory sep memory ... eos`` as
    if the source were padded to ``source_slot`` tokens and each memory to ``memory_slot``;
    a separator (and the final eos) takes the position after the token before it."""
    index = torch.arange(ids.size(1), device=ids.device).expand_as(ids)
    is_sep = ids.eq(sep_id)
    last_sep = torch.where(is_sep, index, -1).cummax(dim=1).values
    before = F.pad(last_sep[:, :-1], (1, 0), value=-1)  # the last separator strictly before each token
    offset = index - before - 1  # within the source or the memory
    segment = F.pad(is_sep[:, :-1].long().cumsum(dim=1), (1, 0))  # 0: source, k: memory k
    start = torch.where(segment > 0, source_slot + (segment - 1) * memory_slot, 0)
    return start + offset


class Encoder(TransformerStack):
    """The Transformer encoder."""

    def __init__(self, config: ModelConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__(config, embed_tokens, [EncoderLayer(config) for _ in range(config.encoder_layers)])
        self.pad_id = config.pad_id
        self.slots = config.joint_slots
        self.sep_id = config.sep_id

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Encode ``ids`` (batch, length); return the states and the mask of real tokens."""
        mask = ids.ne(self.pad_id)
        key_mask = mask[:, None, None, :]  # broadcast over heads and queries
        positions = None
        if self.slots[0]:  # padding sits at position 0: past the last slot it could overrun the table
            positions = slotted_positions(ids, self.sep_id, *self.slots).masked_fill(~mask, 0)
        x = self.embed(ids, positions=positions)
        for layer in self.layers:
            x = layer(x, key_mask)
        return self.final_norm(x), mask


class Decoder(TransformerStack):
    """The Transformer decoder, run over a prefix or incrementally with a ``DecoderCache``."""

    def __init__(self, config: ModelConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__(config, embed_tokens, [DecoderLayer(config) for _ in range(config.decoder_layers)])

    def init_cache(self, encoder_out: EncoderOut) -> DecoderCache:
        """A cache holding every layer's cross-attention keys/values and no decoded tokens yet."""
        return [layer.cross_cache(encoder_out) for layer in self.layers]

    def forward(self, ids: Tensor, encoder_out: EncoderOut, cache: DecoderCache) -> tuple[Tensor, DecoderCache]:
        """Decode the new tokens ``ids`` (batch, length) after those already in ``cache``."""
        past, starts = cache[0].length, cache[0].starts
        length = ids.size(1)
        # Without starts every cached key is visible; only new tokens hide from later new tokens. (A lone
        # first token is causal too, which changes nothing for it: asking whether the length
        # is 1 would give compiled code a symbolic is_causal, which SDPA refuses.)
        causal = past == 0 and starts is None
        self_mask = positions = None
        if past > 0 and length > 1:
            self_mask = torch.ones(length, past + length, dtype=torch.bool, device=ids.device).tril(past)
        if starts is not None:  # rows that started later: their earlier positions are hidden
            if length > 1:
                raise ValueError("rows with their own starts decode one token at a time")
            self_mask = (torch.arange(past + 1, device=ids.device) >= starts[:, None])[:, None, None, :]
            positions = (past - starts)[:, None]
        source_mask = encoder_out.source_mask[:, None, None, :]
        memory_mask = None if encoder_out.memory_mask is None else encoder_out.memory_mask[:, None, None, :]

        x = self.embed(ids, start=past, positions=positions)
        new_cache = []
        for layer, layer_cache in zip(self.layers, cache):
            x, layer_cache = layer(x, layer_cache, source_mask, memory_mask, self_mask, causal)
            new_cache.append(layer_cache)
        return self.final_norm(x), new_cache


def save_weights(module: nn.Module, directory: Path) -> None:
    """Write ``module``'s weights to ``directory/model.safetensors``, in a directory being
    written as one unit (``atomic_directory``)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_model(module, str(directory / WEIGHTS_NAME))  # each shared tensor once; load_model restores the tie


def load_weights(module: nn.Module, path: Path) -> None:
    """Load the safetensors file ``path`` into ``module`` (every tensor); a damaged file is an
    error that names it."""
    try:
        load_model(module, path, strict=True)
    except SafetensorError as e:  # its own message names no file
        raise CheckpointError(f"{path}: cannot read the weights, the file is damaged or cut short ({e})") from None


class Seq2SeqModel(nn.Module):
    """Encoder-decoder Transformer with ``memory`` none, joint or dual (see the module doc)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        encoder_embed = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_id)
        decoder_embed = (encoder_embed if config.share_embeddings
                         else nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_id))
        self.encoder = Encoder(config, encoder_embed)
        self.decoder = Decoder(config, decoder_embed)
        self.output_projection = None if config.tie_output else nn.Linear(config.d_model, config.vocab_size,
                                                                          bias=False)
        # A buffer, not a parameter: HF keeps BART's final_logits_bias fixed during fine-tuning
        self.register_buffer("final_logits_bias",
                             torch.zeros(config.vocab_size) if config.final_logits_bias else None)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def encode(self, src_ids: Tensor, memory_ids: Tensor | None = None,
               source_index: Tensor | None = None) -> EncoderOut:
        """Encode the source (batch, src_len) and, for dual memory, the memories
        (batch, num_memories, mem_len), each memory on its own.

        ``source_index`` pairs several memory rows with one source: row i of the output
        reads source row ``source_index[i]``, which is encoded once.
        """
        if (memory_ids is not None) != (self.config.memory == "dual"):
            raise ValueError(f"memory_ids must be given exactly when memory is 'dual' "
                             f"(memory = {self.config.memory!r}, memory_ids given: {memory_ids is not None})")
        source, source_mask = self.encoder(src_ids)
        if source_index is not None:
            source, source_mask = source.index_select(0, source_index), source_mask.index_select(0, source_index)
        if memory_ids is None:
            return EncoderOut(source, source_mask)
        if memory_ids.dim() != 3:
            raise ValueError("memory_ids must have shape (batch, num_memories, mem_len), "
                             f"got {tuple(memory_ids.shape)}")
        batch, slots, length = memory_ids.shape
        flat = memory_ids.reshape(batch * slots, length)
        mask = flat.ne(self.config.pad_id)
        # A fully padded slot would give all-masked attention rows inside the encoder,
        # which some SDPA kernels (older torch) fill with NaN, and NaN survives a zero
        # attention weight downstream. It is encoded as a lone eos instead; its states
        # stay masked out by ``mask``.
        empty = ~mask.any(dim=1)
        flat = flat.clone()
        flat[:, 0] = torch.where(empty, self.config.eos_id, flat[:, 0])
        memory, _ = self.encoder(flat)
        return EncoderOut(source, source_mask, memory.reshape(batch, slots * length, -1),
                          mask.reshape(batch, slots * length))

    def output_logits(self, hidden: Tensor) -> Tensor:
        """Vocabulary logits (float32) of decoder states."""
        weight = self.decoder.embed_tokens.weight if self.output_projection is None else self.output_projection.weight
        return linear(hidden, [weight], [self.final_logits_bias]).float()

    def decode_step(self, decoder_input_ids: Tensor, encoder_out: EncoderOut,
                    cache: DecoderCache | None = None) -> tuple[Tensor, DecoderCache]:
        """Run the decoder over the tokens not yet in ``cache``; return their logits and the new cache.

        With ``cache`` None, ``decoder_input_ids`` (batch, length) is the whole prefix (usually
        the start token) and the cross-attention keys/values are computed from
        ``encoder_out``; afterwards pass only the newly chosen tokens, usually (batch, 1).
        Positions continue from the cache length. Logits are float32, (batch, length, vocab).
        """
        if cache is None:
            cache = self.decoder.init_cache(encoder_out)
        hidden, cache = self.decoder(decoder_input_ids, encoder_out, cache)
        return self.output_logits(hidden), cache

    def forward(self, src_ids: Tensor, decoder_input_ids: Tensor, memory_ids: Tensor | None = None,
                target_rows: Tensor | None = None) -> Tensor:
        """Teacher-forced logits (batch, tgt_len, vocab), float32, for training.

        With ``target_rows`` (indices into the flattened batch x tgt_len positions, e.g. those
        whose label is not padding) only those positions' logits, (len(target_rows), vocab):
        the output projection, the largest product of a small model, skips the rest. One
        source row (and memory row) may serve every decoder row: it is encoded once, and
        the rows attend to it together as a beam's do.
        """
        encoder_out = self.encode(src_ids, memory_ids)
        hidden, _ = self.decoder(decoder_input_ids, encoder_out, self.decoder.init_cache(encoder_out))
        if target_rows is not None:
            hidden = hidden.flatten(0, 1).index_select(0, target_rows)
        return self.output_logits(hidden)

    @property
    def decoder_start_id(self) -> int:
        """The token decoding starts with (the same attribute as ``HFSeq2Seq``'s)."""
        return self.config.decoder_start_id

    def num_parameters(self) -> int:
        """Trainable and frozen parameters, each shared tensor counted once."""
        return sum(p.numel() for p in self.parameters())

    def save(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` to ``directory``, replacing it as one unit."""
        with atomic_directory(directory) as staging:
            save_weights(self, staging)
            self.config.save(staging)

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> Seq2SeqModel:
        """Load a model written by ``save``, on ``map_location``, in eval mode (call ``train()`` to train)."""
        directory = Path(directory)
        model = cls(ModelConfig.load(directory))
        load_weights(model, directory / WEIGHTS_NAME)
        return model.to(map_location).eval()
