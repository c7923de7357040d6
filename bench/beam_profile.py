"""Where the native beam search's time goes on a CPU, and how fast its matrix products run.

    python bench/beam_profile.py --model RUN/no_memory/generator --tokenizer RUN/tokenizer --data FILE

The search decodes the first --examples sources of --data (a native checkpoint without
memory), sorted by length into batches of --batch, at 5 beams with 1 returned, on --threads
threads (1 by default: the lift's decoding processes on a CPU run one each). Printed:

1. its seconds (median of --repeats) split into the decoder's steps, the encoder and the
   search's own parts, each timed by a wrapper around the function that does it (the
   selection, the log-softmax, the join of finished hypotheses, the moves of beams' cache
   rows, the cache rows gathered when examples leave; the rest of the loop as "the rest");
2. the operators' time under ``torch.profiler`` (one more pass): the matrix products, the
   attention and the others, with the calls the search and the model make a decoding step
   (not those operators make inside other operators) and their time a call;
3. the decoding step's matrix products alone, at its shapes, through this project's oneDNN
   path (``selfmem.models.linear``) and through ``F.linear`` (MKL on x86): microseconds and
   GFLOP/s, against which the search's products can be read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.beam import batches as length_sorted_batches  # noqa: E402
from selfmem.common.cpu_memory import keep_freed_memory  # noqa: E402
from selfmem.common.tokenizer import load_tokenizer  # noqa: E402
from selfmem.infer import beam  # noqa: E402
from selfmem.models import Seq2SeqModel  # noqa: E402
from selfmem.models.linear import frozen_weights, linear  # noqa: E402
from selfmem.models.seq2seq import LayerCache  # noqa: E402

# (label, owner, attribute) of what table 1 times; model.encode and decode_step are added per model
SEARCH_PARTS = [("selection", beam, "best_continuations"), ("log-softmax", torch, "log_softmax"),
                ("finished hypotheses joined", beam, "with_finished"), ("new beams' slots", beam, "stable_slots"),
                ("moved beams' cache rows", LayerCache, "copy_rows"),
                ("cache rows gathered (examples leaving, the first step)", LayerCache, "select"),
                ("hypotheses read out", beam, "pooled_hypotheses")]


class PartTimer:
    """Wall seconds and calls of wrapped functions, while ``timing`` is set."""

    def __init__(self) -> None:
        self.seconds, self.calls, self.timing = Counter(), Counter(), False

    def wrap(self, label: str, owner, name: str) -> None:
        function = getattr(owner, name)

        def timed(*args, **kwargs):
            if not self.timing:
                return function(*args, **kwargs)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start
                self.calls[label] += 1

        setattr(owner, name, timed)


def product_shapes(model, rows: int, source_tokens: int) -> list[tuple[str, int, int, int]]:
    """(label, rows, in, out) of a decoding step's products at ``rows`` rows, and of the encoder's
    at ``source_tokens`` tokens."""
    c = model.config
    return [("decoder self-attention q/k/v", rows, c.d_model, 3 * c.d_model),
            ("decoder attention outputs, cross-attention queries", rows, c.d_model, c.d_model),
            ("decoder feed-forward in", rows, c.d_model, c.ffn_dim),
            ("decoder feed-forward out", rows, c.ffn_dim, c.d_model),
            ("output projection", rows, c.d_model, c.vocab_size),
            ("output projection, one example's beams", 5, c.d_model, c.vocab_size),
            ("encoder q/k/v", source_tokens, c.d_model, 3 * c.d_model)]


def time_product(run, repeats: int = 5, calls: int = 100) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            run()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a native checkpoint without memory")
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--data", required=True, help="JSON lines with a src field")
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    keep_freed_memory()  # as the launch scripts and bench/beam.py do

    tokenizer = load_tokenizer(args.tokenizer)
    model = Seq2SeqModel.load(args.model, map_location="cpu").eval()
    if model.config.memory != "none":
        sys.exit(f"error: {args.model} reads a memory ({model.config.memory}); give a model without memory")
    with open(args.data, encoding="utf-8") as lines:
        texts = [json.loads(line)["src"] for line, _ in zip(lines, range(args.examples))]
    sources = [tokenizer.encode(text)[:255] + [tokenizer.eos_id] for text in texts]  # as bench/beam.py
    batches = length_sorted_batches(sources, args.batch, tokenizer.pad_id, "cpu")
    settings = beam.BeamSettings(num_beams=5, num_return=1, max_len=128)
    ids = {"start_id": model.config.decoder_start_id, "eos_id": model.config.eos_id}

    timer = PartTimer()
    for label, owner, name in [("decoder steps", model, "decode_step"), ("encoder", model, "encode"), *SEARCH_PARTS]:
        timer.wrap(label, owner, name)
    rows = [0]  # the decoder's row-steps in the timed pass
    timed_step = model.decode_step

    def counted_step(tokens, *args, **kwargs):
        rows[0] += tokens.size(0)
        return timed_step(tokens, *args, **kwargs)

    model.decode_step = counted_step

    def search() -> None:
        for batch in batches:
            beam.beam_search(model, batch, None, settings, **ids)

    search()  # warm-up: oneDNN's packed weights, the allocator
    runs = []
    for _ in range(args.repeats):
        timer.seconds.clear(), timer.calls.clear()
        rows[0], timer.timing = 0, True
        start = time.perf_counter()
        search()
        total = time.perf_counter() - start
        timer.timing = False
        runs.append((total, dict(timer.seconds), dict(timer.calls)))
    total, seconds, calls = sorted(runs, key=lambda run: run[0])[len(runs) // 2]
    steps = calls["decoder steps"]
    mean_rows = round(rows[0] / steps)
    print(f"{len(sources)} sources, batches of {args.batch}, 5 beams, {args.threads} thread(s): "
          f"{len(sources) / total:.1f} examples/s (median of {args.repeats}), {steps} decoding steps, "
          f"{rows[0]} row-steps ({rows[0] / steps:.1f} rows a step)")
    print("\n| part | seconds | share | calls |\n|---|---:|---:|---:|")
    for label, spent in sorted(seconds.items(), key=lambda item: -item[1]):
        print(f"| {label} | {spent:.3f} | {spent / total:.1%} | {calls[label]} |")
    rest = total - sum(seconds.values())
    print(f"| the rest of the search loop | {rest:.3f} | {rest / total:.1%} | |")

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        search()
    def group(name: str) -> str:
        return ("matrix products" if "linear" in name or name in ("aten::mm", "aten::addmm")
                else "attention" if "scaled_dot_product" in name else "other operators")

    seconds_in = Counter()  # self time: an operator's own, without the operators it calls
    for event in profile.key_averages():
        seconds_in[group(event.key)] += event.self_cpu_time_total / 1e6
    # calls made by the search and the model themselves, not by other operators inside them
    calls_of = Counter(group(event.name) for event in profile.events() if event.cpu_parent is None)
    operators = sum(seconds_in.values())
    print(f"\noperators under torch.profiler (one more pass, slowed by it): {operators:.3f} s of operator time\n"
          "| operators | seconds | share | calls a decoding step | microseconds a call |\n|---|---:|---:|---:|---:|")
    for name, spent in seconds_in.most_common():
        print(f"| {name} | {spent:.3f} | {spent / operators:.1%} | {calls_of[name] / steps:.0f} "
              f"| {1e6 * spent / calls_of[name]:.0f} |")

    source_tokens = sum(map(len, sources)) // len(batches)
    print(f"\nthe step's products alone ({mean_rows} rows, the mean; the encoder's at {source_tokens} tokens, a batch's)\n"
          "| product | rows x in x out | oneDNN (selfmem) | F.linear |\n|---|---|---:|---:|")
    for label, m, k, n in product_shapes(model, mean_rows, source_tokens):
        x, weight, bias = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
        with frozen_weights():
            ours = time_product(lambda: linear(x, [weight], [bias]))
        theirs = time_product(lambda: F.linear(x, weight, bias))
        flop = 2 * m * k * n
        print(f"| {label} | {m} x {k} x {n} | {ours * 1e6:.0f} us ({flop / ours / 1e9:.0f} GFLOP/s) "
              f"| {theirs * 1e6:.0f} us ({flop / theirs / 1e9:.0f} GFLOP/s) |")


if __name__ == "__main__":
    main()
