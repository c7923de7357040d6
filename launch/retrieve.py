"""BM25 memory for train, dev and test: torchrun --nproc_per_node G launch/retrieve.py --config C [k=v ...]"""

from selfmem.common.config import parse_args
from selfmem.common.distributed import close_distributed, init_distributed
from selfmem.common.run import start_run
from selfmem.retrieve.memory import build_bm25_memory

if __name__ == "__main__":
    config, _ = parse_args(__doc__)
    env = init_distributed()
    build_bm25_memory(config, env, start_run(config, env))
    close_distributed()
