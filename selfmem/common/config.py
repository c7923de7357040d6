"""Typed run configuration: YAML files with nested sections plus dotted overrides.

A config is a tree of dataclasses. YAML values and command-line overrides
(``train.lr=5e-4``) are checked against the declared field types; an unknown key
or a wrong type raises ``ConfigError`` naming the key, the file and the valid keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from selfmem.common.io import atomic_write_text


class ConfigError(ValueError):
    """A config file or override that does not match the schema."""


@dataclass
class RunConfig:
    name: str = "demo"
    root: str = "runs"  # the run directory is ROOT/NAME
    seed: int = 1234
    # fp32 matrix products on NVIDIA GPUs (Ampere on) in TensorFloat-32: inputs rounded to a
    # 10-bit mantissa, several times the fp32 rate; decoding runs in fp32 on GPUs, as does
    # what autocast leaves in it during training. Rounding only (no stage is redone for it);
    # no effect on CPUs
    tf32: bool = True


@dataclass
class DataConfig:
    dir: str = "data/demo"  # holds train.jsonl, dev.jsonl, test.jsonl
    task: Literal["translation", "summarization", "dialogue"] = "translation"
    source_field: str = "src"
    target_field: str = "trg"
    turn_separator: str = " | "  # joins a dialogue's list of turns into one source
    max_examples: Optional[int] = None  # per split, for quick runs
    metric: Literal["bleu", "rouge"] = "bleu"
    bleu_tokenize: str = "13a"


@dataclass
class TokenizerConfig:
    kind: Literal["sentencepiece", "hf"] = "sentencepiece"
    # kind hf: a Hugging Face checkpoint directory; kind sentencepiece: a directory whose
    # spm.model (trained before, e.g. a run's tokenizer/) is reused instead of training one
    path: Optional[str] = None
    vocab_size: int = 8000
    model_type: Literal["unigram", "bpe"] = "unigram"
    character_coverage: float = 0.9995
    max_sentences: int = 2_000_000  # sentences sampled for SentencePiece training


@dataclass
class RetrievalConfig:
    backend: Literal["bm25s", "elasticsearch"] = "bm25s"
    topk: int = 5
    k1: float = 1.2
    b: float = 0.75
    exclude_self: bool = True  # a train query never retrieves its own pair
    min_fuzzy_match: float = 0.0  # drop hits whose source's word fuzzy match is below this (0.5: NFR's)
    batch_size: int = 1024  # queries per retrieval call
    index_name: Optional[str] = None  # Elasticsearch index; default selfmem-RUNNAME-<hash of the run directory>
    # Elasticsearch: probes of the server before giving up, the first retry after connect_backoff
    # seconds, each later one after twice the wait before (6 and 2: a minute for a restart)
    connect_attempts: int = 6
    connect_backoff: float = 2.0


@dataclass
class GeneratorConfig:
    engine: Literal["native", "hf"] = "native"
    memory: Literal["none", "joint", "dual"] = "joint"
    # joint memory, native models trained from scratch: "slots" places the memory's positions
    # as if the source and each memory were padded to their max lengths (a fixed distance
    # between memory token i and target token i); "continue" goes on after the source
    joint_positions: Literal["continue", "slots"] = "continue"
    # the first N epochs train with each example's own reference as its memory, so that a
    # small model learns to copy before it learns when to (0: retrieved memory throughout);
    # they count towards train.max_epochs and train.patience
    copy_epochs: int = 0
    num_memories: int = 1  # memories per example (top BM25 hits during training)
    # a checkpoint to start from: a Hugging Face directory to import, or a native generator
    # (a run's generator/, same architecture); train.max_epochs 0 keeps it as it is
    init: Optional[str] = None
    encoder_layers: int = 6
    decoder_layers: int = 6
    d_model: int = 512
    heads: int = 8
    ffn_dim: int = 2048
    pre_norm: bool = False
    positions: Literal["learned", "sinusoidal"] = "sinusoidal"
    scale_embedding: bool = True
    activation: Literal["relu", "gelu"] = "relu"
    share_embeddings: bool = True
    dropout: float = 0.1
    attention_dropout: float = 0.0
    max_source_len: int = 256
    max_memory_len: int = 256
    max_target_len: int = 256


@dataclass
class TrainConfig:
    lr: float = 7e-4
    warmup_steps: int = 4000
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    max_tokens: int = 4096  # per micro-batch: encoder input plus target tokens
    accumulate: int = 1  # micro-batches each process adds up per step (with global_batch null)
    # micro-batches per step over all processes, whatever their number (each accumulates its
    # share): a job restarted on fewer or more processes continues the same training; null:
    # processes x accumulate
    global_batch: Optional[int] = None
    clip_norm: float = 1.0
    max_epochs: int = 30
    max_steps: Optional[int] = None
    patience: int = 5  # epochs without a better dev metric before stopping
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    save_every: int = 1000  # steps between resumable checkpoints
    log_every: int = 50  # steps between training-log records
    max_nonfinite: int = 10  # consecutive non-finite steps before giving up
    # micro-batches collated ahead of the step in a background thread (into pinned memory on
    # GPUs); 0 collates each on the main thread when the step needs it. Changes no result
    prefetch: int = 2
    # torch.compile the generator's layers for training (one graph per layer class, shared by
    # the layers of a stack), its padded lengths rounded up to a few buckets so that
    # recompiles stay few (the training log counts them)
    compile: bool = False


@dataclass
class CandidatesConfig:
    num_beams: int = 50
    num_return: int = 50
    hypothesis_beams: int = 5
    length_penalty: float = 1.0
    min_len: int = 1
    max_len: int = 256
    no_repeat_ngram: int = 0
    early_stopping: bool = True
    max_tokens: int = 8192
    # > 1: the native beam search decodes this many batches (of similar lengths) as one
    # stream, an example entering as soon as another is done, at most as many at a time as
    # the smallest of them holds, so that a batch does not run on for its longest example
    # alone (float rounding only; on a 2-core CPU 7% faster at 5 beams, 9% slower at 50:
    # docs/benchmarks.md); 1: batch by batch
    stream_batches: int = 1
    # epsilon sampling (launch/generate.py --mode samples: MBR's pseudo-references): samples
    # per memory input, and the least probability a sampled token may have
    num_samples: int = 16
    epsilon: float = 0.02


@dataclass
class SelectorConfig:
    # mbr: minimum Bayes risk over each example's candidates (no training), the best pick on dev
    # on both translation corpora (docs/results.md); trained: the paper's cross-encoder S
    kind: Literal["trained", "mbr"] = "mbr"
    mbr_utility: Literal["bleu", "chrf"] = "chrf"  # sentence BLEU or chrF++ against the pseudo-references
    # MBR's weight of each pseudo-reference: softmax of the generator's length-normalised
    # log-probabilities divided by this temperature; None: every candidate alike (by default
    # chosen on dev with the weight below: mbr_temperature_choices)
    mbr_temperature: Optional[float] = None
    # MBR's pseudo-references: the candidates themselves, or epsilon samples of the generator
    # (candidates.num_samples per memory input, decoded beside the candidates)
    mbr_references: Literal["candidates", "samples"] = "candidates"
    # the retrieved memory, the example's top mbr_retrieved_hits BM25 hits, as pseudo-references
    # sharing this weight, the others weighing 1 together: a candidate close to both the
    # consensus and the retrieved memory wins. 0: the consensus alone. null: each round takes
    # the one of mbr_retrieved_weight_choices whose picks of its dev candidates score best on
    # dev (a weak generator wants its output pulled towards the memory, a strong one less:
    # docs/results.md); S's "mbr" feature needs a number
    mbr_retrieved_weight: Optional[float] = None
    mbr_retrieved_weight_choices: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 4.0, 8.0, 16.0])
    # where the weight is chosen on dev and the candidates are the pseudo-references, the
    # temperature is chosen with it among these (null: all alike): a strong generator's
    # probabilities tell its better candidates apart, a weak one's do not (docs/results.md);
    # [] : mbr_temperature as set
    mbr_temperature_choices: list[Optional[float]] = field(default_factory=lambda: [None, 1.0, 0.3, 0.1, 0.05])
    mbr_retrieved_hits: int = 5  # at most retrieval.topk are there; a text retrieved twice weighs twice
    # the lift's no-memory baseline (lift.no_memory_baseline) as a second opinion: its length-
    # normalised log-probability of each candidate given the source alone, times this weight,
    # added to MBR's score. A model that reads no memory does not favour a candidate for copying
    # the memory, as G's candidates and their consensus do (docs/results.md). 0: off; null:
    # chosen on dev with MBR's other settings among no_memory_weight_choices
    no_memory_weight: Optional[float] = 0.0
    no_memory_weight_choices: list[float] = field(default_factory=lambda: [0.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    # per-candidate inputs the trained S adds to its own score, each times a learned weight (from
    # 1), so that it only has to learn what they miss: "generator" (the candidate's length-
    # normalised log-probability), "mbr" (its MBR score with the mbr_* settings, over 100)
    features: list[str] = field(default_factory=list)
    backbone: Literal["generator", "hf"] = "generator"
    path: Optional[str] = None  # a Hugging Face encoder directory (backbone: hf)
    temperature: float = 0.5
    rouge_weights: list[float] = field(default_factory=lambda: [0.5, 0.5])
    lr: float = 5e-5
    group_size: int = 16
    train_from: Literal["train", "dev", "crossfit"] = "train"
    train_subset: int = 10000
    max_epochs: int = 5
    mode: Literal["replace", "augment"] = "replace"
    beam: int = 1  # B, memories kept per example
    max_memories: int = 4  # augment mode
    keep_retrieved: bool = True  # augment mode
    max_len: int = 256  # tokens of a (source, candidate) pair; the source is cut first
    max_tokens: int = 16384  # pair tokens per scoring batch


@dataclass
class LiftConfig:
    max_rounds: int = 5
    patience: int = 1
    no_memory_baseline: bool = False
    # the baseline's starting checkpoint when generator.init is the run generator's own (a
    # trained native joint or dual model cannot start a model without memory); None: generator.init
    no_memory_init: Optional[str] = None


@dataclass
class DistConfig:
    # seconds a collective may wait for the other ranks before it raises: long enough for
    # rank 0's longest step alone (an index build, a merge, a save), short of a hung job's hours
    timeout: float = 1800


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    selector: SelectorConfig = field(default_factory=SelectorConfig)
    lift: LiftConfig = field(default_factory=LiftConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    @property
    def run_dir(self) -> Path:
        """The run's directory, run.root/run.name, where every stage writes."""
        return Path(self.run.root) / self.run.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# the generator keys that only a memory reads (a generator without one ignores them)
