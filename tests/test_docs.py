"""Every command in README.md and docs/*.md names what exists: its script (or make target), its
``--config`` file, and real config keys with valid values in its dotted overrides; every
launch, bench and data script named answers ``--help``; every launch script's help says what
it reads, what it writes and an example.

Commands come from fenced code blocks and inline code spans (``\\`` continuations joined,
comments, leading ``VAR=value`` assignments and ``export`` lines dropped). Values holding ``$``
or ``...``, and upper-case names such as ``C`` or ``configs/X.yaml``, are placeholders: only
their key is checked.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, _env

from selfmem.common.config import Config, ConfigError, load_config

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LAUNCH_SCRIPTS = sorted((REPO / "launch").glob("*.py"))
SHELL_LANGUAGES = ("", "bash", "sh", "shell", "console", "zsh")
OVERRIDE = re.compile(r"^([a-z_]+(?:\.[a-z_]+)+)=(.*)$", re.S)
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}


@dataclass(frozen=True)
class Command:
    """One simple command that runs a repository script or a make target."""

    text: str  # as the document writes it (continuations joined)
    script: str | None  # a path relative to the repository
    make_targets: tuple[str, ...]
    config: str | None  # the --config argument
    overrides: tuple[str, ...]  # dotted section.key=value arguments


def code_texts(markdown: str) -> list[str]:
    """The shell lines of fenced blocks (continuations joined) and the inline code spans."""
    texts, prose, fence, language, pending = [], [], None, "", ""
    for line in markdown.splitlines():
        opening = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)
        if fence is None and opening:
            fence, language = opening.group(1), opening.group(2).lower()
        elif fence is not None and line.strip().startswith(fence):
            fence = None
        elif fence is not None:
            if language in SHELL_LANGUAGES:
                line = re.sub(r"^\s*\$ ", "", line)  # a console prompt
                if line.rstrip().endswith("\\"):
                    pending += line.rstrip()[:-1] + " "
                else:
                    texts.append(pending + line)
                    pending = ""
        else:
            prose.append(line)
    texts += re.findall(r"(?<!`)`([^`\n]+)`(?!`)", "\n".join(prose))
    return texts


def words(text: str) -> list[str]:
    """Shell words of ``text`` without comments; separators (``&&``, ``;``, ``|``, ...) as their own words."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote: prose, not a command
        return []


def simple_commands(text: str) -> list[list[str]]:
    """The simple commands of a shell line, without leading assignments; ``export`` lines dropped."""
    commands, current = [], []
    for word in [*words(text), ";"]:
        if word in SEPARATORS:
            while current and ASSIGNMENT.match(current[0]):
                current.pop(0)
            if current and current[0] != "export":
                commands.append(current)
            current = []
        else:
            current.append(word.strip("[]"))  # usage brackets: [--config C]
    return commands


def parse(text: str, argv: list[str]) -> Command | None:
    """``argv`` as a Command when it runs a repository script or make; None otherwise."""
    runner = Path(argv[0]).name
    if runner == "make":
        targets = tuple(w for w in argv[1:] if not w.startswith("-") and "=" not in w)
        return Command(text, None, targets, None, ())
    if re.fullmatch(r"python3?(\.\d+)?", runner):
        if len(argv) > 2 and argv[1] in ("-m", "-c") and argv[2] != "torch.distributed.run":
            return None  # a module (pytest, pip) or inline code, not a repository script
        suffix = ".py"
    elif runner == "torchrun":
        suffix = ".py"
    elif runner in ("bash", "sh"):
        suffix = ".sh"
    else:
        return None
    position = next((i for i, w in enumerate(argv[1:], 1) if w.endswith(suffix)), None)
    if position is None:
        return None
    args = argv[position + 1:]
    config = next((args[i + 1] for i, w in enumerate(args[:-1]) if w == "--config"), None)
    config = next((w.removeprefix("--config=") for w in args if w.startswith("--config=")), config)
    return Command(text, argv[position], (), config, tuple(w for w in args if OVERRIDE.match(w)))


def doc_commands(doc: Path) -> list[Command]:
    """Every command of ``doc`` that runs a repository script or a make target."""
    found = []
    for text in code_texts(doc.read_text(encoding="utf-8")):
        found += [c for argv in simple_commands(text) if (c := parse(text.strip(), argv)) is not None]
    return found


def is_placeholder(value: str) -> bool:
    return "$" in value or "..." in value or re.search(r"(^|/)[A-Z][A-Z_]*(\.\w+)?$", value) is not None


def make_targets() -> set[str]:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    return {t for line in re.findall(r"^([\w.\- ]+):(?!=)", makefile, re.M) for t in line.split()}


