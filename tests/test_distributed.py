"""Rank-0-only work and the process-group timeout (the 2-process runs are in test_retrieve_distributed.py)."""

import logging
from datetime import timedelta

import pytest
import torch.distributed as dist

from selfmem.common import distributed
from selfmem.common.distributed import DistEnv, RankFailed, init_distributed, on_main, restart_store


def as_rank(monkeypatch, rank: int, rank_0_message: str | None = None) -> list:
    """Make on_main see an initialised group in which this process is ``rank``; returns the
    messages it broadcasts (rank 0's is ``rank_0_message`` on the other ranks)."""
    sent = []

    def broadcast(obj):
        sent.append(obj)
        return obj if rank == 0 else rank_0_message

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: rank)
    monkeypatch.setattr(distributed, "broadcast_from_main", broadcast)
    return sent


def test_on_main_tells_the_other_ranks_that_rank_0_failed(monkeypatch):
    sent = as_rank(monkeypatch, 0)

    def fail():
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left on device"):
        on_main(fail)
    assert sent == ["OSError: No space left on device"]


def test_on_main_raises_rank_0s_cause_on_the_other_ranks(monkeypatch):
    sent = as_rank(monkeypatch, 1, rank_0_message="OSError: No space left on device")
    ran = []
    with pytest.raises(RankFailed) as info:
        on_main(lambda: ran.append(1))
    assert str(info.value) == "rank 0 failed: OSError: No space left on device"
    assert ran == [] and sent == [None]


def test_on_main_returns_rank_0s_result_there_and_none_elsewhere(monkeypatch):
    as_rank(monkeypatch, 0)
    assert on_main(lambda: 42) == 42
    as_rank(monkeypatch, 1)
    assert on_main(lambda: 42) is None


def test_the_process_group_gets_dist_timeout(monkeypatch):
    calls = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kwargs: calls.append((backend, kwargs)))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)  # not under torchrun: torch makes the store
    env = init_distributed(timeout_s=7)
    assert (env.rank, env.world_size) == (1, 2)
    assert calls == [("gloo", {"store": None, "rank": 1, "world_size": 2, "timeout": timedelta(seconds=7)})]


def test_each_torchrun_restart_keeps_its_keys_apart_in_the_agents_store(monkeypatch):
    # torchrun's agent hosts one store for the whole job: a restarted group that reads the keys
    # of the killed one gets the dead ranks' addresses
    agent = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(agent.port))
    env = DistEnv(rank=1, world_size=2, local_rank=1, local_world_size=2)
    for restart in ("0", "1"):
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", restart)
        restart_store(env, timedelta(seconds=10)).set("rank_0", f"address of try {restart}")
    assert agent.get("selfmem/restart_0/rank_0") == b"address of try 0"
    assert agent.get("selfmem/restart_1/rank_0") == b"address of try 1"


def test_several_nodes_on_the_agents_store_are_told_to_give_each_round_a_store(monkeypatch, caplog):
    agent = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(agent.port))
    node_2 = DistEnv(rank=2, world_size=4, local_rank=0, local_world_size=2)
    restart_store(node_2, timedelta(seconds=10))  # no --max-restarts: the counts stay 0
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    for env in (DistEnv(rank=1, world_size=2, local_rank=1, local_world_size=2),  # one node
                DistEnv(rank=3, world_size=4, local_rank=1, local_world_size=2),  # not a node's first rank
                node_2):
        restart_store(env, timedelta(seconds=10))
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "several nodes share torchrun's agent store, whose restart counts each node keeps by itself: set "
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (a store for each rendezvous round) so that the ranks meet again "
        "after a restart or a change of nodes"]


def test_a_timeout_that_is_not_positive_is_refused():
    with pytest.raises(ValueError) as info:
        init_distributed(timeout_s=0)
    assert str(info.value) == "dist.timeout must be a positive number of seconds, got 0"
