"""The native model's linear maps, through oneDNN on CPUs with weights in its layout.

On a CPU in float32, ``F.linear`` goes to MKL's sgemm, which repacks the weight matrix into
its blocked layout on every call and, on the AMD EPYC machine with AVX-512 of
docs/benchmarks.md, runs at half the speed of oneDNN's kernels on the same shapes. So
there, the model's products go through oneDNN instead:

- without autograd (decoding, scoring, evaluation), the weights are packed on first use and
  the packed copy is kept beside them until they change (their version counters move on
  an in-place update, such as a loaded checkpoint or a per-tensor optimizer's step; their
  storage changes when ``.data`` is replaced, as ``module.to`` does), so training and
  decoding can alternate in one process. A fused optimizer's step (``torch.optim.AdamW(...,
  fused=True)``, the training loop's) moves no version counter: whoever steps one calls
  ``weights_updated()`` after it, as the training loop does, or an evaluation between steps
  would read the weights of the one before. A decoding step multiplies few rows (beams x examples) by every
  weight of the decoder: on 80 rows the 256 x 8,000 output projection takes 0.74 ms instead
  of 2.1. The packed copies take as much memory again as the weights they stand for;
- with autograd (training), the weight is packed at each call (it changes every step) and
  the backward's product with the weight goes through oneDNN too; the weight's gradient,
  a product over all the batch's rows, stays with PyTorch, as fast there. Only where
  PyTorch's CPU kernels run AVX-512, though: there a training step was 1.31-1.35x faster
  this way, and on an AVX2 machine (another AMD EPYC, where MKL's sgemm runs as fast as
  oneDNN's kernels and the packing at each call is a loss) 0.89x (docs/benchmarks.md).
  Elsewhere training keeps PyTorch's products (``TRAINS_ON_ONEDNN``). Both machines were AMD
  EPYCs, where MKL does not run AVX-512 kernels; on an Intel CPU with AVX-512 MKL does, and
  which path trains faster there is not measured. The capability is PyTorch's (its
  ``ATEN_CPU_CAPABILITY`` variable lowers it).

A decoding loop calls each product some twenty times a step with weights that do not change:
inside ``frozen_weights()`` the packed copy is found by the first weight's identity alone,
skipping the checks above (7 us of the 30 a small product's call costs on that machine).

Results differ from ``F.linear``'s by float rounding only. Under autocast, on GPUs, in
compiled code, with autograd on a CPU without AVX-512, or on a build without oneDNN,
``F.linear`` runs as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils.weak import WeakIdKeyDictionary

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
# training through oneDNN where PyTorch's CPU kernels run AVX-512 (measured on AMD EPYCs only)
TRAINS_ON_ONEDNN = _ONEDNN and torch.backends.cpu.get_cpu_capability() == "AVX512"
_packing_enabled, _packing_in_training = True, TRAINS_ON_ONEDNN
# first weight -> ((id, version, storage) of every weight and bias, packed weight, stacked bias)
_packed: WeakIdKeyDictionary = WeakIdKeyDictionary()
# inside frozen_weights(): (id of the first weight, number of weights) -> (that weight, packed
# weight, stacked bias); holding the weight keeps its id from going to another tensor while the
# block lasts, and the number tells q alone from q, k and v stacked
_frozen: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor | None]] | None = None


def linear(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor | None]) -> Tensor:
    """``x`` times the ``weights`` stacked along their output axis, plus the ``biases``: one
    matrix product for projections that read the same input, their outputs side by side."""
    if (_frozen is not None and (frozen := _frozen.get((id(weights[0]), len(weights)))) is not None
            and not torch.is_grad_enabled()):
        return _onednn_linear(x, *frozen[1:])
    if not _packs(x, weights[0]):
        return F.linear(x, *_stacked(weights, biases))
    if torch.is_grad_enabled():
        return _OneDNNLinear.apply(x, *_stacked(weights, biases))
    tensors = [*weights, *(b for b in biases if b is not None)]
    key = tuple((id(t), t._version, t.data_ptr()) for t in tensors)
    entry = _packed.get(weights[0])
    if entry is None or entry[0] != key:  # first use, or the weights changed since they were packed
        weight, bias = _stacked(weights, biases)
        entry = _packed[weights[0]] = (key, _pack(weight.detach()), None if bias is None else bias.detach())
    if _frozen is not None:
        _frozen[id(weights[0]), len(weights)] = (weights[0], *entry[1:])
    return _onednn_linear(x, *entry[1:])


class _OneDNNLinear(torch.autograd.Function):
    """``F.linear`` for training, its products with the weight through oneDNN."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_linear(x, _pack(weight), bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_x = _onednn_linear(grad, _pack(weight.t().contiguous()), None) if ctx.needs_input_grad[0] else None
        rows = grad.reshape(-1, grad.size(-1))
        grad_weight = rows.t() @ x.reshape(-1, x.size(-1)) if ctx.needs_input_grad[1] else None
        grad_bias = rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def _stacked(weights: Sequence[Tensor], biases: Sequence[Tensor | None]) -> tuple[Tensor, Tensor | None]:
    if len(weights) == 1:
        return weights[0], biases[0]
    return torch.cat(list(weights)), torch.cat(list(biases))


def _pack(weight: Tensor) -> Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight)


def _onednn_linear(x: Tensor, packed_weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight, bias, "none", [], "")


def _packs(x: Tensor, weight: Tensor) -> bool:
    return (_ONEDNN and _packing_enabled and (_packing_in_training or not torch.is_grad_enabled())
            and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling())


def weights_updated() -> None:
    """Drop every packed copy: the weights may have changed without moving their version
    counters (a fused optimizer's step)."""
    _packed.clear()


@contextmanager
def frozen_weights() -> Iterator[None]:
    """Inside the block the weights are taken not to change, nor the inputs' device and dtype,
    nor autocast or ``weight_packing`` (a decoding loop): a product whose packed copy was used
    once in the block uses it again without checking, wherever autograd is off (see the
    module docstring)."""
    global _frozen
    before, _frozen = _frozen, {}
    try:
        yield
    finally:
        _frozen = before


@contextmanager
def weight_packing(enabled: bool, training: bool | None = None) -> Iterator[None]:
    """Turn the oneDNN path on or off inside the block (benchmarks, tests); ``training``, where
    given, also sets whether products with autograd take it (left as it is otherwise:
    ``TRAINS_ON_ONEDNN`` outside any such block)."""
    global _packing_enabled, _packing_in_training
    before = _packing_enabled, _packing_in_training
    _packing_enabled = enabled
    _packing_in_training = _packing_in_training if training is None else training
    try:
        yield
    finally:
        _packing_enabled, _packing_in_training = before
