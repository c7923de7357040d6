r"""The whole Selfmem loop in one job, resumable: the same command continues a stopped run.

reads:   data.dir/{train,dev,test}.jsonl; tokenizer.path, generator.init, lift.no_memory_init and
         selector.path where set
writes:  RUN = run.root/run.name (runs/NAME): config.yaml, state.json, tokenizer/, memory/bm25/, generator/,
         no_memory/ (lift.no_memory_baseline), selector_candidates/ and crossfit/ (selector.kind trained),
         selector/, round_K/{candidates,samples,no_memory_scores,memory,hyps}/ and round_K/metrics.jsonl,
         metrics.jsonl, report.md, lift.png (with matplotlib)
example:
  torchrun --standalone --nproc_per_node 2 launch/lift.py --config configs/demo.yaml
  torchrun --nnodes N --nproc_per_node G --rdzv_backend c10d --rdzv_endpoint HOST:PORT \
      launch/lift.py --config configs/jrc_ende.yaml   # on each of N nodes
  python launch/lift.py --config configs/jrc_ende.yaml --prepare-only   # tokenizer and BM25 memory only
"""

from selfmem.common.entry import launch
from selfmem.lift.pipeline import lift


def add_arguments(parser) -> None:
    """The lift's one flag."""
    parser.add_argument("--prepare-only", action="store_true",
                        help="the tokenizer and the BM25 memory only, then stop (e.g. on a CPU before a GPU run)")


if __name__ == "__main__":
    launch(__doc__, lambda config, env, paths, args: lift(config, env, paths, args.prepare_only), add_arguments)
