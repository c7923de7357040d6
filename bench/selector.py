"""Selector scoring throughput: (source, candidate) pairs scored per second, 1 process and 2.

    python bench/selector.py [--pairs 20000] [--repeats 3]

A selector over a generator-sized encoder (configs/libreoffice_ende.yaml's: 3 layers,
d 256, 8,000 ids; random weights, which cost the same as trained ones) scores the same
pairs, of the lengths of real LibreOffice source + candidate pairs (60 tokens on average),
with ``selfmem.select.stage.score_pairs``: once in this process (all cores), once under
``torchrun --nproc_per_node 2`` (gloo, one core each, scores all-gathered). Printed:
pairs/s of each (median of --repeats) and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from selfmem.common.distributed import DistEnv, close_distributed, init_distributed  # noqa: E402
from selfmem.models import ModelConfig  # noqa: E402
from selfmem.models.selector import GeneratorEncoderBackbone, Selector  # noqa: E402
from selfmem.select.stage import score_pairs  # noqa: E402


def setup(num_pairs: int) -> tuple[Selector, list[list[int]]]:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=8000, d_model=256, encoder_layers=3, decoder_layers=1, heads=4, ffn_dim=1024,
                         max_positions=256)
    selector = Selector(GeneratorEncoderBackbone(config)).eval()
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(20, 100, (num_pairs,), generator=g).tolist()
    return selector, [[1] + torch.randint(5, 8000, (n - 1,), generator=g).tolist() for n in lengths]


def time_scoring(env: DistEnv, num_pairs: int, repeats: int) -> list[float]:
    selector, pairs = setup(num_pairs)
    score_pairs(selector, pairs[:200], 0, env, 16384)  # warm-up
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        scores = score_pairs(selector, pairs, 0, env, 16384)
        rates.append(len(scores) / (time.perf_counter() - started))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # the torchrun side
    args = parser.parse_args()
    if args.worker:
        env = init_distributed()
        rates = time_scoring(env, args.pairs, args.repeats)
        if env.is_main:
            print(json.dumps(rates))
        close_distributed()
        return

    one = time_scoring(DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1), args.pairs, args.repeats)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
               "--worker", "--pairs", str(args.pairs), "--repeats", str(args.repeats)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    two = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{args.pairs} pairs, {torch.get_num_threads()} threads in 1 process, 1 thread each in 2")
    for name, rates in (("1 process", one), ("2 processes", two)):
        print(f"  {name:12s} {statistics.median(rates):8.0f} pairs/s (runs: {', '.join(f'{r:.0f}' for r in rates)})")
    print(f"  ratio 2 / 1: {statistics.median(two) / statistics.median(one):.2f}x")


if __name__ == "__main__":
    main()
