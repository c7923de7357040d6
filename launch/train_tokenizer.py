"""The run's tokenizer: SentencePiece trained on the train sources and targets (one joint
vocabulary), a trained spm.model reused from tokenizer.path, or a Hugging Face tokenizer (kind hf).

reads:   data.dir/train.jsonl, or tokenizer.path
writes:  RUN/tokenizer/ (RUN = run.root/run.name)
example:
  torchrun --nproc_per_node 2 launch/train_tokenizer.py --config configs/libreoffice_ende.yaml
"""

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
