"""The model's linear maps through oneDNN (CPU, float32) against F.linear, with and without autograd."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from selfmem.models import linear as linear_module
from selfmem.models.linear import frozen_weights, linear, weight_packing, weights_updated

pytestmark = pytest.mark.skipif(not linear_module._ONEDNN, reason="this PyTorch build has no oneDNN linear")


def layers(seed=0, sizes=(24, 40, 16), d_in=32):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(n, d_in, generator=g, requires_grad=True) for n in sizes]
    biases = [torch.randn(n, generator=g, requires_grad=True) for n in sizes]
    return weights, biases


def reference(x, weights, biases):
    return F.linear(x, torch.cat(weights), torch.cat(biases))


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("shape", [(1, 32), (80, 32), (3, 7, 32), "strided"])
def test_packed_equals_f_linear_up_to_rounding(count, shape):
    weights, biases = layers()
    weights, biases = weights[:count], biases[:count]
    if shape == "strided":  # a non-contiguous view, as slices of decoder states are
        x = torch.randn(10, 7, 32, generator=torch.Generator().manual_seed(1)).transpose(0, 1)[:, ::2]
    else:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    expected = reference(x, weights, biases)
    with torch.no_grad():
        got = linear(x, weights, biases)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert id(weights[0]) in {id(w) for w in linear_module._packed.keys()}  # it did take the packed path


def test_with_autograd_the_output_and_gradients_equal_f_linear_up_to_rounding():
    weights, biases = layers(d_in=256, sizes=(96, 96, 96))
    x = torch.randn(3, 50, 256, generator=torch.Generator().manual_seed(2), requires_grad=True)
    with (weight_packing(True, training=True),  # oneDNN in training, whatever this CPU's default
          mock.patch.object(linear_module, "_onednn_linear", wraps=linear_module._onednn_linear) as onednn):
        output = linear(x, weights, biases)
        grad_output = torch.randn(output.shape, generator=torch.Generator().manual_seed(3))
        grads = torch.autograd.grad(output, [x, *weights, *biases], grad_output)
    assert onednn.call_count == 2  # the forward product and the input's gradient
    expected = reference(x, weights, biases)
    expected_grads = torch.autograd.grad(expected, [x, *weights, *biases], grad_output)
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-4)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_by_default_training_takes_onednn_only_where_the_cpu_runs_avx512():
    # 1.31-1.35x a training step where PyTorch's CPU kernels run AVX-512, 0.89x on an AVX2 machine
    weights, biases = layers()
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(2), requires_grad=True)
    with mock.patch.object(linear_module, "_onednn_linear", wraps=linear_module._onednn_linear) as onednn:
        linear(x, weights, biases)
    assert onednn.call_count == (torch.backends.cpu.get_cpu_capability() == "AVX512")


@pytest.mark.parametrize("in_training", [False, True])
def test_with_autograd_onednn_runs_only_if_training_takes_it_and_decoding_takes_it_always(in_training):
    weights, biases = layers()
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(2), requires_grad=True)
    with (weight_packing(True, training=in_training),
          mock.patch.object(linear_module, "_onednn_linear", wraps=linear_module._onednn_linear) as onednn):
        trained = linear(x, weights, biases)
        assert onednn.call_count == in_training
        with torch.no_grad():
            linear(x, weights, biases)
        assert onednn.call_count == in_training + 1
    if not in_training:
        assert torch.equal(trained, reference(x, weights, biases))
    assert linear_module._packing_in_training == linear_module.TRAINS_ON_ONEDNN  # restored after the block


def test_with_packing_off_it_is_f_linear_to_the_bit():
    weights, biases = layers()
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(2), requires_grad=True)
    expected = reference(x, weights, biases)
    with weight_packing(False):
        assert torch.equal(linear(x, weights, biases), expected)
        with torch.no_grad():
            assert torch.equal(linear(x, weights, biases), expected)
    assert linear_module._packing_enabled  # restored after the block


def test_a_weight_changed_in_place_is_packed_again():
    weights, biases = layers()
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = linear(x, weights, biases)
    stale = linear_module._packed[weights[0]][1]
    with torch.no_grad():
        weights[1].mul_(-2.0)  # an optimizer step updates parameters in place
        biases[2].add_(1.0)
        after = linear(x, weights, biases)
    torch.testing.assert_close(after, reference(x, weights, biases), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after, before)
    assert linear_module._packed[weights[0]][1] is not stale  # the stale copy is replaced, not kept beside
    with torch.no_grad():
        weights[0].data = weights[0].data * 3.0  # new storage, the version counter unmoved (as module.to does)
        replaced = linear(x, weights, biases)
    torch.testing.assert_close(replaced, reference(x, weights, biases), rtol=1e-5, atol=1e-5)


def test_a_fused_optimizer_step_is_seen_once_weights_updated_is_called():
    weights, biases = layers()
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        linear(x, weights, biases)
    optimizer = torch.optim.AdamW([*weights, *biases], lr=0.1, fused=True)
    for p in (*weights, *biases):
        p.grad = torch.ones_like(p)
    optimizer.step()  # moves no version counter
    with torch.no_grad():
        stale = linear(x, weights, biases)
        weights_updated()
        fresh = linear(x, weights, biases)
    expected = reference(x, weights, biases)
    assert not torch.allclose(stale, expected, rtol=1e-3, atol=1e-3)  # why the loop must call it
    torch.testing.assert_close(fresh, expected, rtol=1e-5, atol=1e-5)


def test_bias_may_be_absent():
    weights, _ = layers(sizes=(8,))
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = linear(x, weights, [None])
    torch.testing.assert_close(got, F.linear(x, weights[0]), rtol=1e-5, atol=1e-5)


def test_inside_frozen_weights_the_packed_copy_is_reused_without_checks_until_the_block_ends():
    weights, biases = layers()
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = linear(x, weights, biases)
        with frozen_weights():
            assert torch.equal(linear(x, weights, biases), expected)
            with mock.patch.object(linear_module, "_packs") as packs:
                assert torch.equal(linear(x, weights, biases), expected)  # found by identity alone
            assert packs.call_count == 0
            weights[1].mul_(-2.0)
            assert torch.equal(linear(x, weights, biases), expected)  # the promise: nothing changes inside
        assert linear_module._frozen is None
        torch.testing.assert_close(linear(x, weights, biases), reference(x, weights, biases), rtol=1e-5, atol=1e-5)


def test_inside_frozen_weights_a_first_weight_alone_is_not_taken_for_its_stack():
    weights, biases = layers()
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad(), frozen_weights():
        stacked = linear(x, weights, biases)  # q, k and v in one product, remembered by the block
        alone = linear(x, weights[:1], biases[:1])  # then q alone, by the same first weight
    assert stacked.shape == (6, 80) and alone.shape == (6, 24)
    torch.testing.assert_close(alone, reference(x, weights[:1], biases[:1]), rtol=1e-5, atol=1e-5)


def test_inside_frozen_weights_autograd_still_gets_gradients():
    weights, biases = layers()
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(6))
    with frozen_weights():
        with torch.no_grad():
            linear(x, weights, biases)  # packed, and remembered by the block
        output = linear(x, weights, biases)
    assert output.requires_grad
    grads = torch.autograd.grad(output.sum(), weights)
    expected = torch.autograd.grad(reference(x, weights, biases).sum(), weights)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
