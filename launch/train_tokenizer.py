"""The run's tokenizer: SentencePiece trained on the train sources and targets (one joint
vocabulary), a trained spm.model reused from tokenizer.path, or a Hugging Face tokenizer (kind hf).

reads:   data.dir/train.jsonl, or tokenizer.path
writes:  RUN/tokenizer/ (RUN = run.root/run.name)
example:
  torchrun --nproc_per_node 2 launch/train_tokenizer.py --config configs/libreoffice_ende.yaml
"""

import logging

from selfmem.common.entry import launch
from selfmem.common.tokenizer import prepare_run_tokenizer


def train_tokenizer(config, env, paths, args) -> None:
    tokenizer = prepare_run_tokenizer(config, paths.tokenizer)
    logging.getLogger("selfmem").info("tokenizer in %s: %d ids", paths.tokenizer, tokenizer.vocab_size)


if __name__ == "__main__":
    launch(__doc__, train_tokenizer)
