"""bench/gpu_parity.py's pieces that run on a CPU (its comparison needs a GPU)."""

import importlib.util

import torch
from conftest import REPO

from selfmem.models.config import ModelConfig
from selfmem.models.seq2seq import Seq2SeqModel

spec = importlib.util.spec_from_file_location("gpu_parity", REPO / "bench" / "gpu_parity.py")
gpu_parity = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_parity)


def test_reference_gradients_stay_on_the_cpu_when_the_model_moves():
    # the H200 run of 2026-12-04 failed here: the CPU reference gradients were the parameters'
    # own .grad tensors, which model.cuda() moved; a conversion of the model's dtype moves them alike
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1, heads=2, ffn_dim=32,
                         dropout=0.0, memory="none", pad_id=gpu_parity.PAD, decoder_start_id=gpu_parity.START)
    model = Seq2SeqModel(config).train()
    batch = gpu_parity.random_batch(3, 7, 6, 50, torch.Generator().manual_seed(0))
    _, grads = gpu_parity.logits_and_grads(model, batch, torch.device("cpu"), None)
    kept = {name: grad.clone() for name, grad in grads.items()}
    model.to(torch.float64)
    model.zero_grad(set_to_none=True)
    assert {grad.dtype for grad in grads.values()} == {torch.float32}
    assert all(torch.equal(grads[name], kept[name]) for name in kept)


def test_gradient_differences_are_relative_and_name_the_worst_parameter():
    reference = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0, 0.0])}
    grads = {"a": torch.tensor([3.0, 4.5]), "b": torch.tensor([0.0, 0.001])}
    whole, worst, difference = gpu_parity.gradient_differences(grads, reference)
    assert abs(whole - (0.5 ** 2 + 0.001 ** 2) ** 0.5 / 5.0) < 1e-7
    # b's own norm is 0: its difference is taken against a thousandth of a's norm, 0.005
    assert worst == "b" and abs(difference - 0.2) < 1e-6


def test_syncs_are_counted_after_the_step_they_follow():
    # syncs seen when steps 1, 2, 3 began: 0, 0, 4; 6 in all: none after step 1, 4 after step 2, 2 after step 3
    assert gpu_parity.syncs_after_steps([0, 0, 4], 6) == [0, 4, 2]
