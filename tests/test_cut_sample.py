"""data/cut_sample.py: the re-split keeps every line and the split sizes, and moves lines across splits."""

import importlib.util

from conftest import REPO

spec = importlib.util.spec_from_file_location("cut_sample", REPO / "data" / "cut_sample.py")
cut_sample = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cut_sample)


def corpus() -> dict[str, list[str]]:
    return {split: [f'{{"src": "{split} {i}"}}\n' for i in range(n)]
            for split, n in (("train", 50), ("dev", 7), ("test", 9))}


def test_resplit_pools_and_cuts_again_at_the_same_sizes():
    lines = corpus()
    parts = cut_sample.resplit(lines, seed=1)
    assert {split: len(part) for split, part in parts.items()} == {"train": 50, "dev": 7, "test": 9}
    assert sorted(line for part in parts.values() for line in part) == sorted(
        line for part in lines.values() for line in part)
    # lines keep the pooled order (train, dev, test) within each new split
    pooled = [line for split in ("train", "dev", "test") for line in lines[split]]
    for part in parts.values():
        assert part == sorted(part, key=pooled.index)
    # at these sizes a random re-split puts some original train lines in dev and test
    assert set(parts["dev"] + parts["test"]) & set(lines["train"])


def test_resplit_is_seeded():
    lines = corpus()
    assert cut_sample.resplit(lines, seed=1) == cut_sample.resplit(lines, seed=1)
    assert cut_sample.resplit(lines, seed=1) != cut_sample.resplit(lines, seed=2)
