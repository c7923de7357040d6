"""Shared test helpers: repo paths and real torchrun launches on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO_DATA = REPO / "data" / "demo"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
DEMO_CONFIG = REPO / "configs" / "demo.yaml"

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


def run_single(script: str, args: list[str], timeout: float = 300) -> str:
    """Run a launch script as one plain process (no torchrun); returns its output."""
    proc = subprocess.Popen([sys.executable, str(REPO / script), *args], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return _check([proc], timeout)[0]


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
