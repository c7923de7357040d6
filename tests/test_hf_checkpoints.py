"""Hugging Face checkpoints a user points to: an encoder with a pooler trains on 2 ranks, and
pickled weights are refused with the way to convert them."""

import json
import random
import re

import pytest
import torch
from safetensors import safe_open
from transformers import BartConfig, BartForConditionalGeneration, BertConfig, BertModel, BertTokenizer

from conftest import FIXTURES, REPO, run_torchrun

from selfmem.models.hf_engine import HFSeq2Seq
from selfmem.models.hf_import import import_hf
from selfmem.models.selector import HFEncoderBackbone, Selector

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def save_bert_with_pooler(directory, vocabulary: list[str]) -> BertModel:
    """A tiny BERT as the Hub has them, pooler included, with its word-piece tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join([*SPECIAL, *vocabulary]) + "\n", encoding="utf-8")
    BertTokenizer(str(directory / "vocab.txt")).save_pretrained(directory)
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(SPECIAL) + len(vocabulary), hidden_size=16, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=32, max_position_embeddings=128))
    assert bert.pooler is not None
    bert.save_pretrained(directory)
    return bert


def test_an_encoder_with_a_pooler_loads_without_it_and_every_weight_learns(tmp_path, capfd):
    bert = save_bert_with_pooler(tmp_path / "bert", list("abcdefgh"))
    capfd.readouterr()
    selector = Selector(HFEncoderBackbone(tmp_path / "bert", pad_id=0), dropout=0.0)
    assert "LOAD REPORT" not in capfd.readouterr().err  # the pooler's weights are left out on purpose
    assert not [name for name, _ in selector.named_parameters() if "pooler" in name]
    ids = torch.tensor([[2, 5, 6, 3, 7, 3], [2, 8, 3, 9, 3, 0]])
    with torch.no_grad():
        expected = bert.eval()(input_ids=ids, attention_mask=ids.ne(0)).last_hidden_state
        assert torch.equal(selector.backbone.eval()(ids), expected)
    selector.train()(ids).sum().backward()
    # DDP without unused-parameter detection needs a gradient for every parameter
    assert [name for name, p in selector.named_parameters() if p.grad is None] == []


def test_an_encoder_with_a_pooler_trains_the_selector_on_two_ranks(tmp_path):
    summaries = [json.loads(line)["summary"] for line in
                 (FIXTURES / "debian_sum" / "dev.jsonl").read_text(encoding="utf-8").splitlines()[:8]]
    save_bert_with_pooler(tmp_path / "bert", sorted({c for s in summaries for c in s.lower() if not c.isspace()}))
    rng = random.Random(0)
    candidates = tmp_path / "debian_sum" / "round_1" / "candidates" / "dev.jsonl"
    candidates.parent.mkdir(parents=True)
    candidates.write_text("".join(json.dumps({"memories": [[]], "candidates": [[s, *rng.sample(summaries, 3)]]}) + "\n"
                                  for s in summaries), encoding="utf-8")
    run_torchrun("launch/train_selector.py", [
        "--config", str(REPO / "configs" / "debian_sum.yaml"), f"run.root={tmp_path}",
        f"data.dir={FIXTURES / 'debian_sum'}", "data.max_examples=8", "selector.backbone=hf",
        f"selector.path={tmp_path / 'bert'}", "selector.train_from=dev", "selector.group_size=4",
        "selector.max_epochs=1", "selector.max_len=64", "selector.max_tokens=300", "train.log_every=1"])
    selector = tmp_path / "debian_sum" / "selector"
    log = [json.loads(line) for line in (selector / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]  # 8 examples of 4 pairs, 300 tokens a batch
    [final] = [r for r in log if "params_sha256" in r]  # the two ranks end with bit-identical weights
    assert len(final["params_sha256"]) == 2 and len(set(final["params_sha256"])) == 1
    with safe_open(selector / "backbone" / "model.safetensors", "pt") as saved:
        assert saved.keys() and not [key for key in saved.keys() if "pooler" in key]


def save_pickled(model, directory) -> None:
    """``model`` as checkpoints were written before safetensors: config.json and a pickled state dict."""
    directory.mkdir()
    model.config.save_pretrained(directory)
    torch.save(model.state_dict(), directory / "pytorch_model.bin")


def convert_as_told(message: str) -> None:
    """Run the conversion the refusal prints (a trusted test checkpoint)."""
    exec(re.search(r'python -c "(.*?)"', message).group(1))


def test_pickled_encoder_weights_are_refused_with_how_to_convert_them(tmp_path):
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=32))
    save_pickled(bert, tmp_path / "bert")
    with pytest.raises(ValueError) as info:
        HFEncoderBackbone(tmp_path / "bert", pad_id=0)
    path = tmp_path / "bert"
    assert str(info.value) == (
        f"{path}: its weights are pickled (pytorch_model.bin), and loading a pickle can run any code it holds; "
        f"selfmem loads safetensors only. Convert them once where you trust the files: python -c \"from "
        f"transformers import AutoModel; AutoModel.from_pretrained('{path}', use_safetensors=False)"
        f".save_pretrained('{path}')\" (transformers writes safetensors)")
    convert_as_told(str(info.value))
    converted = HFEncoderBackbone(path, pad_id=0)
    assert torch.equal(converted.hf.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)


def test_pickled_seq2seq_weights_are_refused_by_both_engines(tmp_path):
    torch.manual_seed(0)
    bart = BartForConditionalGeneration(BartConfig(
        vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32))
    save_pickled(bart, tmp_path / "bart")
    for load in (lambda: import_hf(tmp_path / "bart"), lambda: HFSeq2Seq(tmp_path / "bart", pad_id=1)):
        with pytest.raises(ValueError, match=r"bart: its weights are pickled \(pytorch_model.bin\).*from transformers "
                                             r"import AutoModelForSeq2SeqLM; AutoModelForSeq2SeqLM.from_pretrained"):
            load()
    with pytest.raises(ValueError) as info:
        import_hf(tmp_path / "bart")
    convert_as_told(str(info.value))
    assert torch.equal(import_hf(tmp_path / "bart").encoder.embed_tokens.weight, bart.model.shared.weight)