MEMORY_ONLY = ("memory", "copy_epochs", "num_memories", "joint_positions")


def baseline_generator(generator: GeneratorConfig) -> GeneratorConfig:
    """The run's generator settings as its no-memory baseline reads them: the keys that only a
    memory reads at their defaults, so that generators differing only there (joint or dual,
    their memories and the memories' positions, the copy recipe) share one baseline, and its
    stage's fingerprint."""
    return dataclasses.replace(generator, **{key: getattr(GeneratorConfig, key) for key in MEMORY_ONLY})


def baseline_config(config: Config) -> Config:
    """The run's config as its no-memory baseline (``lift.no_memory_baseline``) trains, decodes
    and scores candidates: no memory, started from ``lift.no_memory_init`` (or the generator's
    own init)."""
    init = config.lift.no_memory_init or config.generator.init
    return dataclasses.replace(config, generator=dataclasses.replace(baseline_generator(config.generator),
                                                                     memory="none", init=init))


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if _is_optional(tp):
        return f"{_type_name(_strip_optional(tp))} or null"
    return getattr(tp, "__name__", str(tp))


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _strip_optional(tp: Any) -> Any:
    return next(a for a in typing.get_args(tp) if a is not type(None))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the field type ``tp``; return it (ints widen to float)."""
    if _is_optional(tp):
        if value is None:
            return None
        try:
            return _coerce(value, _strip_optional(tp), where)
        except ConfigError:  # name the whole type: "int or null", not just "int"
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}") from None
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, list):
            return [_coerce(v, item_tp, where) for v in value]
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _apply(section: Any, values: dict[str, Any], prefix: str, source: str) -> None:
    """Set the fields of the dataclass ``section`` from a nested dict."""
    fields = {f.name: f for f in dataclasses.fields(section)}
    hints = typing.get_type_hints(type(section))
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            valid = ", ".join(fields)
            raise ConfigError(f"{source}: unknown key '{dotted}'; valid keys here: {valid}")
        current = getattr(section, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' is a section and needs a mapping, got {value!r}")
            _apply(current, value, f"{dotted}.", source)
        else:
            setattr(section, key, _coerce(value, hints[key], f"{source}: '{dotted}'"))


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error's problem and where it is, on one line."""
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return " ".join(str(error).split())
    return f"{error.problem} at line {mark.line + 1}, column {mark.column + 1}"


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``a.b=value`` into ``{"a": {"b": value}}`` (the value read as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.lr=5e-4")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({_yaml_problem(e)})") from None
    tree: dict[str, Any] = {}
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def _at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f"at least {low}"


