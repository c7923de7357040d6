"""The run's tokenizer: torchrun --nproc_per_node G launch/train_tokenizer.py --config C [k=v ...]"""

import logging

from selfmem.common.config import parse_args
from selfmem.common.distributed import close_distributed, init_distributed
from selfmem.common.run import start_run
from selfmem.common.tokenizer import prepare_run_tokenizer

if __name__ == "__main__":
    config, _ = parse_args(__doc__)
    env = init_distributed()
    paths = start_run(config, env)
    tokenizer = prepare_run_tokenizer(config, paths.tokenizer)
    logging.getLogger("selfmem").info("tokenizer in %s: %d ids", paths.tokenizer, tokenizer.vocab_size)
    close_distributed()
