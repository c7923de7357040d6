"""Train the run's generator on the train split with its BM25 memory; the best model on dev is kept.

reads:   RUN/tokenizer/, data.dir/{train,dev}.jsonl, RUN/memory/bm25/{train,dev}.jsonl (not with
         generator.memory none), generator.init where set (RUN = run.root/run.name)
writes:  RUN/generator/: the best model on dev, train_log.jsonl and the checkpoint that the same
         command resumes from
example:
  torchrun --nproc_per_node 2 launch/train_generator.py --config configs/libreoffice_ende.yaml train.max_epochs=10
"""

from selfmem.common.entry import launch
from selfmem.train.generator import train_generator

if __name__ == "__main__":
    launch(__doc__, lambda config, env, paths, args: train_generator(config, env, paths))
