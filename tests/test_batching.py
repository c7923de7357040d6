"""Token-budget batching and generator inputs."""

from unittest import mock

import torch

from selfmem.common.batching import packing_key, token_budget_batches
from selfmem.common.distributed import DistEnv
from selfmem.common.config import GeneratorConfig
from selfmem.common.data import Example
from selfmem.common.generator_inputs import (
    EncodedExample,
    SpecialIds,
    collate,
    encode_examples,
    encoder_input,
    example_sizes,
)

IDS = SpecialIds(pad=0, eos=2, sep=4, decoder_start=1)


def sizes_of(n, seed=0):
    """(source, target) lengths that correlate, as in translation."""
    g = torch.Generator().manual_seed(seed)
    sources = torch.randint(3, 60, (n,), generator=g)
    targets = (sources + torch.randint(-3, 4, (n,), generator=g)).clamp(min=2)
    return [(int(a), int(b)) for a, b in zip(sources, targets)]


def padding(batches, sizes):
    return sum(len(b) * sum(max(sizes[i][p] for i in b) for p in range(2)) - sum(sum(sizes[i]) for i in b)
               for b in batches)


def test_batches_cover_every_example_once_within_the_budget():
    sizes = sizes_of(500)
    batches = token_budget_batches(sizes, max_tokens=600, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for batch in batches:
        padded = len(batch) * sum(max(sizes[i][part] for i in batch) for part in range(2))
        assert padded <= 600
    # similar lengths travel together: a fraction of the padding of random batches of the same count
    shuffled = torch.randperm(500, generator=torch.Generator().manual_seed(0)).tolist()
    random_batches = [shuffled[i::len(batches)] for i in range(len(batches))]
    assert padding(batches, sizes) < 0.25 * padding(random_batches, sizes)


def test_the_parts_are_sorted_apart_not_by_their_sum():
    # the target's bucket first, then the encoder input's exact length; one part: its length
    assert packing_key((30, 20)) == (24, 30) and packing_key((30, 20, 9)) == (24, 12, 30)
    assert packing_key((7,)) == (7,)
    # joint memory: the encoder input is source + memory, whose length is the memory's own
    g = torch.Generator().manual_seed(0)
    sources = torch.randint(3, 60, (2000,), generator=g)
    memories = torch.randint(0, 60, (2000,), generator=g)
    sizes = [(int(s + m) + 2, int(s) + 1) for s, m in zip(sources, memories)]
    by_parts = token_budget_batches(sizes, max_tokens=2000, seed=0, epoch=0)
    with mock.patch("selfmem.common.batching.packing_key", lambda size: (sum(size),)):
        by_sum = token_budget_batches(sizes, max_tokens=2000, seed=0, epoch=0)
    assert sorted(i for b in by_parts for i in b) == list(range(2000))
    real = sum(sum(size) for size in sizes)
    assert padding(by_parts, sizes) < 0.15 * real < padding(by_sum, sizes)  # here 9% against 23%
    assert len(by_parts) < len(by_sum)


def test_an_example_larger_than_the_budget_gets_a_batch_of_its_own():
    batches = token_budget_batches([(5, 5), (500, 100), (6, 4)], max_tokens=50, seed=0, epoch=0)
    assert [1] in batches and sorted(i for b in batches for i in b) == [0, 1, 2]


def test_batches_are_a_function_of_seed_and_epoch_only():
    sizes = sizes_of(300)
    assert token_budget_batches(sizes, 500, 3, 2) == token_budget_batches(sizes, 500, 3, 2)
    assert token_budget_batches(sizes, 500, 3, 2) != token_budget_batches(sizes, 500, 3, 3)
    assert token_budget_batches(sizes, 500, 3, 2) != token_budget_batches(sizes, 500, 4, 2)


def test_a_ranks_share_splits_a_step_like_accumulation_does():
    step = [[1], [2], [3], [4]]
    first, second = (DistEnv(rank=r, world_size=2, local_rank=r, local_world_size=2) for r in (0, 1))
    assert first.share(step) == [[1], [3]] and second.share(step) == [[2], [4]]
    assert DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1).share(step) == step


class CharTokenizer:
    """ids = code points + 10 (no tokenizer training needed); "|" is the separator, "$" eos."""

    sep_id, eos_id = ord("|") + 10, ord("$") + 10

    def encode(self, text):
        return [ord(c) + 10 for c in text]


def test_joint_input_keeps_the_source_budget_and_truncates_only_memory():
    config = GeneratorConfig(memory="joint", num_memories=2, max_source_len=4, max_memory_len=3, max_target_len=5)
    [ex] = encode_examples([Example("abcdef", "uvwxyz")], [["ghij", "kl", "mn"]], CharTokenizer(), config)
    a = ord("a") + 10
    assert ex.source == [a, a + 1, a + 2]  # max_source_len - 1, room for eos
    assert ex.memories == [[a + 6, a + 7], [a + 10, a + 11]]  # two memories, each max_memory_len - 1
    assert encoder_input(ex, "joint", IDS) == [a, a + 1, a + 2, 4, a + 6, a + 7, 4, a + 10, a + 11, 2]
    assert encoder_input(ex, "none", IDS) == [a, a + 1, a + 2, 2]
    assert len(ex.target) == 4


def test_separators_and_eos_in_the_text_are_dropped():
    config = GeneratorConfig(memory="joint", max_source_len=8, max_memory_len=8, max_target_len=8)
    [ex] = encode_examples([Example("a|b$", "c$d")], [["e|f"]], CharTokenizer(), config)
    a = ord("a") + 10
    assert (ex.source, ex.memories, ex.target) == ([a, a + 1], [[a + 4, a + 5]], [a + 2, a + 3])


def test_memory_none_drops_memories():
    [ex] = encode_examples([Example("ab", "cd")], [["zz"]], CharTokenizer(), GeneratorConfig(memory="none"))
    assert ex.memories == []


def test_collate_pads_and_shifts_the_target():
    examples = [EncodedExample([5, 6, 7], [[8, 9]], [10, 11]), EncodedExample([5], [], [12])]
    batch = collate(examples, "dual", IDS)
    assert batch["src"].tolist() == [[5, 6, 7, 2], [5, 2, 0, 0]]
    assert batch["decoder_input"].tolist() == [[1, 10, 11], [1, 12, 0]]
    assert batch["labels"].tolist() == [[10, 11, 2], [12, 2, 0]]
    # an example without memory gets one memory of just eos
    assert batch["memory"].tolist() == [[[8, 9, 2]], [[2, 0, 0]]]
    assert example_sizes(examples[0], "dual", IDS) == (4, 3, 3)
    # a batch pads memories to its most memories x its longest: the budget counts the upper bound
    assert example_sizes(examples[1], "dual", IDS, num_memories=4) == (2, 2, 4)


def test_collate_dual_masks_missing_memory_slots():
    examples = [EncodedExample([5], [[8], [9, 9]], [10]), EncodedExample([5], [[7]], [10])]
    assert collate(examples, "dual", IDS)["memory"].tolist() == [[[8, 2, 0], [9, 9, 2]], [[7, 2, 0], [0, 0, 0]]]
