"""Peak memory of rank 0's shard merge and of the selection stage, as the split grows.

    python bench/scale.py [--examples 10000 100000] [--candidates 8] [--before 1427e4f] [--root DIR]

Synthetic data, built from the demo's sentences (seeded): a dev split of N examples and a
candidates file of --candidates candidates per example. Each case runs in a fresh child
process, which reports the growth of its resident set (its peak during the work, VmHWM reset
just before it, less the resident set then, after the imports and set-up; Linux) and its
CPU seconds (all threads; wall time on a shared machine says more about the other work):

- merge, stream: ``selfmem.common.shards.merge_shards`` over 4 ranks' shards of the
  candidates file's lines (what rank 0 does after decoding);
- merge, hold: what rank 0 did before: every shard's records read into one dict, then written;
- selection, now: ``selfmem.select.stage.select_memories`` in one process (a rank scores its
  share, but before and now every rank reads and encodes a whole chunk, or split), with a
  tiny random selector (the generator-encoder backbone, 1 layer of width 16) and the
  demo's tokenizer;
- selection, before: the same function as it was at git revision --before (read from git;
  skipped if git or the revision is not there).

Printed: one table, a row per N, with the data's size and each case's growth in MB and CPU
seconds.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from selfmem.common.io import atomic_write_jsonl, json_line  # noqa: E402
from selfmem.common.shards import shard_paths, write_shard  # noqa: E402

CASES = ("merge-stream", "merge-hold", "select-now", "select-before")
RANKS = 4  # shards of the merge
TINY_SELECTOR = dict(d_model=16, encoder_layers=1, decoder_layers=1, heads=2, ffn_dim=32, max_positions=256)


def status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS: resident now; VmHWM: peak)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1]) * 1024


def reset_peak() -> None:
    """Start VmHWM afresh at the resident set now (Linux), so a peak of the imports does not count."""
    Path("/proc/self/clear_refs").write_text("5")


def cpu_seconds() -> float:
    """CPU time of this process, all threads: less swayed than wall time by other work on the machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def build_data(root: Path, examples: int, candidates: int) -> None:
    """The dev split, its candidates file and the merge's shards under ``root``."""
    demo = [json.loads(line) for line in (REPO / "data" / "demo" / "train.jsonl").read_text().splitlines()]
    rng = random.Random(examples)
    picks = [[rng.randrange(len(demo)) for _ in range(candidates + 2)] for _ in range(examples)]
    atomic_write_jsonl(root / "data" / "dev.jsonl", ({"src": demo[p[0]]["src"], "trg": demo[p[0]]["trg"]}
                                                     for p in picks))
    lines = [json_line({"memories": [[demo[p[1]]["trg"]]], "candidates": [[demo[i]["trg"] for i in p[2:]]],
                        "scores": [[round(-0.1 * k, 4) for k in range(candidates)]]}) for p in picks]
    (root / "candidates.jsonl").write_text("".join(lines), encoding="utf-8")
    for rank, shard in enumerate(shard_paths(root / "merged.jsonl", RANKS)):
        write_shard(shard, ((i, lines[i]) for i in range(rank, examples, RANKS)))


def merge_hold(shards: list[Path], output: Path) -> None:
    """Rank 0's merge as it was: every shard's records in one dict, then the output written."""
    records = {}
    for shard in shards:
        with open(shard, "rb") as f:
            for raw in f:
                key, _, line = raw.partition(b"\t")
                records[int(key)] = json.loads(line)
    atomic_write_jsonl(output, (records[i] for i in range(len(records))))


def selection_setup(root: Path):
    """The config, run paths and process environment of a selection over ``root``'s data."""
    import torch

    from selfmem.common.config import load_config
    from selfmem.common.distributed import DistEnv
    from selfmem.common.run import RunPaths
    from selfmem.common.tokenizer import load_tokenizer
    from selfmem.models import ModelConfig
    from selfmem.models.selector import GeneratorEncoderBackbone, Selector

    config = load_config(REPO / "configs" / "demo.yaml", [f"run.root={root}", f"data.dir={root / 'data'}"])
    paths = RunPaths(config.run_dir)
    if not paths.selector.exists():
        shutil.copytree(REPO / "data" / "demo" / "pretrained" / "tokenizer", paths.tokenizer)
        tokenizer = load_tokenizer(paths.tokenizer)
        torch.manual_seed(0)
        backbone = GeneratorEncoderBackbone(ModelConfig(vocab_size=tokenizer.vocab_size, **TINY_SELECTOR))
        Selector(backbone, dropout=0.1).save(paths.selector)
    return config, paths, DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)


def select_before(revision: str):
    """``select_memories`` as it was at ``revision``, or None where git cannot show it."""
    shown = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:selfmem/select/stage.py"],
                           capture_output=True, text=True)
    if shown.returncode != 0:
        return None
    module = types.ModuleType("stage_before")
    exec(compile(shown.stdout, f"{revision}:selfmem/select/stage.py", "exec"), module.__dict__)
    return module.select_memories


def run_case(case: str, root: Path, before: str) -> dict:
    """One case in this process: its resident-set growth and seconds (None: not measurable)."""
    if case.startswith("merge"):
        from selfmem.common.shards import merge_shards

        kept = []
        for shard in shard_paths(root / "merged.jsonl", RANKS):  # copies: merge_shards deletes what it merged
            kept.append(shard.with_name(f"{shard.name}.kept"))
            shutil.copy(shard, kept[-1])
        output, count = root / f"{case}.jsonl", sum(1 for _ in open(root / "candidates.jsonl", "rb"))

        def work() -> None:
            merge_shards(kept, output, count) if case == "merge-stream" else merge_hold(kept, output)
    else:
        from selfmem.select.stage import select_memories

        config, paths, env = selection_setup(root)
        select = select_memories if case == "select-now" else select_before(before)
        if select is None:
            return {"growth": None, "seconds": None}

        def work() -> None:
            select(config, env, paths, "dev", 1, root / "candidates.jsonl")
    reset_peak()
    start, started = status_bytes("VmRSS"), cpu_seconds()
    work()
    return {"growth": status_bytes("VmHWM") - start, "seconds": cpu_seconds() - started}


def in_child(case: str, root: Path, before: str) -> dict:
    """``run_case`` in a fresh Python process, so that each peak is its own."""
    out = subprocess.run([sys.executable, __file__, "--case", case, "--root", str(root), "--before", before],
                         capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        sys.exit(f"{case} in {root} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def cell(result: dict) -> str:
    if result["growth"] is None:
        return "n/a"
    return f"{result['growth'] / 2**20:,.1f} MB, {result['seconds']:.1f} CPU s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--candidates", type=int, default=8, help="candidates per example")
    parser.add_argument("--before", default="1427e4f", help="git revision of the selection measured as 'before'")
    parser.add_argument("--root", type=Path, default=Path("/tmp/selfmem-scale"))
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one case, in a child process
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.root, args.before)))
        return
    print(f"| examples | candidates file | {' | '.join(CASES)} |")
    print(f"|---:|---:|{'---:|' * len(CASES)}")
    for examples in args.examples:
        root = args.root / str(examples)
        shutil.rmtree(root, ignore_errors=True)
        build_data(root, examples, args.candidates)
        size = (root / "candidates.jsonl").stat().st_size
        results = [in_child(case, root, args.before) for case in CASES]
        print(f"| {examples:,} | {size / 2**20:,.1f} MB | {' | '.join(map(cell, results))} |", flush=True)


if __name__ == "__main__":
    main()
