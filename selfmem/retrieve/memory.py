"""The BM25 memory stage: top-k train targets for every train, dev and test source.

Queries are sharded over ranks in contiguous blocks; rank 0 builds the index (the others load
it or attach to the Elasticsearch index). Each rank writes its block's memory lines to its
shard as its batches of queries finish; rank 0 merges the shards, streaming, into
``memory/bm25/{split}.jsonl`` in dataset order, so the files are byte-identical whatever the
number of ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from selfmem.common.config import Config
from selfmem.common.data import SPLITS, Example, load_split
from selfmem.common.digest import fingerprint
from selfmem.common.distributed import DistEnv, agreed, barrier, on_main, shard_range
from selfmem.common.io import atomic_write_jsonl, json_line
from selfmem.common.metrics import headline_score
from selfmem.common.records import DataError, describe, field, is_texts, iter_aligned, iter_records
from selfmem.common.run import RunPaths
from selfmem.common.shards import merge_shards, shard_paths, write_shard
from selfmem.retrieve.bm25 import BM25Retriever, Hits
from selfmem.retrieve.fuzzy import fuzzy_match

log = logging.getLogger(__name__)


def open_retriever(config: Config, env: DistEnv, train: list[Example], paths: RunPaths):
    """Rank 0 indexes the train sources; the other ranks wait, then open that index."""
    documents = [ex.source for ex in train]
    cfg = config.retrieval
    if cfg.backend == "elasticsearch":
        from selfmem.retrieve.elastic import ElasticsearchRetriever, reachable_client

        # the run's directory in the default name: two roots' runs of one name on one server
        # would otherwise rebuild, and read, each other's index; rank 0's name, since another
        # node may mount the run directory under another path
        index_name = cfg.index_name or agreed(lambda: "selfmem-{}-{}".format(
            config.run.name, fingerprint([str(config.run_dir.resolve())])[:8]).lower())
        on_main(lambda: ElasticsearchRetriever.build(
            documents, cfg.k1, cfg.b, index_name, reachable_client(cfg.connect_attempts, cfg.connect_backoff)))
        return ElasticsearchRetriever.open(index_name, reachable_client(cfg.connect_attempts, cfg.connect_backoff))

    def build_and_save() -> BM25Retriever:
        retriever = BM25Retriever.build(documents, cfg.k1, cfg.b, threads=env.cpu_threads())
        retriever.save(paths.bm25_index)
        return retriever

    retriever = on_main(build_and_save)
    return retriever if env.is_main else BM25Retriever.load(paths.bm25_index, threads=env.cpu_threads())


def memory_record(hits: Hits, train: list[Example]) -> dict:
    """One line of a memory file: the hits' train targets, scores and train ids."""
    return {
        "memories": [train[i].target for i, _ in hits],
        "scores": [round(score, 4) for _, score in hits],
        "ids": [i for i, _ in hits],
    }


def same_pair_rows(train: list[Example]) -> list[list[int]]:
    """For each train example, the rows holding its exact (source, target) pair, its own
    included: what its query must not retrieve, or the reference leaks into its own memory."""
    rows: dict[Example, list[int]] = {}
    for i, example in enumerate(train):
        rows.setdefault(example, []).append(i)
    return [rows[example] for example in train]  # one list shared by the rows of a pair


def close_hits(query: str, hits: Hits, train: list[Example], min_fuzzy_match: float) -> Hits:
    """The hits whose train source has a fuzzy match of at least ``min_fuzzy_match`` with the query."""
    if min_fuzzy_match <= 0:
        return hits
    return [(i, score) for i, score in hits if fuzzy_match(query, train[i].source) >= min_fuzzy_match]


def build_bm25_memory(config: Config, env: DistEnv, paths: RunPaths) -> None:
    """Write ``memory/bm25/{split}.jsonl`` for train, dev and test."""
    cfg = config.retrieval
    splits = {split: load_split(config.data, split) for split in SPLITS}
    train = splits["train"]
    own_pairs = same_pair_rows(train) if cfg.exclude_self else None
    if own_pairs is not None and env.is_main:
        duplicated = sum(len(rows) > 1 for rows in own_pairs)
        log.info("train: %d queries share their (source, target) pair with other train rows; %d duplicates "
                 "excluded from their retrieval besides each query's own row", duplicated,
                 sum(len(rows) - 1 for rows in own_pairs))
    retriever = open_retriever(config, env, train, paths)
    for split, examples in splits.items():
        output = paths.bm25_memory(split)
        shards = shard_paths(output, env.world_size)
        shard = shard_range(len(examples), env.rank, env.world_size)
        write_shard(shards[env.rank], memory_lines(config, retriever, split, examples, shard, train, own_pairs,
                                                   env.is_main))
        barrier()

        def merge(split=split, examples=examples, output=output, shards=shards) -> None:
            merge_shards(shards, output, len(examples))
            if split != "train":
                log_top_memory_score(config, split, examples, output)

        on_main(merge)


