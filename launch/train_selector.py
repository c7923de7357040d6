"""Train the run's memory selector: torchrun ... launch/train_selector.py --config C [--round K] [k=v ...]"""

from selfmem.common.config import parse_args
from selfmem.common.distributed import close_distributed, init_distributed
from selfmem.common.run import start_run
from selfmem.train.selector import train_selector


def add_arguments(parser):
    parser.add_argument("--round", type=int, default=0, help="evaluate on round_K/candidates/dev.jsonl")


if __name__ == "__main__":
    config, args = parse_args(__doc__, add_arguments=add_arguments)
    env = init_distributed()
    train_selector(config, env, start_run(config, env), args.round)
    close_distributed()
