"""Training the memory selector: the listwise KL loss against metric-derived targets, and
its task for the shared training loop."""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from selfmem.common.batching import token_budget_batches
from selfmem.common.config import Config, SelectorConfig
from selfmem.common.data import load_split
from selfmem.common.digest import config_values
from selfmem.common.distributed import DistEnv, agreed, on_main
from selfmem.common.metrics import headline_score
from selfmem.common.run import RunPaths
from selfmem.common.shards import merge_lines
from selfmem.infer.generate import generate
from selfmem.models.selector import (
    GeneratorEncoderBackbone,
    HFEncoderBackbone,
    Selector,
    check_selector_backbone,
    pair_encoder,
    selector_tokenizer,
)
from selfmem.models.seq2seq import Seq2SeqModel
from selfmem.retrieve.memory import initial_memory, iter_retrieved
from selfmem.select.candidates import SelectorExample, baseline_picks, selector_examples, sentence_metric
from selfmem.select.stage import (
    RETRIEVED,
    NO_MEMORY_CHOICES,
    NO_MEMORY_WEIGHT,
    TEMPERATURE_CHOICES,
    WEIGHT_CHOICES,
    check_selector_config,
    reads_retrieved,
    score_pairs,
)
from selfmem.train.generator import train_generator
from selfmem.train.loop import RESUME_FREE, TrainState, fit, micro_batches_per_step

log = logging.getLogger(__name__)

# selector keys that only the rounds read, not its training
SELECTION = ("mode", "beam", "max_memories", "keep_retrieved", "kind")
# what only MBR's rounds read (a trained S takes no samples): none of S's own keys
MBR_ONLY = ("mbr_references",)


def unread_by_training(cfg: SelectorConfig) -> tuple[str, ...]:
    """The selector keys that S's training does not read, left out of its fingerprints: the
    rounds' own, and MBR's unless S has the MBR feature (the retrieved memory's where it weighs)."""
    consensus = () if "mbr" in cfg.features else ("mbr_utility", "mbr_temperature")
    retrieved = () if reads_retrieved(cfg, training=True) else RETRIEVED
    return (*SELECTION, *MBR_ONLY, *consensus, *retrieved, WEIGHT_CHOICES, TEMPERATURE_CHOICES, NO_MEMORY_WEIGHT,
            NO_MEMORY_CHOICES)


# train keys that the selector's training sets from its own section, or does not use
NOT_FOR_SELECTOR = ("lr", "max_epochs", "max_tokens", "warmup_steps", "max_steps", "label_smoothing")


