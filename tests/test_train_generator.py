"""The generator training loop for real: torchrun with gloo, 2 ranks against 1, and SIGKILL resumes
(on the same number of processes, and with train.global_batch on another)."""

import dataclasses
import json
import os
import shutil
import signal
import time

import pytest
import torch
import torch.nn.functional as F

from conftest import DEMO_CONFIG, TINY, run_single, run_torchrun, start_torchrun
from selfmem.common.config import Config, load_config
from selfmem.common.distributed import DistEnv
from selfmem.common.generator_inputs import collate
from selfmem.common.run import RunPaths
from selfmem.common.tokenizer import load_tokenizer
from selfmem.models import Seq2SeqModel
from selfmem.models.build import build_model
from selfmem.train.generator import generator_depends_on, prepare_generator, train_generator

CONFIG = str(DEMO_CONFIG)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A run directory holding a tokenizer and BM25 memory, to copy for each training run."""
    root = tmp_path_factory.mktemp("prepared")
    args = ["--config", CONFIG, f"run.root={root}", *TINY]
    run_single("launch/train_tokenizer.py", args)
    run_single("launch/retrieve.py", args)
    return root


def fresh_run(prepared, tmp_path, name):
    root = tmp_path / name
    shutil.copytree(prepared, root)
    return root


def train_args(root, *overrides):
    return ["--config", CONFIG, f"run.root={root}", *TINY, *overrides]


def log_records(root):
    path = root / "demo" / "generator" / "train_log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_ranks_follow_the_single_process_loss_curve(prepared, tmp_path):
    one, two = fresh_run(prepared, tmp_path, "one"), fresh_run(prepared, tmp_path, "two")
    # the same global batch: 1 rank accumulating 2 micro-batches, or 2 ranks with 1 each
    run_single("launch/train_generator.py", train_args(one, "train.accumulate=2", "train.max_steps=8"))
    run_torchrun("launch/train_generator.py", train_args(two, "train.accumulate=1", "train.max_steps=8"), nproc=2)
    curve_one = [r["loss"] for r in log_records(one) if "loss" in r]
    curve_two = [r["loss"] for r in log_records(two) if "loss" in r]
    assert len(curve_one) == len(curve_two) == 8
    assert curve_one == pytest.approx(curve_two, rel=1e-5)
    assert curve_one[-1] < curve_one[0]
    # the evaluations decode and score the same dev batches on any number of ranks
    evals_one = [(r["step"], r["eval"]) for r in log_records(one) if "eval" in r]
    evals_two = [(r["step"], r["eval"]) for r in log_records(two) if "eval" in r]
    assert len(evals_one) >= 1 and evals_one == evals_two
    [final] = [r for r in log_records(two) if "params_sha256" in r]
    assert len(final["params_sha256"]) == 2 and len(set(final["params_sha256"])) == 1


def load_checkpoint(root):
    return torch.load(root / "demo" / "generator" / "checkpoint.pt", weights_only=True)


STEPS = ["train.max_steps=40", "train.save_every=4", "train.max_epochs=100"]


def kill_after_first_checkpoint(root, args, nproc, max_steps=40):
    """Start a torchrun job, SIGKILL it (launcher and ranks) once it has a checkpoint; returns its step."""
    [proc] = start_torchrun("launch/train_generator.py", args, nproc=nproc)
    checkpoint = root / "demo" / "generator" / "checkpoint.pt"
    deadline = time.time() + 240
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole torchrun job: launcher and both ranks
    proc.wait()
    interrupted_at = load_checkpoint(root)["state"]["step"]
    assert 0 < interrupted_at < max_steps, "the kill must land inside the run"
    return interrupted_at


def assert_same_training(resumed_root, uninterrupted_root):
    """The final checkpoints hold the same state, bit-equal weights and optimizer states, and the
    logs the same losses."""
    assert load_checkpoint(resumed_root)["state"] == load_checkpoint(uninterrupted_root)["state"]
    assert_same_weights(resumed_root, uninterrupted_root)


def assert_same_weights(resumed_root, uninterrupted_root):
    """The final checkpoints hold bit-equal weights and optimizer states, and the logs the same losses."""
    resumed, uninterrupted = load_checkpoint(resumed_root), load_checkpoint(uninterrupted_root)
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
    for p, saved in uninterrupted["optimizer"]["state"].items():
        for k, v in saved.items():
            assert torch.equal(resumed["optimizer"]["state"][p][k], v) if torch.is_tensor(v) else \
                resumed["optimizer"]["state"][p][k] == v
    # the resumed log reads as one run: the same steps and losses
    assert [(r["step"], r.get("loss")) for r in log_records(resumed_root) if "loss" in r] == \
        [(r["step"], r.get("loss")) for r in log_records(uninterrupted_root) if "loss" in r]


def test_resume_after_sigkill_equals_an_uninterrupted_run(prepared, tmp_path):
    straight, killed = fresh_run(prepared, tmp_path, "straight"), fresh_run(prepared, tmp_path, "killed")
    run_torchrun("launch/train_generator.py", train_args(straight, *STEPS), nproc=2)
    kill_after_first_checkpoint(killed, train_args(killed, *STEPS), nproc=2)
    run_torchrun("launch/train_generator.py", train_args(killed, *STEPS), nproc=2)
    assert_same_training(killed, straight)


# two micro-batches a step, whatever the number of processes; 16 steps cross three epoch ends
GLOBAL_BATCH = ["train.max_steps=16", "train.save_every=4", "train.max_epochs=100", "train.global_batch=2"]


@pytest.fixture(scope="module")
def global_batch_run(prepared, tmp_path_factory):
    """An uninterrupted run with train.global_batch 2, on one process."""
    root = fresh_run(prepared, tmp_path_factory.mktemp("global-batch"), "straight")
    run_single("launch/train_generator.py", train_args(root, *GLOBAL_BATCH))
    return root


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_a_global_batch_job_killed_resumes_on_another_number_of_processes(prepared, global_batch_run, tmp_path,
                                                                          before, after):
    root = fresh_run(prepared, tmp_path, "elastic")
    kill_after_first_checkpoint(root, train_args(root, *GLOBAL_BATCH), nproc=before, max_steps=16)
    run_torchrun("launch/train_generator.py", train_args(root, *GLOBAL_BATCH), nproc=after)
    # 2 ranks x 1 micro-batch against 1 rank x 2: the gradient sum of two terms is the same either way
    assert_same_training(root, global_batch_run)


def test_a_rerun_under_other_settings_is_refused_but_a_larger_limit_continues(prepared, tmp_path):
    root = fresh_run(prepared, tmp_path, "rerun")

    def train(*overrides):
        config = load_config(DEMO_CONFIG, [f"run.root={root}", *TINY, *overrides])
        return train_generator(config, DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1),
                               RunPaths(config.run_dir))

    assert train("train.max_steps=2").step == 2
    with pytest.raises(ValueError, match=r"trained under other settings: train.lr was 0.001, now 0.002\. Start afresh"):
        train("train.max_steps=2", "train.lr=2e-3")  # silently continued at the old rate before
    with pytest.raises(ValueError, match=r"settings: generator.d_model was 32, now 64; generator.heads was 2, now 4\."):
        train("train.max_steps=2", "generator.d_model=64", "generator.heads=4")  # a size-mismatch traceback before
    # the limits a rerun raises to go on, and bookkeeping, are free
    assert train("train.max_steps=3", "train.max_epochs=9", "train.patience=9", "train.save_every=7",
                 "train.log_every=2", "train.max_nonfinite=20").step == 3


def test_a_generator_checkpoint_depends_on_its_sections_but_not_on_limits_or_bookkeeping():
    values = generator_depends_on(Config())
    sections = {key.split(".")[0] for key in values}
    assert sections == {"data", "tokenizer", "generator", "train", "run"} and values["run.seed"] == 1234
    assert values["train.lr"] == 7e-4 and values["generator.d_model"] == 512
    assert values.keys().isdisjoint({"train.max_steps", "train.max_epochs", "train.patience", "train.save_every",
                                     "train.log_every", "train.max_nonfinite", "run.name", "run.root"})


def test_copy_epochs_train_first_on_the_reference_as_memory(prepared):
    config = load_config(DEMO_CONFIG, [f"run.root={prepared}", *TINY, "generator.copy_epochs=2"])
    _, task = prepare_generator(config, DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1),
                                RunPaths(config.run_dir))
    n = len(task.train)
    for epoch in (0, 1):
        indices = sorted(i for batch in task.epoch_batches(epoch) for i in batch)
        assert indices == list(range(n, 2 * n))  # every example once, each with its reference as memory
    for i in range(n):
        copy = task.examples[n + i]
        assert copy.memories == [copy.target] and copy.source == task.train[i].source
        assert copy.target == task.train[i].target
    assert sorted(i for batch in task.epoch_batches(2) for i in batch) == list(range(n))
    batch = task.epoch_batches(0)[0]
    assert task.num_targets(batch) == sum(len(task.examples[i].target) + 1 for i in batch)
    too_many = load_config(DEMO_CONFIG, [f"run.root={prepared}", *TINY, "generator.copy_epochs=4", "train.max_epochs=4"])
    with pytest.raises(ValueError, match="copy_epochs = 4 leaves no epoch of train.max_epochs = 4"):
        prepare_generator(too_many, DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1),
                          RunPaths(too_many.run_dir))
    no_memory = load_config(DEMO_CONFIG, [f"run.root={prepared}", *TINY, "generator.copy_epochs=4",
                                          "train.max_epochs=4", "generator.memory=none"])
    _, task = prepare_generator(no_memory, DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1),
                                RunPaths(no_memory.run_dir))
    assert sorted(i for batch in task.epoch_batches(0) for i in batch) == list(range(n))  # no copies


def test_a_native_checkpoint_starts_a_run_and_zero_epochs_keep_it(prepared, tmp_path):
    trained = fresh_run(prepared, tmp_path, "trained")
    run_single("launch/train_generator.py", train_args(trained, "train.max_steps=3"))
    # shipped as the demo's are: float16 weights, loaded into the float32 model
    shipped = tmp_path / "shipped"
    Seq2SeqModel.load(trained / "demo" / "generator").to(torch.float16).save(shipped)
    started = fresh_run(prepared, tmp_path, "started")
    run_single("launch/train_generator.py", train_args(started, f"generator.init={shipped}", "train.max_epochs=0"))
    kept = Seq2SeqModel.load(started / "demo" / "generator").state_dict()
    expected = Seq2SeqModel.load(trained / "demo" / "generator").state_dict()
    assert kept.keys() == expected.keys()
    assert all(torch.equal(kept[k], expected[k].half().float()) for k in kept)
    assert [r["step"] for r in log_records(started) if "eval" in r] == [0]  # evaluated, not trained

    wider = load_config(DEMO_CONFIG, [f"run.root={started}", *TINY, f"generator.init={shipped}", "generator.d_model=64",
                                      "generator.heads=4"])
    tokenizer = load_tokenizer(RunPaths(wider.run_dir).tokenizer)
    with pytest.raises(ValueError, match=r"holds a native generator other than the one this config describes: "
                                         r"d_model 32 \(the config builds 64\); heads 2 \(the config builds 4\)\."):
        build_model(wider, tokenizer)

    # slotted positions: a joint model reads them, so a checkpoint without them is refused ...
    slotted = load_config(DEMO_CONFIG, [f"run.root={started}", *TINY, f"generator.init={shipped}",
                                        "generator.joint_positions=slots"])
    with pytest.raises(ValueError, match=r": source_slot 0 \(the config builds 32\); memory_slot 0 \(the config "
                                         r"builds 32\)\."):
        build_model(slotted, tokenizer)
    # ... and a model without memory reads none: one saved with them (a demo's no-memory twin) loads
    no_memory = tmp_path / "no_memory"
    twin = Seq2SeqModel(dataclasses.replace(Seq2SeqModel.load(shipped).config, memory="none", source_slot=32,
                                            memory_slot=32))
    twin.save(no_memory)
    plain = load_config(DEMO_CONFIG, [f"run.root={started}", *TINY, f"generator.init={no_memory}",
                                      "generator.memory=none"])
    loaded = build_model(plain, tokenizer)
    assert loaded.config.source_slot == 0
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in twin.state_dict().items())


def test_the_loss_over_real_target_positions_equals_the_loss_over_all_with_pads_ignored(prepared):
    config = load_config(DEMO_CONFIG, [f"run.root={prepared}", *TINY, "train.label_smoothing=0.1"])
    model, task = prepare_generator(config, DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1),
                                    RunPaths(config.run_dir))
    model.eval()  # no dropout: both losses see the same states
    padded = [batch for batch in task.epoch_batches(0)
              if collate([task.examples[i] for i in batch], task.mode, task.ids)["labels"].eq(task.ids.pad).any()]
    assert padded
    for batch in padded[:4]:
        tensors = collate([task.examples[i] for i in batch], task.mode, task.ids)
        logits = model(tensors["src"], tensors["decoder_input"], tensors.get("memory"))
        over_all = F.cross_entropy(logits.flatten(0, 1), tensors["labels"].flatten(), ignore_index=task.ids.pad,
                                   label_smoothing=0.1, reduction="sum")
        assert task.loss(model, task.collate(batch)).item() == pytest.approx(over_all.item(), rel=1e-6)
