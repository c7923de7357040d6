"""Training the memory selector: the listwise KL loss against metric-derived targets."""

from __future__ import annotations

import torch
from torch import Tensor


def metric_targets(metric: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """The target distribution over each row's candidates: softmax of the metric, min-max
    normalised within the row, divided by ``temperature``. ``mask`` (rows, candidates) is True
    at real candidates; a row whose candidates all score the same gets a uniform target."""
    low = metric.masked_fill(~mask, torch.inf).amin(dim=1, keepdim=True)
    high = metric.masked_fill(~mask, -torch.inf).amax(dim=1, keepdim=True)
    spread = (high - low).clamp(min=torch.finfo(metric.dtype).tiny)
    normalised = torch.where(high > low, (metric - low) / spread, torch.zeros_like(metric))
    return torch.softmax((normalised / temperature).masked_fill(~mask, -torch.inf), dim=1)


def listwise_kl(scores: Tensor, metric: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """Sum over rows of KL(target || softmax(scores)), the selector's loss (see ``metric_targets``)."""
    target = metric_targets(metric, mask, temperature)
    log_predicted = torch.log_softmax(scores.masked_fill(~mask, -torch.inf), dim=1)
    terms = target * (torch.log(target.clamp(min=torch.finfo(target.dtype).tiny)) - log_predicted)
    return terms.masked_fill(~mask, 0.0).sum()
