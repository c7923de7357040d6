"""The shared training loop on a toy task, in one process: schedule, early stop, non-finite guard."""

import json
import logging
import math
import os
import re
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfmem.common.batching import token_budget_batches
from selfmem.common.config import TrainConfig
from selfmem.common.distributed import DistEnv
from selfmem.models.linear import linear
from selfmem.train import loop
from selfmem.train.loop import (
    CHECKPOINT,
    autocast_dtype,
    counts_as_nonfinite,
    fit,
    inverse_sqrt_schedule,
    micro_batches_per_step,
)

ONE_PROCESS = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)


class ToyTask:
    """Least squares y = 3x on 64 points (x of about ``magnitude``); dev figures scripted per evaluation."""

    def __init__(self, dev_metrics=None, poison=False, magnitude=1.0):
        generator = torch.Generator().manual_seed(0)
        self.x = magnitude * torch.randn(64, 1, generator=generator)
        self.y = 3 * self.x
        self.dev_metrics = list(dev_metrics or [])
        self.poison = poison
        self.saved_at_eval = []
        self.evaluations = 0

    def epoch_batches(self, epoch):
        return token_budget_batches([(1,)] * 64, max_tokens=8, seed=0, epoch=epoch)

    def num_targets(self, batch):
        return len(batch)

    def num_tokens(self, batch):
        return len(batch)

    def collate(self, batch):
        return {"x": self.x[batch], "y": self.y[batch]}

    def loss(self, model, tensors):
        error = model(tensors["x"]) - tensors["y"]
        loss = (error**2).sum()
        return loss * math.nan if self.poison else loss

    def evaluate(self, model):
        self.evaluations += 1
        with torch.no_grad():
            mse = float(((model(self.x) - self.y) ** 2).mean())
        return {"metric": self.dev_metrics.pop(0) if self.dev_metrics else -mse}

    def save_model(self, model, directory):
        self.saved_at_eval.append(self.evaluations)


def toy_config(**overrides):
    values = dict(lr=0.05, warmup_steps=1, max_tokens=8, max_epochs=50, patience=100, clip_norm=10.0,
                  save_every=1000, log_every=1, precision="fp32")
    values.update(overrides)
    return TrainConfig(**values)


def test_inverse_sqrt_schedule_warms_up_linearly_then_decays():
    schedule = inverse_sqrt_schedule(100)
    assert [schedule(s) for s in (0, 50, 100, 400, 10_000)] == [0.0, 0.5, 1.0, 0.5, 0.1]


def test_autocast_dtype_on_cpu():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) == torch.float32
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    assert autocast_dtype("fp16", cpu) == torch.float16