def memory_lines(config: Config, retriever, split: str, examples: list[Example], rows: range, train: list[Example],
                 own_pairs: list[list[int]] | None, show_progress: bool) -> Iterator[tuple[int, str]]:
    """The memory-file lines of ``rows`` of ``split``, in order, a batch of queries at a time."""
    cfg = config.retrieval
    batches = range(rows.start, rows.stop, cfg.batch_size)
    for start in tqdm(batches, desc=f"bm25 {split}", unit="batch", disable=not show_progress):
        batch = range(start, min(start + cfg.batch_size, rows.stop))
        exclude = [own_pairs[i] for i in batch] if split == "train" and own_pairs is not None else None
        queries = [examples[i].source for i in batch]
        try:
            hits = retriever.search(queries, cfg.topk, exclude)
        except RuntimeError as e:
            if cfg.backend != "elasticsearch":
                raise
            # the server's failure names a query by its place in this batch: name the split's rows
            raise type(e)(f"retrieving {split} examples {batch.start} to {batch.stop - 1} (query i is example "
                          f"{batch.start} + i): {e}") from e
        for i, query, query_hits in zip(batch, queries, hits):
            yield i, json_line(memory_record(close_hits(query, query_hits, train, cfg.min_fuzzy_match), train))


def log_top_memory_score(config: Config, split: str, examples: list[Example], memory_file: Path) -> None:
    """Log the metric of each example's top memory against its reference, over the examples
    that have one."""
    top = {i: record["memories"][0] for i, (_, record) in enumerate(iter_records(memory_file)) if record["memories"]}
    if top:
        references = [examples[i].target for i in top]
        score = headline_score(config.data.metric, list(top.values()), references, config.data.bleu_tokenize)
        log.info("%s: top BM25 memory vs reference: %s %.2f on the %d of %d examples that have one",
                 split, config.data.metric, score, len(top), len(examples))


def initial_memory(config: Config, paths: RunPaths, split: str) -> Path:
    """Round 0's memory of ``split`` from its BM25 hits, in the memory-file format of later
    rounds: one input of the top ``generator.num_memories`` hits; for a top-B beam
    (``selector.mode: replace``, B > 1) one input per hit for the B best; for augmented
    memory a list that starts with the top hit and grows by a self-memory each round."""
    cfg = config.selector

    def inputs(hits: list[str]) -> list[list[str]]:
        if cfg.mode == "augment":
            return [hits[:1]]
        if cfg.beam > 1:
            return [[h] for h in hits[:cfg.beam]] or [[]]
        return [hits[:config.generator.num_memories]]

    output = paths.round_memory(0, split)
    on_main(lambda: atomic_write_jsonl(output, ({"memories": inputs(r["memories"])}
                                                for _, r in iter_records(paths.bm25_memory(split)))))
    return output


def bm25_hits(paths: RunPaths, split: str, num_examples: int, rows: list[int] | None = None) -> Iterator[list[str]]:
    """The ranked BM25 hits of each example of ``split`` (of the ascending ``rows`` only, where
    given) from the run's BM25 memory, one line per example, each checked."""
    if rows is not None and any(a >= b for a, b in zip(rows, rows[1:])):
        raise ValueError("the rows of the BM25 file are read in order: give them ascending, each once")
    path = paths.bm25_memory(split)
    if not path.exists():
        raise DataError(f"{path}: no BM25 memory for {split}; run launch/retrieve.py with this config first")
    kept = None if rows is None else set(rows)
    for i, (where, record) in enumerate(iter_aligned(path, num_examples, split)):
        if kept is None or i in kept:
            hits = field(where, record, "memories")
            if not is_texts(hits):
                raise DataError(f"{where}: \"memories\" must be a list of strings (the ranked BM25 hits), "
                                f"got {describe(hits)}")
            yield hits


def iter_retrieved(config: Config, paths: RunPaths, split: str, num_examples: int,
                   rows: list[int] | None = None) -> Iterator[list[str]]:
    """The top ``selector.mbr_retrieved_hits`` BM25 hits of each example of ``split`` (see
    ``bm25_hits``; fewer where retrieval kept fewer, at most ``retrieval.topk``): the
    retrieved memory, whatever memory a round decodes from."""
    for hits in bm25_hits(paths, split, num_examples, rows):
        yield hits[:config.selector.mbr_retrieved_hits]
