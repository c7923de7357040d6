"""Shard files merged by rank 0: the lines in example order, byte for byte, every example
once, and a merge that holds a line per shard, not the split; the parts an interrupted
attempt leaves, read back to their last complete line."""

import tracemalloc

import pytest

from selfmem.common.shards import (
    kept_lines,
    merge_lines,
    merge_shards,
    part_paths,
    progress_log,
    read_shard,
    shard_paths,
    write_shard,
)
from selfmem.lift.state import remove


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


def test_the_parts_an_interrupted_attempt_left_give_their_complete_lines(tmp_path):
    output = tmp_path / "out.jsonl"
    with progress_log(output, 0) as append:
        append([(4, line(4)), (0, line(0))])
        append([(2, line(2))])
    with progress_log(output, 1) as append:
        append([(3, line(3)), (1, line(1))])
    parts = part_paths(output)
    assert len(parts) == 2 and all(p.name.startswith(".out.jsonl.part-") for p in parts)
    assert kept_lines(output, lambda i: True) == {i: line(i) for i in range(5)}
    assert kept_lines(output, lambda i: i % 2 == 0) == {i: line(i) for i in (0, 2, 4)}
    # killed while writing: a line cut short ends its part; so does one the crash left unreadable
    rank0 = next(p for p in parts if p.name.startswith(".out.jsonl.part-0-"))
    rank0.write_bytes(rank0.read_bytes() + b"5\t" + line(5).encode()[:30])
    rank1 = next(p for p in parts if p.name.startswith(".out.jsonl.part-1-"))
    rank1.write_bytes(b"3\t" + line(3).encode() + b"\0\0\0\n" + b"1\t" + line(1).encode())
    assert kept_lines(output, lambda i: True) == {i: line(i) for i in (0, 2, 3, 4)}
    # a machine's crash can leave a framed line with zeros inside, where a block was never written:
    # that line is skipped, the lines after it kept
    rank1.write_bytes(b"1\t" + line(1).encode()[:5] + b"\0" * 8 + b"\n" + b"3\t" + line(3).encode())
    assert kept_lines(output, lambda i: True) == {i: line(i) for i in (0, 2, 3, 4)}
    # the merged output makes them garbage
    shards = write_round_robin(output, 5, 2)
    merge_shards(shards, output, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_a_stage_started_afresh_removes_its_outputs_unfinished_parts(tmp_path):
    output = tmp_path / "round_1" / "candidates" / "dev.jsonl"
    with progress_log(output, 0) as append:
        append([(0, line(0))])
    (tmp_path / "round_1" / "candidates" / ".test.jsonl.part-0-00000000").write_text("0\tkept\n")  # another file's
    remove([output])
    assert [p.name for p in output.parent.iterdir()] == [".test.jsonl.part-0-00000000"]
