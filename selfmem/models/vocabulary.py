"""A trained model and the tokenizer it is used with: the same vocabulary, or refused.

A tokenizer other than the one a model was trained with maps text to ids the model learned
for other pieces, and decoding then gives garbage without any error (a 1,000-piece tokenizer
read by a 4,000-piece generator decodes "esenoooooo...").
"""

from __future__ import annotations

from selfmem.common.records import CheckpointError
from selfmem.models.config import ModelConfig

SPECIAL_TOKENS = ("pad", "bos", "eos", "sep")


def check_tokenizer(tokenizer, vocab_size: int, special_ids: dict[str, int | None], what: str,
                    padded: bool = False) -> None:
    """Refuse ``tokenizer`` for a model (``what``, for the message) with ``vocab_size`` token
    embeddings and the special ids ``special_ids`` (a name of ``SPECIAL_TOKENS`` -> id; None:
    the model does not fix it): another size or another special id is an error. ``padded``: a
    Hugging Face embedding table may hold rows no token uses, so only a larger tokenizer is
    refused."""
    size = tokenizer.vocab_size
    problems = []
    if size > vocab_size or (size < vocab_size and not padded):
        problems.append(f"{size} pieces for the model's {vocab_size}")
    for name, model_id in special_ids.items():
        ours = getattr(tokenizer, f"{name}_id")
        if model_id is not None and ours != model_id:
            problems.append(f"{name} id {ours} for the model's {model_id}")
    if problems:
        raise CheckpointError(f"{what}: the tokenizer does not match the model ({'; '.join(problems)}), so decoding "
                         f"would give garbage: use the tokenizer the model was trained with")


def check_native_tokenizer(tokenizer, config: ModelConfig, what: str) -> None:
    """``check_tokenizer`` for a native model: the vocabulary and special ids of its ``config``."""
    check_tokenizer(tokenizer, config.vocab_size, {name: getattr(config, f"{name}_id") for name in SPECIAL_TOKENS},
                    what)
