"""Cut a small, seeded sample of a corpus in ../shared/data into a folder of this repo.

    python data/cut_sample.py ../shared/data/libreoffice_ende data/demo --train 4000 --dev 300 --test 300

Lines are sampled without replacement and kept in their original order.
"""

import argparse
import random
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    for split, default in (("train", 4000), ("dev", 300), ("test", 300)):
        parser.add_argument(f"--{split}", type=int, default=default)
    args = parser.parse_args()
    args.target.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        lines = (args.source / f"{split}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        keep = sorted(random.Random(f"{args.seed}-{split}").sample(range(len(lines)), getattr(args, split)))
        (args.target / f"{split}.jsonl").write_text("".join(lines[i] for i in keep), encoding="utf-8")


if __name__ == "__main__":
    main()
