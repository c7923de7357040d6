"""Generator inputs: (source, memories) -> target as token ids, and their padded batches.

Encoder input by memory mode (BART convention: each sequence ends with eos):
  none   source eos
  joint  source sep memory_1 sep memory_2 ... eos   (the source keeps its own budget;
                                                     only memories are truncated)
  dual   source eos, and each memory as its own sequence: memory eos
Decoder: input ``start target``, labels ``target eos``. An example without memory gets
one memory of just ``eos`` in dual mode, so no attention row is empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selfmem.common.batching import bucket
from selfmem.common.config import GeneratorConfig
from selfmem.common.data import Example
from selfmem.common.tokenizer import Tokenizer


@dataclass(frozen=True)
class EncodedExample:
    source: list[int]
    memories: list[list[int]]
    target: list[int]


@dataclass(frozen=True)
class SpecialIds:
    """The token ids a generator's inputs are built with."""

    pad: int
    eos: int
    sep: int
    decoder_start: int

    @classmethod
    def of(cls, tokenizer: Tokenizer, model) -> SpecialIds:
        """The tokenizer's pad, eos and separator ids and ``model``'s decoder start id."""
        return cls(pad=tokenizer.pad_id, eos=tokenizer.eos_id, sep=tokenizer.sep_id,
                   decoder_start=model.decoder_start_id)


def encode_examples(
    examples: list[Example], memories: list[list[str]], tokenizer: Tokenizer, config: GeneratorConfig
) -> list[EncodedExample]:
    """Tokenize and truncate every example with its first ``config.num_memories`` memories;
    separator and eos ids produced from the text itself are dropped."""
    if len(memories) != len(examples):
        raise ValueError(f"{len(memories)} memory lines for {len(examples)} examples")
    # A separator or eos spelled out in the text would split the joint input or end it early
    structural = {tokenizer.sep_id, tokenizer.eos_id}

    def ids(text: str, limit: int) -> list[int]:
        return [i for i in tokenizer.encode(text) if i not in structural][: limit - 1]

    encoded = []
    for example, example_memories in zip(examples, memories):
        kept = example_memories[: config.num_memories] if config.memory != "none" else []
        encoded.append(
            EncodedExample(
                source=ids(example.source, config.max_source_len),
                memories=[ids(m, config.max_memory_len) for m in kept],
                target=ids(example.target, config.max_target_len),
            )
        )
    return encoded


def encoder_input(example: EncodedExample, mode: str, ids: SpecialIds) -> list[int]:
    """The encoder's token ids for ``mode`` (see the module docstring)."""
    if mode != "joint":
        return example.source + [ids.eos]
    tokens = list(example.source)
    for memory in example.memories:
        tokens += [ids.sep] + memory
    return tokens + [ids.eos]


def memory_inputs(example: EncodedExample, ids: SpecialIds) -> list[list[int]]:
    """Dual mode: each memory as its own encoder sequence (at least one)."""
    return [m + [ids.eos] for m in example.memories] or [[ids.eos]]


def example_sizes(example: EncodedExample, mode: str, ids: SpecialIds, num_memories: int = 1) -> tuple[int, ...]:
    """The padded parts of an example, as the token budget counts them.

    In dual mode a batch pads its memories to (most memories) x (longest memory); counting
    ``num_memories`` slots of this example's longest memory bounds that from above.
    """
    sizes = (len(encoder_input(example, mode, ids)), len(example.target) + 1)
    if mode == "dual":
        sizes += (max(num_memories, len(example.memories)) * max(len(m) for m in memory_inputs(example, ids)),)
    return sizes


def _pad(rows: list[list[int]], pad: int, buckets: bool) -> torch.Tensor:
    width = max(len(r) for r in rows)
    width = bucket(width) if buckets else width
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)


def collate(examples: list[EncodedExample], mode: str, ids: SpecialIds,
            buckets: bool = False) -> dict[str, torch.Tensor]:
    """Padded tensors: ``src`` (B, S), ``decoder_input`` and ``labels`` (B, T), ``memory`` (B, M, L) in dual mode.

    With ``buckets`` each padded length (S, T, L) is rounded up by ``bucket``; the padding is
    masked, so the loss is the same.
    """
    batch = {
        "src": _pad([encoder_input(ex, mode, ids) for ex in examples], ids.pad, buckets),
        "decoder_input": _pad([[ids.decoder_start] + ex.target for ex in examples], ids.pad, buckets),
        "labels": _pad([ex.target + [ids.eos] for ex in examples], ids.pad, buckets),
    }
    if mode == "dual":
        memories = [memory_inputs(ex, ids) for ex in examples]
        slots = max(len(m) for m in memories)
        rows = _pad([seq for m in memories for seq in m + [[]] * (slots - len(m))], ids.pad, buckets)
        batch["memory"] = rows.view(len(examples), slots, -1)
    return batch
