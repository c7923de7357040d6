"""Every bundled config builds its generator, and its length budgets fit the position table:
the longest input its budgets allow runs through the model, and ``check_length_budgets``
refuses exactly the budgets whose longest input does not."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration

from conftest import REPO

from selfmem.common.config import Config, ConfigError, load_config
from selfmem.common.data import Example
from selfmem.common.distributed import DistEnv
from selfmem.common.generator_inputs import SpecialIds, collate, encode_examples
from selfmem.common.run import RunPaths
from selfmem.common.tokenizer import Tokenizer
from selfmem.infer.generate import load_generator
from selfmem.lift.pipeline import check_lift_config, lift
from selfmem.models.budgets import check_length_budgets
from selfmem.models.build import build_model, is_native_checkpoint, native_model_config
from selfmem.models.config import ModelConfig
from selfmem.train.generator import prepare_generator

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
# the position count of each generator.init checkpoint that a config names and the repository does not ship
STAND_INS = {"checkpoints/bart-large": 1024}
ONE_PROCESS = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)


class WordTokenizer(Tokenizer):
    """A stand-in with the run's vocabulary size: one id per word, SentencePiece's special ids
    (or a BART checkpoint's)."""

    def __init__(self, vocab_size: int, pad_id: int = 0, bos_id: int = 1, eos_id: int = 2, sep_id: int = 4):
        self._vocab_size = vocab_size
        self.pad_id, self.bos_id, self.eos_id, self.sep_id = pad_id, bos_id, eos_id, sep_id

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        return [5 + len(word) % (self._vocab_size - 5) for word in text.split()]

    def decode(self, ids) -> str:
        raise NotImplementedError

    def save(self, directory) -> None:
        raise NotImplementedError


def tiny_bart(directory: Path, positions: int) -> Path:
    """A tiny random BART checkpoint with ``positions`` positions (BART-large's layout, not its size)."""
    config = BartConfig(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                        max_position_embeddings=positions)
    torch.manual_seed(0)
    BartForConditionalGeneration(config).save_pretrained(directory)
    return directory


def bart_tokenizer() -> WordTokenizer:
    return WordTokenizer(64, pad_id=1, bos_id=0, eos_id=2, sep_id=2)  # BART separates segments with eos


def bundled(path: Path, tmp_path: Path, overrides: list[str] = ()) -> tuple[Config, Tokenizer]:
    """``path``'s config with a stand-in for a checkpoint that is not here, and a stand-in tokenizer
    (with a shipped native checkpoint's vocabulary and special ids, which it must match)."""
    config = load_config(path, overrides)
    tokenizer = bart_tokenizer() if config.tokenizer.kind == "hf" else WordTokenizer(config.tokenizer.vocab_size)
    init = config.generator.init
    if init is None:
        return config, tokenizer
    if (REPO / init).exists():
        init = REPO / init
        if is_native_checkpoint(init):
            saved = ModelConfig.load(init)
            tokenizer = WordTokenizer(saved.vocab_size, saved.pad_id, saved.bos_id, saved.eos_id, saved.sep_id)
    else:
        assert init in STAND_INS, (f"{path.name}: generator.init {init} is neither in the repository nor one of "
                                   f"the stand-ins {sorted(STAND_INS)}")
        init = tiny_bart(tmp_path / Path(init).name, STAND_INS[init])
    return dataclasses.replace(config, generator=dataclasses.replace(config.generator, init=str(init))), tokenizer


def longest_batch(config: Config, tokenizer: Tokenizer, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """One example whose source, memories and target all run past their budgets, encoded and collated."""
    g = config.generator
    long_text = " ".join(["word"] * (max(g.max_source_len, g.max_memory_len, g.max_target_len) + 10))
    encoded = encode_examples([Example(long_text, long_text)], [[long_text] * g.num_memories], tokenizer, g)
    ids = SpecialIds.of(tokenizer, model)
    return collate(encoded, g.memory, ids)


def run_longest(config: Config, tokenizer: Tokenizer, model: torch.nn.Module) -> torch.Tensor:
    batch = longest_batch(config, tokenizer, model)
    with torch.no_grad():
        return model.eval()(batch["src"], batch["decoder_input"], batch.get("memory"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_bundled_config_builds_and_its_longest_input_fits(path, tmp_path):
    config, tokenizer = bundled(path, tmp_path)
    check_length_budgets(config)
    model = build_model(config, tokenizer)
    g = config.generator
    batch = longest_batch(config, tokenizer, model)
    # the layout budgets.py counts: S + N x M joint, S otherwise (each dual memory M), T
    assert batch["src"].shape[1] == g.max_source_len + (g.num_memories * g.max_memory_len if g.memory == "joint"
                                                        else 0)
    assert batch["decoder_input"].shape[1] == g.max_target_len
    assert run_longest(config, tokenizer, model).shape[:2] == (1, g.max_target_len)


UNFIXED_XSUM = ["generator.max_source_len=1024", "generator.max_memory_len=256"]


def test_unfixed_xsum_budgets_are_refused_naming_the_keys(tmp_path):
    config, tokenizer = bundled(REPO / "configs" / "xsum.yaml", tmp_path, UNFIXED_XSUM)
    table = f"{tmp_path}/bart-large/config.json"
    with pytest.raises(ConfigError) as refused:
        check_length_budgets(config)
    assert str(refused.value) == (
        "generator length budgets do not fit the position table:\n"
        "  the joint encoder input (source, a separator before each memory, eos) needs generator.max_source_len"
        " + generator.num_memories x generator.max_memory_len = 1024 + 1 x 256 = 1280 positions, 256 more than"
        f" the 1024 of {table}: lower generator.max_source_len or generator.max_memory_len by 256 in all,"
        " e.g. generator.max_source_len=768")
    # and the model would indeed fail on its longest input
    with pytest.raises(ValueError, match="a sequence reaching position 1280 exceeds max_positions = 1024"):
        run_longest(config, tokenizer, build_model(config, tokenizer))


def test_each_budget_over_the_table_is_named(tmp_path):
    config, _ = bundled(REPO / "configs" / "xsum.yaml", tmp_path,
                        ["generator.memory=dual", "generator.max_source_len=1030", "generator.max_memory_len=1025",
                         "generator.max_target_len=2000"])
    table = f"{tmp_path}/bart-large/config.json"
    with pytest.raises(ConfigError) as refused:
        check_length_budgets(config)
    assert str(refused.value).splitlines()[1:] == [
        f"  the encoder input (source, eos) needs generator.max_source_len = 1030 positions, 6 more than the 1024 of"
        f" {table}: lower generator.max_source_len by 6",
        f"  each dual memory (memory, eos) needs generator.max_memory_len = 1025 positions, 1 more than the 1024 of"
        f" {table}: lower generator.max_memory_len by 1",
        f"  the decoder input (start, target) needs generator.max_target_len = 2000 positions, 976 more than the"
        f" 1024 of {table}: lower generator.max_target_len by 976",
    ]


def test_lift_refuses_unfixed_xsum_before_its_tokenizer_stage(tmp_path):
    config, _ = bundled(REPO / "configs" / "xsum.yaml", tmp_path, [*UNFIXED_XSUM, f"run.root={tmp_path}/runs"])
    paths = RunPaths(config.run_dir)
    with pytest.raises(ConfigError, match=r"lower generator.max_source_len or generator.max_memory_len by 256"):
        lift(config, ONE_PROCESS, paths)
    assert not paths.root.exists()  # no tokenizer, no state: nothing ran


def test_a_checkpoint_without_config_json_is_refused(tmp_path):
    config = load_config(REPO / "configs" / "xsum.yaml", [f"generator.init={tmp_path}"])
    expected = f"{tmp_path}: no config.json; expected a Hugging Face or selfmem checkpoint directory"
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}$"):
        check_length_budgets(config)


# At the edge of a 16-position table: memory, max_source_len, max_memory_len, max_target_len, num_memories, fits
EDGE_BUDGETS = [("joint", 10, 6, 16, 1, True), ("joint", 10, 7, 8, 1, False), ("joint", 6, 5, 8, 2, True),
                ("joint", 7, 5, 8, 2, False), ("joint", 8, 8, 17, 1, False), ("none", 16, 4, 16, 1, True),
                ("none", 17, 4, 8, 1, False), ("dual", 16, 16, 8, 2, True), ("dual", 8, 17, 8, 1, False)]
# engine hf runs memory none or joint
EDGE_CASES = [("native", *case) for case in EDGE_BUDGETS] + [("hf", *case) for case in EDGE_BUDGETS
                                                             if case[0] != "dual"]


def is_refused(config: Config, checkpoint: Path | None = None) -> bool:
    try:
        check_length_budgets(config, checkpoint)
    except ConfigError:
        return True
    return False


def overflows(config: Config, tokenizer: Tokenizer, model: torch.nn.Module) -> bool:
    try:
        run_longest(config, tokenizer, model)
    except (ValueError, IndexError):  # our position check; HF's embedding lookup past its table
        return True
    return False


@pytest.mark.parametrize("engine,memory,source,memory_len,target,memories,fits", EDGE_CASES)
def test_budgets_are_refused_exactly_when_the_model_overflows(engine, memory, source, memory_len, target, memories,
                                                             fits, tmp_path):
    checkpoint = tiny_bart(tmp_path / "bart", 16)
    config = load_config(None, [f"generator.engine={engine}", f"generator.init={checkpoint}",
                                f"generator.memory={memory}", f"generator.max_source_len={source}",
                                f"generator.max_memory_len={memory_len}", f"generator.max_target_len={target}",
                                f"generator.num_memories={memories}"])
    tokenizer = bart_tokenizer()
    assert is_refused(config) is not fits
    assert overflows(config, tokenizer, build_model(config, tokenizer)) is not fits


@pytest.mark.parametrize("memories,memory_len,fits", [(1, 6, True), (2, 6, False), (2, 2, True), (2, 3, False)])
def test_a_slotted_checkpoint_is_measured_by_its_slots(memories, memory_len, fits, tmp_path):
    # trained with slots of 8 source and 6 memory tokens, one memory: a table of 8 + 6 + 2 = 16 positions
    trained = load_config(None, ["generator.joint_positions=slots", "generator.max_source_len=8",
                                 "generator.max_memory_len=6", "generator.max_target_len=8", "generator.d_model=16",
                                 "generator.heads=2", "generator.ffn_dim=32", "generator.encoder_layers=1",
                                 "generator.decoder_layers=1"])
    tokenizer = WordTokenizer(32)
    model = build_model(trained, tokenizer)
    assert model.config.max_positions == 16
    model.config.save(tmp_path)
    config = dataclasses.replace(trained, generator=dataclasses.replace(
        trained.generator, num_memories=memories, max_memory_len=memory_len))
    assert is_refused(config, tmp_path) is not fits
    assert overflows(config, tokenizer, model) is not fits


def test_lift_checks_the_no_memory_baseline_against_its_own_checkpoint(tmp_path):
    baseline = tiny_bart(tmp_path / "bart", 16)
    config = load_config(None, ["generator.max_source_len=20", "generator.max_target_len=8",
                                "lift.no_memory_baseline=true", f"lift.no_memory_init={baseline}"])
    with pytest.raises(ConfigError) as refused:
        check_lift_config(config)
    assert str(refused.value).splitlines()[1:] == [
        f"  the encoder input (source, eos) needs generator.max_source_len = 20 positions, 4 more than the 16 of"
        f" {baseline}/config.json: lower generator.max_source_len by 4"]


def test_training_refuses_budgets_before_reading_the_tokenizer(tmp_path):
    config, _ = bundled(REPO / "configs" / "xsum.yaml", tmp_path, UNFIXED_XSUM)
    with pytest.raises(ConfigError, match=r"lower generator.max_source_len or generator.max_memory_len by 256"):
        prepare_generator(config, ONE_PROCESS, RunPaths(tmp_path / "run"))  # which has no tokenizer


def test_decoding_refuses_budgets_over_the_trained_generators_table(tmp_path):
    trained = load_config(None, ["generator.max_source_len=8", "generator.max_memory_len=6",
                                 "generator.max_target_len=8"])
    paths = RunPaths(tmp_path)
    native_model_config(trained.generator, WordTokenizer(32)).save(paths.generator)  # 8 + 6 + 2 = 16 positions
    longer = load_config(None, ["generator.max_source_len=11", "generator.max_memory_len=6",
                                "generator.max_target_len=8"])
    with pytest.raises(ConfigError, match=r"= 11 \+ 1 x 6 = 17 positions, 1 more than the 16 of"):
        load_generator(longer, paths, torch.device("cpu"), WordTokenizer(32))
