"""The generator's length budgets against its position table, checked before any stage runs.

``selfmem.common.generator_inputs`` keeps at most ``max_*_len - 1`` tokens of each part and
gives each part one more position for what follows it (a separator or eos), so with S, M,
T = generator.max_source_len, max_memory_len, max_target_len and N = generator.num_memories
the longest inputs need these many positions:

  encoder, joint memory    source sep memory_1 ... sep memory_N eos     S + N x M
    slotted positions      (memory k starts at source_slot + (k - 1) x memory_slot;
                            S and M at most the slots)                  source_slot + (N - 1) x memory_slot + M
  encoder, none or dual    source eos                                   S
  dual, each memory        memory eos (encoded on its own)              M
  decoder                  start target (labels: target eos)            T

Decoding stops after T tokens as well (candidates.max_len is capped by it). A native model
trained from scratch sizes its table from the budgets, so only a checkpoint's table can be
too short: an imported or Hugging Face model (generator.init) or a run's trained generator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from selfmem.common.config import Config, ConfigError


@dataclass(frozen=True)
class PositionTable:
    """A checkpoint's absolute positions: how many, and the joint-memory slots it was trained with."""

    positions: int
    origin: str  # the config file it was read from, for messages
    source_slot: int = 0
    memory_slot: int = 0


def read_position_table(checkpoint: str | Path) -> PositionTable | None:
    """The position table of ``checkpoint/config.json``, read without loading weights: a Hugging
    Face config's ``max_position_embeddings`` or a native one's ``max_positions`` and slots;
    None for a model without absolute positions (relative ones, as T5's)."""
    path = Path(checkpoint) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{checkpoint}: no config.json; expected a Hugging Face or selfmem checkpoint directory")
    with open(path, encoding="utf-8") as f:
        values = json.load(f)
    if "max_position_embeddings" in values:
        return PositionTable(values["max_position_embeddings"], str(path))
    if "max_positions" in values:
        return PositionTable(values["max_positions"], str(path), values.get("source_slot", 0),
                             values.get("memory_slot", 0))
    return None


def budget_problems(config: Config, table: PositionTable) -> list[str]:
    """Each budget of ``config.generator`` whose longest input overruns ``table``, with the keys to change."""
    g, limit = config.generator, table.positions
    S, M, T, N = g.max_source_len, g.max_memory_len, g.max_target_len, g.num_memories
    problems = []

    def over(need: int, what: str) -> str:
        return f"{what} = {need} positions, {need - limit} more than the {limit} of {table.origin}"

    if g.memory == "joint" and table.source_slot:
        s, m = table.source_slot, table.memory_slot
        # a longer source or memory would spill into the next slot's positions
        for key, value, slot, part in (("max_source_len", S, s, "source"), ("max_memory_len", M, m, "memory")):
            if value > slot:
                problems.append(f"generator.{key} = {value} is more than the {slot} positions of each {part} slot "
                                f"of {table.origin}: lower generator.{key} to {slot} or less")
        need = s + (N - 1) * m + min(M, m)
        if need > limit:
            problems.append(
                over(need, f"the joint encoder input (memory slots of {m} after a source slot of {s}) needs "
                           f"{s} + (generator.num_memories - 1) x {m} + generator.max_memory_len = "
                           f"{s} + {N - 1} x {m} + {min(M, m)}")
                + ": lower generator.num_memories or generator.max_memory_len")
    elif g.memory == "joint":
        need = S + N * M
        if need > limit:
            problems.append(
                over(need, f"the joint encoder input (source, a separator before each memory, eos) needs "
                           f"generator.max_source_len + generator.num_memories x generator.max_memory_len = "
                           f"{S} + {N} x {M}")
                + f": lower generator.max_source_len or generator.max_memory_len by {need - limit} in all"
                + (f", e.g. generator.max_source_len={limit - N * M}" if limit - N * M >= 2 else ""))
    elif S > limit:
        problems.append(over(S, "the encoder input (source, eos) needs generator.max_source_len")
                        + f": lower generator.max_source_len by {S - limit}")
    if g.memory == "dual" and M > limit:
        problems.append(over(M, "each dual memory (memory, eos) needs generator.max_memory_len")
                        + f": lower generator.max_memory_len by {M - limit}")
    if T > limit:
        problems.append(over(T, "the decoder input (start, target) needs generator.max_target_len")
                        + f": lower generator.max_target_len by {T - limit}")
    return problems


def check_length_budgets(config: Config, checkpoint: str | Path | None = None) -> None:
    """Raise ``ConfigError`` naming the keys to change when the longest input that ``config``'s
    budgets allow overruns the position table of ``checkpoint`` (default: generator.init; without
    one the model is trained from scratch and its table is sized from the budgets)."""
    checkpoint = checkpoint or config.generator.init
    if checkpoint is None:
        return
    table = read_position_table(checkpoint)
    problems = [] if table is None else budget_problems(config, table)
    if problems:
        raise ConfigError("generator length budgets do not fit the position table:\n  " + "\n  ".join(problems))
