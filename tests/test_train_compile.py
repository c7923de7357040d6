"""train.compile on a tiny generator: bucketed padding changes no loss, compiled training gives the
eager losses (on 2 ranks too), a compiled run stopped and continued equals an uninterrupted one
bit for bit, and the layers of a stack share one compiled graph per class."""

import functools

import pytest
import torch
from torch.fx.experimental import _config as fx_config

from conftest import DEMO_CONFIG, TINY, run_single, run_torchrun
from selfmem.common.config import load_config
from selfmem.common.distributed import DistEnv
from selfmem.common.run import RunPaths
from selfmem.train.generator import prepare_generator, train_generator
from selfmem.train.loop import compiled_graphs, compiled_layers, compiled_steps
from test_models import batch, small_model
from test_train_generator import assert_same_weights, fresh_run, log_records, prepared, train_args  # noqa: F401

ONE_PROCESS = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)


def train_in_process(root, *overrides):
    config = load_config(DEMO_CONFIG, [f"run.root={root}", *TINY, *overrides])
    return train_generator(config, ONE_PROCESS, RunPaths(config.run_dir))


def test_bucketed_padding_gives_the_same_losses(prepared):
    config = load_config(DEMO_CONFIG, [f"run.root={prepared}", *TINY, "train.compile=true"])
    model, task = prepare_generator(config, ONE_PROCESS, RunPaths(config.run_dir))
    model.eval()  # no dropout: both losses see the same states
    widened = 0
    for batch in task.epoch_batches(0):
        bucketed, exact = task.collate(batch), task._collate([task.examples[i] for i in batch])
        widened += any(bucketed[k].shape != exact[k].shape for k in ("src", "decoder_input"))
        assert task.loss(model, bucketed).item() == task.loss(model, exact).item()
    assert widened > 10  # of 21 batches: most were padded further


def test_compiled_training_gives_the_eager_losses_and_resumes_exactly(prepared, tmp_path):
    # no dropout for the comparison: compiled code draws its masks otherwise than eager code does
    eager, compiled = fresh_run(prepared, tmp_path, "eager"), fresh_run(prepared, tmp_path, "compiled")
    two_layers = ["generator.encoder_layers=2", "generator.decoder_layers=2"]
    train_in_process(eager, "generator.dropout=0", "train.max_steps=6", *two_layers)
    train_in_process(compiled, "generator.dropout=0", "train.max_steps=6", "train.compile=true", *two_layers)
    records = [r for r in log_records(compiled) if "loss" in r]
    assert [r["loss"] for r in records] == pytest.approx([r["loss"] for r in log_records(eager) if "loss" in r],
                                                         rel=1e-5)
    # one graph per layer class (the encoder layer's, the decoder layer's), shared by both layers
    # of each, for batches of several shapes: no recompile after the first step
    assert records[0]["compiles"] == records[-1]["compiles"] == 2
    # with dropout, stopped after 3 steps and continued: the masks are seeded per micro-batch as in eager code
    straight, resumed = fresh_run(prepared, tmp_path, "straight"), fresh_run(prepared, tmp_path, "resumed")
    train_in_process(straight, "train.max_steps=6", "train.compile=true")
    train_in_process(resumed, "train.max_steps=3", "train.compile=true")
    assert train_in_process(resumed, "train.max_steps=6", "train.compile=true").step == 6
    assert_same_weights(resumed, straight)


def test_compiled_training_on_two_ranks_follows_one_eager_process(prepared, tmp_path):
    # the layers compiled inside the model DDP wraps
    one, two = fresh_run(prepared, tmp_path, "one"), fresh_run(prepared, tmp_path, "two")
    run_single("launch/train_generator.py", train_args(one, "generator.dropout=0", "train.accumulate=2",
                                                       "train.max_steps=4"))
    run_torchrun("launch/train_generator.py", train_args(two, "generator.dropout=0", "train.max_steps=4",
                                                         "train.compile=true"), nproc=2, timeout=600)
    records = [r for r in log_records(two) if "loss" in r]
    assert [r["loss"] for r in records] == pytest.approx([r["loss"] for r in log_records(one) if "loss" in r],
                                                         rel=1e-5)
    assert records[0]["compiles"] == records[-1]["compiles"] == 2
    [final] = [r for r in log_records(two) if "params_sha256" in r]
    assert len(set(final["params_sha256"])) == 1


@torch.no_grad()
def test_compiled_layers_give_the_eager_logits_with_one_graph_per_layer_class_and_are_undone_after():
    torch._dynamo.reset()  # no graph of another test's model to reuse
    model = small_model("dual", encoder_layers=3, decoder_layers=3, pre_norm=True)  # the memory attention too
    src, dec, memory = batch("dual")
    eager, names = model(src, dec, memory), list(model.state_dict())
    before = compiled_graphs()
    with compiled_steps(True), compiled_layers(model, True):
        compiled = model(src, dec, memory)
    assert compiled_graphs() - before == 2  # not 6: the three layers of each stack share theirs
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    assert not any("forward" in vars(module) for module in model.modules())
    assert list(model.state_dict()) == names
    with compiled_layers(model, False):
        assert not any("forward" in vars(module) for module in model.modules())


def test_compiled_layers_leave_a_hooked_forward_and_a_layer_in_two_lists_as_they_were():
    model = torch.nn.Module()
    shared, hooked = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    hook = hooked.forward = lambda x: x  # another library's instance forward
    model.first, model.second = torch.nn.ModuleList([shared, hooked]), torch.nn.ModuleList([shared])
    with compiled_layers(model, True):
        assert isinstance(vars(shared)["forward"], functools.partial) and vars(hooked)["forward"] is hook
    assert "forward" not in vars(shared) and vars(hooked)["forward"] is hook
    with pytest.raises(RuntimeError, match="inside"), compiled_layers(model, True):
        raise RuntimeError("inside")
    assert "forward" not in vars(shared) and vars(hooked)["forward"] is hook


def test_the_settings_of_compiled_steps_are_undone_after_them():
    with compiled_steps(True):
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert not torch.utils.deterministic.fill_uninitialized_memory and not fx_config.use_duck_shape
    assert not torch.are_deterministic_algorithms_enabled() and torch.utils.deterministic.fill_uninitialized_memory
    assert fx_config.use_duck_shape
    with pytest.raises(ValueError, match="inside"), compiled_steps(True):
        raise ValueError("inside")
    assert not torch.are_deterministic_algorithms_enabled() and fx_config.use_duck_shape
    with compiled_steps(False):
        assert not torch.are_deterministic_algorithms_enabled() and fx_config.use_duck_shape


def test_sizes_equal_at_the_first_compilation_and_unequal_later_do_not_recompile():
    # a bucketed source length, target length and batch size coincide often
    total = torch.compile(lambda x, y: x.sum() + y.sum(), dynamic=True, backend="eager")
    before = compiled_graphs()
    with compiled_steps(True):
        total(torch.ones(8, 8), torch.ones(8, 8))
        total(torch.ones(12, 8), torch.ones(16, 24))
    assert compiled_graphs() - before == 1
