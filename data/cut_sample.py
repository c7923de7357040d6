"""Cut a small, seeded sample of a corpus in ../shared/data into a folder of this repo.

    python data/cut_sample.py ../shared/data/libreoffice_ende data/demo --train 4000 --dev 300 --test 300 --neighbours --resplit

Lines are sampled without replacement and kept in their original order. With
--neighbours, the train sample first takes, for every sampled dev and test example, the
full train set's best BM25 match of its source (the memory retrieval would find), then
pairs random train examples with their own best match in the full train set (self
excluded), and fills up at random: a small corpus whose train, dev and test memories are
about as good as the full corpus' (a random sample would leave most train examples
without a near neighbour, and a model trained on it learns to ignore its memory).

With --resplit, the corpus' train, dev and test are first pooled and split again at random
into parts of the same sizes, by sentence, as the paper's JRC-Acquis is: near-duplicate
paragraphs of one document then fall on both sides, as they do when a translation memory
serves a revised document (the LibreOffice corpus itself is split by help page, which keeps
most close matches of dev and test out of train).
"""

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def sample(lines: list[str], n: int, seed: str, keep: set[int] = frozenset()) -> list[int]:
    rest = sorted(set(range(len(lines))) - set(keep))
    return sorted(set(keep) | set(random.Random(seed).sample(rest, n - len(keep))))


def resplit(lines: dict[str, list[str]], seed: int) -> dict[str, list[str]]:
    """The pooled lines of all splits, shuffled and cut again into splits of the same sizes."""
    pool = [line for split in ("train", "dev", "test") for line in lines[split]]
    order = random.Random(f"{seed}-resplit").sample(range(len(pool)), len(pool))
    parts, start = {}, 0
    for split in ("dev", "test", "train"):
        parts[split] = [pool[i] for i in sorted(order[start:start + len(lines[split])])]
        start += len(lines[split])
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--neighbours", action="store_true", help="keep the BM25 neighbours of dev and test")
    parser.add_argument("--resplit", action="store_true", help="split the pooled corpus again at random first")
    parser.add_argument("--source-field", default="src")
    for split, default in (("train", 4000), ("dev", 300), ("test", 300)):
        parser.add_argument(f"--{split}", type=int, default=default)
    args = parser.parse_args()
    args.target.mkdir(parents=True, exist_ok=True)
    lines = {s: (args.source / f"{s}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
             for s in ("train", "dev", "test")}
    if args.resplit:
        lines = resplit(lines, args.seed)
    picked = {s: sample(lines[s], getattr(args, s), f"{args.seed}-{s}") for s in ("dev", "test")}
    keep: set[int] = set()
    if args.neighbours:
        from selfmem.retrieve.bm25 import BM25Retriever

        def sources(split, rows):
            return [json.loads(lines[split][i])[args.source_field] for i in rows]

        train_rows = range(len(lines["train"]))
        retriever = BM25Retriever.build(sources("train", train_rows))
        for split in ("dev", "test"):
            keep |= {hits[0][0] for hits in retriever.search(sources(split, picked[split]), topk=1) if hits}
        seeds = random.Random(f"{args.seed}-pairs").sample(sorted(set(train_rows) - keep), args.train // 2)
        for seed, hits in zip(seeds, retriever.search(sources("train", seeds), topk=1, exclude=seeds)):
            if len(keep) + 2 > args.train:
                break
            keep |= {seed, hits[0][0]} if hits else {seed}
    picked["train"] = sample(lines["train"], args.train, f"{args.seed}-train", keep)
    for split, rows in picked.items():
        (args.target / f"{split}.jsonl").write_text("".join(lines[split][i] for i in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
