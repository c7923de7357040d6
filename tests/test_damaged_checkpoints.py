"""A model or training checkpoint cut short (a full disk, a copy stopped half way) is an error
that names the file, not a bare deserialisation message."""

import pytest
from torch import nn

from selfmem.models.config import ModelConfig
from selfmem.models.seq2seq import WEIGHTS_NAME, Seq2SeqModel
from selfmem.train.loop import CHECKPOINT, fit
from test_train_loop import ONE_PROCESS, ToyTask, toy_config


def test_a_truncated_model_safetensors_is_named(tmp_path):
    Seq2SeqModel(ModelConfig(vocab_size=48, d_model=16, encoder_layers=1, decoder_layers=1, heads=2, ffn_dim=32,
                             max_positions=32)).save(tmp_path)
    data = (tmp_path / WEIGHTS_NAME).read_bytes()
    (tmp_path / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as info:
        Seq2SeqModel.load(tmp_path)
    assert str(info.value) == (f"{tmp_path / WEIGHTS_NAME}: cannot read the weights, the file is damaged or cut short "
                               "(Error while deserializing header: incomplete metadata, file not fully covered)")


@pytest.mark.parametrize("keep, reason", [
    (0.5, "PytorchStreamReader failed reading zip archive: failed finding central directory"),
    (0.0, "EOFError"),
])
def test_a_truncated_training_checkpoint_is_named(tmp_path, keep, reason):
    model = nn.Linear(1, 1, bias=False)
    fit(model, ToyTask(), toy_config(max_epochs=1), ONE_PROCESS, tmp_path, seed=0, lr_schedule=lambda s: 1.0)
    data = (tmp_path / CHECKPOINT).read_bytes()
    (tmp_path / CHECKPOINT).write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError) as info:
        fit(model, ToyTask(), toy_config(max_epochs=2), ONE_PROCESS, tmp_path, seed=0, lr_schedule=lambda s: 1.0)
    assert str(info.value) == (f"{tmp_path / CHECKPOINT}: cannot read the training checkpoint, the file is damaged "
                               f"or cut short ({reason}); delete it to train from the start")
