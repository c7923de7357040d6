"""Train the run's generator: torchrun --nnodes N --nproc_per_node G launch/train_generator.py --config C [k=v ...]"""

from selfmem.common.config import parse_args
from selfmem.common.distributed import close_distributed, init_distributed
from selfmem.common.run import start_run
from selfmem.train.generator import train_generator

if __name__ == "__main__":
    config, _ = parse_args(__doc__)
    env = init_distributed()
    train_generator(config, env, start_run(config, env))
    close_distributed()