def test_training_fits_the_toy_problem(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(1, 1, bias=False)
    task = ToyTask()
    state = fit(model, task, toy_config(max_epochs=20, lr=0.1), ONE_PROCESS, tmp_path, seed=0,
                lr_schedule=lambda s: 1.0)
    assert state.step == 20 * 8 and state.epoch == 20
    assert model.weight.item() == pytest.approx(3.0, abs=1e-2)
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 160 and losses[-1] < 1e-3 < 1 < losses[0]
    assert task.evaluations == 20 and task.saved_at_eval[0] == 1


def test_freed_memory_is_offered_back_after_every_step_and_at_the_end(tmp_path, monkeypatch):
    # with freed memory kept, a heap that is never trimmed grows with each batch size it sees
    # (up to a limit, left for the next steps); all of it once training ends
    releases = []
    monkeypatch.setattr(loop, "release_freed_memory", lambda limit=None: releases.append(limit))
    state = fit(nn.Linear(1, 1, bias=False), ToyTask(), toy_config(max_epochs=2, log_every=4), ONE_PROCESS, tmp_path,
                seed=0, lr_schedule=lambda s: 1.0)
    assert state.step == 16 and releases == [None] * 16 + [0]


class PackedToyModel(nn.Module):
    """The toy model's product through ``selfmem.models.linear``, whose evaluations use packed weights."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, 1))

    def forward(self, x):
        return linear(x, [self.weight], [None])


class PackedTask(ToyTask):
    """Records, at each evaluation, how far the model's output is from the product of its current weight."""

    def __init__(self):
        super().__init__()
        self.stale_by = []

    def evaluate(self, model):
        with torch.no_grad():
            self.stale_by.append(float((model(self.x) - F.linear(self.x, model.weight)).abs().max()))
        return super().evaluate(model)


def test_evaluations_between_steps_see_the_fused_optimizers_updates(tmp_path):
    # AdamW(fused=True) moves no version counter, so a packed copy made at one evaluation
    # stayed in use at the next ones: a generator's dev figures were those of stale weights
    model, task = PackedToyModel(), PackedTask()
    fit(model, task, toy_config(max_epochs=3, lr=0.1), ONE_PROCESS, tmp_path, seed=0, lr_schedule=lambda s: 1.0)
    assert len(task.stale_by) == 3 and model.weight.item() > 1.0  # the weight moved between evaluations
    assert max(task.stale_by) < 1e-5, task.stale_by


class SavingTask(ToyTask):
    """The toy task with a model of two files, as a generator's is."""

    def save_model(self, model, directory):
        super().save_model(model, directory)
        torch.save(model.state_dict(), directory / "weights.pt")
        (directory / "evaluation.txt").write_text(str(self.evaluations))


@pytest.mark.parametrize("hard_links", [True, False])
def test_the_best_model_replaces_the_last_beside_the_checkpoint_and_the_log(hard_links, tmp_path, monkeypatch):
    def no_hard_links(source, target):
        raise OSError("hard links are not supported here")

    if not hard_links:  # the checkpoint and the log are copied into each new directory
        monkeypatch.setattr(os, "link", no_hard_links)
    fit(nn.Linear(1, 1), SavingTask(dev_metrics=[1.0, 2.0, 1.5]), toy_config(max_epochs=3), ONE_PROCESS,
        tmp_path / "run", seed=0, lr_schedule=lambda s: 1.0)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "evaluation.txt", "train_log.jsonl",
                                                      "weights.pt"]
    assert (run / "evaluation.txt").read_text() == "2"  # the best of three
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 25))  # the log outlived both saves
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary left


def test_early_stop_after_patience_epochs_without_a_better_metric(tmp_path):
    task = ToyTask(dev_metrics=[1.0, 2.0, 2.0, 1.5, 9.0])
    state = fit(nn.Linear(1, 1), task, toy_config(patience=2), ONE_PROCESS, tmp_path, seed=0,
                lr_schedule=lambda s: 1.0)
    assert task.evaluations == 4  # epochs 0-3: the metric stopped rising after epoch 1
    assert state.epoch == 4 and state.best_metric == 2.0 and state.bad_epochs == 2
    assert task.saved_at_eval == [1, 2]  # the model is saved only when dev improves


def evaluation_records(run):
    return [(r["step"], r["best"]) for r in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())
            if "eval" in r]


