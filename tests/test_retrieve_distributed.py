"""The BM25 memory stage: its files, and the same bytes from 1 process, 2 processes and 2 nodes."""

import json
import re

import pytest

from conftest import DEMO_DATA, REPO, run_single, run_torchrun, start_torchrun
from selfmem.common.config import ConfigError, load_config
from selfmem.retrieve.bm25 import BM25Retriever
from selfmem.retrieve.fuzzy import fuzzy_match

SPLITS = ("train", "dev", "test")
CONFIG = str(REPO / "configs" / "demo.yaml")


def memory_files(root):
    return {split: (root / "demo" / "memory" / "bm25" / f"{split}.jsonl").read_bytes() for split in SPLITS}


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    # a small batch size puts several batches, and a partial last one, in each shard
    run_single("launch/retrieve.py", ["--config", CONFIG, f"run.root={root}", "retrieval.batch_size=700"])
    return root


def test_memory_files_hold_train_targets_of_the_hits(single_process_run):
    train = [json.loads(line) for line in open(DEMO_DATA / "train.jsonl", encoding="utf-8")]
    config = load_config(CONFIG)
    retriever = BM25Retriever.build([ex["src"] for ex in train], config.retrieval.k1, config.retrieval.b)
    rows_of_pair = {}  # a train query retrieves neither its own row nor another row holding its very pair
    for j, ex in enumerate(train):
        rows_of_pair.setdefault((ex["src"], ex["trg"]), []).append(j)
    for split in SPLITS:
        queries = [json.loads(line)["src"] for line in open(DEMO_DATA / f"{split}.jsonl", encoding="utf-8")]
        exclude = [rows_of_pair[ex["src"], ex["trg"]] for ex in train] if split == "train" else None
        expected = retriever.search(queries, config.retrieval.topk, exclude)  # the whole split in one call
        lines = memory_files(single_process_run)[split].decode("utf-8").splitlines()
        assert len(lines) == len(queries)
        for i, (line, hits) in enumerate(zip(lines, expected, strict=True)):
            record = json.loads(line)
            assert record == {"memories": [train[j]["trg"] for j, _ in hits],
                              "scores": [round(score, 4) for _, score in hits], "ids": [j for j, _ in hits]}
            assert 1 <= len(record["ids"]) <= 5 or record == {"memories": [], "scores": [], "ids": []}
            if split == "train":
                assert i not in record["ids"]
    config = (single_process_run / "demo" / "config.yaml").read_text()
    assert f"root: {single_process_run}" in config


def test_min_fuzzy_match_keeps_the_close_hits_of_the_unfiltered_memory(single_process_run, tmp_path):
    run_single("launch/retrieve.py", ["--config", CONFIG, f"run.root={tmp_path}", "retrieval.batch_size=700",
                                      "retrieval.min_fuzzy_match=0.5"])
    train = [json.loads(line)["src"] for line in open(DEMO_DATA / "train.jsonl", encoding="utf-8")]
    filtered, unfiltered = memory_files(tmp_path), memory_files(single_process_run)
    for split in SPLITS:
        queries = [json.loads(line)["src"] for line in open(DEMO_DATA / f"{split}.jsonl", encoding="utf-8")]
        records = [json.loads(line) for line in filtered[split].decode("utf-8").splitlines()]
        references = [json.loads(line) for line in unfiltered[split].decode("utf-8").splitlines()]
        for query, record, reference in zip(queries, records, references, strict=True):
            kept = [k for k, i in enumerate(reference["ids"]) if fuzzy_match(query, train[i]) >= 0.5]
            assert record == {key: [reference[key][k] for k in kept] for key in reference}
        # some examples keep memories and some lose all of them
        assert 0 < sum(bool(r["ids"]) for r in records) < len(records)


def test_retrieval_settings_that_cannot_work_are_refused_when_the_config_is_loaded(tmp_path):
    for setting, message in (("retrieval.min_fuzzy_match=1.5", "retrieval.min_fuzzy_match must be in [0, 1], got 1.5"),
                             ("retrieval.topk=0", "retrieval.topk must be at least 1, got 0"),
                             ("retrieval.batch_size=0", "retrieval.batch_size must be at least 1, got 0")):
        with pytest.raises(ConfigError) as info:
            load_config(CONFIG, [f"run.root={tmp_path}", setting])
        assert str(info.value) == message


def test_two_processes_write_the_same_bytes(single_process_run, tmp_path):
    run_torchrun("launch/retrieve.py", ["--config", CONFIG, f"run.root={tmp_path}", "retrieval.batch_size=700"],
                 nproc=2)
    assert memory_files(tmp_path) == memory_files(single_process_run)


def test_two_nodes_on_loopback_write_the_same_bytes(single_process_run, tmp_path):
    run_torchrun("launch/retrieve.py", ["--config", CONFIG, f"run.root={tmp_path}", "retrieval.batch_size=700"],
                 nproc=1, nnodes=2)
    assert memory_files(tmp_path) == memory_files(single_process_run)


ON_MAIN_SCRIPT = """
import os
import time

from selfmem.common.distributed import barrier, init_distributed, on_main

def fail():
    raise OSError("No space left on device")

env = init_distributed(timeout_s=3)
assert on_main(lambda: 41 + 1) == (42 if env.is_main else None)
try:
    on_main(fail)
except Exception as exc:
    print(f"rank {env.rank} raised {type(exc).__name__}: {exc}", flush=True)
if env.rank == 0:  # rank 1 never joins this barrier
    started = time.monotonic()
    try:
        barrier()
    except Exception as exc:
        kind = "RuntimeError" if isinstance(exc, RuntimeError) else type(exc).__name__  # or a subclass
        print(f"rank 0's lone barrier raised {kind} after {time.monotonic() - started:.0f} s", flush=True)
    os._exit(1)  # torchrun then ends rank 1
time.sleep(120)
"""


def test_a_failure_on_rank_0_reaches_every_rank_and_a_lone_collective_times_out(tmp_path):
    # without on_main, rank 1 would wait at its next collective until the timeout
    script = tmp_path / "on_main.py"
    script.write_text(ON_MAIN_SCRIPT)
    (out,) = [p.communicate(timeout=120)[0] for p in start_torchrun(str(script), [])]
    assert "rank 0 raised OSError: No space left on device" in out
    assert "rank 1 raised RankFailed: rank 0 failed: OSError: No space left on device" in out
    # the timeout (3 s) ends the lone barrier, not a hang; a loaded machine may add a second or two
    waited = re.search(r"rank 0's lone barrier raised RuntimeError after (\d+) s", out)
    assert waited is not None, out
    assert 3 <= int(waited.group(1)) <= 10
