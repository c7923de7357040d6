"""Self-retrieval excludes a train query's exact duplicates, not only its own row: otherwise a
corpus holding a pair twice leaks the reference into that pair's own training memory."""

import json
import logging

from conftest import DEMO_CONFIG

from selfmem.common.config import load_config
from selfmem.common.distributed import DistEnv
from selfmem.common.run import RunPaths
from selfmem.retrieve.memory import build_bm25_memory

ONE_PROCESS = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)
TRAIN = [("the red apple falls", "der rote Apfel fällt"),
         ("a green pear", "eine grüne Birne"),
         ("the red apple falls", "der rote Apfel fällt"),  # row 0 again
         ("the red apple falls", "der rote Apfel fällt herab"),  # the same source, another target
         ("a green pear", "eine grüne Birne"),  # row 1 again
         ("blue skies", "blaue Himmel")]


def memory_ids(tmp_path, *overrides):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for split, pairs in (("train", TRAIN), ("dev", TRAIN[:1]), ("test", TRAIN[1:2])):
        (data / f"{split}.jsonl").write_text("".join(json.dumps({"src": s, "trg": t}) + "\n" for s, t in pairs),
                                             encoding="utf-8")
    config = load_config(DEMO_CONFIG, [f"run.root={tmp_path}", f"data.dir={data}", "data.max_examples=null",
                                       "retrieval.backend=bm25s", "retrieval.topk=5", *overrides])
    paths = RunPaths(config.run_dir)
    build_bm25_memory(config, ONE_PROCESS, paths)
    return {split: [json.loads(line)["ids"] for line in paths.bm25_memory(split).read_text().splitlines()]
            for split in ("train", "dev")}


def test_a_train_query_retrieves_neither_itself_nor_its_duplicates(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="selfmem.retrieve.memory"):
        ids = memory_ids(tmp_path)
    assert ids["train"] == [[3], [], [3], [0, 2], [], []]  # rows 0 and 2, and 1 and 4, are one pair
    assert ids["dev"] == [[0, 2, 3]]  # other splits are no train pair: nothing is excluded
    assert ("train: 4 queries share their (source, target) pair with other train rows; 4 duplicates excluded from "
            "their retrieval besides each query's own row") in caplog.messages


def test_exclude_self_off_keeps_every_hit(tmp_path):
    assert memory_ids(tmp_path, "retrieval.exclude_self=false")["train"] == [[0, 2, 3], [1, 4], [0, 2, 3], [0, 2, 3],
                                                                             [1, 4], [5]]
