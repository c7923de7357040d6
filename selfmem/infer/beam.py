"""Batched beam search over the native model's incremental decoding API.

The rules are Hugging Face ``generate``'s (transformers 5), so that the two return the same
hypotheses on the same weights:

- every step ranks the ``2 * num_beams`` best continuations of an example over all of its
  beams (sum of token log-probabilities; min length and n-gram blocking set a token's
  log-probability to -inf after the softmax);
- an eos continuation among the first ``num_beams`` of them is a finished hypothesis,
  scored ``sum_logprobs / length ** length_penalty`` (the length counts the eos); the best
  ``num_beams`` non-eos continuations are the next step's beams;
- at ``max_len`` the first ``num_beams`` continuations finish, eos or not;
- an example keeps its ``num_beams`` best finished hypotheses and is done when
  ``early_stopping`` is True and it holds ``num_beams`` of them (fairseq's and
  CTranslate2's rule, the project's default: it is the faster one, and longer searches
  rarely change the best hypothesis), or, when False, when moreover its best running
  beam's current normalised score cannot beat the worst finished one (HF's default).

Speed comes from what the decoder does not repeat: an example's encoder output and its
cross-attention keys/values exist once and are shared by its beams (see
``MultiheadAttention``), the first step runs one row per example, and an example that is
done leaves the batch.

The finished hypotheses are kept on the device (each example's ``num_beams`` best, scores
and tokens), so a step needs nothing back from the device. On a CPU, where reading a value
costs nothing, the host reads the search's state every step and done examples leave at
once; on an accelerator it reads it every ``HOST_READ_EVERY`` steps only, and an example
done in between stays in the batch, frozen, until the next read: the steps between reads
make no host synchronisation (a precondition of capturing them as a CUDA graph, not enough
on its own: the caches still grow by a position a step).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from selfmem.models.linear import frozen_weights
from selfmem.models.seq2seq import DecoderCache, EncoderOut


@dataclass(frozen=True)
class BeamSettings:
    """How to search. Lengths count generated tokens: ``max_len`` includes the eos,
    ``min_len`` is the fewest tokens before it (HF's ``max_new_tokens``/``min_new_tokens``)."""

    num_beams: int = 5
    num_return: int = 1
    length_penalty: float = 1.0
    min_len: int = 0
    max_len: int = 200
    no_repeat_ngram: int = 0
    early_stopping: bool = True

    def __post_init__(self) -> None:
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, got {self.num_beams}")
        if not 1 <= self.num_return <= self.num_beams:
            raise ValueError(f"num_return must be between 1 and num_beams = {self.num_beams}, got {self.num_return}")
        if not 0 <= self.min_len < self.max_len:
            raise ValueError(f"need 0 <= min_len < max_len, got min_len {self.min_len}, max_len {self.max_len}")


@dataclass
class Hypothesis:
    """A finished sequence: its tokens without the start token and eos, and its score
    ``sum of token log-probabilities / length ** length_penalty``."""

    tokens: list[int]
    score: float


FILLER = -1  # the token history before an example's start token, for examples that entered later
HOST_READ_EVERY = 8  # steps between the host's reads of the search state on an accelerator (not tuned: no GPU yet)


def banned_ngram_tokens(tokens: Tensor, n: int, vocab_size: int) -> Tensor:
    """(rows, vocab) True where a token would repeat an ``n``-gram of its row of ``tokens``
    (``FILLER`` tokens, before a row's start, are no n-gram's end)."""
    rows, length = tokens.shape
    banned = torch.zeros(rows, vocab_size + 1, dtype=torch.bool, device=tokens.device)
    if length >= n:
        ngrams = tokens.unfold(1, n, 1)  # (rows, length - n + 1, n)
        repeats = (ngrams[:, :, :-1] == tokens[:, None, length - n + 1:]).all(-1) & ngrams[:, :, -1].ne(FILLER)
        # non-repeating n-grams write into the spare last column, so no write conflicts
        banned.scatter_(1, torch.where(repeats, ngrams[:, :, -1], vocab_size), True)
    return banned[:, :vocab_size]


TOPK_BLOCK = 64  # tokens per block in ``best_continuations``


def best_continuations(log_probs: Tensor, running: Tensor, k: int,
                       block: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Each example's ``k`` best continuations over its beams, best first: their scores (the
    beam's ``running`` score, (examples, beams), plus the token's log-probability,
    ``log_probs`` (examples * beams, vocab)), their beams and their tokens.

    On a CPU with a long vocabulary, they are found among each beam's ``k`` best tokens, and
    those among the ``k`` blocks of ``block`` tokens with the best maxima (a token elsewhere
    is at most each of those ``k`` maxima): one pass over the blocks' maxima instead of a
    top-k over every score, 2x faster at 8,000 tokens and 5x at 50,000
    (``bench/beam_selection.py``). The scores are those of the top-k over every score, in
    its order; where scores tie, the beams and tokens may be others with the same score.
    ``block`` defaults to ``TOPK_BLOCK``.
    """
    examples, beams = running.shape
    rows, vocab = log_probs.shape
    block = block or TOPK_BLOCK
    blocks = vocab // block
    if log_probs.device.type != "cpu" or blocks < 4 * k:  # a GPU's top-k is fast; few blocks would skip little
        scores = (running[:, :, None] + log_probs.view(examples, beams, vocab)).flatten(1)
        top_scores, index = scores.topk(min(k, beams * vocab), dim=1)
        return top_scores, index // vocab, index % vocab
    best_blocks = log_probs[:, :blocks * block].view(rows, blocks, block).amax(2).topk(k, dim=1).indices
    columns = (best_blocks[:, :, None] * block + torch.arange(block, device=log_probs.device)).flatten(1)
    if blocks * block < vocab:  # the last, partial block is always ranked
        columns = torch.cat([columns, torch.arange(blocks * block, vocab, device=log_probs.device).expand(rows, -1)],
                            dim=1)
    row_scores, order = log_probs.gather(1, columns).topk(k, dim=1)
    row_tokens = columns.gather(1, order)
    scores = (running[:, :, None] + row_scores.view(examples, beams, k)).flatten(1)
    top_scores, index = scores.topk(k, dim=1)
    return top_scores, index // k, row_tokens.view(examples, -1).gather(1, index)


def stable_slots(parent: Tensor) -> Tensor:
    """The slot (batch row) of each new beam, given its parent's slot (examples, beams).

    A parent's first child keeps the parent's slot; its other children take the slots of
    parents without children, in order. Only those rows' caches need copying, instead of
    every row's: the copies dominate a step with many beams.
    """
    beams = parent.size(1)
    order = torch.arange(beams, device=parent.device)
    seen_before = ((parent[:, :, None] == parent[:, None, :]) & (order[None, :] < order[:, None])).any(2)
    has_child = torch.zeros_like(parent, dtype=torch.bool).scatter_(1, parent, True)
    free = (has_child.long() * beams + order).sort(dim=1).values % beams  # childless slots first
    rank = (seen_before.long().cumsum(1) - 1).clamp(min=0)
    return torch.where(seen_before, free.gather(1, rank), parent)


def used_length(mask: Tensor) -> int:
    """Positions up to the last real one of any row of ``mask`` (batch, length); at least 1."""
    columns = mask.any(0).nonzero()
    return int(columns[-1]) + 1 if len(columns) else 1


def encode_inputs(model, src: Tensor, memory: Tensor | None, source_index: Tensor | None,
                  inputs: slice) -> EncoderOut:
    """The encoder output of ``inputs`` (a slice of the input rows), their sources cut to their
    longest and, with ``source_index``, each source encoded once."""
    index = None
    if source_index is None:
        sources = src[inputs]
    else:
        unique, index = source_index[inputs].unique(return_inverse=True)
        sources = src[unique]
    sources = sources[:, :used_length(sources.ne(model.config.pad_id))]
    return model.encode(sources, None if memory is None else memory[inputs], index)


class Waiting:
    """The inputs that have not entered the batch yet, encoded ``chunk`` at a time ahead of
    their entry (one encoder call and one cross-attention projection a chunk, not an input)."""

    def __init__(self, model, src: Tensor, memory: Tensor | None, source_index: Tensor | None, chunk: int):
        self.model, self.src, self.memory, self.source_index, self.chunk = model, src, memory, source_index, chunk
        self.num_inputs = src.size(0) if source_index is None else source_index.size(0)
        self.first, self.encoded, self.cache = 0, None, None  # the chunk encoded last: inputs first, first + 1, ...

    def take(self, first: int, count: int) -> Iterator[tuple[EncoderOut, DecoderCache]]:
        """The encoder output and fresh cross-attention cache of inputs ``first .. first + count
        - 1`` (taken in order), in one piece or in two where they straddle chunks."""
        while count > 0:
            if self.encoded is None or first >= self.first + self.encoded.source.size(0):
                self.first = first
                self.encoded = encode_inputs(self.model, self.src, self.memory, self.source_index,
                                             slice(first, min(first + self.chunk, self.num_inputs)))
                self.cache = self.model.decoder.init_cache(self.encoded)
            rows = torch.arange(first - self.first, min(first - self.first + count, self.encoded.source.size(0)),
                                device=self.src.device)
            yield self.encoded.select(rows), [layer.select(rows, rows) for layer in self.cache]
            first, count = first + len(rows), count - len(rows)


def trimmed(cache: DecoderCache, encoder_out: EncoderOut, inputs_too: bool) -> tuple[DecoderCache, EncoderOut]:
    """The batch's cache and encoder output without the positions no row reads: self-attention
    entries before every row's start and, ``inputs_too`` (no input enters any more, which
    would pad them again), cross-attention padding after every example's input."""
    source_len = used_length(encoder_out.source_mask) if inputs_too else None
    memory_len = used_length(encoder_out.memory_mask) if inputs_too and encoder_out.memory_mask is not None else None
    first = 0 if cache[0].starts is None else int(cache[0].starts.min())
    return ([layer.trim(first, source_len, memory_len) for layer in cache],
            encoder_out.trim(source_len, memory_len))


