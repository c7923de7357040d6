"""A model or index directory is saved as one unit: a crash in the middle of a save leaves the
previous complete directory, loadable and equal to before; a save leaves no temporary behind."""

import subprocess
import sys

import pytest
import torch

from conftest import REPO, _env
from selfmem.common.io import atomic_directory, recover_directory
from selfmem.models import ModelConfig, Seq2SeqModel
from selfmem.models import selector as selector_module
from selfmem.models.selector import ClassificationHead, GeneratorEncoderBackbone, Selector, pair_ids
from selfmem.retrieve import bm25
from selfmem.retrieve.bm25 import BM25Retriever


def entries(directory):
    return sorted(p.name for p in directory.iterdir())


def old_directory(parent):
    """``parent/model`` with a weights file and a run's checkpoint beside it."""
    target = parent / "model"
    target.mkdir()
    (target / "weights").write_text("old")
    (target / "checkpoint.pt").write_text("state")
    return target


def test_a_directory_is_replaced_whole_and_keeps_the_named_files(tmp_path):
    target = old_directory(tmp_path)
    (target / "stale").write_text("from the old model")
    with atomic_directory(target, keep=("checkpoint.pt", "train_log.jsonl")) as staging:
        (staging / "weights").write_text("new")
    assert entries(target) == ["checkpoint.pt", "weights"]
    assert (target / "weights").read_text() == "new" and (target / "checkpoint.pt").read_text() == "state"
    assert entries(tmp_path) == ["model"]


def test_a_failed_write_leaves_the_old_directory(tmp_path):
    target = old_directory(tmp_path)
    with pytest.raises(OSError, match="disk full"):
        with atomic_directory(target) as staging:
            (staging / "weights").write_text("half")
            raise OSError("disk full")
    assert entries(target) == ["checkpoint.pt", "weights"] and (target / "weights").read_text() == "old"
    assert entries(tmp_path) == ["model"]


# SIGKILL once the old directory is renamed aside, before the new one is renamed in
KILLED_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
from selfmem.common.io import atomic_directory

rename = os.replace
def replace_then_die(source, target):
    rename(source, target)
    os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace_then_die
with atomic_directory(Path(sys.argv[1])) as staging:
    (staging / "weights").write_text("new")
"""


def test_a_kill_between_the_renames_is_undone_by_the_next_save_or_resume(tmp_path):
    target = old_directory(tmp_path)
    killed = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_RENAMES, str(target)], cwd=REPO, env=_env(),
                            capture_output=True, text=True, timeout=60)
    assert killed.returncode == -9, killed.stderr
    assert not target.exists()  # the moment the kill caught
    recover_directory(target)
    assert entries(target) == ["checkpoint.pt", "weights"] and (target / "weights").read_text() == "old"
    assert entries(tmp_path) == ["model"]


def tiny_generator(seed):
    torch.manual_seed(seed)
    return Seq2SeqModel(ModelConfig(vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1, heads=2,
                                    ffn_dim=32, max_positions=32, dropout=0.0, memory="joint"))


def test_a_crash_saving_a_generator_leaves_the_previous_one(tmp_path, monkeypatch):
    old, new = tiny_generator(0), tiny_generator(1)
    old.save(tmp_path / "generator")

    def crash(config, directory):
        raise OSError("disk full")

    monkeypatch.setattr(ModelConfig, "save", crash)  # written after the weights
    with pytest.raises(OSError, match="disk full"):
        new.save(tmp_path / "generator")
    loaded = Seq2SeqModel.load(tmp_path / "generator").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in old.state_dict().items())
    assert entries(tmp_path) == ["generator"]


def test_a_crash_saving_a_selector_leaves_the_previous_one(tmp_path, monkeypatch):
    pairs = torch.tensor([pair_ids([5, 6, 7], [8, 9], 1, 4, 32)])
    old, new = (Selector(GeneratorEncoderBackbone.from_generator(tiny_generator(seed)), dropout=0.0).eval()
                for seed in (0, 1))
    with torch.no_grad():
        scores = old(pairs)
        assert scores != new(pairs)
    old.save(tmp_path / "selector")
    save_weights = selector_module.save_weights

    def crash_on_the_head(module, directory):
        if isinstance(module, ClassificationHead):  # the backbone is written by now
            raise OSError("disk full")
        save_weights(module, directory)

    monkeypatch.setattr(selector_module, "save_weights", crash_on_the_head)
    with pytest.raises(OSError, match="disk full"):
        new.save(tmp_path / "selector")
    with torch.no_grad():
        assert torch.equal(Selector.load(tmp_path / "selector")(pairs), scores)
    assert entries(tmp_path) == ["selector"]


def test_a_crash_replacing_a_bm25_index_leaves_the_previous_one(tmp_path, monkeypatch):
    documents = ["red apple", "green pear", "blue sky", "red sky at night"]
    BM25Retriever.build(documents).save(tmp_path / "index")
    expected = BM25Retriever.load(tmp_path / "index").search(["red pear", "sky"], topk=3)

    def crash(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(bm25.os, "replace", crash)  # the rename that puts the new index in place
    with pytest.raises(OSError, match="disk full"):
        BM25Retriever.build(["other documents", "entirely"]).save(tmp_path / "index")
    monkeypatch.undo()
    assert BM25Retriever.load(tmp_path / "index").search(["red pear", "sky"], topk=3) == expected
    assert entries(tmp_path) == ["index"]