def metric_targets(metric: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """The target distribution over each row's candidates: softmax of the metric, min-max
    normalised within the row, divided by ``temperature``. ``mask`` (rows, candidates) is True
    at real candidates; a row whose candidates all score the same gets a uniform target."""
    low = metric.masked_fill(~mask, torch.inf).amin(dim=1, keepdim=True)
    high = metric.masked_fill(~mask, -torch.inf).amax(dim=1, keepdim=True)
    spread = (high - low).clamp(min=torch.finfo(metric.dtype).tiny)
    normalised = torch.where(high > low, (metric - low) / spread, torch.zeros_like(metric))
    return torch.softmax((normalised / temperature).masked_fill(~mask, -torch.inf), dim=1)


def listwise_kl(scores: Tensor, metric: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """Sum over rows of KL(target || softmax(scores)), the selector's loss (see ``metric_targets``)."""
    target = metric_targets(metric, mask, temperature)
    log_predicted = torch.log_softmax(scores.masked_fill(~mask, -torch.inf), dim=1)
    terms = target * (torch.log(target.clamp(min=torch.finfo(target.dtype).tiny)) - log_predicted)
    return terms.masked_fill(~mask, 0.0).sum()


def linear_schedule(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warmup to the peak at ``warmup_steps``, then linear decay to 0 at ``total_steps``."""
    warmup = max(1, warmup_steps)
    return lambda step: min(step / warmup, max(0.0, (total_steps - step) / max(1, total_steps - warmup)))


class SelectorTask:
    """The listwise KL loss over a sampled group of each example's candidates; dev figures
    are the corpus metric of the selector's pick, of the first candidate (the beam top-1)
    and of the best one (the oracle)."""

    def __init__(self, train: list[SelectorExample], dev: list[SelectorExample], dev_references: list[str],
                 pair: Callable[[str, str], list[int]], pad_id: int, config: SelectorConfig, metric: str,
                 bleu_tokenize: str, env: DistEnv, seed: int):
        self.train, self.dev, self.dev_references = train, dev, dev_references
        self.pair, self.pad_id = pair, pad_id
        self.config, self.metric_name, self.bleu_tokenize = config, metric, bleu_tokenize
        self.env, self.seed = env, seed
        self.sizes = [(min(config.group_size, len(ex.candidates)) * self._longest_pair(ex),) for ex in train]

    def _longest_pair(self, example: SelectorExample) -> int:
        return max(len(self._pair(example, c)) for c in example.candidates)

    def _pair(self, example: SelectorExample, candidate: str) -> list[int]:
        return self.pair(example.source, candidate)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        # the loop asks for an epoch's batches before training on them: the candidate
        # groups of ``loss`` are sampled for this epoch
        self.epoch = epoch
        return token_budget_batches(self.sizes, self.config.max_tokens, self.seed, epoch)

    def num_targets(self, batch: list[int]) -> int:
        return len(batch)

    def num_tokens(self, batch: list[int]) -> int:
        return sum(self.sizes[i][0] for i in batch)

    def _group(self, i: int) -> list[int]:
        """Example i's candidates this epoch: a seeded sample of ``group_size``, the same on any rank."""
        count = len(self.train[i].candidates)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 100_003 + i)
        return sorted(torch.randperm(count, generator=generator)[: self.config.group_size].tolist())

    def _collate(self, examples: list[SelectorExample], groups: list[list[int]]) -> dict[str, Tensor]:
        """The candidate pairs' ids (and features), and where each one's score goes in the
        (examples, widest group) grid: ``slots`` into the flattened grid, ``mask`` True there."""
        pairs = [self._pair(ex, ex.candidates[c]) for ex, group in zip(examples, groups) for c in group]
        width = max(map(len, pairs))
        widest = max(map(len, groups))
        mask = torch.zeros(len(examples), widest, dtype=torch.bool)
        for row, group in enumerate(groups):
            mask[row, : len(group)] = True
        tensors = {"ids": torch.tensor([p + [self.pad_id] * (width - len(p)) for p in pairs]),
                   "slots": mask.flatten().nonzero().squeeze(1), "mask": mask}
        if self.config.features:
            tensors["features"] = torch.tensor([ex.features[c] for ex, group in zip(examples, groups) for c in group])
        return tensors

    @staticmethod
    def _scores(model, tensors: dict[str, Tensor]) -> Tensor:
        """Scores (examples, widest group), 0 where the mask has no candidate."""
        flat = model(tensors["ids"], tensors.get("features")).float()
        rows, widest = tensors["mask"].shape
        return flat.new_zeros(rows * widest).index_copy(0, tensors["slots"], flat).view(rows, widest)

    def collate(self, batch: list[int]) -> dict[str, Tensor]:
        examples = [self.train[i] for i in batch]
        groups = [self._group(i) for i in batch]
        tensors = self._collate(examples, groups)
        metric = torch.zeros(tensors["mask"].shape)
        for row, (ex, group) in enumerate(zip(examples, groups)):
            metric[row, : len(group)] = torch.tensor([ex.metric[c] for c in group])
        return {**tensors, "metric": metric}

    def loss(self, model, tensors: dict[str, Tensor]) -> Tensor:
        return listwise_kl(self._scores(model, tensors), tensors["metric"], tensors["mask"], self.config.temperature)

    @torch.no_grad()
    def evaluate(self, model) -> dict[str, float]:
        """The dev figures, the same on every rank and on any number of ranks: S scores the dev
        pairs with the selection stage's ``score_pairs`` (each rank a share of the batches, the
        scores all-gathered), so every rank holds the same picks."""
        model.eval()
        pairs = [self._pair(ex, c) for ex in self.dev for c in ex.candidates]
        features = [row for ex in self.dev for row in ex.features] if self.config.features else None
        flat = score_pairs(model, pairs, self.pad_id, self.env, self.config.max_tokens, features, progress=False)
        picks, start = [], 0
        for ex in self.dev:
            scores = flat[start:start + len(ex.candidates)]
            picks.append(ex.candidates[max(range(len(scores)), key=scores.__getitem__)])  # the first of equals
            start += len(scores)
        model.train()

        def figures() -> dict[str, float]:
            def corpus(texts: list[str]) -> float:
                return headline_score(self.metric_name, texts, self.dev_references, self.bleu_tokenize)

            reference_picks = baseline_picks(self.dev)
            return {"metric": corpus(picks), "top1": corpus(reference_picks["top1"]),
                    "oracle": corpus(reference_picks["oracle"])}

        return agreed(figures)  # scored once, on rank 0

    def save_model(self, model, directory: Path) -> None:
        model.save(directory)


def selector_subset(config: Config, num_train: int) -> list[int]:
    """The seeded random train examples whose candidates S learns from, in dataset order."""
    size = min(config.selector.train_subset, num_train)
    return sorted(random.Random(config.run.seed).sample(range(num_train), size))


def crossfit_halves(config: Config, num_train: int) -> tuple[list[int], list[int]]:
    """Train split in two seeded random halves (dataset order inside each)."""
    order = list(range(num_train))
    random.Random(config.run.seed + 1).shuffle(order)
    return sorted(order[: num_train // 2]), sorted(order[num_train // 2:])


def crossfit_candidates(config: Config, env: DistEnv, paths: RunPaths, subset: list[int]) -> None:
    """Candidates for the train subset from generators never trained to write those examples'
    targets (they may have read them, as BM25 memories of their own half): one generator per
    half of train (``crossfit/half{h}/generator``), each decoding the subset's examples of the
    other half; merged in subset order into ``selector_candidates/train.jsonl``."""
    halves = crossfit_halves(config, len(load_split(config.data, "train")))
    parts: list[tuple[list[int], Path]] = []  # each half's examples and their candidates, in subset order
    for h, half in enumerate(halves):
        half_paths = dataclasses.replace(paths, generator_dir=f"crossfit/half{h}/generator")
        train_generator(config, env, half_paths, train_indices=half)  # returns at once when trained before
        seen = set(half)
        others = [i for i in subset if i not in seen]
        output = paths.root / "crossfit" / f"half{h}" / "candidates.jsonl"
        if not agreed(output.exists):  # written whole or not at all: a resumed stage keeps it
            generate(config, env, half_paths, "train", "candidates", None, 0, subset=others, output=output)
        parts.append((others, output))

    def merge() -> None:
        with ExitStack() as stack:
            merge_lines([zip(others, stack.enter_context(open(output, "rb"))) for others, output in parts],
                        paths.selector_candidates, subset)

    on_main(merge)


def generate_selector_candidates(config: Config, env: DistEnv, paths: RunPaths, only_missing: bool = False) -> None:
    """The generator's candidates S learns from and is evaluated on, by ``selector.train_from``:
    ``train``: a seeded train subset with its BM25 memory; ``crossfit``: the same subset, each
    example decoded by a generator trained on the half of train without it; ``dev``: none
    beyond the dev candidates. Always: dev with round 0's memory (round 1's dev candidates),
    on which S is evaluated (and, for ``dev``, trained)."""
    train_from = config.selector.train_from
    if train_from != "dev" and not (only_missing and agreed(paths.selector_candidates.exists)):
        subset = selector_subset(config, len(load_split(config.data, "train")))
        if train_from == "train":
            generate(config, env, paths, "train", "candidates", None, 0, subset=subset,
                     output=paths.selector_candidates)
        else:
            crossfit_candidates(config, env, paths, subset)
    if not (only_missing and agreed(paths.candidates(1, "dev").exists)):
        generate(config, env, paths, "dev", "candidates", initial_memory(config, paths, "dev"), 1)


def selector_depends_on(config: Config) -> dict[str, Any]:
    """The config values the selector's training depends on, which its checkpoint records: its
    section less the keys only the rounds read (selector.max_epochs stays: it shapes the
    schedule), the train keys it uses, and the data, tokenizer and generator sections (the
    generator's candidates are what it learns from, its encoder what it may start from)."""
    leave_out = (*RESUME_FREE, *(f"selector.{key}" for key in unread_by_training(config.selector)),
                 *(f"train.{key}" for key in NOT_FOR_SELECTOR))
    return config_values(config, ("data", "tokenizer", "generator", "selector", "train", "run.seed"), leave_out)


def selector_training_examples(config: Config, paths: RunPaths) -> tuple[list[SelectorExample], list[SelectorExample]]:
    """S's train and dev examples: the candidates ``generate_selector_candidates`` wrote, with
    their metric against the reference and the values of S's features (the MBR feature's
    retrieved memory: each example's own row of the BM25 file)."""
    cfg = config.selector
    metric = sentence_metric(config)
    dev = load_split(config.data, "dev")
    anchored = reads_retrieved(cfg, training=True)
    dev_examples = selector_examples(paths.candidates(1, "dev"), dev, metric, "dev", config,
                                     iter_retrieved(config, paths, "dev", len(dev)) if anchored else None)
    if cfg.train_from == "dev":
        return dev_examples, dev_examples  # S is trained and evaluated on the same candidates
    train = load_split(config.data, "train")
    subset = selector_subset(config, len(train))
    train_examples = selector_examples(paths.selector_candidates, [train[i] for i in subset], metric,
                                       "train (selector.train_subset)", config,
                                       iter_retrieved(config, paths, "train", len(train), subset) if anchored else None)
    return train_examples, dev_examples


def train_selector(config: Config, env: DistEnv, paths: RunPaths) -> TrainState:
    """Train S on the candidates of ``generate_selector_candidates`` (generated first where missing)."""
    cfg = config.selector
    check_selector_config(cfg)
    if cfg.kind != "trained":
        raise ValueError(f"selector.kind is {cfg.kind}, which trains nothing: set selector.kind=trained to train S "
                         "(and for the stages that select with it)")
    check_selector_backbone(config)
    generate_selector_candidates(config, env, paths, only_missing=True)
    tokenizer = selector_tokenizer(config, paths)
    torch.manual_seed(config.run.seed)
    if cfg.backbone == "generator":
        backbone = GeneratorEncoderBackbone.from_generator(Seq2SeqModel.load(paths.generator))
    else:
        backbone = HFEncoderBackbone(cfg.path, tokenizer.pad_id)
    selector = Selector(backbone, dropout=config.generator.dropout, features=cfg.features)
    train_examples, dev_examples = selector_training_examples(config, paths)
    log.info("selector: %d train examples (%s), %d dev examples", len(train_examples), cfg.train_from,
             len(dev_examples))
    task = SelectorTask(train_examples, dev_examples, [ex.target for ex in load_split(config.data, "dev")],
                        pair_encoder(selector, tokenizer, cfg.max_len), tokenizer.pad_id, cfg, config.data.metric,
                        config.data.bleu_tokenize, env, config.run.seed)
    steps = cfg.max_epochs * (len(task.epoch_batches(0)) // micro_batches_per_step(config.train, env.world_size))
    train_config = dataclasses.replace(config.train, lr=cfg.lr, max_epochs=cfg.max_epochs, max_tokens=cfg.max_tokens,
                                       warmup_steps=max(1, steps // 10), max_steps=None, compile=False)
    return fit(selector, task, train_config, env, paths.selector, config.run.seed,
               linear_schedule(train_config.warmup_steps, steps), selector_depends_on(config))
