"""Batched greedy decoding over the native model's incremental API (dev evaluation in training)."""

from __future__ import annotations

import torch


@torch.no_grad()
def greedy_decode(
    model, src: torch.Tensor, memory: torch.Tensor | None, max_len: int, start_id: int, eos_id: int
) -> list[list[int]]:
    """The argmax continuation of each row, without start and eos, at most ``max_len`` tokens."""
    encoder_out = model.encode(src, memory)
    rows = src.size(0)
    tokens = torch.full((rows, 1), start_id, dtype=torch.long, device=src.device)
    finished = torch.zeros(rows, dtype=torch.bool, device=src.device)
    steps = []
    cache = None
    for _ in range(max_len):
        logits, cache = model.decode_step(tokens, encoder_out, cache)
        tokens = logits[:, -1].argmax(-1, keepdim=True)
        steps.append(tokens.masked_fill(finished.unsqueeze(1), eos_id))
        finished |= tokens.squeeze(1) == eos_id
        if finished.all():
            break
    outputs = torch.cat(steps, dim=1).tolist()
    return [row[: row.index(eos_id)] if eos_id in row else row for row in outputs]
