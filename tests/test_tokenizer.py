"""Tokenizers: SentencePiece training and round trip, Hugging Face wrapping, loading."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import sentencepiece as spm

from selfmem.common.config import TokenizerConfig
from selfmem.common.tokenizer import (
    HFTokenizer,
    SentencePieceTokenizer,
    build_tokenizer,
    load_tokenizer,
)

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "data" / "demo"
DEBIAN = Path(__file__).resolve().parent / "fixtures" / "debian_sum"
SEED = 1234


def read_fields(path: Path, *fields: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    return [record[name] for record in records for name in fields]


@pytest.fixture(scope="module")
def demo_train() -> list[str]:
    return read_fields(DEMO / "train.jsonl", "src", "trg")


@pytest.fixture(scope="module")
def spm_config() -> TokenizerConfig:
    return TokenizerConfig(kind="sentencepiece", vocab_size=2000)


@pytest.fixture(scope="module")
def spm_tok(demo_train, spm_config) -> SentencePieceTokenizer:
    return SentencePieceTokenizer.train(demo_train, spm_config, SEED)


# --- SentencePiece -------------------------------------------------------------------


def test_special_ids_and_vocab(spm_tok):
    assert (spm_tok.pad_id, spm_tok.bos_id, spm_tok.eos_id, spm_tok.sep_id) == (0, 1, 2, 4)
    assert spm_tok.vocab_size == 2000
    # <sep> is one reserved piece, also when it appears inside text.
    assert spm_tok.encode("a<sep>b").count(4) == 1
    assert spm_tok.encode("<sep>")[-1] == 4


@pytest.mark.parametrize("split", ["dev", "test"])
def test_round_trip_demo(spm_tok, split):
    texts = read_fields(DEMO / f"{split}.jsonl", "src", "trg")
    assert len(texts) == 600
    for text in texts:
        assert spm_tok.decode(spm_tok.encode(text)) == text


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_round_trip_debian_documents_with_newlines(spm_tok, split):
    # Trained without any newline, so "\n" goes through byte fallback and must come back.
    texts = read_fields(DEBIAN / f"{split}.jsonl", "document", "summary")
    assert any("\n" in text for text in texts)
    for text in texts:
        assert spm_tok.decode(spm_tok.encode(text)) == text


def test_newlines_learned_from_documents_round_trip():
    # The summarization case: newlines in the training texts become ordinary pieces.
    train = read_fields(DEBIAN / "train.jsonl", "document", "summary")
    tok = SentencePieceTokenizer.train(train, TokenizerConfig(vocab_size=1000), SEED)
    texts = read_fields(DEBIAN / "dev.jsonl", "document", "summary")
    texts += read_fields(DEBIAN / "test.jsonl", "document", "summary")
    for text in texts:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("first paragraph.\nSecond") != tok.encode("first paragraph. Second")
    assert tok.decode(tok.encode("\n\nend\n")) == "\n\nend\n"


def test_documented_normalisation(spm_tok):
    # Whitespace is kept as it is: no collapsing, no stripping, no NFKC.
    for text in ["  two  spaces  ", "tab\tand\r\nCRLF", "\nleading newline", "ﬁ ligature ½", ""]:
        assert spm_tok.decode(spm_tok.encode(text)) == text
    # The two documented exceptions: the meta symbol U+2581 decodes as a space, and a
    # literal "<sep>" encodes as the separator, which decode drops.
    assert spm_tok.decode(spm_tok.encode("a\u2581b")) == "a b"
    assert spm_tok.decode(spm_tok.encode("a <sep> b")) == "a  b"


def test_unseen_characters_use_byte_fallback(spm_tok):
    text = "Ωμέγα 🙂"
    ids = spm_tok.encode(text)
    assert 3 not in ids  # no <unk>
    assert spm_tok.decode(ids) == text


def test_decode_skips_special_ids(spm_tok):
    source, memory = "Click OK.", "Klicken Sie auf OK."
    ids = [1, *spm_tok.encode(source), 4, *spm_tok.encode(memory), 2, 0, 0]
    assert spm_tok.decode(ids) == f"{source} {memory}"


def test_save_and_load(spm_tok, tmp_path):
    spm_tok.save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["spm.model"]  # no temporary left over
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, SentencePieceTokenizer)
    assert (loaded.pad_id, loaded.bos_id, loaded.eos_id, loaded.sep_id) == (0, 1, 2, 4)
    assert loaded.vocab_size == spm_tok.vocab_size
    for text in read_fields(DEMO / "dev.jsonl", "src", "trg"):
        assert loaded.encode(text) == spm_tok.encode(text)


def test_training_is_deterministic(spm_tok, demo_train, spm_config, tmp_path):
    again = build_tokenizer(spm_config, iter(demo_train), SEED)
    spm_tok.save(tmp_path / "a")
    again.save(tmp_path / "b")
    first = (tmp_path / "a" / "spm.model").read_bytes()
    assert first == (tmp_path / "b" / "spm.model").read_bytes()


def test_a_trained_sentencepiece_model_is_reused_from_tokenizer_path(spm_tok, spm_config, tmp_path):
    spm_tok.save(tmp_path / "shipped")
    reuse = TokenizerConfig(kind="sentencepiece", vocab_size=spm_config.vocab_size, path=str(tmp_path / "shipped"))
    build_tokenizer(reuse, iter(()), SEED).save(tmp_path / "run")  # no texts: nothing is trained
    assert (tmp_path / "run" / "spm.model").read_bytes() == (tmp_path / "shipped" / "spm.model").read_bytes()
    other_size = TokenizerConfig(kind="sentencepiece", vocab_size=3000, path=str(tmp_path / "shipped"))
    with pytest.raises(ValueError, match=f"its SentencePiece model has {spm_tok.vocab_size} pieces, "
                                         "but tokenizer.vocab_size is 3000"):
        build_tokenizer(other_size, iter(()), SEED)
    missing = TokenizerConfig(kind="sentencepiece", vocab_size=2000, path=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"tokenizer.path {tmp_path}: no spm.model"):
        build_tokenizer(missing, iter(()), SEED)


def test_max_sentences_samples_with_seed(demo_train, tmp_path):
    config = TokenizerConfig(vocab_size=8000, max_sentences=200)
    models = {}
    for name, seed in [("a", 1), ("b", 1), ("c", 2)]:
        tok = SentencePieceTokenizer.train(demo_train, config, seed)
        # 200 texts cannot fill 8000 pieces; hard_vocab_limit=False keeps that from failing.
        assert 261 < tok.vocab_size < 2000
        tok.save(tmp_path / name)
        models[name] = (tmp_path / name / "spm.model").read_bytes()
    assert models["a"] == models["b"]
    assert models["a"] != models["c"]


def test_training_errors(demo_train):
    with pytest.raises(ValueError, match=r"tokenizer\.max_sentences"):
        SentencePieceTokenizer.train(demo_train, TokenizerConfig(max_sentences=0), SEED)
    with pytest.raises(ValueError, match="no non-empty texts"):
        SentencePieceTokenizer.train(["", ""], TokenizerConfig(), SEED)
    with pytest.raises(ValueError, match=r"tokenizer\.vocab_size=100"):
        SentencePieceTokenizer.train(demo_train, TokenizerConfig(vocab_size=100), SEED)


def test_load_rejects_foreign_sentencepiece_model(tmp_path):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["a small corpus", "of three", "sentences"]),
        model_writer=model,
        vocab_size=20,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (tmp_path / "spm.model").write_bytes(model.getvalue())
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "spm.model")) + ".*<sep>"):
        load_tokenizer(tmp_path)
    (tmp_path / "spm.model").write_bytes(model.getvalue()[:100])  # a torn copy
    with pytest.raises(ValueError, match="^" + re.escape(f"{tmp_path / 'spm.model'} is not a SentencePiece model (")):
        load_tokenizer(tmp_path)


# --- Hugging Face --------------------------------------------------------------------

HF_TEXTS = ["the cat sat on the mat", "a dog sat on a log", "Der Hund saß auf dem Baumstamm."]


def make_hf_tokenizer(directory: Path, specials: dict[str, str]):
    """A tiny byte-level BPE tokenizer saved as a Hugging Face checkpoint; returns it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=list(specials.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(HF_TEXTS, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **specials)
    tok.save_pretrained(str(directory))
    return tok


ALL_SPECIALS = {
    "pad_token": "<pad>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "sep_token": "<sep>",
}


def test_hf_tokenizer_matches_underlying(tmp_path):
    reference = make_hf_tokenizer(tmp_path, ALL_SPECIALS)
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, HFTokenizer)
    # Special tokens take ids in the order they were given to the trainer.
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.sep_id) == (0, 1, 2, 4)
    assert tok.vocab_size == len(reference)
    texts = HF_TEXTS + ["unseen Ωμέγα 🙂"] + read_fields(DEMO / "dev.jsonl", "src")[:20]
    for text in texts:
        ids = tok.encode(text)
        assert ids == reference.encode(text, add_special_tokens=False)
        assert tok.pad_id not in ids and tok.eos_id not in ids
        assert tok.decode(ids) == reference.decode(ids, skip_special_tokens=True) == text
    ids = [1, *tok.encode("the cat"), 4, *tok.encode(" sat"), 2, 0]
    assert tok.decode(ids) == "the cat sat"