def _at_least_or_null(low: int, null: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v is None or v >= low), f"at least {low}, or null ({null})"


NON_NEGATIVE = ((lambda v: v >= 0), "0 or more")
POSITIVE = ((lambda v: v > 0), "more than 0")
PROBABILITY = ((lambda v: 0 <= v < 1), "in [0, 1)")
UNIT = ((lambda v: 0 <= v <= 1), "in [0, 1]")

# Each numeric key's valid values, checked when a config is loaded, before any work: a bad
# value otherwise surfaces only in the stage that reads it, perhaps hours into a run, and
# some (a negative clip norm, a temperature of 0) would not fail at all but train wrong.
# Keys whose check depends on other keys, or on the run (selector.beam, train.global_batch,
# the length budgets), are checked where those are known: check_lift_config and its callees.
LIMITS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.max_examples": _at_least_or_null(1, "every example"),
    "tokenizer.vocab_size": _at_least(1),
    "tokenizer.character_coverage": ((lambda v: 0 < v <= 1), "in (0, 1]"),
    "tokenizer.max_sentences": _at_least(1),
    "retrieval.topk": _at_least(1),
    "retrieval.k1": NON_NEGATIVE,
    "retrieval.b": UNIT,
    "retrieval.min_fuzzy_match": UNIT,
    "retrieval.batch_size": _at_least(1),
    "retrieval.connect_attempts": _at_least(1),
    "retrieval.connect_backoff": NON_NEGATIVE,
    "generator.copy_epochs": NON_NEGATIVE,
    "generator.num_memories": _at_least(1),
    "generator.encoder_layers": _at_least(1),
    "generator.decoder_layers": _at_least(1),
    "generator.d_model": _at_least(1),
    "generator.heads": _at_least(1),
    "generator.ffn_dim": _at_least(1),
    "generator.dropout": PROBABILITY,
    "generator.attention_dropout": PROBABILITY,
    "generator.max_source_len": _at_least(1),
    "generator.max_memory_len": _at_least(1),
    "generator.max_target_len": _at_least(2),  # a token and the end
    "train.lr": NON_NEGATIVE,
    "train.warmup_steps": NON_NEGATIVE,
    "train.weight_decay": NON_NEGATIVE,
    "train.label_smoothing": PROBABILITY,
    "train.max_tokens": _at_least(1),
    "train.accumulate": _at_least(1),
    "train.clip_norm": POSITIVE,
    "train.max_epochs": NON_NEGATIVE,
    "train.max_steps": _at_least_or_null(1, "no limit"),
    "train.patience": _at_least(1),
    "train.save_every": _at_least(1),
    "train.log_every": _at_least(1),
    "train.max_nonfinite": _at_least(1),
    "train.prefetch": NON_NEGATIVE,
    "candidates.num_beams": _at_least(1),
    "candidates.num_return": _at_least(1),
    "candidates.hypothesis_beams": _at_least(1),
    "candidates.min_len": NON_NEGATIVE,
    "candidates.max_len": _at_least(2),
    "candidates.no_repeat_ngram": NON_NEGATIVE,
    "candidates.max_tokens": _at_least(1),
    "candidates.stream_batches": _at_least(1),
    "candidates.num_samples": _at_least(1),
    "candidates.epsilon": PROBABILITY,
    "selector.temperature": POSITIVE,
    "selector.rouge_weights": ((lambda v: len(v) == 2 and min(v) >= 0),
                               "two weights of 0 or more (ROUGE-1's and ROUGE-2's)"),
    "selector.lr": NON_NEGATIVE,
    "selector.group_size": _at_least(2),  # S learns by ranking a candidate against others
    "selector.train_subset": _at_least(1),
    "selector.max_epochs": _at_least(1),
    "selector.max_memories": _at_least(1),
    "selector.max_len": _at_least(2),
    "selector.max_tokens": _at_least(1),
    "lift.max_rounds": NON_NEGATIVE,
    "lift.patience": _at_least(1),
    "dist.timeout": POSITIVE,
}


