"""The bad-input matrix: each bad input, given to its real launcher, ends the run within
seconds, non-zero, with one line ``error: <what is wrong>`` that names the file and line (for
a config, the file and the key) and no traceback; a bad data file given to the lift leaves no
stage recorded as done in ``state.json``.

One input of each kind (a dataset line, a memory file, a candidates file, a damaged run, a
config, an unreachable server) runs under torchrun with 2 processes: every rank ends with its
line. The other inputs of a kind fail at the same place; they run in the test process (the
same entry point, one rank), which spares a torchrun launch each. The rows share one tiny
prepared run (tokenizer, BM25 memory, generator, selector, round 1) and are launched a few at
a time. ``bench/bad_inputs.py`` runs every row under torchrun and prints the table of
docs/reliability.md.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest

from conftest import DEMO_CONFIG, DEMO_DATA, TINY, run_in_process, run_single, start_torchrun

# the shared run: 20 examples a split, a generator trained 4 steps, 2 candidates an example,
# a selector trained 1 epoch on 8 train examples, one round (seconds, one process)
EXAMPLES = 20  # a split
MATRIX = [*TINY, f"data.max_examples={EXAMPLES}", "train.max_steps=4", "train.max_epochs=100", "candidates.num_beams=2",
          "candidates.num_return=2", "candidates.hypothesis_beams=1", "candidates.max_len=8",
          "selector.kind=trained", "selector.train_subset=8", "selector.group_size=2", "selector.max_epochs=1", "selector.max_tokens=1500",
          "lift.max_rounds=1", "lift.no_memory_baseline=false"]
RUN = Path("runs") / "demo"  # the run directory, below a row's directory
# launches at once: each is torchrun and 2 ranks, and 2 cores are busy with about 3 of them
CONCURRENT = 3
LAUNCH_TIMEOUT_S = 120  # far beyond any row; only a hang reaches it
WITHIN_S = 60  # every rank gone: seconds, not dist.timeout's half hour
ES_PASSWORD = "s3cret"
ES_URL = f"http://elastic:{ES_PASSWORD}@127.0.0.1:9"  # nothing listens on loopback's discard port


@dataclass(frozen=True)
class Row:
    """One bad input: ``prepare(row_dir, prepared_run)`` writes it under ``row_dir`` and returns
    ``script``'s arguments; every rank's line is ``error: message`` (``{row}``: ``row_dir``),
    or, where rank 0 alone meets the input, ``error: rank 0 failed: <relayed_as>: message``
    on the others."""

    name: str
    input: str
    script: str
    prepare: Callable[[Path, Path], list[str]]
    message: str
    relayed_as: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def lines(self, row_dir: Path, ranks: int = 2) -> dict[int, str]:
        """Each rank's error line, of ``ranks`` ranks."""
        message = self.message.format(row=row_dir)
        other = message if self.relayed_as is None else f"rank 0 failed: {self.relayed_as}: {message}"
        return {rank: f"error: {message if rank == 0 else other}" for rank in range(ranks)}


@dataclass(frozen=True)
class Outcome:
    """What a launch printed, its exit code, how long it ran, and each rank's exit code and
    error line as torchrun's closing summary reports them (run in the test process: its one
    rank's)."""

    output: str
    returncode: int
    seconds: float
    ranks: dict[int, tuple[int, str]]

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith("error: ")]


# a failed rank in torchrun's summary: its rank, exit code, error file, and the first line of
# what it recorded (our error line; torch elastic's record writes it)
SUMMARY_RANK = re.compile(r"rank\s*: (\d+) \(local_rank: \d+\)\n\s*exitcode\s*: (-?\d+).*\n\s*error_file: .*\n"
                          r"\s*traceback : (.*)")