def with_finished(pool: Tensor, pool_tokens: Tensor, offered: Tensor, tokens: Tensor, beam: Tensor,
                  token: Tensor) -> tuple[Tensor, Tensor]:
    """The pool of finished hypotheses, ``pool`` (examples, beams) scores best first and
    ``pool_tokens`` their token histories, joined by the ``offered`` continuations (their
    normalised scores, -inf where not offered; beam ``beam`` of ``tokens`` extended by
    ``token``), its ``beams`` best kept. Ties keep the earlier hypothesis first, as a stable
    sort of every finished hypothesis in order of finishing would."""
    examples, beams, length = tokens.shape
    seqs = torch.cat([tokens.gather(1, beam[:, :, None].expand(-1, -1, length)), token[:, :, None]], dim=2)
    held = torch.nn.functional.pad(pool_tokens, (0, length + 1 - pool_tokens.size(2)), value=FILLER)
    scores = torch.cat([pool, offered], dim=1)
    order = scores.sort(dim=1, descending=True, stable=True).indices[:, :pool.size(1)]
    histories = torch.cat([held, seqs], dim=1).gather(1, order[:, :, None].expand(-1, -1, length + 1))
    return scores.gather(1, order), histories


def pooled_hypotheses(pool: Tensor, pool_tokens: Tensor, eos_id: int) -> list[list[Hypothesis]]:
    """The finished hypotheses of each row of the pool, best first: the generated tokens of
    each history (after its fillers and start token), without a final eos."""
    found = []
    for scores, histories in zip(pool.tolist(), pool_tokens.tolist()):
        hyps = []
        for score, history in zip(scores, histories):
            if score == -math.inf:  # the rest of the row is empty too
                break
            seq = [t for t in history if t != FILLER][1:]
            hyps.append(Hypothesis(seq[:-1] if seq and seq[-1] == eos_id else seq, score))
        found.append(hyps)
    return found


