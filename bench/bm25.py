"""BM25 memory for a whole corpus: this project against rank_bm25, and the stage end to end.

    python bench/bm25.py [--config configs/libreoffice_ende.yaml] [--repeats 3] [--sample 100]
                         [--max-queries N] [--no-end-to-end] [key=value ...]

1. In one process, on the same queries (every train source, self excluded, plus dev and
   test): queries per second of this project's search, exhaustive (every posting scored,
   the kernel before dynamic pruning) and pruned (the default), checked to give identical
   hits, and of rank_bm25's BM25Okapi (on a seeded sample of train queries it can finish;
   its full time is extrapolated). --max-queries times our search on a seeded sample of the
   queries (each train query still excludes itself).
2. End to end: `launch/retrieve.py` in a fresh process, once as one process and once under
   torchrun with 2 processes, with an empty numba cache so JIT compilation is included:
   wall time and peak resident memory.
Medians of --repeats runs.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rank_bm25 import BM25Okapi

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from selfmem.common.config import load_config  # noqa: E402
from selfmem.common.data import SPLITS, load_split  # noqa: E402
from selfmem.retrieve.bm25 import NEVER, PRUNE_FROM, BM25Retriever, analyze  # noqa: E402


def rank_bm25_top_k(index: BM25Okapi, query: str, topk: int, exclude: list[int]) -> list[int]:
    scores = index.get_scores(analyze(query))
    scores[exclude] = -np.inf
    return np.argsort(-scores, kind="stable")[:topk].tolist()


def time_in_process(config, sample: int, repeats: int, max_queries: int | None) -> None:
    splits = {split: load_split(config.data, split) for split in SPLITS}
    documents = [ex.source for ex in splits["train"]]
    queries = [ex.source for split in SPLITS for ex in splits[split]]
    exclude = [[i] for i in range(len(documents))] + [[]] * (len(queries) - len(documents))
    topk = config.retrieval.topk

    ours = BM25Retriever.build(documents, config.retrieval.k1, config.retrieval.b)
    ours.search(queries[:10], topk, exclude[:10])  # JIT compilation, timed in part 2
    timed = sorted(random.Random(0).sample(range(len(queries)), min(max_queries or len(queries), len(queries))))
    timed_queries, timed_exclude = [queries[i] for i in timed], [exclude[i] for i in timed]
    times, hits = {"exhaustive": [], "pruned": []}, {}
    for _ in range(repeats):  # alternated, so that a change in the machine's load falls on both
        for name, prune_from in (("exhaustive", NEVER), ("pruned", PRUNE_FROM)):
            ours.prune_from = prune_from
            start = time.perf_counter()
            hits[name] = ours.search(timed_queries, topk, timed_exclude)
            times[name].append(time.perf_counter() - start)
    qps = {name: len(timed) / statistics.median(runs) for name, runs in times.items()}
    speedup = statistics.median(e / p for e, p in zip(times["exhaustive"], times["pruned"]))
    ours_qps = qps["pruned"]

    picked = sorted(random.Random(0).sample(range(len(documents)), sample))
    baseline = BM25Okapi([analyze(d) for d in documents], k1=config.retrieval.k1, b=config.retrieval.b)
    base_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in picked:
            rank_bm25_top_k(baseline, queries[i], topk, exclude[i])
        base_times.append(time.perf_counter() - start)
    base_qps = sample / statistics.median(base_times)

    print(f"corpus: {len(documents)} train documents; {len(queries)} queries (train, self excluded, + dev + test)"
          + (f"; our search timed on {len(timed)} of them (seeded sample)" if len(timed) < len(queries) else ""))
    for name in ("exhaustive", "pruned"):
        print(f"selfmem {name + ':':11s} {qps[name]:10.1f} queries/s  (all {len(queries)} queries: "
              f"{len(queries) / qps[name]:.2f} s)")
    print(f"pruned/exhaustive: {speedup:9.2f}x  (the median of the alternated repeats' ratios; identical ids, "
          f"scores and order: "
          f"{'yes' if hits['pruned'] == hits['exhaustive'] else 'NO'})")
    print(f"rank_bm25:        {base_qps:10.1f} queries/s  (on {sample} sampled train queries; "
          f"all queries extrapolated: {len(queries) / base_qps / 60:.1f} min)")
    print(f"ratio (pruned):   {ours_qps / base_qps:10.1f}x")


def time_end_to_end(config_path: str, overrides: list[str], nproc: int, repeats: int) -> None:
    walls, peaks = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, NUMBA_CACHE_DIR=str(Path(tmp) / "numba-cache"), PYTHONPATH=str(REPO))
            launch = [sys.executable, "launch/retrieve.py"]
            if nproc > 1:
                launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                          str(nproc), "launch/retrieve.py"]
            cmd = [*launch, "--config", config_path, *overrides, f"run.root={tmp}"]
            start = time.perf_counter()
            subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            walls.append(time.perf_counter() - start)
        # ru_maxrss of the largest child so far (kB on Linux); each run's processes are alike
        peaks.append(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    label = "1 process" if nproc == 1 else f"torchrun, {nproc} processes"
    print(f"end to end, {label:22s} {statistics.median(walls):6.1f} s wall (runs: "
          f"{', '.join(f'{w:.1f}' for w in walls)}), peak RSS per process {max(peaks):.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/libreoffice_ende.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sample", type=int, default=100, help="train queries timed with rank_bm25")
    parser.add_argument("--max-queries", type=int, default=None, help="time our search on a seeded sample of queries")
    parser.add_argument("--end-to-end", action=argparse.BooleanOptionalAction, default=True,
                        help="also time launch/retrieve.py in fresh processes (part 2)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. data.dir=/data/debian_sum")
    args = parser.parse_intermixed_args()
    config = load_config(REPO / args.config if not Path(args.config).is_absolute() else args.config, args.overrides)
    config.data.dir = str((REPO / config.data.dir).resolve()) if not Path(config.data.dir).is_absolute() else config.data.dir
    print(f"machine: {os.cpu_count()} CPU cores; data: {config.data.dir}")
    time_in_process(config, args.sample, args.repeats, args.max_queries)
    if args.end_to_end:
        absolute = str((REPO / args.config).resolve())
        for nproc in (1, 2):
            time_end_to_end(absolute, args.overrides, nproc, args.repeats)


if __name__ == "__main__":
    main()