def test_a_run_cut_by_max_steps_and_continued_makes_an_uninterrupted_runs_decisions(tmp_path):
    # 8 steps an epoch, patience 1. Uninterrupted: 30 at step 8, 31 at 16 (kept), 29 at 24 (stop).
    # Cut at step 12, where dev reads 32: its model is kept until step 16 beats the epoch ends
    # before it; before epoch ends were compared with epoch ends only, 31 < 32 stopped it at 16.
    straight = fit(nn.Linear(1, 1), ToyTask(dev_metrics=[30.0, 31.0, 29.0]), toy_config(patience=1), ONE_PROCESS,
                   tmp_path / "straight", seed=0, lr_schedule=lambda s: 1.0)
    fit(nn.Linear(1, 1), ToyTask(dev_metrics=[30.0, 32.0]), toy_config(patience=1, max_steps=12), ONE_PROCESS,
        tmp_path / "cut", seed=0, lr_schedule=lambda s: 1.0)
    continued_task = ToyTask(dev_metrics=[31.0, 29.0])
    continued = fit(nn.Linear(1, 1), continued_task, toy_config(patience=1), ONE_PROCESS, tmp_path / "cut", seed=0,
                    lr_schedule=lambda s: 1.0)
    assert asdict(continued) == asdict(straight)
    assert straight.step == 24 and straight.best_metric == 31.0 and straight.bad_epochs == 1
    assert continued_task.saved_at_eval == [1]  # step 16's model replaced the cut's
    assert evaluation_records(tmp_path / "straight") == [(8, True), (16, True), (24, False)]
    assert evaluation_records(tmp_path / "cut") == [(8, True), (12, True), (16, True), (24, False)]
    # where no later epoch end improves, the cut's better model stays, and patience is the same
    fit(nn.Linear(1, 1), ToyTask(dev_metrics=[30.0, 32.0]), toy_config(patience=1, max_steps=12), ONE_PROCESS,
        tmp_path / "kept", seed=0, lr_schedule=lambda s: 1.0)
    state = fit(nn.Linear(1, 1), ToyTask(dev_metrics=[29.0]), toy_config(patience=1), ONE_PROCESS,
                tmp_path / "kept", seed=0, lr_schedule=lambda s: 1.0)
    assert (state.step, state.best_metric, state.best_at_epoch_end, state.bad_epochs) == (16, 32.0, 30.0, 1)


def test_a_rerun_without_a_checkpoint_starts_the_log_afresh(tmp_path):
    for _ in range(2):  # the second run as after a kill before the first checkpoint
        fit(nn.Linear(1, 1), ToyTask(), toy_config(max_steps=3), ONE_PROCESS, tmp_path, seed=0,
            lr_schedule=lambda s: 1.0)
        (tmp_path / CHECKPOINT).unlink()
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [(r["step"], sorted(set(r) & {"loss", "eval", "params_sha256"})) for r in records] == [
        (1, ["loss"]), (2, ["loss"]), (3, ["loss"]), (3, ["eval"]), (3, ["params_sha256"])]


def test_an_evaluation_cut_off_by_a_kill_while_saving_after_it_is_logged_once(tmp_path, monkeypatch):
    saving = loop._save_checkpoint
    calls = []

    def killed_at_the_second_save(*args):
        calls.append(1)
        if len(calls) == 2:  # the epoch end's, after its evaluation was logged
            raise KeyboardInterrupt
        saving(*args)

    monkeypatch.setattr(loop, "_save_checkpoint", killed_at_the_second_save)
    with pytest.raises(KeyboardInterrupt):  # the step-8 checkpoint is written before the evaluation
        fit(nn.Linear(1, 1), ToyTask(), toy_config(max_epochs=1, save_every=8), ONE_PROCESS, tmp_path, seed=0,
            lr_schedule=lambda s: 1.0)
    monkeypatch.setattr(loop, "_save_checkpoint", saving)
    task = ToyTask()
    fit(nn.Linear(1, 1), task, toy_config(max_epochs=1, save_every=8), ONE_PROCESS, tmp_path, seed=0,
        lr_schedule=lambda s: 1.0)
    assert task.evaluations == 1  # evaluated again on resuming
    assert evaluation_records(tmp_path) == [(8, True)]


def test_a_checkpoint_left_half_written_by_a_kill_is_removed_when_the_run_resumes(tmp_path):
    fit(nn.Linear(1, 1), ToyTask(), toy_config(max_steps=3), ONE_PROCESS, tmp_path, seed=0, lr_schedule=lambda s: 1.0)
    partial = tmp_path / ".checkpoint.pt.k1ll3d.tmp"
    partial.write_bytes(b"half a checkpoint")
    fit(nn.Linear(1, 1), ToyTask(), toy_config(max_steps=5), ONE_PROCESS, tmp_path, seed=0, lr_schedule=lambda s: 1.0)
    assert not partial.exists() and (tmp_path / CHECKPOINT).exists()