def launch(row: Row, row_dir: Path, prepared: Path) -> Outcome:
    """Prepare ``row`` in ``row_dir`` and run its launcher under torchrun with 2 processes."""
    args = row.prepare(row_dir, prepared)
    started = time.monotonic()
    (proc,) = start_torchrun(row.script, args, env=row.env)
    try:
        output = proc.communicate(timeout=LAUNCH_TIMEOUT_S)[0]
    except subprocess.TimeoutExpired:  # a hang: torchrun and its ranks, its own session, all stopped
        os.killpg(proc.pid, signal.SIGKILL)
        output = proc.communicate()[0]
    ranks = {int(rank): (int(code), line) for rank, code, line in SUMMARY_RANK.findall(output)}
    return Outcome(output, proc.returncode, time.monotonic() - started, ranks)


def launch_in_process(row: Row, row_dir: Path, prepared: Path) -> Outcome:
    """Prepare ``row`` in ``row_dir`` and run its launcher in this process, as one rank; its
    line for torchrun's summary read from the error file that torchrun would have named."""
    assert not row.env, f"{row.name}: its environment is for a launch under torchrun"
    args = row.prepare(row_dir, prepared)
    error_file = row_dir / "error.json"
    started = time.monotonic()
    with mock.patch.dict(os.environ, {"TORCHELASTIC_ERROR_FILE": str(error_file)}):
        code, output = run_in_process(row.script, args)
    seconds = time.monotonic() - started
    recorded = json.loads(error_file.read_text())["message"]["message"] if error_file.exists() else ""
    return Outcome(output, code, seconds, {0: (code, recorded)})


def prepare_run(root: Path) -> Path:
    """The shared run: a whole tiny lift, one process; returns ``root``."""
    run_single("launch/lift.py", ["--config", str(DEMO_CONFIG), f"run.root={root / 'runs'}", *MATRIX])
    return root


def launch_all(rows: list[Row], base: Path,
               in_process: frozenset[str] = frozenset()) -> dict[str, tuple[Path, Outcome]]:
    """Every row in its own directory under ``base`` (the shared run prepared first), under
    torchrun ``CONCURRENT`` at a time, then the rows named in ``in_process`` in this process
    (after the launches: each sets this process's environment); each row's directory and
    outcome by its name."""
    prepared = prepare_run(base / "prepared")
    under_torchrun = [row for row in rows if row.name not in in_process]
    with ThreadPoolExecutor(CONCURRENT) as pool:
        outcomes = dict(zip((row.name for row in under_torchrun),
                            pool.map(lambda row: launch(row, base / row.name, prepared), under_torchrun)))
    outcomes.update((row.name, launch_in_process(row, base / row.name, prepared))
                    for row in rows if row.name in in_process)
    return {row.name: (base / row.name, outcomes[row.name]) for row in rows}


# --------------------------------------------------------------------------- how each input is made


def matrix_args(row_dir: Path, *extra: str) -> list[str]:
    """The shared run's config, rooted in ``row_dir``."""
    return ["--config", str(DEMO_CONFIG), f"run.root={row_dir / 'runs'}", *MATRIX, *extra]


def copy_run(row_dir: Path, prepared: Path) -> Path:
    """A copy of the shared run in ``row_dir``; returns its run directory."""
    shutil.copytree(prepared / RUN, row_dir / RUN)
    return row_dir / RUN


def bad_dataset(split: str, edit: Callable[[list[bytes]], list[bytes]]) -> Callable[[Path, Path], list[str]]:
    """The lift on the demo's data (its first EXAMPLES lines a split) with ``split``'s lines edited."""
    def prepare(row_dir: Path, prepared: Path) -> list[str]:
        data = row_dir / "data"
        data.mkdir(parents=True)
        for name in ("train", "dev", "test"):
            lines = (DEMO_DATA / f"{name}.jsonl").read_bytes().splitlines(keepends=True)[:EXAMPLES]
            (data / f"{name}.jsonl").write_bytes(b"".join(edit(lines) if name == split else lines))
        return matrix_args(row_dir, f"data.dir={data}")
    return prepare