def has_key(config: Config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            return False
        node = getattr(node, part)
    return not dataclasses.is_dataclass(node)


def command_problems(command: Command) -> list[str]:
    """What in ``command`` does not exist or does not load, each naming the path or key."""
    if command.script is None:
        return [f"make target '{t}' is not in the Makefile" for t in command.make_targets if t not in make_targets()]
    if not (REPO / command.script).is_file():
        return [f"script {command.script} does not exist"]
    problems = []
    config_path = command.config
    if config_path is not None and is_placeholder(config_path):
        config_path = None
    if config_path is not None and not (REPO / config_path).is_file():
        problems.append(f"config {config_path} does not exist")
        config_path = None
    placeholders = [o for o in command.overrides if is_placeholder(OVERRIDE.match(o).group(2))]
    values = [o for o in command.overrides if o not in placeholders]
    try:
        config = load_config(REPO / config_path if config_path else None, values)
    except ConfigError as e:
        return problems + [str(e)]
    return problems + [f"override {o!r}: unknown key '{OVERRIDE.match(o).group(1)}'" for o in placeholders
                       if not has_key(config, OVERRIDE.match(o).group(1))]


def doc_id(doc: Path) -> str:
    return str(doc.relative_to(REPO))


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_doc_commands_name_real_scripts_configs_and_keys(doc):
    failures = [f"{doc_id(doc)}: `{c.text}`\n    {p}" for c in doc_commands(doc) for p in command_problems(c)]
    assert not failures, "\n".join(failures)


# Each --help in its own interpreter would import torch and transformers again, about 10 s per
# script on 2 busy cores; one child process runs them all, each as __main__ with its own argv
# and sys.path[0], as `python SCRIPT --help` does.
HELP_RUNNER = """
import contextlib, io, json, os, runpy, sys
results = {}
for script in sys.argv[1:]:
    out = io.StringIO()
    sys.argv, sys.path[0] = [script, "--help"], os.path.dirname(os.path.abspath(script))
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException as e:
            code = f"raised {e!r}"
    results[script] = [code, out.getvalue()]
print(json.dumps(results))
"""


def run_help(scripts: list[str]) -> dict[str, tuple[int | str, str]]:
    """``SCRIPT --help``'s exit code and output for each script (relative paths)."""
    python = [s for s in scripts if s.endswith(".py")]
    results = {}
    if python:
        proc = subprocess.run([sys.executable, "-c", HELP_RUNNER, *python], cwd=REPO, env=_env(), text=True,
                              capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.update(json.loads(proc.stdout.splitlines()[-1]))
    for script in (s for s in scripts if s.endswith(".sh")):
        proc = subprocess.run(["bash", script, "--help"], cwd=REPO, env=_env(), text=True, capture_output=True,
                              timeout=30)
        results[script] = [proc.returncode, proc.stdout + proc.stderr]
    return results


def named_scripts() -> list[str]:
    """The launch, bench and data scripts the documents name, and every launch script."""
    named = {c.script for doc in DOCS for c in doc_commands(doc) if c.script is not None}
    named = {s for s in named if s.split("/")[0] in ("launch", "bench", "data") and (REPO / s).is_file()}
    return sorted(named | {str(p.relative_to(REPO)) for p in LAUNCH_SCRIPTS})


@pytest.fixture(scope="module")
def helps() -> dict[str, tuple[int | str, str]]:
    return run_help(named_scripts())


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_doc_scripts_answer_help(doc, helps):
    scripts = sorted({c.script for c in doc_commands(doc) if c.script in helps})
    failures = [f"{doc_id(doc)}: `{s} --help` exited {helps[s][0]}:\n{helps[s][1][-1500:]}" for s in scripts
                if helps[s][0] != 0]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("script", LAUNCH_SCRIPTS, ids=lambda p: p.name)
def test_launch_help_says_what_it_reads_writes_and_an_example(script, helps):
    code, text = helps[str(script.relative_to(REPO))]
    assert code == 0, text
    option = "input output" if script.name == "convert_tsv.py" else "--config CONFIG"
    assert option in text
    assert "\nreads:" in text and "\nwrites:" in text
    assert re.search(rf"\nexample:\n  (torchrun|python) .*launch/{script.name} ", text), text


SAMPLE = """# A sample

Run `python launch/lift.py --config configs/demo.yaml train.lr=5e-4` or, on N nodes:

```bash
export SELFMEM_ES_URL=https://es.example.org:9200   # set first
OMP_NUM_THREADS=1 torchrun --nnodes N --nproc_per_node G --rdzv_endpoint HOST:PORT \\
    launch/retrieve.py --config configs/demo.yaml retrieval.topk=4 generator.init=$CHECKPOINT  # a comment
make demo && make nonsense
python bench/copy_speed.py [--config C] [k=v ...]
```

```yaml
run:
  name: python launch/missing.py
```
"""


def test_commands_are_found_in_blocks_and_spans():
    found = [(c.script, c.make_targets, c.config, c.overrides)
             for text in code_texts(SAMPLE) for argv in simple_commands(text) if (c := parse(text, argv))]
    assert found == [
        ("launch/retrieve.py", (), "configs/demo.yaml", ("retrieval.topk=4", "generator.init=$CHECKPOINT")),
        (None, ("demo",), None, ()), (None, ("nonsense",), None, ()),
        ("bench/copy_speed.py", (), "C", ()),
        ("launch/lift.py", (), "configs/demo.yaml", ("train.lr=5e-4",)),
    ]


@pytest.mark.parametrize("command,problems", [
    ("python launch/lift.py --config configs/demo.yaml train.lr=5e-4 generator.init=$X", []),
    ("python launch/lift.py --config configs/demo.yaml train.learning_rate=5e-4",
     ["override 'train.learning_rate=5e-4': unknown key 'train.learning_rate'; valid keys here: lr, warmup_steps, "
      "weight_decay, label_smoothing, max_tokens, accumulate, global_batch, clip_norm, max_epochs, max_steps, patience, "
      "precision, save_every, log_every, max_nonfinite, prefetch, compile"]),
    ("python launch/lift.py --config configs/demo.yaml generator.memory=both",
     ["override 'generator.memory=both': 'generator.memory': expected 'none' | 'joint' | 'dual', got 'both'"]),
    ("python launch/lift.py --config configs/missing.yaml generator.nonsense=$X",
     ["config configs/missing.yaml does not exist", "override 'generator.nonsense=$X': unknown key "
      "'generator.nonsense'"]),
    ("torchrun --nproc_per_node 2 launch/missing.py --config configs/demo.yaml", ["script launch/missing.py does not "
                                                                                  "exist"]),
    ("make demo nonsense", ["make target 'nonsense' is not in the Makefile"]),
])
def test_each_bad_path_or_key_is_named(command, problems):
    (argv,) = simple_commands(command)
    assert command_problems(parse(command, argv)) == problems
