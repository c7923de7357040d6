"""The launch scripts' entry point: a failed run ends with one line, ``error: <message>``.

Under torchrun every rank prints that line, and torch elastic's ``record`` writes it to the
error file that torchrun's closing summary shows as the root cause (without it the summary
says ``error_file: <N/A>``, and the message sits far above it in the ranks' tracebacks).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable

import torch
from torch.distributed.elastic.multiprocessing.errors import ErrorHandler, record

from selfmem.common.config import Config, ConfigError, parse_args, save_config
from selfmem.common.cpu_memory import keep_freed_memory
from selfmem.common.data import DataError
from selfmem.common.distributed import (DistEnv, RankFailed, barrier, close_distributed, init_distributed,
                                        on_main, raised_on_every_rank)
from selfmem.common.io import one_line
from selfmem.common.run import RunPaths

# the message says all there is to say: a bad config or data file, or another rank's
# failure (that rank prints its own traceback)
WITHOUT_TRACEBACK = (ConfigError, DataError, RankFailed)
# the types whose messages this project writes for users; others (KeyError, TypeError, ...)
# are bugs, and their type name is part of the message
MESSAGE_ONLY = (ValueError, RuntimeError, OSError)


def error_line(exc: BaseException) -> str:
    """The one line a failed run ends with: ``error: <message>``."""
    message = str(exc) if isinstance(exc, MESSAGE_ONLY) and str(exc) else f"{type(exc).__name__}: {exc}"
    return f"error: {one_line(message)}"


def error_report(exc: BaseException) -> str:
    """What a failed rank prints: the traceback (unless WITHOUT_TRACEBACK), then the error line.
    Call it while ``exc`` is being handled."""
    trace = "" if isinstance(exc, WITHOUT_TRACEBACK) else traceback.format_exc()
    return trace + error_line(exc)


class _ErrorFile(ErrorHandler):
    """torch elastic's error file, holding this rank's report, for torchrun's summary."""

    def record_exception(self, e: BaseException) -> None:
        path = self._get_error_file_path()  # TORCHELASTIC_ERROR_FILE, set by torchrun
        if path:
            data = {"message": {"message": error_line(e),
                                "extraInfo": {"py_callstack": error_report(e), "timestamp": str(int(time.time()))}}}
            with open(path, "w", encoding="utf-8") as f:
                json.dump(data, f)


def entry_point(main: Callable[[], object]) -> None:
    """Run a launch script's ``main``; if it raises, print ``error_report`` and exit with status 1."""
    try:
        record(main, _ErrorFile())()
    except Exception as exc:  # noqa: BLE001 - reported in full, then the process ends
        # one write, newline included: ranks share one stderr, and print's separate write of
        # the newline let another rank's line join this one
        sys.stderr.write(error_report(exc) + "\n")
        sys.stderr.flush()
        if raised_on_every_rank(exc):
            barrier()  # torchrun stops the others as soon as one rank exits: each prints its line first
        # through the interpreter's teardown, slower than end_finished_rank: a failure that
        # each rank meets on its own (a config error) leaves the others time for their line
        sys.exit(1)


def end_finished_rank() -> None:
    """End a finished rank of a multi-process run here, skipping the interpreter's teardown.

    Gloo's threads outlive ``destroy_process_group`` (torch's DistributedDataParallel keeps the
    process group alive in C++); torn down with the interpreter they now and then killed a rank
    whose work was done (SIGSEGV after "terminate called without an active exception"), failing
    the job. Every file is written and closed by now.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def start_run(config: Config, env: DistEnv) -> RunPaths:
    """Create the run directory and record the resolved config (rank 0); set up logging."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"%(asctime)s [selfmem rank {env.rank}] %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("selfmem")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO if env.is_main else logging.WARNING)
    paths = RunPaths(config.run_dir)

    def create() -> None:
        paths.root.mkdir(parents=True, exist_ok=True)
        save_config(config, paths.root)

    on_main(create)
    return paths


def use_tf32(enabled: bool) -> None:
    """Run fp32 matrix products on NVIDIA GPUs in TensorFloat-32 (``run.tf32``), or in full fp32."""
    torch.backends.cuda.matmul.fp32_precision = "tf32" if enabled else "ieee"


def launch(doc: str, stage: Callable[[Config, DistEnv, RunPaths, argparse.Namespace], object],
           add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """A launch script's whole run: parse ``--config FILE [key=value ...]`` (and the flags of
    ``add_arguments``), keep freed CPU memory for reuse (``keep_freed_memory``), set
    ``run.tf32``, join the process group with ``dist.timeout``, set up the run directory,
    run ``stage(config, env, paths, args)`` and leave; a failure as ``entry_point`` reports it.
    ``doc`` is the script's docstring (its ``--help``)."""
    def main() -> None:
        keep_freed_memory()
        config, args = parse_args(doc, add_arguments=add_arguments)
        use_tf32(config.run.tf32)
        env = init_distributed(config.dist.timeout)
        stage(config, env, start_run(config, env), args)
        close_distributed()
        if env.world_size > 1:
            end_finished_rank()

    entry_point(main)
