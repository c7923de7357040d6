"""The whole Selfmem loop in one job, resumable: the same command continues a stopped run.

torchrun --nnodes N --nproc_per_node G launch/lift.py --config configs/X.yaml [k=v ...]
"""

from selfmem.common.config import parse_args
from selfmem.common.distributed import close_distributed, init_distributed
from selfmem.common.run import start_run
from selfmem.lift.pipeline import lift

if __name__ == "__main__":
    config, _ = parse_args(__doc__)
    env = init_distributed()
    lift(config, env, start_run(config, env))
    close_distributed()
