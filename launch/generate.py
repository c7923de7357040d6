r"""Decode a split with the run's generator: --mode candidates (candidates.num_beams beams,
candidates.num_return kept, for every memory), samples (candidates.num_samples epsilon samples
for every memory, MBR's pseudo-references) or hypotheses (the best of
candidates.hypothesis_beams beams, with the top memory).

reads:   RUN/tokenizer/, RUN/generator/, data.dir/SPLIT.jsonl and the memory (--memory; default
         RUN/memory/bm25/SPLIT.jsonl) (RUN = run.root/run.name)
writes:  RUN/round_K/candidates/SPLIT.jsonl, RUN/round_K/samples/SPLIT.jsonl or
         RUN/round_K/hyps/SPLIT.txt (K: --round)
example:
  torchrun --nproc_per_node 2 launch/generate.py --config configs/libreoffice_ende.yaml --split test \
      --mode hypotheses --memory runs/libreoffice_ende/round_1/memory/test.jsonl --round 1
"""

from pathlib import Path

from selfmem.common.entry import launch
from selfmem.infer.generate import MODES, generate


def add_arguments(parser):
    parser.add_argument("--split", required=True, choices=["train", "dev", "test"])
    parser.add_argument("--mode", required=True, choices=MODES)
    parser.add_argument("--memory", type=Path, help="memory file (default: the run's BM25 memory of the split)")
    parser.add_argument("--round", type=int, default=0, help="the output goes to runs/NAME/round_K/")


if __name__ == "__main__":
    launch(__doc__, lambda config, env, paths, args: generate(config, env, paths, args.split, args.mode, args.memory,
                                                              args.round), add_arguments)
