"""A trained model read with a tokenizer other than its own is refused, not decoded into garbage."""

from types import SimpleNamespace

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer

from conftest import DEMO_CONFIG

from selfmem.common.config import load_config
from selfmem.common.run import RunPaths
from selfmem.common.tokenizer import HFTokenizer
from selfmem.infer.generate import load_generator
from selfmem.models import ModelConfig, Seq2SeqModel
from selfmem.models.selector import GeneratorEncoderBackbone, HFEncoderBackbone, Selector, pair_encoder

TINY_MODEL = dict(d_model=16, encoder_layers=1, decoder_layers=1, heads=2, ffn_dim=32)


def tokenizer(vocab_size, pad_id=0, bos_id=1, eos_id=2, sep_id=4):
    """A stand-in for the run's tokenizer: its size and special ids (a selfmem SentencePiece model's)."""
    return SimpleNamespace(vocab_size=vocab_size, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id, sep_id=sep_id,
                           encode=lambda text: [5] * len(text.split()))


@pytest.fixture
def trained(tmp_path):
    """A run whose generator was trained with a 4,000-piece vocabulary."""
    config = load_config(DEMO_CONFIG, [f"run.root={tmp_path}"])
    paths = RunPaths(config.run_dir)
    Seq2SeqModel(ModelConfig(vocab_size=4000, memory="joint", **TINY_MODEL)).save(paths.generator)
    return config, paths


def test_the_generator_refuses_a_tokenizer_of_another_size(trained):
    config, paths = trained
    assert load_generator(config, paths, torch.device("cpu"), tokenizer(4000)).config.vocab_size == 4000
    with pytest.raises(ValueError) as info:
        load_generator(config, paths, torch.device("cpu"), tokenizer(1000))
    assert str(info.value) == (f"{paths.generator} read with the tokenizer in {paths.tokenizer}: the tokenizer does "
                               f"not match the model (1000 pieces for the model's 4000), so decoding would give "
                               f"garbage: use the tokenizer the model was trained with")


def test_the_generator_refuses_other_special_ids(trained):
    config, paths = trained
    with pytest.raises(ValueError, match=r"the model \(eos id 3 for the model's 2; sep id 5 for the model's 4\)"):
        load_generator(config, paths, torch.device("cpu"), tokenizer(4000, eos_id=3, sep_id=5))


def test_a_generator_encoder_selector_refuses_another_tokenizer():
    generator = Seq2SeqModel(ModelConfig(vocab_size=4000, memory="joint", max_positions=64, **TINY_MODEL))
    selector = Selector(GeneratorEncoderBackbone.from_generator(generator))
    assert pair_encoder(selector, tokenizer(4000), 32)("a b", "c") == [1, 5, 5, 4, 5, 4]
    with pytest.raises(ValueError) as info:
        pair_encoder(selector, tokenizer(1000), 32)
    assert str(info.value) == ("the selector's generator-encoder backbone read with the run's tokenizer: the "
                               "tokenizer does not match the model (1000 pieces for the model's 4000), so decoding "
                               "would give garbage: use the tokenizer the model was trained with")


def test_a_hf_selector_refuses_a_larger_tokenizer_or_another_pad(tmp_path):
    for name, words in (("small", "abc"), ("large", "abcdefghijklmnop")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
        BertTokenizer(str(tmp_path / name / "vocab.txt")).save_pretrained(tmp_path / name)
    BertModel(BertConfig(vocab_size=12, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)).save_pretrained(tmp_path / "small")
    selector = Selector(HFEncoderBackbone(tmp_path / "small", pad_id=0))
    # 8 pieces in a table of 12: a Hugging Face table may have rows no token uses
    assert pair_encoder(selector, HFTokenizer(tmp_path / "small"), 16)("a b", "c") == [2, 5, 6, 3, 7, 3]
    with pytest.raises(ValueError, match=r"the model \(21 pieces for the model's 12\)"):
        pair_encoder(selector, HFTokenizer(tmp_path / "large"), 16)
    selector.backbone.pad_id = 1  # trained with another tokenizer's pad
    with pytest.raises(ValueError, match=r"the model \(pad id 0 for the model's 1\)"):
        pair_encoder(selector, HFTokenizer(tmp_path / "small"), 16)