def test_a_finished_run_called_again_keeps_its_log(tmp_path):
    for _ in range(2):
        fit(nn.Linear(1, 1), ToyTask(), toy_config(max_steps=3), ONE_PROCESS, tmp_path, seed=0,
            lr_schedule=lambda s: 1.0)
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert sum("params_sha256" in r for r in records) == 1 and len(records) == 5


def test_consecutive_non_finite_steps_stop_with_a_clear_message(tmp_path):
    model = nn.Linear(1, 1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="3 consecutive steps with non-finite gradients at step 2"):
        fit(model, ToyTask(poison=True), toy_config(max_nonfinite=3), ONE_PROCESS, tmp_path, seed=0,
            lr_schedule=lambda s: 1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no poisoned update applied


def test_fp16_overflow_skips_of_the_grad_scaler_do_not_stop_a_run(tmp_path):
    # the first scaled gradients overflow fp16, so the GradScaler skips steps and halves its
    # scale, more times in a row than train.max_nonfinite allows non-finite steps
    torch.manual_seed(0)
    model = nn.Linear(1, 1, bias=False)
    state = fit(model, ToyTask(magnitude=4.0), toy_config(precision="fp16", max_nonfinite=3, max_epochs=10),
                ONE_PROCESS, tmp_path, seed=0, lr_schedule=lambda s: 1.0)
    norms = [json.loads(line)["grad_norm"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()
             if "grad_norm" in line]
    skipped = [step for step, norm in enumerate(norms) if not math.isfinite(norm)]
    expected_skipped, expected_scale, expected = scaler_decided_steps(ToyTask(magnitude=4.0), epochs=10)
    assert skipped == expected_skipped and skipped[:4] == [0, 1, 2, 3]  # more in a row than max_nonfinite
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["scaler"]["scale"] == expected_scale
    assert state.step == 80 and torch.equal(model.weight, expected.weight)
    assert model.weight.item() == pytest.approx(3.0, abs=0.2)


def scaler_decided_steps(task, epochs):
    """A plain GradScaler loop (its ``step`` skips the update where the gradients overflowed):
    the steps it skipped, its final scale and the model."""
    torch.manual_seed(0)
    model = nn.Linear(1, 1, bias=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0,
                                  fused=True)
    scaler = torch.amp.GradScaler("cpu")
    skipped = []
    for step, batch in enumerate(batch for epoch in range(epochs) for batch in task.epoch_batches(epoch)):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = task.loss(model, task.collate(batch))
        scaler.scale(loss / task.num_targets(batch)).backward()
        scaler.unscale_(optimizer)
        if not torch.isfinite(torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)):
            skipped.append(step)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    return skipped, scaler.get_scale(), model


def test_a_non_finite_step_counts_without_a_grad_scaler_or_below_its_floor():
    assert counts_as_nonfinite(torch.amp.GradScaler("cpu", enabled=False))
    assert not counts_as_nonfinite(torch.amp.GradScaler("cpu", init_scale=1.0))  # fp16 overflow handling
    assert counts_as_nonfinite(torch.amp.GradScaler("cpu", init_scale=0.5))  # gradients overflow unscaled


def test_a_diverging_fp16_run_still_stops_once_the_scale_is_below_its_floor(tmp_path):
    # the scale halves from 2**16 at each poisoned step: steps 0-16 are the scaler's, 17-19 count
    with pytest.raises(RuntimeError, match="3 consecutive steps with non-finite gradients at step 19"):
        fit(nn.Linear(1, 1), ToyTask(poison=True), toy_config(precision="fp16", max_nonfinite=3), ONE_PROCESS,
            tmp_path, seed=0, lr_schedule=lambda s: 1.0)


SETTINGS = {"train.lr": 0.05, "generator.d_model": 32, "data.dir": "data/demo"}


def test_a_checkpoint_written_under_other_settings_is_refused_with_the_keys_that_differ(tmp_path):
    def train(max_steps, depends_on):
        return fit(nn.Linear(1, 1), ToyTask(), toy_config(max_steps=max_steps), ONE_PROCESS, tmp_path, seed=0,
                   lr_schedule=lambda s: 1.0, depends_on=depends_on)

    train(3, SETTINGS)
    expected = (f"{tmp_path / CHECKPOINT} was trained under other settings: generator.d_model was 32, now 64; "
                f"train.lr was 0.05, now 0.1. Start afresh under a new run.name (or delete {tmp_path}), or rerun "
                f"with the settings it was trained with to continue it")
    with pytest.raises(ValueError, match=re.escape(expected)):
        train(3, {**SETTINGS, "train.lr": 0.1, "generator.d_model": 64})
    with pytest.raises(ValueError, match=re.escape("generator.copy_epochs was (not set), now 2.")):
        train(3, {**SETTINGS, "generator.copy_epochs": 2})
    assert train(5, SETTINGS).step == 5  # the same settings continue it


def test_a_checkpoint_from_before_fingerprints_is_resumed_with_a_warning(tmp_path, caplog):
    fit(nn.Linear(1, 1), ToyTask(), toy_config(max_steps=3), ONE_PROCESS, tmp_path, seed=0,
        lr_schedule=lambda s: 1.0, depends_on=SETTINGS)
    checkpoint = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    del checkpoint["depends_on"], checkpoint["fingerprint"]  # as selfmem wrote them before
    torch.save(checkpoint, tmp_path / CHECKPOINT)
    with caplog.at_level(logging.WARNING, logger="selfmem.train.loop"):
        state = fit(nn.Linear(1, 1), ToyTask(), toy_config(max_steps=5), ONE_PROCESS, tmp_path, seed=0,
                    lr_schedule=lambda s: 1.0, depends_on={**SETTINGS, "train.lr": 0.1})
    assert state.step == 5
    assert (f"{tmp_path / CHECKPOINT} records no config (written by an older selfmem): resumed without checking "
            "that this run's settings are the ones it was trained with") in caplog.text
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["depends_on"]["train.lr"] == 0.1  # checked from now


def test_too_few_batches_for_one_step_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="8 micro-batches, fewer than one step needs .* train.accumulate 16.*: lower the "
                                         r"micro-batches' token budget \(train.max_tokens; selector.max_tokens for "
                                         r"the selector\)"):
        fit(nn.Linear(1, 1), ToyTask(), toy_config(accumulate=16), ONE_PROCESS, tmp_path, seed=0,
            lr_schedule=lambda s: 1.0)


