"""The generator stage: train G on (source, retrieved memory) -> target with the shared loop."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from selfmem.common.batching import token_budget_batches
from selfmem.common.config import Config
from selfmem.common.data import Example, load_split
from selfmem.common.digest import config_values
from selfmem.common.distributed import (
    DistEnv,
    agreed,
    gather_to_main,
    in_order,
)
from selfmem.common.generator_inputs import (
    EncodedExample,
    SpecialIds,
    collate,
    encode_examples,
    example_sizes,
)
from selfmem.common.metrics import headline_score
from selfmem.common.run import RunPaths
from selfmem.common.tokenizer import Tokenizer, load_tokenizer
from selfmem.infer.beam import BeamSettings, beam_search
from selfmem.models.budgets import check_length_budgets
from selfmem.models.build import build_model
from selfmem.models.hf_engine import HFSeq2Seq
from selfmem.retrieve.memory import bm25_hits
from selfmem.train.loop import RESUME_FREE, TrainState, fit, inverse_sqrt_schedule
from selfmem.train.prefetch import to_device

log = logging.getLogger(__name__)


class GeneratorTask:
    """Label-smoothed cross entropy on token-budget batches; dev loss and greedy-decoded metric.

    The first ``generator.copy_epochs`` epochs train on copies of the train examples whose
    memory is their own reference, then on ``train`` itself; batch indices at or above
    ``len(train)`` point into those copies (a model without memory has none).
    """

    def __init__(self, config: Config, env: DistEnv, ids: SpecialIds, tokenizer: Tokenizer,
                 train: list[EncodedExample], dev: list[EncodedExample], dev_references: list[str]) -> None:
        self.config, self.env, self.ids, self.tokenizer = config, env, ids, tokenizer
        self.mode = config.generator.memory
        self.train, self.dev, self.dev_references = train, dev, dev_references
        self.train_sizes = self._sizes(train)
        self.dev_sizes = self._sizes(dev)
        # the whole dev set batched once, in a fixed order (epoch 0, seed 0), then shared among the
        # ranks: each batch, its padding and so the figures are the same on any number of ranks
        self.dev_batches = token_budget_batches(self.dev_sizes, config.train.max_tokens, 0, 0)
        self.dev_targets = sum(size[1] for size in self.dev_sizes)
        g = config.generator
        self.copy_epochs = g.copy_epochs if self.mode != "none" else 0
        copies = [dataclasses.replace(ex, memories=[ex.target[: g.max_memory_len - 1]])
                  for ex in train] if self.copy_epochs else []
        self.examples = train + copies
        self.sizes = self.train_sizes + self._sizes(copies)

    def _sizes(self, examples: list[EncodedExample]) -> list[tuple[int, ...]]:
        return [example_sizes(ex, self.mode, self.ids, self.config.generator.num_memories) for ex in examples]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        if epoch < self.copy_epochs:
            offset = len(self.train)
            return [[offset + i for i in batch] for batch in token_budget_batches(
                self.sizes[offset:], self.config.train.max_tokens, self.config.run.seed, epoch)]
        return token_budget_batches(self.train_sizes, self.config.train.max_tokens, self.config.run.seed, epoch)

    def num_targets(self, batch: list[int]) -> int:
        return sum(self.sizes[i][1] for i in batch)

    def num_tokens(self, batch: list[int]) -> int:
        return sum(sum(self.sizes[i]) for i in batch)

    def _collate(self, examples: list[EncodedExample], buckets: bool = False) -> dict[str, torch.Tensor]:
        tensors = collate(examples, self.mode, self.ids, buckets)
        # only the real target positions reach the output projection and the loss (padding
        # adds nothing to either); found on the host, since indexing by a mask on a GPU waits
        labels = tensors.pop("labels").flatten()
        rows = labels.ne(self.ids.pad).nonzero().squeeze(1)
        return {**tensors, "target_rows": rows, "labels": labels[rows]}

    def collate(self, batch: list[int]) -> dict[str, torch.Tensor]:
        # compiled, the padded lengths are rounded up to buckets, so that few shapes reach the graphs
        return self._collate([self.examples[i] for i in batch], buckets=self.config.train.compile)

    @staticmethod
    def _loss(model, tensors: dict[str, torch.Tensor], smoothing: float) -> torch.Tensor:
        logits = model(tensors["src"], tensors["decoder_input"], tensors.get("memory"),
                       target_rows=tensors["target_rows"])
        return F.cross_entropy(logits.float(), tensors["labels"], label_smoothing=smoothing, reduction="sum")

    def loss(self, model, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._loss(model, tensors, self.config.train.label_smoothing)

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        """Dev loss (no smoothing) and the dev metric of greedy outputs; each rank takes a share of
        the batches, and both figures come out the same on any number of ranks."""
        model.eval()
        batches = self.dev_batches
        # each batch's loss in a slot of its own, zero on the other ranks: the all-reduce adds only
        # zeros to it, and the sum below runs in batch order everywhere
        losses = torch.zeros(len(batches), dtype=torch.float64, device=self.env.device)
        hyps: dict[int, str] = {}
        max_len = self.config.generator.max_target_len
        for b in self.env.share(range(len(batches))):
            batch = batches[b]
            tensors = to_device(self._collate([self.dev[i] for i in batch]), self.env.device)
            losses[b] = self._loss(model, tensors, 0.0).double()
            src = tensors["src"]
            if isinstance(model, HFSeq2Seq):
                outputs = model.greedy(src, max_len, self.ids.eos)
            else:
                memory = tensors.get("memory")
                greedy = BeamSettings(num_beams=1, max_len=max_len)  # one beam: the argmax path
                outputs = [found[0].tokens for found in beam_search(model, src, memory, greedy,
                                                                    self.ids.decoder_start, self.ids.eos)]
            hyps.update((i, self.tokenizer.decode(out)) for i, out in zip(batch, outputs))
        if dist.is_initialized():
            dist.all_reduce(losses)
        loss = losses.sum().item()
        gathered = gather_to_main(hyps)

        def score() -> float:
            ordered = in_order(gathered, len(self.dev))
            return headline_score(self.config.data.metric, ordered, self.dev_references, self.config.data.bleu_tokenize)

        model.train()
        return {"metric": agreed(score), "dev_loss": loss / self.dev_targets}

    def save_model(self, model, directory: Path) -> None:
        model.save(directory)


def check_copy_epochs(config: Config) -> None:
    """Refuse copy epochs that leave no epoch for the retrieved memory. ``train.max_epochs`` 0
    trains nothing (``generator.init`` is kept as it is), and a generator without memory has
    no copy epochs, so neither is refused."""
    if config.generator.memory != "none" and 0 < config.train.max_epochs <= config.generator.copy_epochs:
        raise ValueError(f"generator.copy_epochs = {config.generator.copy_epochs} leaves no epoch of "
                         f"train.max_epochs = {config.train.max_epochs} for the retrieved memory")


def prepare_generator(config: Config, env: DistEnv, paths: RunPaths, train_indices: list[int] | None = None,
                      ) -> tuple[torch.nn.Module, GeneratorTask]:
    """The untrained generator and its training task, from the run's tokenizer, data and BM25
    memory; ``train_indices`` keeps only those train examples."""
    check_length_budgets(config)
    if not paths.tokenizer.exists():
        raise FileNotFoundError(f"{paths.tokenizer}: no tokenizer; run launch/train_tokenizer.py with this config first")
    tokenizer = load_tokenizer(paths.tokenizer)
    torch.manual_seed(config.run.seed)  # the same initial weights on every rank
    model = build_model(config, tokenizer)
    ids = SpecialIds.of(tokenizer, model)
    splits: dict[str, list[Example]] = {s: load_split(config.data, s) for s in ("train", "dev")}
    encoded = {}
    for split, examples in splits.items():
        memories = ([[] for _ in examples] if config.generator.memory == "none"
                    else list(bm25_hits(paths, split, len(examples))))
        if split == "train" and train_indices is not None:
            examples, memories = [examples[i] for i in train_indices], [memories[i] for i in train_indices]
        encoded[split] = encode_examples(examples, memories, tokenizer, config.generator)
    check_copy_epochs(config)
    task = GeneratorTask(config, env, ids, tokenizer, encoded["train"], encoded["dev"],
                         [ex.target for ex in splits["dev"]])
    if env.is_main:
        params = sum(p.numel() for p in model.parameters())
        log.info("generator: %s memory, %.2fM parameters, %d train / %d dev examples", config.generator.memory,
                 params / 1e6, len(encoded["train"]), len(encoded["dev"]))
    return model, task


def generator_depends_on(config: Config) -> dict[str, Any]:
    """The config values the generator's training depends on, which its checkpoint records."""
    return config_values(config, ("data", "tokenizer", "generator", "train", "run.seed"), RESUME_FREE)


def train_generator(config: Config, env: DistEnv, paths: RunPaths, train_indices: list[int] | None = None,
                    ) -> TrainState:
    """Train the run's generator on its data and BM25 memory (only the ``train_indices``
    examples of train, when given); the best dev model lands in ``paths.generator``."""
    model, task = prepare_generator(config, env, paths, train_indices)
    return fit(model, task, config.train, env, paths.generator, config.run.seed,
               inverse_sqrt_schedule(config.train.warmup_steps), generator_depends_on(config))
