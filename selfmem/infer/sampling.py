"""Batched epsilon sampling (Hewitt et al., 2022) over the native model's incremental decoding API.

Each input row draws ``num_samples`` sequences; at every step a sample keeps only the tokens
whose probability is at least ``epsilon`` (and always the most probable one) and draws from
them in proportion to their probabilities. Minimum Bayes risk uses such samples as pseudo-
references: unlike the beam's candidates, which share most of their prefixes, they are draws
from the generator's distribution (Freitag et al., 2023, "Epsilon sampling rocks").

The randomness is a pure function of (row seed, sample, step, token), a hash rather than a
stateful generator, so that a sample's noise never depends on which other rows share its
batch or on the number of ranks (its log-probabilities only up to the float rounding that
padding moves; across ranks bit for bit, since batches do not depend on them): the caller
gives each row a seed from its example.
The draw is the Gumbel-max trick: the argmax of log-probability plus Gumbel noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from selfmem.infer.beam import Hypothesis
from selfmem.models.linear import frozen_weights

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    """A 64-bit pattern (a Python int in [0, 2**64)) as torch's int64 holds it."""
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 (torch's ``>>`` keeps the sign bit)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: Tensor) -> Tensor:
    """SplitMix64's finaliser on int64 tensors (multiplications wrap, as in C)."""
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def uniform_noise(keys: Tensor, vocab: int) -> Tensor:
    """(rows, vocab) float64 in (0, 1): token v of row r from the hash of ``keys[r]`` and v."""
    tokens = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    bits = mix64(keys[:, None] + (tokens[None, :] + 1) * _GOLDEN)
    return (_shift_right(bits, 11).double() + 0.5) / 2.0**53


def step_keys(seeds: Tensor, sample: Tensor, step: int) -> Tensor:
    """Each row's hash key at ``step``: its input's seed, its sample number and the step."""
    return mix64(mix64(mix64(seeds) + sample * _GOLDEN) + _signed(step * _GOLDEN & _MASK64))


@dataclass(frozen=True)
class SampleSettings:
    """How to sample. Lengths count generated tokens, as ``BeamSettings``'s."""

    num_samples: int = 16
    epsilon: float = 0.02
    min_len: int = 0
    max_len: int = 200

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}")
        if not 0.0 <= self.epsilon < 1.0:
            raise ValueError(f"epsilon must be in [0, 1), got {self.epsilon}")
        if not 0 <= self.min_len < self.max_len:
            raise ValueError(f"need 0 <= min_len < max_len, got min_len {self.min_len}, max_len {self.max_len}")


def epsilon_draw(log_probs: Tensor, epsilon: float, keys: Tensor) -> Tensor:
    """One token per row: drawn from the tokens of probability at least ``epsilon`` (the most
    probable one always among them), renormalised, with the noise of ``keys``."""
    allowed = log_probs >= torch.log(torch.tensor(epsilon, dtype=log_probs.dtype))
    allowed.scatter_(1, log_probs.argmax(1, keepdim=True), True)
    gumbel = -torch.log(-torch.log(uniform_noise(keys, log_probs.size(1))))
    return torch.where(allowed, log_probs.double() + gumbel, -torch.inf).argmax(1)


@torch.no_grad()
@frozen_weights()  # the weights stay as they are for the whole search
def epsilon_sample(model, src: Tensor, memory: Tensor | None, settings: SampleSettings, start_id: int,
                   eos_id: int, seeds: Tensor, source_index: Tensor | None = None) -> list[list[Hypothesis]]:
    """``settings.num_samples`` samples of every input row, in sample order, each scored by its
    log-probability under the model per token, the eos counted (a beam hypothesis's score with
    a length penalty of 1, whatever the beams' length penalty).

    ``seeds`` (int64, one per input row) fixes each row's draws; ``memory`` and
    ``source_index`` are as in ``beam_search``.
    """
    encoder_out = model.encode(src, memory, source_index)
    num_inputs, device, n = encoder_out.source.size(0), src.device, settings.num_samples
    seeds = seeds.to(device)
    alive = torch.arange(num_inputs, device=device)  # the input each group of n rows samples
    sample = torch.arange(n, device=device).repeat(num_inputs)  # each row's sample number
    tokens = torch.empty(num_inputs * n, 0, dtype=torch.long, device=device)  # generated so far
    total = torch.zeros(num_inputs * n, dtype=torch.float64, device=device)  # sum of log-probs
    ended = torch.zeros(num_inputs * n, dtype=torch.bool, device=device)
    found: list[dict[int, Hypothesis]] = [{} for _ in range(num_inputs)]
    last = torch.full((num_inputs, 1), start_id, device=device)
    cache = None
    for step in range(1, settings.max_len + 1):
        logits, cache = model.decode_step(last, encoder_out, cache)
        log_probs = torch.log_softmax(logits[:, -1], dim=-1)
        if step == 1:  # one row per input so far: each of its samples draws from it
            log_probs = log_probs.repeat_interleave(n, 0)
        if step <= settings.min_len:
            log_probs[:, eos_id] = -torch.inf
        width = len(alive) * n
        keys = step_keys(seeds[alive].repeat_interleave(n), sample[:width], step)
        next_token = epsilon_draw(log_probs, settings.epsilon, keys)
        total += torch.where(ended, 0.0, log_probs.gather(1, next_token[:, None]).squeeze(1).double())
        tokens = torch.cat([tokens, next_token[:, None]], 1)
        finishing = ~ended & (next_token.eq(eos_id) | (step == settings.max_len))
        for r in finishing.nonzero().squeeze(1).tolist():
            seq = tokens[r].tolist()
            found[int(alive[r // n])][r % n] = Hypothesis(seq[:-1] if seq[-1] == eos_id else seq,
                                                          float(total[r]) / step)
        ended |= finishing
        done = ended.view(-1, n).all(1)
        if done.all():
            break
        if step == 1 or done.any():  # expand each input to its samples' rows; finished inputs leave
            kept = (~done).nonzero().squeeze(1)
            kept_rows = (kept[:, None] * n + torch.arange(n, device=device)).flatten()
            examples = None
            if len(kept) < len(alive):
                alive = alive[kept]
                encoder_out = encoder_out.select(kept)
                examples = kept
            cache = [layer.select(kept.repeat_interleave(n) if step == 1 else kept_rows, examples)
                     for layer in cache]
            tokens, total, ended, next_token = (t[kept_rows] for t in (tokens, total, ended, next_token))
        last = next_token.masked_fill(ended, eos_id)[:, None]
    return [[by_sample[j] for j in range(n)] for by_sample in found]
