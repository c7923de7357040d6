"""Generator training from a Hugging Face checkpoint: `engine: hf` and the native import, one process."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSeq2SeqLM, BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

from conftest import DEMO_DATA, FROM_SCRATCH
from selfmem.common.config import load_config
from selfmem.common.distributed import DistEnv
from selfmem.common.run import RunPaths
from selfmem.common.tokenizer import prepare_run_tokenizer
from selfmem.models.hf_engine import HFSeq2Seq
from selfmem.models.seq2seq import Seq2SeqModel
from selfmem.retrieve.memory import build_bm25_memory
from selfmem.train.generator import prepare_generator, train_generator

ONE_PROCESS = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)


@pytest.fixture(scope="module")
def bart_checkpoint(tmp_path_factory):
    """A tiny random BART with a byte-level BPE tokenizer trained on demo text, saved offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    directory = tmp_path_factory.mktemp("tiny-bart")
    lines = [json.loads(line) for _, line in zip(range(400), open(DEMO_DATA / "train.jsonl", encoding="utf-8"))]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<sep>"]  # BART's ids: bos 0, pad 1, eos 2
    backend.train_from_iterator([t for r in lines for t in (r["src"], r["trg"])], trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", pad_token="<pad>",
                                        eos_token="</s>", unk_token="<unk>", sep_token="<sep>")
    tokenizer.save_pretrained(str(directory))
    torch.manual_seed(0)
    config = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_position_embeddings=256, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                        decoder_start_token_id=2, forced_eos_token_id=2)
    BartForConditionalGeneration(config).save_pretrained(str(directory))
    return directory


def prepared_run(tmp_path, checkpoint, *overrides):
    config = load_config(DEMO_DATA.parent.parent / "configs" / "demo.yaml", [
        *FROM_SCRATCH, f"run.root={tmp_path}", "data.max_examples=120", "tokenizer.kind=hf", f"tokenizer.path={checkpoint}",
        f"generator.init={checkpoint}", "generator.max_source_len=48", "generator.max_memory_len=48",
        "generator.max_target_len=32", "train.max_tokens=3000", "train.warmup_steps=5", "train.lr=3e-3",
        "train.max_steps=15", "train.log_every=1", *overrides])
    paths = RunPaths(config.run_dir)
    prepare_run_tokenizer(config, paths.tokenizer)
    build_bm25_memory(config, ONE_PROCESS, paths)
    return config, paths


def losses(paths):
    records = [json.loads(line) for line in (paths.generator / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def test_engine_hf_trains_a_transformers_model_through_the_loop(tmp_path, bart_checkpoint):
    config, paths = prepared_run(tmp_path, bart_checkpoint, "generator.engine=hf", "generator.memory=joint")
    train_generator(config, ONE_PROCESS, paths)
    curve = losses(paths)
    assert len(curve) == 15 and sum(curve[-3:]) < sum(curve[:3])
    trained = AutoModelForSeq2SeqLM.from_pretrained(str(paths.generator), local_files_only=True)
    original = AutoModelForSeq2SeqLM.from_pretrained(str(bart_checkpoint), local_files_only=True)
    assert type(trained) is BartForConditionalGeneration
    assert not torch.equal(trained.model.shared.weight, original.model.shared.weight)
    # the first step's loss is transformers' own: the checkpoint in training mode on the first
    # micro-batch, its dropout seeded as the loop seeds it, label-smoothed cross-entropy per target
    _, task = prepare_generator(config, ONE_PROCESS, paths)
    tensors = task.collate(task.epoch_batches(0)[0])
    torch.manual_seed(config.run.seed * 1_000_003)  # step 0, micro-batch 0
    logits = original.train()(input_ids=tensors["src"], attention_mask=tensors["src"].ne(original.config.pad_token_id),
                              decoder_input_ids=tensors["decoder_input"]).logits
    expected = F.cross_entropy(logits.flatten(0, 1)[tensors["target_rows"]], tensors["labels"],
                               label_smoothing=config.train.label_smoothing, reduction="sum") / len(tensors["labels"])
    assert curve[0] == pytest.approx(expected.item(), rel=1e-6)


def test_engine_hf_refuses_dual_memory(tmp_path, bart_checkpoint):
    config, paths = prepared_run(tmp_path, bart_checkpoint, "generator.engine=hf", "generator.memory=dual")
    with pytest.raises(ValueError, match="supports generator.memory none or joint, not dual"):
        train_generator(config, ONE_PROCESS, paths)


@pytest.mark.parametrize("engine", ["hf", "native"])
def test_slotted_joint_positions_refused_for_checkpoints(tmp_path, bart_checkpoint, engine):
    config, paths = prepared_run(tmp_path, bart_checkpoint, f"generator.engine={engine}", "generator.memory=joint",
                                 "generator.joint_positions=slots")
    with pytest.raises(ValueError, match="joint_positions 'slots' is for native models, trained from scratch or from a native "
                                         "checkpoint; an imported or Hugging Face model keeps the positions"):
        train_generator(config, ONE_PROCESS, paths)


def test_native_dual_model_fine_tunes_an_imported_checkpoint(tmp_path, bart_checkpoint):
    config, paths = prepared_run(tmp_path, bart_checkpoint, "generator.engine=native", "generator.memory=dual")
    train_generator(config, ONE_PROCESS, paths)
    curve = losses(paths)
    assert len(curve) == 15 and sum(curve[-3:]) < sum(curve[:3])
    model = Seq2SeqModel.load(paths.generator)
    assert model.config.memory == "dual" and model.config.position_offset == 2  # BART's layout kept


@torch.no_grad()
def test_engine_hf_reads_one_source_row_for_every_decoder_row(bart_checkpoint):
    model = HFSeq2Seq(bart_checkpoint, pad_id=1).eval()
    src = torch.tensor([[0, 45, 67, 89, 2]])
    dec = torch.tensor([[2, 0, 40, 41], [2, 0, 50, 1], [2, 0, 60, 61]])
    assert torch.equal(model(src, dec), model(src.expand(3, -1), dec))
    assert torch.equal(model(src, dec, target_rows=torch.tensor([1, 6])), model(src.expand(3, -1), dec)[[0, 1], [1, 2]])
