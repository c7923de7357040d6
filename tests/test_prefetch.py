"""The prefetcher: the same micro-batches in the same order as collating on the main thread, errors
raised where the batch is taken, and no thread left behind however training ends."""

import json
import math
import threading

import pytest
import torch
from torch import nn

from selfmem.train.loop import fit
from selfmem.train.prefetch import Prefetcher
from test_train_loop import ONE_PROCESS, PoisonedStepsTask, ToyTask, toy_config

CPU = torch.device("cpu")


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "selfmem-prefetch"]


def collate(batch):
    return {"ids": torch.tensor(batch), "twice": 2 * torch.tensor(batch)}


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_batches_come_collated_in_order(ahead):
    batches = [[i, i + 1] for i in range(10)]
    with Prefetcher(batches, collate, CPU, ahead) as prefetched:
        got = list(prefetched)
    assert [t["ids"].tolist() for t in got] == batches
    assert [t["twice"].tolist() for t in got] == [[2 * i, 2 * i + 2] for i in range(10)]
    assert not prefetch_threads()


def test_a_collating_error_is_raised_where_its_batch_is_taken():
    def failing(batch):
        if batch == [3]:
            raise ValueError("bad example 3")
        return collate(batch)

    with Prefetcher([[i] for i in range(6)], failing, CPU, ahead=2) as prefetched:
        assert [next(prefetched)["ids"].tolist() for _ in range(3)] == [[0], [1], [2]]
        with pytest.raises(ValueError, match="bad example 3"):
            next(prefetched)
    assert not prefetch_threads()


def test_leaving_early_stops_the_thread_and_collates_at_most_a_few_ahead():
    collated = []

    def counting(batch):
        collated.append(batch)
        return collate(batch)

    with Prefetcher(([i] for i in range(1000)), counting, CPU, ahead=2) as prefetched:
        next(prefetched)
    assert not prefetch_threads()
    # the one taken, two in the full queue, and one collated while the queue was full
    assert len(collated) <= 4 and collated == [[i] for i in range(len(collated))]


def dropout_model():
    """A toy model with dropout, so that the per-micro-batch seeding shows."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 1))


def losses(path):
    return [json.loads(line)["loss"] for line in (path / "train_log.jsonl").read_text().splitlines()
            if '"loss"' in line]


def test_training_with_the_prefetcher_equals_training_without_it_bit_for_bit(tmp_path):
    models = {}
    for prefetch in (0, 2):
        models[prefetch] = dropout_model()
        fit(models[prefetch], ToyTask(), toy_config(max_epochs=3, accumulate=2, prefetch=prefetch), ONE_PROCESS,
            tmp_path / str(prefetch), seed=0, lr_schedule=lambda s: 1.0)
    assert len(losses(tmp_path / "0")) == 12 and losses(tmp_path / "0") == losses(tmp_path / "2")
    assert all(torch.equal(a, b) for a, b in zip(models[0].state_dict().values(), models[2].state_dict().values()))
    assert not prefetch_threads()


def test_no_thread_is_left_when_training_stops_mid_epoch_or_fails(tmp_path):
    fit(nn.Linear(1, 1), ToyTask(), toy_config(max_steps=3), ONE_PROCESS, tmp_path / "limit", seed=0,
        lr_schedule=lambda s: 1.0)
    assert not prefetch_threads()
    with pytest.raises(RuntimeError, match="3 consecutive steps with non-finite gradients at step 2"):
        fit(nn.Linear(1, 1), PoisonedStepsTask(range(8)), toy_config(max_nonfinite=3), ONE_PROCESS,
            tmp_path / "nonfinite", seed=0, lr_schedule=lambda s: 1.0)
    assert not prefetch_threads()
    assert math.isnan(losses(tmp_path / "nonfinite")[0])


