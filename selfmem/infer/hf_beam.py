"""Beam search through Hugging Face ``generate``: the `engine: hf` path and the benchmark baseline."""

from __future__ import annotations

import torch

from selfmem.infer.beam import BeamSettings, Hypothesis
from selfmem.models.hf_engine import plain_generate, until_eos


def generation_config(settings: BeamSettings, start_id: int, eos_id: int, pad_id: int):
    """``settings`` as a transformers ``GenerationConfig``, returning the sequences' scores."""
    from transformers import GenerationConfig

    return GenerationConfig(
        num_beams=settings.num_beams, num_return_sequences=settings.num_return, do_sample=False,
        length_penalty=settings.length_penalty, early_stopping=settings.early_stopping,
        max_new_tokens=settings.max_len, min_new_tokens=settings.min_len or None,
        no_repeat_ngram_size=settings.no_repeat_ngram, decoder_start_token_id=start_id, eos_token_id=eos_id, pad_token_id=pad_id,
        return_dict_in_generate=True, output_scores=True,
    )


@torch.no_grad()
def hf_beam_search(hf_model, src: torch.Tensor, settings: BeamSettings, start_id: int, eos_id: int,
                   pad_id: int) -> list[list[Hypothesis]]:
    """``beam_search``'s result for a transformers seq2seq model, from ``generate``."""
    config = generation_config(settings, start_id, eos_id, pad_id)
    out = plain_generate(hf_model, src, pad_id, config)
    hyps: list[list[Hypothesis]] = [[] for _ in range(src.size(0))]
    for row, (seq, score) in enumerate(zip(out.sequences[:, 1:].tolist(), out.sequences_scores.tolist())):
        hyps[row // settings.num_return].append(Hypothesis(until_eos(seq, eos_id), score))
    return hyps