def test_hf_save_and_build(tmp_path):
    make_hf_tokenizer(tmp_path / "ckpt", ALL_SPECIALS)
    config = TokenizerConfig(kind="hf", path=str(tmp_path / "ckpt"))
    tok = build_tokenizer(config, iter(()), SEED)
    assert isinstance(tok, HFTokenizer)
    tok.save(tmp_path / "saved")
    loaded = load_tokenizer(tmp_path / "saved")
    assert isinstance(loaded, HFTokenizer)
    assert (loaded.pad_id, loaded.bos_id, loaded.eos_id, loaded.sep_id) == (0, 1, 2, 4)
    for text in HF_TEXTS:
        assert loaded.encode(text) == tok.encode(text)


def test_hf_without_sep_or_bos_falls_back(tmp_path):
    specials = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    make_hf_tokenizer(tmp_path, specials)
    tok = HFTokenizer(tmp_path)
    assert (tok.pad_id, tok.eos_id) == (0, 1)
    assert tok.sep_id == tok.eos_id  # no sep token: segments are separated by eos
    assert tok.bos_id == tok.pad_id  # no bos token: Marian/T5-style decoder start


def test_hf_without_eos_is_rejected(tmp_path):
    make_hf_tokenizer(tmp_path, {"pad_token": "<pad>", "unk_token": "<unk>"})
    with pytest.raises(ValueError, match=re.escape(str(tmp_path)) + ".* no eos \\(or sep\\) token"):
        HFTokenizer(tmp_path)


def test_hf_missing_directory(tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "absent"))):
        HFTokenizer(tmp_path / "absent")


# --- Loading and building errors -----------------------------------------------------


def test_load_tokenizer_empty_directory(tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"no tokenizer in {tmp_path}")):
        load_tokenizer(tmp_path)


def test_build_hf_without_path():
    with pytest.raises(ValueError, match=r"tokenizer\.path"):
        build_tokenizer(TokenizerConfig(kind="hf"), [], SEED)
