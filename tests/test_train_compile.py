"""train.compile on a tiny generator: bucketed padding changes no loss, compiled training gives the
eager losses (on 2 ranks too), and a compiled run stopped and continued equals an uninterrupted one
bit for bit."""

import pytest
import torch
from torch.fx.experimental import _config as fx_config

from conftest import DEMO_CONFIG, TINY, run_single, run_torchrun
from selfmem.common.config import load_config
from selfmem.common.distributed import DistEnv
from selfmem.common.run import RunPaths
from selfmem.train.generator import prepare_generator, train_generator
from selfmem.train.loop import compiled_graphs, compiled_steps
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
    train_in_process(eager, "generator.dropout=0", "train.max_steps=6")
    train_in_process(compiled, "generator.dropout=0", "train.max_steps=6", "train.compile=true")
    records = [r for r in log_records(compiled) if "loss" in r]
    assert [r["loss"] for r in records] == pytest.approx([r["loss"] for r in log_records(eager) if "loss" in r],
                                                         rel=1e-5)
    # one graph for batches of several shapes: no recompile after the first step
    assert records[0]["compiles"] == records[-1]["compiles"] == 1
    # with dropout, stopped after 3 steps and continued: the masks are seeded per micro-batch as in eager code
    straight, resumed = fresh_run(prepared, tmp_path, "straight"), fresh_run(prepared, tmp_path, "resumed")
    train_in_process(straight, "train.max_steps=6", "train.compile=true")
    train_in_process(resumed, "train.max_steps=3", "train.compile=true")
    assert train_in_process(resumed, "train.max_steps=6", "train.compile=true").step == 6
    assert_same_weights(resumed, straight)


def test_compiled_training_on_two_ranks_follows_one_eager_process(prepared, tmp_path):
    # torch.compile over DDP compiles the model's forward (DDP's own frames hold no graph)
    one, two = fresh_run(prepared, tmp_path, "one"), fresh_run(prepared, tmp_path, "two")
    run_single("launch/train_generator.py", train_args(one, "generator.dropout=0", "train.accumulate=2",
                                                       "train.max_steps=4"))
    run_torchrun("launch/train_generator.py", train_args(two, "generator.dropout=0", "train.max_steps=4",
                                                         "train.compile=true"), nproc=2, timeout=600)
    records = [r for r in log_records(two) if "loss" in r]
    assert [r["loss"] for r in records] == pytest.approx([r["loss"] for r in log_records(one) if "loss" in r],
                                                         rel=1e-5)
    assert records[0]["compiles"] == records[-1]["compiles"] == 1
    [final] = [r for r in log_records(two) if "params_sha256" in r]
    assert len(set(final["params_sha256"])) == 1


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
