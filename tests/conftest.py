"""Shared test helpers: repo paths and real torchrun launches on loopback."""

from __future__ import annotations

import contextlib
import faulthandler
import io
import logging
import os
import runpy
import socket
import subprocess
import sys
import traceback
import warnings
from pathlib import Path
from unittest import mock

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
DEMO_DATA = REPO / "data" / "demo"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
DEMO_CONFIG = REPO / "configs" / "demo.yaml"

# the slowest test files (2026-12-04: 50-110 s each on 2 workers), slowest first: pytest-xdist
# hands out whole files (--dist loadfile) in collection order, and a long file begun last would
# run on while the other worker idles (the Makefile turns off xdist's ordering by test count)
SLOWEST_FIRST = ["test_lift.py", "test_train_generator.py", "test_results_translation.py", "test_train_compile.py",
                 "test_select.py", "test_selector_minilm.py", "test_gpu_translation_script.py", "test_generate.py",
                 "test_bad_inputs.py", "test_retrieve_distributed.py", "test_beam.py"]


def pytest_collection_modifyitems(items):
    """The files of ``SLOWEST_FIRST`` first, in its order; the rest after, in collection order."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOWEST_FIRST)))


# one torch thread in each test process, as the subprocesses' OMP_NUM_THREADS=1: the workers
# share the machine's cores, and a thread waiting on a busy core wastes its time slice
torch.set_num_threads(1)

# demo.yaml overrides for a run that trains from scratch, as the demo's shipped checkpoints were
FROM_SCRATCH = ["tokenizer.path=null", "generator.init=null", "lift.no_memory_init=null",
                "generator.joint_positions=continue", "train.max_epochs=4"]
# demo.yaml overrides for a run that takes seconds: a small vocabulary, corpus and model
TINY = [
    *FROM_SCRATCH,
    "tokenizer.vocab_size=1000", "data.max_examples=300",
    "generator.d_model=32", "generator.encoder_layers=1", "generator.decoder_layers=1", "generator.heads=2",
    "generator.ffn_dim=64", "generator.max_source_len=32", "generator.max_memory_len=32",
    "generator.max_target_len=32", "train.max_tokens=1200", "train.warmup_steps=10", "train.lr=1e-3",
    "train.log_every=1",
]


# Rendezvous ports come from a block of this pytest-xdist worker's own, below the kernel's
# ephemeral range (32768 and up): a port picked there and released could be taken by another
# worker's sockets before torchrun binds it again.
PORTS_PER_WORKER = 500  # 25 workers fit below 32768
_next_port = iter(range(PORTS_PER_WORKER))


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (loopback only), from this test worker's own block."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    first = 20000 + worker * PORTS_PER_WORKER
    for offset in _next_port:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", first + offset))
            except OSError:  # in use, or still in TIME_WAIT from an earlier test
                continue
            return first + offset
    raise RuntimeError(f"no free port left in {first}-{first + PORTS_PER_WORKER - 1}")


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _check(procs: list[subprocess.Popen], timeout: float) -> list[str]:
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outputs):
        if p.returncode != 0:
            pytest.fail(f"{' '.join(map(str, p.args))} exited {p.returncode}:\n{out[-6000:]}")
    return outputs


@contextlib.contextmanager
def _working_directory(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_in_process(script: str, args: list[str], timeout: float = 300) -> tuple[int, str]:
    """Run a launch script as one plain process would (no torchrun), inside this test process:
    a new interpreter spends seconds importing torch, most of a small run's time. The script
    runs as ``__main__`` with its arguments, from the repository; returns its exit status and
    what it printed and logged (an exception that escapes it: status 1, its traceback printed,
    as Python would). What a launch sets for its whole process is put back after it: the
    logger, TF32, and glibc's malloc settings, left as they were. A run still going after
    ``timeout`` seconds ends this process with every thread's traceback (a hang, not a slow run)."""
    output = io.StringIO()
    logger = logging.getLogger("selfmem")
    argv, handlers, level = sys.argv, logger.handlers[:], logger.level
    tf32 = torch.backends.cuda.matmul.fp32_precision
    sys.argv = [str(REPO / script), *map(str, args)]
    faulthandler.dump_traceback_later(timeout, exit=True, file=sys.__stderr__)
    code = 0
    try:
        with _working_directory(REPO), contextlib.redirect_stdout(output), contextlib.redirect_stderr(output), \
                warnings.catch_warnings(), mock.patch("selfmem.common.entry.keep_freed_memory"):
            # torch elastic's record() enables faulthandler on stderr, here a buffer without a file descriptor
            warnings.filterwarnings("ignore", "Unable to enable fault handler")
            runpy.run_path(str(REPO / script), run_name="__main__")
    except SystemExit as exc:
        if isinstance(exc.code, int) or exc.code is None:
            code = exc.code or 0
        else:  # sys.exit("message"): Python prints it and exits 1
            output.write(f"{exc.code}\n")
            code = 1
    except Exception:  # noqa: BLE001 - as an uncaught exception ends a process
        output.write(traceback.format_exc())
        code = 1
    finally:
        faulthandler.cancel_dump_traceback_later()
        sys.argv = argv
        logger.handlers[:] = handlers
        logger.setLevel(level)
        torch.backends.cuda.matmul.fp32_precision = tf32
    return code, output.getvalue()


def run_single(script: str, args: list[str]) -> str:
    """``run_in_process``, failing the test if the script exits non-zero; returns its output."""
    code, output = run_in_process(script, args)
    if code:
        pytest.fail(f"{script} {' '.join(map(str, args))} exited {code}:\n{output[-6000:]}")
    return output


def start_torchrun(script: str, args: list[str], nproc: int = 2, nnodes: int = 1,
                   env: dict[str, str] | None = None, launcher: list[str] = ()) -> list[subprocess.Popen]:
    """Start a launch script under torchrun with gloo on 127.0.0.1; each launcher in its own session.

    ``nnodes > 1`` starts one torchrun launcher per simulated node, each with
    ``--node_rank`` set, all meeting at one loopback address. ``env`` adds environment variables,
    ``launcher`` torchrun options (``--max-restarts 3``).
    """
    port = free_port()
    procs = []
    for node_rank in range(nnodes):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--node_rank", str(node_rank),
               "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1", "--master_port", str(port), *launcher,
               str(REPO / script), *args]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env={**_env(), **(env or {})}, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, start_new_session=True))
    return procs


def run_torchrun(script: str, args: list[str], nproc: int = 2, nnodes: int = 1, timeout: float = 300,
                 launcher: list[str] = (), env: dict[str, str] | None = None) -> list[str]:
    """Run a launch script under torchrun (see ``start_torchrun``) and fail the test if it fails;
    returns each launcher's output."""
    return _check(start_torchrun(script, args, nproc, nnodes, env, launcher), timeout)
