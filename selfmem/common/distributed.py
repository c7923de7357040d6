"""torch.distributed under torchrun: process-group set-up, sharding and object collectives.

Every function also works in a plain single process (no torchrun): world size 1,
rank 0, collectives that return their input.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from selfmem.common.config import DistConfig

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job: its rank among ``world_size`` processes, and among the
    ``local_world_size`` on its node (``local_rank``, which picks its GPU)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    def owns(self, i: int) -> bool:
        """Whether item ``i`` (an example, a batch, a stream) is this rank's: every
        world_size-th, from the rank's own."""
        return i % self.world_size == self.rank

    def share(self, items: list[T]) -> list[T]:
        """This rank's ``items``: those it ``owns``, in order (a step's micro-batches are split
        as accumulation takes them)."""
        return items[self.rank::self.world_size]

    def cpu_threads(self) -> int:
        """This process's fair share of the node's CPU cores."""
        return max(1, (os.cpu_count() or 1) // self.local_world_size)


class RankFailed(RuntimeError):
    """Raised on the other ranks when rank 0's share of the work failed; its message holds the cause."""


def raised_on_every_rank(exc: BaseException) -> bool:
    """Whether every rank raises ``exc`` or its relay together (a failure inside ``on_main``),
    so that all of them reach a collective after it."""
    return isinstance(exc, RankFailed) or getattr(exc, "raised_on_every_rank", False)


def restart_store(env: DistEnv, timeout: timedelta) -> dist.Store | None:
    """The process group's store when torchrun's agent hosts it: the keys of this restart.

    The agent keeps one store for the whole job, and torch's process group reuses its keys:
    after a ``torchrun --max-restarts`` restart the new ranks read the addresses the killed
    ones published and fail to connect, or wait until ``dist.timeout``. The restart count
    is the same on every rank of a node (one agent starts them all), but each node counts
    its own, and none counts a change of members: on several nodes that restart the counts
    can part, and every later group wait out ``dist.timeout``, hence a warning there. None
    elsewhere: torch makes the store.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return None
    restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    if env.world_size > env.local_world_size and restarts > 0 and env.local_rank == 0:
        log.warning("several nodes share torchrun's agent store, whose restart counts each node keeps "
                    "by itself: set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (a store for each rendezvous "
                    "round) so that the ranks meet again after a restart or a change of nodes")
    store, _, _ = next(dist.rendezvous("env://", env.rank, env.world_size, timeout=timeout))
    store.set_timeout(timeout)
    return dist.PrefixStore(f"selfmem/restart_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def init_distributed(timeout_s: float = DistConfig.timeout) -> DistEnv:
    """Join the torchrun process group (NCCL on GPUs, gloo on CPUs) when launched by torchrun.

    A collective that waits longer than ``timeout_s`` seconds (config ``dist.timeout``)
    raises instead of hanging: a rank may be gone without its launcher noticing.
    """
    env = DistEnv(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
    )
    if timeout_s <= 0:
        raise ValueError(f"dist.timeout must be a positive number of seconds, got {timeout_s}")
    if env.world_size > 1 and not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        group = dict(store=restart_store(env, timeout), rank=env.rank, world_size=env.world_size, timeout=timeout)
        if torch.cuda.is_available():
            torch.cuda.set_device(env.local_rank)
            dist.init_process_group("nccl", device_id=env.device, **group)
        else:
            dist.init_process_group("gloo", **group)
    return env


def close_distributed() -> None:
    """Leave the process group (a no-op in a single process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if dist.is_initialized():
        dist.barrier()


def shard_range(n: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous block of ``range(n)``; block sizes differ by at most one."""
    per, extra = divmod(n, world_size)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (rank < extra))


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0; None on the others."""
    if not dist.is_initialized():
        return [obj]
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered



def in_order(parts: list[dict[int, Any]], count: int) -> list[Any]:
    """The values of every rank's ``{index: value}`` part (gathered) as one list, by index
    ``0 .. count - 1``."""
    merged = {i: value for part in parts for i, value in part.items()}
    return [merged[i] for i in range(count)]


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agreed(check: Callable[[], T]) -> T:
    """Rank 0's answer to ``check``, on every rank: for decisions that collectives follow
    (whether a file exists can differ between nodes, or between moments on one)."""
    return broadcast_from_main(on_main(check))


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def on_main(work: Callable[[], T]) -> T | None:
    """Run ``work`` on rank 0 only (its result there, None elsewhere), as a barrier.

    Every rank-0-only step goes through here. If it raises, every rank raises: rank 0 its
    own error, the others ``RankFailed`` with its cause, instead of waiting at their next
    collective for a rank that is gone.
    """
    result, error = None, None
    if not dist.is_initialized() or dist.get_rank() == 0:
        try:
            result = work()
        except Exception as exc:  # noqa: BLE001 - re-raised below, after the others are told
            error = exc
    message = broadcast_from_main(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        error.raised_on_every_rank = True  # the others raise RankFailed now
        raise error
    if message is not None:
        raise RankFailed(f"rank 0 failed: {message}")
    return result
