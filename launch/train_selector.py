"""Train the run's memory selector: torchrun ... launch/train_selector.py --config C [k=v ...]

It learns from the generator's candidates for a train subset and is evaluated on round 1's
dev candidates (round 0's memory); both are generated first where missing."""

from selfmem.common.config import parse_args
from selfmem.common.distributed import close_distributed, init_distributed
from selfmem.common.run import start_run
from selfmem.train.selector import train_selector

if __name__ == "__main__":
    config, _ = parse_args(__doc__)
    env = init_distributed()
    train_selector(config, env, start_run(config, env))
    close_distributed()
