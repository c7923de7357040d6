"""Tokenizers: one interface over a trained SentencePiece model and a Hugging Face tokenizer.

``encode`` never adds special tokens (the model code places bos/eos/sep itself) and
``decode`` drops pad, bos, eos and sep. ``sep_id`` separates the source from its memory
and one memory from the next.

SentencePiece round trip
------------------------
The model is trained with identity normalisation (no NFKC), ``remove_extra_whitespaces``
off and byte fallback, so ``decode(encode(text)) == text`` for any text, including
repeated, leading and trailing spaces, tabs, characters never seen in training and
newlines. A newline is not whitespace to SentencePiece (only ``" "`` becomes the meta
symbol ``"▁"``): it is an ordinary character, a learned piece when the training texts
contain newlines (summarization documents separate paragraphs with ``"\\n"``) and byte
``<0x0A>`` otherwise, so it needs no placeholder. The only exceptions:

* U+2581 ``"▁"`` itself, SentencePiece's whitespace meta symbol, decodes as a space;
* the literal text ``"<sep>"`` encodes as the separator id, which ``decode`` drops.
"""

from __future__ import annotations

import io
import random
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from selfmem.common.config import Config, TokenizerConfig
from selfmem.common.data import iter_split
from selfmem.common.distributed import on_main
from selfmem.common.io import atomic_directory, atomic_open

SPM_FILE = "spm.model"
HF_CONFIG_FILE = "tokenizer_config.json"
SEP_PIECE = "<sep>"

# Unigram training splits its EM work into one shard per thread, so the model bytes
# depend on the thread count: a constant (not the machine's core count) keeps training
# reproducible across machines.
_TRAIN_THREADS = 4
# Summarization documents run to several thousand bytes; SentencePiece silently leaves
# sentences longer than its default (4192 bytes) out of training.
_MAX_SENTENCE_BYTES = 1 << 16


