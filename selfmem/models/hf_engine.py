"""`engine: hf`: any Hugging Face AutoModelForSeq2SeqLM behind the native model's training interface."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from selfmem.common.io import atomic_directory
from selfmem.models.hf_weights import from_pretrained_safe
from selfmem.models.vocabulary import check_tokenizer


class HFSeq2Seq(nn.Module):
    """Wraps a transformers seq2seq model: ``forward(src, decoder_input, memory=None, target_rows=None) -> logits``.

    Memory ``none`` or ``joint`` only (joint memory is part of ``src``).
    """

    def __init__(self, path: str | Path, pad_id: int):
        super().__init__()
        from transformers import AutoModelForSeq2SeqLM

        self.hf = from_pretrained_safe(AutoModelForSeq2SeqLM, path)
        self.pad_id = pad_id
        if self.hf.config.decoder_start_token_id is None:
            raise ValueError(f"{path}: the model config has no decoder_start_token_id; set it in its config.json")

    def check_tokenizer(self, tokenizer, what: str) -> None:
        """Refuse a tokenizer with more pieces than the model's table or another pad or eos id."""
        c = self.hf.config
        eos = c.eos_token_id if isinstance(c.eos_token_id, int) else None  # some configs list several
        check_tokenizer(tokenizer, c.vocab_size, {"pad": c.pad_token_id, "eos": eos}, what, padded=True)

    @property
    def decoder_start_id(self) -> int:
        return self.hf.config.decoder_start_token_id

    def forward(self, src_ids, decoder_input_ids, memory_ids=None, target_rows=None) -> torch.Tensor:
        """Logits (batch, tgt_len, vocab), or only the flattened positions ``target_rows``; one
        source row may serve every decoder row (as the native model's ``forward``)."""
        if memory_ids is not None:
            raise ValueError("engine hf supports generator.memory none or joint, not dual")
        if src_ids.size(0) == 1:
            src_ids = src_ids.expand(decoder_input_ids.size(0), -1)
        logits = self.hf(input_ids=src_ids, attention_mask=src_ids.ne(self.pad_id),
                         decoder_input_ids=decoder_input_ids).logits
        return logits if target_rows is None else logits.flatten(0, 1).index_select(0, target_rows)

    @torch.no_grad()
    def greedy(self, src_ids: torch.Tensor, max_len: int, eos_id: int) -> list[list[int]]:
        """Greedy continuations without start and eos, as the native one-beam search decodes."""
        from transformers import GenerationConfig

        plain = GenerationConfig(num_beams=1, do_sample=False, max_new_tokens=max_len, eos_token_id=eos_id,
                                 pad_token_id=self.pad_id, decoder_start_token_id=self.decoder_start_id)
        out = plain_generate(self.hf, src_ids, self.pad_id, plain)
        return [until_eos(row, eos_id) for row in out[:, 1:].tolist()]

    def save(self, directory: str | Path) -> None:
        """``save_pretrained`` into ``directory``, replacing it as one unit."""
        with atomic_directory(directory) as staging:
            self.hf.save_pretrained(str(staging))


def until_eos(tokens: list[int], eos_id: int) -> list[int]:
    """A generated row's tokens before its first eos (``generate`` pads the rows that end
    sooner after their eos); all of them where there is none (the row reached the length limit)."""
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens


def plain_generate(hf_model, src_ids: torch.Tensor, pad_id: int, generation_config):
    """``hf_model.generate`` with exactly ``generation_config``.

    ``generate`` fills every setting left unset with the checkpoint's own generation config
    (forced bos/eos tokens, n-gram blocking, minimum length, repetition penalty, bad words);
    those are hidden for the call so that both engines decode by the same rules.
    """
    from transformers import GenerationConfig

    own = hf_model.generation_config
    hf_model.generation_config = GenerationConfig()
    try:
        return hf_model.generate(input_ids=src_ids, attention_mask=src_ids.ne(pad_id),
                                 generation_config=generation_config)
    finally:
        hf_model.generation_config = own
