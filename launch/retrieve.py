"""BM25 memory: the top retrieval.topk train targets for every train, dev and test source.

reads:   data.dir/{train,dev,test}.jsonl (retrieval.backend elasticsearch: SELFMEM_ES_URL and credentials)
writes:  RUN/memory/bm25/{train,dev,test}.jsonl and the bm25s index RUN/memory/bm25/index/
         (RUN = run.root/run.name)
example:
  torchrun --nproc_per_node 2 launch/retrieve.py --config configs/demo.yaml retrieval.topk=4
"""

from selfmem.common.entry import launch
from selfmem.retrieve.memory import build_bm25_memory

if __name__ == "__main__":
    launch(__doc__, lambda config, env, paths, args: build_bm25_memory(config, env, paths))