class Tokenizer(ABC):
    """Text <-> ids, with the special ids the models need."""

    pad_id: int
    bos_id: int
    eos_id: int
    sep_id: int

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, without special tokens."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, skipping pad, bos, eos and sep."""

    @abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write the tokenizer into ``directory`` so that ``load_tokenizer`` reads it back."""


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model with pad 0, bos 1, eos 2, unk 3 and ``<sep>`` 4."""

    def __init__(self, model_proto: bytes, origin: str = "the model") -> None:
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        except RuntimeError as e:  # sentencepiece's own message names no file
            raise ValueError(f"{origin} is not a SentencePiece model ({' '.join(str(e).split())})") from None
        self.pad_id = self._sp.pad_id()
        self.bos_id = self._sp.bos_id()
        self.eos_id = self._sp.eos_id()
        self.sep_id = self._sp.piece_to_id(SEP_PIECE)
        if min(self.pad_id, self.bos_id, self.eos_id) < 0 or self.sep_id == self._sp.unk_id():
            raise ValueError(
                f"{origin} is not a selfmem SentencePiece model: it needs pad, bos and eos ids "
                f"and a {SEP_PIECE} piece (got pad={self.pad_id}, bos={self.bos_id}, "
                f"eos={self.eos_id}, {SEP_PIECE}={self.sep_id})"
            )
        self._skip = {self.pad_id, self.bos_id, self.eos_id, self.sep_id}

    @classmethod
    def train(
        cls, texts: Iterable[str], config: TokenizerConfig, seed: int
    ) -> SentencePieceTokenizer:
        """Train a joint vocabulary on at most ``config.max_sentences`` texts sampled by ``seed``."""
        if config.max_sentences < 1:
            raise ValueError(
                f"tokenizer.max_sentences must be at least 1, got {config.max_sentences}"
            )
        sample = _reservoir_sample((t for t in texts if t), config.max_sentences, seed)
        if not sample:
            raise ValueError("no non-empty texts to train the SentencePiece tokenizer on")
        model = io.BytesIO()
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sample),
                model_writer=model,
                vocab_size=config.vocab_size,
                # A small corpus has fewer pieces than a vocab_size meant for a large one.
                hard_vocab_limit=False,
                model_type=config.model_type,
                character_coverage=config.character_coverage,
                pad_id=0,
                bos_id=1,
                eos_id=2,
                unk_id=3,
                user_defined_symbols=[SEP_PIECE],
                byte_fallback=True,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                max_sentence_length=_MAX_SENTENCE_BYTES,
                num_threads=_TRAIN_THREADS,
                minloglevel=2,
            )
        except RuntimeError as e:
            raise ValueError(
                f"SentencePiece training failed (tokenizer.vocab_size={config.vocab_size}, "
                f"tokenizer.model_type={config.model_type}, {len(sample)} texts): {e}"
            ) from e
        return cls(model.getvalue(), origin="the trained model")

    @classmethod
    def load(cls, directory: str | Path) -> SentencePieceTokenizer:
        """Read ``spm.model`` from ``directory``."""
        path = Path(directory) / SPM_FILE
        return cls(path.read_bytes(), origin=str(path))

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def decode(self, ids: Sequence[int]) -> str:
        # int() accepts numpy and torch scalars, which the SentencePiece binding rejects.
        return self._sp.decode([int(i) for i in ids if int(i) not in self._skip])

    def save(self, directory: str | Path) -> None:
        with atomic_open(Path(directory) / SPM_FILE, "wb") as f:
            f.write(self._sp.serialized_model_proto())


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer read from a local checkpoint directory.

    ``sep_id`` is the tokenizer's sep token, else its eos token (BART/T5/Marian-style
    models separate segments with eos). ``bos_id`` is its bos token, else its pad token:
    Marian and T5 have no bos and start decoding from pad (their decoder start id).
    ``decode`` follows the Hugging Face convention ``skip_special_tokens=True``, which
    drops every special token (also unk, mask and language codes), not only pad, bos,
    eos and sep.
    """

    def __init__(self, path: str | Path) -> None:
        # transformers takes seconds to import; SentencePiece-only runs never need it.
        from transformers import AutoTokenizer

        if not Path(path).is_dir():
            raise ValueError(f"Hugging Face tokenizer directory {path} does not exist")
        self.path = str(path)
        self._tok = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        # encoder tokenizers (BERT's, for the selector) close a segment with sep, not eos
        eos = self._tok.eos_token_id if self._tok.eos_token_id is not None else self._tok.sep_token_id
        missing = [name for name, value in (("pad", self._tok.pad_token_id), ("eos (or sep)", eos)) if value is None]
        if missing:
            raise ValueError(
                f"Hugging Face tokenizer in {self.path} has no {' or '.join(missing)} token"
            )
        self.pad_id = self._tok.pad_token_id
        self.eos_id = eos
        self.bos_id = self._tok.bos_token_id if self._tok.bos_token_id is not None else self.pad_id
        self.sep_id = self._tok.sep_token_id if self._tok.sep_token_id is not None else self.eos_id

    @property
    def hf(self):
        """The underlying transformers tokenizer (its pair format, special tokens)."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        # len() counts added tokens, which tokenizer.vocab_size leaves out.
        return len(self._tok)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, directory: str | Path) -> None:
        with atomic_directory(directory) as staging:  # its several files as one unit
            self._tok.save_pretrained(str(staging))


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load the tokenizer saved in ``directory``: ``spm.model`` or a Hugging Face checkpoint."""
    directory = Path(directory)
    if (directory / SPM_FILE).is_file():
        return SentencePieceTokenizer.load(directory)
    if (directory / HF_CONFIG_FILE).is_file():
        return HFTokenizer(directory)
    raise ValueError(
        f"no tokenizer in {directory}: expected {SPM_FILE} (SentencePiece) "
        f"or {HF_CONFIG_FILE} (Hugging Face)"
    )


def build_tokenizer(config: TokenizerConfig, texts: Iterable[str], seed: int) -> Tokenizer:
    """Train SentencePiece on ``texts`` (or reuse the model trained before in ``config.path``),
    or load the Hugging Face tokenizer at ``config.path``."""
    if config.kind == "sentencepiece" and config.path:
        return _trained_sentencepiece(config)
    if config.kind == "sentencepiece":
        return SentencePieceTokenizer.train(texts, config, seed)
    if config.kind == "hf":
        if not config.path:
            raise ValueError(
                "tokenizer.kind is 'hf' but tokenizer.path (the checkpoint directory) is not set"
            )
        return HFTokenizer(config.path)
    raise ValueError(f"tokenizer.kind must be 'sentencepiece' or 'hf', got {config.kind!r}")


def _trained_sentencepiece(config: TokenizerConfig) -> SentencePieceTokenizer:
    """The SentencePiece model in ``config.path``, refused when its size is not ``vocab_size``:
    a model trained on it (the shipped demo checkpoints, say) must see the same ids."""
    if not (Path(config.path) / SPM_FILE).is_file():
        raise FileNotFoundError(f"tokenizer.path {config.path}: no {SPM_FILE} (a SentencePiece model "
                                "trained before, e.g. a run's tokenizer/ directory)")
    tokenizer = SentencePieceTokenizer.load(config.path)
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"tokenizer.path {config.path}: its SentencePiece model has {tokenizer.vocab_size} "
                         f"pieces, but tokenizer.vocab_size is {config.vocab_size}")
    return tokenizer


def _reservoir_sample(items: Iterable[str], k: int, seed: int) -> list[str]:
    """At most ``k`` items, uniformly and reproducibly chosen, holding only ``k`` in memory.

    With ``k`` or fewer items, all of them in their order.
    """
    rng = random.Random(seed)
    sample: list[str] = []
    for n, item in enumerate(items):
        if n < k:
            sample.append(item)
        else:
            j = rng.randrange(n + 1)
            if j < k:
                sample[j] = item
    return sample


def prepare_run_tokenizer(config: Config, tokenizer_dir: Path) -> Tokenizer:
    """The tokenizer stage: rank 0 trains (or copies) the run's tokenizer, every rank loads it.

    SentencePiece trains one joint vocabulary on the train sources and targets.
    """
    def train_and_save() -> None:
        # streamed into a reservoir sample of tokenizer.max_sentences texts: never the whole split
        texts = (text for ex in iter_split(config.data, "train") for text in (ex.source, ex.target))
        build_tokenizer(config.tokenizer, texts, config.run.seed).save(tokenizer_dir)

    on_main(train_and_save)
    return load_tokenizer(tokenizer_dir)
