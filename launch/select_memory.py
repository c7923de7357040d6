"""Choose a split's next memories with the run's selector: the top selector.beam of each example's
candidates (selector.mode replace), or its memory list with the top pick added (augment).

reads:   RUN/selector/, RUN/tokenizer/ (or selector.path), data.dir/SPLIT.jsonl, the candidates
         (--candidates; default RUN/round_K/candidates/SPLIT.jsonl) and, for MBR's retrieved memory,
         RUN/memory/bm25/SPLIT.jsonl (RUN = run.root/run.name); where its weight is null (chosen on
         dev), RUN/round_K/candidates/dev.jsonl and the dev split too
writes:  RUN/round_K/memory/SPLIT.jsonl (K: --round)
example:
  torchrun --nproc_per_node 2 launch/select_memory.py --config configs/libreoffice_ende.yaml --split dev --round 1
"""

# Not launch/select.py: a script there would shadow Python's own select module for every
# script in launch/.

from pathlib import Path

from selfmem.common.entry import launch
from selfmem.select.stage import select_memories


def add_arguments(parser):
    parser.add_argument("--split", required=True, choices=["train", "dev", "test"])
    parser.add_argument("--round", type=int, default=0, help="reads round_K/candidates, writes round_K/memory")
    parser.add_argument("--candidates", type=Path, help="candidates file (default: the round's)")


if __name__ == "__main__":
    launch(__doc__, lambda config, env, paths, args: select_memories(config, env, paths, args.split, args.round,
                                                                     args.candidates), add_arguments)
