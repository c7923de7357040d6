"""BM25 memory: the top retrieval.topk train targets for every train, dev and test source.

reads:   data.dir/{train,dev,test}.jsonl (retrieval.backend elasticsearch: SELFMEM_ES_URL and credentials)
writes:  RUN/memory/bm25/{train,dev,test}.jsonl and the bm25s index RUN/memory/bm25/index/
         (RUN = run.root/run.name)
example:
  torchrun --nproc_per_node 2 launch/retrieve.py --config configs/demo.yaml retrieval.topk=4
"""

from selfmem.common.config import parse_args
from selfmem.common.distributed import close_distributed, init_distributed
from selfmem.common.run import start_run
from selfmem.retrieve.memory import build_bm25_memory

if __name__ == "__main__":
    config, _ = parse_args(__doc__)
    env = init_distributed()
    build_bm25_memory(config, env, start_run(config, env))
    close_distributed()
