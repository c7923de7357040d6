"""Train the run's memory selector on the generator's candidates for a train subset
(selector.train_subset), evaluated on round 1's dev candidates (from round 0's memory).

reads:   RUN/tokenizer/, RUN/generator/, data.dir/{train,dev}.jsonl, RUN/memory/bm25/{train,dev}.jsonl,
         selector.path (selector.backbone hf) (RUN = run.root/run.name)
writes:  RUN/selector/ (the best on dev, train_log.jsonl, a checkpoint to resume from); first, where
         missing, the candidates RUN/selector_candidates/train.jsonl and RUN/round_1/candidates/dev.jsonl
With selector.kind trained only (the default, mbr, trains nothing).
example:
  torchrun --nproc_per_node 2 launch/train_selector.py --config configs/libreoffice_ende.yaml selector.kind=trained \
      selector.no_memory_weight=0
"""

from selfmem.common.entry import launch
from selfmem.train.selector import train_selector

if __name__ == "__main__":
    launch(__doc__, lambda config, env, paths, args: train_selector(config, env, paths))