def replace_line(number: int, content: bytes) -> Callable[[list[bytes]], list[bytes]]:
    return lambda lines: [*lines[:number - 1], content + b"\n", *lines[number:]]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_records(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def bad_memory(edit: Callable[[list[dict]], list[dict]]) -> Callable[[Path, Path], list[str]]:
    """Decoding dev's hypotheses from the run's BM25 memory of dev, edited, as ``--memory``."""
    def prepare(row_dir: Path, prepared: Path) -> list[str]:
        run = copy_run(row_dir, prepared)
        memory = write_records(row_dir / "memory.jsonl", edit(records(run / "memory" / "bm25" / "dev.jsonl")))
        return [*matrix_args(row_dir), "--split", "dev", "--mode", "hypotheses", "--memory", str(memory)]
    return prepare


def bad_candidates(edit: Callable[[list[dict]], list[dict]], *overrides: str) -> Callable[[Path, Path], list[str]]:
    """Choosing dev's round-1 memories from the run's round-1 candidates of dev, edited, as ``--candidates``."""
    def prepare(row_dir: Path, prepared: Path) -> list[str]:
        run = copy_run(row_dir, prepared)
        candidates = write_records(row_dir / "candidates.jsonl",
                                   edit(records(run / "round_1" / "candidates" / "dev.jsonl")))
        return [*matrix_args(row_dir, *overrides), "--split", "dev", "--round", "1", "--candidates", str(candidates)]
    return prepare


def truncated_candidates(row_dir: Path, prepared: Path) -> list[str]:
    """The run's candidates of dev cut inside their last line, as a crash in mid-write leaves them."""
    run = copy_run(row_dir, prepared)
    text = (run / "round_1" / "candidates" / "dev.jsonl").read_text(encoding="utf-8")
    last = text.rstrip("\n").rfind("\n") + 1
    candidates = row_dir / "candidates.jsonl"
    candidates.write_text(text[:text.index('"candidates"', last)], encoding="utf-8")
    return [*matrix_args(row_dir), "--split", "dev", "--round", "1", "--candidates", str(candidates)]


def with_line(number: int, edit: Callable[[dict], dict]) -> Callable[[list[dict]], list[dict]]:
    return lambda lines: [edit(line) if i == number else line for i, line in enumerate(lines, start=1)]


def top_b(line: dict) -> dict:
    """A line decoded from two memory inputs (selector.mode replace with B = 2)."""
    return {key: value * 2 for key, value in line.items()}


def damaged_run(edit: Callable[[Path], None]) -> Callable[[Path, Path], list[str]]:
    """Decoding dev's hypotheses in a copy of the run with ``edit`` applied to its run directory."""
    def prepare(row_dir: Path, prepared: Path) -> list[str]:
        edit(copy_run(row_dir, prepared))
        return [*matrix_args(row_dir), "--split", "dev", "--mode", "hypotheses"]
    return prepare


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def other_tokenizer(run: Path) -> None:
    """The demo's shipped 4,000-piece tokenizer in place of the run's own: SentencePiece made 467
    pieces of the run's 20 examples (tokenizer.vocab_size 1000 is a limit)."""
    shutil.rmtree(run / "tokenizer")
    shutil.copytree(DEMO_DATA / "pretrained" / "tokenizer", run / "tokenizer")


def bad_config(old: str, new: str) -> Callable[[Path, Path], list[str]]:
    """The lift with configs/demo.yaml's line ``old`` replaced by ``new``."""
    def prepare(row_dir: Path, prepared: Path) -> list[str]:
        row_dir.mkdir(parents=True)
        text = DEMO_CONFIG.read_text(encoding="utf-8")
        assert text.count(old) == 1
        config = row_dir / "config.yaml"
        config.write_text(text.replace(old, new), encoding="utf-8")
        return ["--config", str(config), f"run.root={row_dir / 'runs'}"]
    return prepare


def unreachable_elasticsearch(row_dir: Path, prepared: Path) -> list[str]:
    return matrix_args(row_dir, "retrieval.backend=elasticsearch", "retrieval.connect_attempts=3",
                       "retrieval.connect_backoff=0.1")


LIFT, GENERATE, SELECT = "launch/lift.py", "launch/generate.py", "launch/select_memory.py"
ONE_LINE_A_EXAMPLE = "(one line per example, in dataset order)"
ROWS = [
    Row("malformed_json", "a dataset line that is not JSON (dev line 3)", LIFT,
        bad_dataset("dev", replace_line(3, b'{"src": "Datei", "trg": "File",}')),
        "{row}/data/dev.jsonl:3: not valid JSON (Expecting property name enclosed in double quotes at column 32)"),
    Row("missing_field", "a dataset line without its target field (test line 2)", LIFT,
        bad_dataset("test", replace_line(2, b'{"src": "Datei"}')),
        "{row}/data/test.jsonl:2: missing field 'trg' (fields present: src)"),
    Row("non_string_field", "a dataset field that is not a string (dev line 4: a number)", LIFT,
        bad_dataset("dev", replace_line(4, b'{"src": "Datei", "trg": 5}')),
        "{row}/data/dev.jsonl:4: field 'trg' must be a string, got int"),
    Row("empty_file", "an empty dataset file (test)", LIFT, bad_dataset("test", lambda lines: []),
        "{row}/data/test.jsonl: no examples (the file is empty)"),
    Row("invalid_utf8", "a dataset line that is not UTF-8 (dev line 2: byte 0xff)", LIFT,
        bad_dataset("dev", replace_line(2, b'{"src": "Dat\xffei", "trg": "File"}')),
        "{row}/data/dev.jsonl:2: invalid UTF-8 (byte 0xff at column 13)"),
    Row("memories_not_a_list", "a memory file whose \"memories\" is a string (line 5)", GENERATE,
        bad_memory(with_line(5, lambda line: {"memories": "a whole memory"})),
        "{row}/memory.jsonl:5: \"memories\" must be a list of strings (ranked retrieved memories) or a list of "
        "memory inputs, each a list of strings; got a string"),
    Row("memory_line_count", "a memory file one line short of its dataset", GENERATE,
        bad_memory(lambda lines: lines[:-1]),
        f"{{row}}/memory.jsonl: {EXAMPLES - 1} lines for {EXAMPLES} dev examples {ONE_LINE_A_EXAMPLE}"),
    Row("truncated_candidates", "a candidates file cut inside its last line", SELECT, truncated_candidates,
        f"{{row}}/candidates.jsonl:{EXAMPLES}: not valid JSON (Expecting property name enclosed in double quotes "
        f"at the end of the line: the line is cut short)"),
    Row("zero_candidates", "an example with zero candidates (line 7)", SELECT,
        bad_candidates(with_line(7, lambda line: {**line, "candidates": [[]]})),
        "{row}/candidates.jsonl:7: no candidates (\"candidates\" holds no text; decoding gives at least one per "
        "memory input): decode the split again with launch/generate.py --mode candidates"),
    Row("augment_on_top_b", "selector.mode augment on candidates decoded from a top-B memory file (line 2)",
        SELECT, bad_candidates(with_line(2, top_b), "selector.mode=augment"),
        "{row}/candidates.jsonl:2: selector.mode augment grows one memory list per example, but \"memories\" holds "
        "2 memory inputs (a top-B file of selector.mode replace?): decode from a memory file of one list per "
        "example"),
    Row("corrupted_weights", "a generator's model.safetensors cut in half", GENERATE,
        damaged_run(lambda run: cut_in_half(run / "generator" / "model.safetensors")),
        "{row}/runs/demo/generator/model.safetensors: cannot read the weights, the file is damaged or cut short "
        "(Error while deserializing header: incomplete metadata, file not fully covered)"),
    Row("missing_checkpoint", "no trained generator", GENERATE,
        damaged_run(lambda run: shutil.rmtree(run / "generator")),
        "{row}/runs/demo/generator: no trained generator; run launch/train_generator.py first"),
    Row("tokenizer_mismatch", "the demo's 4,000-piece tokenizer in place of the run's own (467 pieces)", GENERATE,
        damaged_run(other_tokenizer),
        "{row}/runs/demo/generator read with the tokenizer in {row}/runs/demo/tokenizer: the tokenizer does not "
        "match the model (4000 pieces for the model's 467), so decoding would give garbage: use the tokenizer "
        "the model was trained with"),
    Row("unknown_config_key", "an unknown key in a config file (train.learning_rate)", LIFT,
        bad_config("  lr: 1.0e-3\n", "  learning_rate: 1.0e-3\n"),
        "{row}/config.yaml: unknown key 'train.learning_rate'; valid keys here: lr, warmup_steps, weight_decay, "
        "label_smoothing, max_tokens, accumulate, global_batch, clip_norm, max_epochs, max_steps, patience, "
        "precision, save_every, log_every, max_nonfinite, prefetch, compile"),
    Row("wrong_config_type", "a config value of the wrong type (train.lr: fast)", LIFT,
        bad_config("  lr: 1.0e-3\n", "  lr: fast\n"),
        "{row}/config.yaml: 'train.lr': expected float, got 'fast'"),
    Row("invalid_config_yaml", "a config file that is not valid YAML (train.lr: [1.0e-3, a list left open)", LIFT,
        bad_config("  lr: 1.0e-3\n", "  lr: [1.0e-3\n"),
        "{row}/config.yaml: not valid YAML (expected ',' or ']', but got ':' at line 37, column 15)"),
    Row("unreachable_elasticsearch", "an Elasticsearch address where no server listens (retrieval, "
        "3 attempts)", "launch/retrieve.py", unreachable_elasticsearch,
        "no Elasticsearch server answers at http://127.0.0.1:9 (SELFMEM_ES_URL) after 3 attempts over 0.3 s: "
        "[Errno 111] Connection refused; start the server or set SELFMEM_ES_URL to its address (retries: "
        "retrieval.connect_attempts, retrieval.connect_backoff)",
        relayed_as="ElasticsearchUnreachable", env={"SELFMEM_ES_URL": ES_URL}),
]


# the inputs that fail where another row's does (named first in each comment), run in the test process
IN_PROCESS = frozenset({"missing_field", "non_string_field", "empty_file", "invalid_utf8",  # malformed_json
                        "memory_line_count",  # memories_not_a_list
                        "zero_candidates", "augment_on_top_b",  # truncated_candidates
                        "missing_checkpoint", "tokenizer_mismatch",  # corrupted_weights
                        "wrong_config_type", "invalid_config_yaml"})  # unknown_config_key


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    return launch_all(ROWS, tmp_path_factory.mktemp("bad-inputs"), IN_PROCESS)


def stages_done(row_dir: Path) -> list[str]:
    state = row_dir / RUN / "state.json"
    stages = json.loads(state.read_text())["stages"] if state.exists() else {}
    return [name for name, record in stages.items() if record["done"]]


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_bad_input_ends_every_rank_with_one_line(row, outcomes):
    row_dir, outcome = outcomes[row.name]
    torchrun = row.name not in IN_PROCESS
    expected = row.lines(row_dir, ranks=2 if torchrun else 1)
    assert outcome.returncode == 1, outcome.output[-4000:]
    # as each rank recorded it for torchrun's summary (its error file), and as it printed it: one line each
    assert {rank: line for rank, (_, line) in outcome.ranks.items()} == expected, outcome.output[-4000:]
    assert sorted(outcome.error_lines) == sorted(expected.values())
    # no rank printed a traceback: the one there is torchrun's own, ending in its summary
    assert outcome.output.count("Traceback (most recent call last):") == int(torchrun)
    # a rank stopped by torchrun after the other's failure exits by SIGTERM (-15), after its line
    assert all(code != 0 for code, _ in outcome.ranks.values())
    assert outcome.seconds < WITHIN_S
    if row.script == LIFT:
        assert stages_done(row_dir) == []
    if "SELFMEM_ES_URL" in row.env:
        for secret in (ES_PASSWORD, base64.b64encode(f"elastic:{ES_PASSWORD}".encode()).decode()):
            assert secret not in outcome.output