@torch.no_grad()
@frozen_weights()  # the weights stay as they are for the whole search
def beam_search(model, src: Tensor, memory: Tensor | None, settings: BeamSettings,
                start_id: int, eos_id: int, source_index: Tensor | None = None,
                max_examples: int | None = None, read_every: int | None = None) -> list[list[Hypothesis]]:
    """The ``settings.num_return`` best hypotheses of every input row, best first (fewer, or
    none, where every continuation is forbidden before enough finish: n-gram blocking that bans
    every token while ``min_len`` still bans the end).

    ``model`` is a ``Seq2SeqModel``; ``memory`` its dual-memory input or None. With
    ``source_index`` (dual memory), the inputs are the rows of ``memory``, row i with
    source row ``source_index[i]``: one source decoded with several memories.

    With ``max_examples``, at most that many inputs decode at a time, in their order, and the
    next enters the batch as soon as one is done (continuous batching): the batch stays
    full instead of shrinking, step after step, to the beams of its longest input. An input's
    hypotheses are those it has in a batch of its own, up to float rounding.

    ``read_every``: steps between the host's reads of the search state (which examples are
    done), by default 1 on a CPU and ``HOST_READ_EVERY`` elsewhere; the steps in between make
    no host synchronisation. The hypotheses do not depend on it, up to float rounding (between
    reads the batch still holds the rows of done examples).
    """
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be at least 1, got {max_examples}")
    if read_every is not None and read_every < 1:
        raise ValueError(f"read_every must be at least 1, got {read_every}")
    device = src.device
    if read_every is None:
        read_every = 1 if device.type == "cpu" else HOST_READ_EVERY
    num_inputs = src.size(0) if source_index is None else source_index.size(0)
    stream = max_examples is not None and max_examples < num_inputs
    next_input = max_examples if stream else num_inputs
    encoder_out = (encode_inputs(model, src, memory, source_index, slice(0, next_input)) if stream
                   else model.encode(src, memory, source_index))
    beams = settings.num_beams
    # each step's length normalisation, as Python computes step ** length_penalty
    norm = (torch.arange(settings.max_len + 1, dtype=torch.float64) ** settings.length_penalty).float().to(device)
    cache = None
    alive = torch.arange(next_input, device=device)  # the input each active row group decodes
    steps = torch.ones(next_input, dtype=torch.long, device=device)  # each one's step: tokens after this one
    tokens = torch.full((next_input, 1, 1), start_id, device=device)  # (examples, beams, length)
    running = torch.zeros(next_input, 1, device=device)  # sum of log-probs of each beam
    pool = torch.full((next_input, beams), -torch.inf, device=device)  # each active example's best finished scores, sorted
    pool_tokens = tokens.new_full((next_input, beams, 0), FILLER)  # their token histories, columns as in `tokens`
    frozen = None  # the examples done since the last read, still in the batch (None: none can be)
    longest, step = 1, 0  # the largest of `steps` (known on the host without a read) and the steps made
    finished: list[list[Hypothesis]] = [[] for _ in range(num_inputs)]
    waiting = Waiting(model, src, memory, source_index, chunk=max_examples) if stream else None

    while True:
        active, width = running.shape
        logits, cache = model.decode_step(tokens[:, :, -1].reshape(-1, 1), encoder_out, cache)
        log_probs = torch.log_softmax(logits[:, -1], dim=-1)
        vocab = log_probs.size(-1)
        if settings.min_len > 0:  # no test whether any row is short: a host sync every step on a GPU
            short = steps <= settings.min_len
            log_probs[:, eos_id].masked_fill_(short.repeat_interleave(width), -torch.inf)
        if settings.no_repeat_ngram > 0:
            ngram_ban = banned_ngram_tokens(tokens.flatten(0, 1), settings.no_repeat_ngram, vocab)
            log_probs.masked_fill_(ngram_ban, -torch.inf)
        top_scores, top_beam, top_token = best_continuations(log_probs, running, 2 * beams)
        at_max_len = steps.eq(settings.max_len)
        ends = top_token.eq(eos_id) | at_max_len[:, None]

        # finished hypotheses: ending continuations among the first `beams`, if they enter the pool
        normalised = top_scores[:, :beams] / norm[steps, None]
        offered = (ends & top_scores.isfinite())[:, :beams] & (normalised > pool[:, -1:])
        if frozen is not None:
            offered &= ~frozen[:, None]
        if read_every > 1 or offered.any():  # where reads are free, one saves the join on most steps
            pool, pool_tokens = with_finished(pool, pool_tokens, normalised.masked_fill(~offered, -torch.inf),
                                              tokens, top_beam[:, :beams], top_token[:, :beams])

        # the next beams: the best continuations that do not end
        running, keep = top_scores.masked_fill(ends, -torch.inf).topk(min(beams, top_scores.size(1)), dim=1)
        parent, next_token = top_beam.gather(1, keep), top_token.gather(1, keep)
        best_running = running[:, 0]
        full = pool[:, -1].isfinite()
        if settings.early_stopping:
            done = full
        else:
            done = full & (best_running / norm[steps] <= pool[:, -1])
        done |= ~best_running.isfinite() | at_max_len
        if frozen is not None:
            done |= frozen

        step += 1
        read = read_every == 1 or step % read_every == 0 or longest == settings.max_len
        kept = entering = None
        if read:
            leaving = done.nonzero().squeeze(1)
            if len(leaving):
                for example, hyps in zip(alive[leaving].tolist(),
                                         pooled_hypotheses(pool[leaving], pool_tokens[leaving], eos_id)):
                    finished[example] = hyps[:settings.num_return]
            if len(leaving) == active and next_input == num_inputs:
                break
            entering = min(len(leaving), num_inputs - next_input) if stream else 0
            if entering:  # the first done examples' rows stay, for the next inputs
                refilled = leaving[:entering]
                done[refilled] = False
            kept = (~done).nonzero().squeeze(1)
            frozen = None
        else:  # a done example stays, frozen, until the host reads that it is done
            frozen = done
        if width == parent.size(1):  # a full beam: put the new beams where their caches mostly are
            slots = stable_slots(parent)
            parent, next_token, running = (torch.empty_like(t).scatter_(1, slots, t)
                                           for t in (parent, next_token, running))
        if kept is not None and len(kept) < active:  # examples that are done leave the batch: gather whole rows
            parent, next_token, running, tokens, pool, pool_tokens, steps = (
                t[kept] for t in (parent, next_token, running, tokens, pool, pool_tokens, steps))
            alive = alive[kept]
            encoder_out = encoder_out.select(kept)
            cache = [layer.select((kept[:, None] * width + parent).flatten(), kept) for layer in cache]
        elif width == parent.size(1) and read_every == 1:  # a full beam: copy only the rows of beams that moved
            row, slot = parent.ne(torch.arange(width, device=device)).nonzero(as_tuple=True)
            source, target = row * width + parent[row, slot], row * width + slot
            for layer in cache:
                layer.copy_rows(source, target)
        else:  # the first step, a narrow beam, or no reads allowed: gather whole rows
            rows = (torch.arange(active, device=device)[:, None] * width + parent).flatten()
            cache = [layer.select(rows) for layer in cache]
        history = tokens.gather(1, parent[:, :, None].expand(-1, -1, tokens.size(2)))
        tokens = torch.cat([history, next_token[:, :, None]], dim=2)
        steps = steps + 1
        longest += 1

        if entering:  # the next inputs take the rows of done examples, each as one beam and beams at -inf
            examples = torch.searchsorted(kept, refilled)
            width = running.size(1)
            beam_rows = examples[:, None] * width + torch.arange(width, device=device)  # (entering, width)
            placed = 0
            for fresh, fresh_cache in waiting.take(next_input, entering):
                part = slice(placed, placed + fresh.source.size(0))
                cache = [layer.refill(examples[part], beam_rows[part].flatten(), new)
                         for layer, new in zip(cache, fresh_cache)]
                encoder_out = encoder_out.refill(examples[part], fresh)
                placed = part.stop
            alive[examples] = torch.arange(next_input, next_input + entering, device=device)
            steps[examples] = 1
            running[examples] = torch.cat([running.new_zeros(1), running.new_full((width - 1,), -torch.inf)])
            pool[examples] = -torch.inf
            pool_tokens[examples] = FILLER
            tokens[examples] = FILLER
            tokens[examples, :, -1] = start_id
            next_input += entering
        if read and read_every > 1:
            longest = int(steps.max())
        if read and stream and (len(kept) < active or entering):
            cache, encoder_out = trimmed(cache, encoder_out, inputs_too=next_input == num_inputs)
            cut = tokens.size(2) - int(steps.max())  # no column of fillers only
            tokens, pool_tokens = tokens[:, :, cut:], pool_tokens[:, :, cut:]

    return finished