def test_a_finished_run_resumed_with_more_steps_continues(tmp_path):
    torch.manual_seed(0)
    straight = nn.Linear(1, 1)
    resumed = nn.Linear(1, 1)
    resumed.load_state_dict(straight.state_dict())
    fit(straight, ToyTask(), toy_config(max_steps=12), ONE_PROCESS, tmp_path / "a", seed=0, lr_schedule=lambda s: 1.0)
    fit(resumed, ToyTask(), toy_config(max_steps=5), ONE_PROCESS, tmp_path / "b", seed=0, lr_schedule=lambda s: 1.0)
    state = fit(resumed, ToyTask(), toy_config(max_steps=12), ONE_PROCESS, tmp_path / "b", seed=0,
                lr_schedule=lambda s: 1.0)
    assert state.step == 12
    assert torch.equal(straight.weight, resumed.weight) and torch.equal(straight.bias, resumed.bias)


def test_a_global_batch_fixes_the_step_whatever_the_number_of_processes():
    assert [micro_batches_per_step(TrainConfig(accumulate=3), n) for n in (1, 2, 4)] == [3, 6, 12]  # as before
    assert [micro_batches_per_step(TrainConfig(global_batch=4), n) for n in (1, 2, 4)] == [4, 4, 4]
    with pytest.raises(ValueError, match=re.escape(
            "train.global_batch = 4 micro-batches per step cannot be shared by 3 processes: start a number of "
            "processes that divides 4")):
        micro_batches_per_step(TrainConfig(global_batch=4), 3)
    with pytest.raises(ValueError, match=re.escape(
            "train.global_batch (4) and train.accumulate (2) both set the micro-batches per step: leave "
            "train.accumulate at 1 (each process then accumulates train.global_batch / processes) or set "
            "train.global_batch=null")):
        micro_batches_per_step(TrainConfig(global_batch=4, accumulate=2), 2)
    with pytest.raises(ValueError, match=re.escape("train.global_batch must be at least 1 micro-batch (or null), "
                                                   "got 0")):
        micro_batches_per_step(TrainConfig(global_batch=0), 1)


