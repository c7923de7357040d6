"""Shard files merged by rank 0: the lines in example order, byte for byte, every example
once, and a merge that holds a line per shard, not the split."""

import tracemalloc

import pytest

from selfmem.common.shards import merge_lines, merge_shards, read_shard, shard_paths, write_shard


def line(i: int) -> str:
    # tabs, a carriage return and a Unicode line separator must survive the shard format
    return f'{{"example": {i}, "text": "a\tb\r\u2028 {"x" * 80}"}}\n'


def write_round_robin(output, count, world_size):
    shards = shard_paths(output, world_size)
    for rank, shard in enumerate(shards):
        write_shard(shard, ((i, line(i)) for i in range(rank, count, world_size)))
    return shards


def test_shards_merge_into_example_order_byte_for_byte(tmp_path):
    output = tmp_path / "out.jsonl"
    shards = write_round_robin(output, 10, 3)
    assert shards == [tmp_path / ".out.jsonl.rank0", tmp_path / ".out.jsonl.rank1", tmp_path / ".out.jsonl.rank2"]
    assert [key for key, _ in read_shard(shards[1])] == [1, 4, 7]
    merge_shards(shards, output, 10)
    assert output.read_bytes() == "".join(line(i) for i in range(10)).encode("utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # the shards are gone


def test_a_shard_written_out_of_order_is_refused(tmp_path):
    shard = tmp_path / ".out.jsonl.rank0"
    with pytest.raises(ValueError) as info:
        write_shard(shard, [(0, "a\n"), (2, "b\n"), (1, "c\n")])
    assert str(info.value) == f"{shard}: example 1 written after example 2; keys must ascend"
    assert not shard.exists()


def test_a_missing_or_repeated_example_fails_the_merge(tmp_path):
    output = tmp_path / "out.jsonl"
    shards = write_round_robin(output, 6, 2)
    with pytest.raises(RuntimeError) as info:
        merge_shards(shards, output, 7)
    assert str(info.value) == f"{output}: merging its parts, example 6 is missing from every part"
    with pytest.raises(RuntimeError) as info:
        merge_shards([*shards, shards[0]], output, 6)
    assert str(info.value) == (f"{output}: merging its parts, found example 0 where example 1 was due (a part "
                               f"is missing, damaged or from another run)")
    assert not output.exists()  # a failed merge leaves no output behind


def test_merging_holds_a_line_per_part_not_the_split(tmp_path):
    output = tmp_path / "out.jsonl"
    shards = write_round_robin(output, 30_000, 4)
    size = sum(shard.stat().st_size for shard in shards)
    tracemalloc.start()
    merge_shards(shards, output, 30_000)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert size > 3_700_000
    # a file buffer and a line per shard (about 30 kB); holding the split would take megabytes
    assert peak < 100_000, f"merging {size} bytes of shards took {peak} bytes"


def test_parts_keyed_by_any_ascending_indices_merge_in_their_order(tmp_path):
    output = tmp_path / "subset.jsonl"
    merge_lines([iter([(3, b"c\n"), (8, b"e\n")]), iter([(1, b"a\n"), (5, b"d\n")])], output, [1, 3, 5, 8])
    assert output.read_bytes() == b"a\nc\nd\ne\n"