# Elasticsearch's default `index.max_result_window`: a larger `size` is refused.
MAX_RESULT_WINDOW = 10_000


def check_values(config: Config) -> None:
    """Refuse a value outside its key's range (``LIMITS``) or two keys that contradict each other."""
    for key, (valid, what) in LIMITS.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if not valid(value):
            raise ConfigError(f"{key} must be {what}, got {value!r}")
    c = config.candidates
    if c.num_return > c.num_beams:
        raise ConfigError(f"candidates.num_return ({c.num_return}) must be at most candidates.num_beams "
                          f"({c.num_beams}): a beam search returns at most its beams")
    if c.min_len >= min(c.max_len, config.generator.max_target_len):
        raise ConfigError(f"candidates.min_len ({c.min_len}) must be below candidates.max_len ({c.max_len}) and "
                          f"generator.max_target_len ({config.generator.max_target_len}), which cut decoding")
    r = config.retrieval
    if r.backend == "elasticsearch" and r.topk > MAX_RESULT_WINDOW:  # else refused by the first search, hours in
        raise ConfigError(f"retrieval.topk ({r.topk}) must be at most {MAX_RESULT_WINDOW} with the elasticsearch "
                          f"backend (its index.max_result_window)")


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None), apply overrides, and check
    the values (``check_values``)."""
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        with open(path, encoding="utf-8") as f:
            try:
                values = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(e)})") from None
            except UnicodeDecodeError as e:
                raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        _apply(config, values, "", str(path))
    for override in overrides:
        _apply(config, parse_override(override), "", f"override {override!r}")
    check_values(config)
    return config


def script_parser(doc: str) -> argparse.ArgumentParser:
    """A parser whose help is a script's docstring as written: its first paragraph above the
    options, the rest (what it reads, what it writes, an example) below them."""
    summary, _, details = doc.strip().partition("\n\n")
    return argparse.ArgumentParser(description=summary, epilog=details or None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def parse_args(description: str, argv: list[str] | None = None,
               add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
               ) -> tuple[Config, argparse.Namespace]:
    """Parse ``--config FILE [key=value ...]``; ``add_arguments`` adds a launcher's own flags,
    which come back in the namespace. ``description`` is the script's docstring (see ``script_parser``)."""
    parser = script_parser(description)
    parser.add_argument("--config", required=True, help="YAML config file")
    if add_arguments is not None:
        add_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=5e-4")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after flags
    return load_config(args.config, args.overrides), args


def save_config(config: Config, run_dir: str | Path) -> Path:
    """Write the resolved config to ``run_dir/config.yaml`` (atomically)."""
    path = Path(run_dir) / "config.yaml"
    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True))
    return path