def test_a_checkpoint_records_the_micro_batches_per_step_not_how_they_are_split(tmp_path):
    def train(max_steps, **step):
        return fit(nn.Linear(1, 1), ToyTask(), toy_config(max_steps=max_steps, **step), ONE_PROCESS, tmp_path, seed=0,
                   lr_schedule=lambda s: 1.0, depends_on={**SETTINGS, "train.accumulate": 2, "train.global_batch": None})

    train(2, accumulate=2)
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)["depends_on"]
    assert saved == {**SETTINGS, "train.global_batch": 2}  # train.accumulate is not recorded
    assert train(3, global_batch=2).step == 3  # the same step, split another way: continued
    with pytest.raises(ValueError, match=re.escape("other settings: train.global_batch was 2, now 1. Start afresh")):
        train(4)  # one process, one micro-batch a step: another training, refused


class PoisonedStepsTask(ToyTask):
    """The toy task whose loss is NaN at the given steps (one batch per step)."""

    def __init__(self, poisoned_steps):
        super().__init__()
        self.poisoned_steps, self.calls = set(poisoned_steps), 0

    def loss(self, model, tensors):
        self.calls += 1
        loss = super().loss(model, tensors)
        return loss * math.nan if self.calls - 1 in self.poisoned_steps else loss


def host_decided_losses(task, epochs):
    """The step as it was before the non-finite guard moved to the device: the host reads
    the gradient norm and the loss at every step and skips the optimizer where not finite."""
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0,
                                  fused=True)
    losses = []
    for epoch in range(epochs):
        for batch in task.epoch_batches(epoch):
            loss = task.loss(model, task.collate(batch))
            (loss / task.num_targets(batch)).backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            if torch.isfinite(grad_norm):
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item() / task.num_targets(batch))
    return losses, model


def test_the_device_side_guard_gives_the_host_decided_losses_and_weights(tmp_path):
    poisoned = [3, 4, 11]
    expected_losses, expected = host_decided_losses(PoisonedStepsTask(poisoned), epochs=3)
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    fit(model, PoisonedStepsTask(poisoned), toy_config(max_epochs=3, weight_decay=0.0), ONE_PROCESS, tmp_path,
        seed=0, lr_schedule=lambda s: 1.0)
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 24 and all(math.isnan(losses[i]) for i in poisoned)
    assert [x for x in losses if not math.isnan(x)] == [x for x in expected_losses if not math.isnan(x)]
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), expected.parameters()))


def test_a_non_finite_stop_read_at_a_later_log_names_its_step_and_applies_no_update_after_it(tmp_path):
    # the guard is read at step 8 (the epoch's end); the run reaches 3 consecutive non-finite steps at
    # step 4, and the finite steps 5 to 7 after it must not update the model either
    _, before = host_decided_losses(PoisonedStepsTask(range(2, 8)), epochs=1)  # the weights after steps 0 and 1
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    task = PoisonedStepsTask([2, 3, 4])
    with pytest.raises(RuntimeError, match="3 consecutive steps with non-finite gradients at step 4"):
        fit(model, task, toy_config(max_nonfinite=3, log_every=100, weight_decay=0.0), ONE_PROCESS, tmp_path, seed=0,
            lr_schedule=lambda s: 1.0)
    assert task.calls == 8  # stopped at the first read after step 4
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before.parameters()))
