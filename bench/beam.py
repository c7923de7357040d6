"""Beam search speed: the native beam search against Hugging Face ``generate``.

    python bench/beam.py --model DIR --tokenizer DIR --data FILE [--examples 200] [--repeats 3]

``--model`` is a local HF Marian/BART/mBART/Pegasus checkpoint; the native model is
imported from it, so both decode the same weights. It may also be a native checkpoint (a
run's ``generator/`` or ``no_memory/generator/`` without memory): then the native searches
alone run. Both decode the same inputs (the
first --examples sources of --data, sorted by length into batches of --batch) with the
same rules (``early_stopping`` True, length penalty 1.0, no n-gram blocking), in this one
process (CTranslate2 apart), for (5 beams, 1 returned) and (50 beams, 50 returned).
Printed: examples per second (median of --repeats), the ratio (the median of the repeats'
ratios), the peak memory of each (CUDA: allocated bytes; CPU: growth of the peak resident
set during decoding, as the kernel counts it: for the engines in this process, during the
first repeat, the heap trimmed before each, as the freed memory kept for reuse would hide
what a later engine needs) and the share of examples whose best
hypothesis is the same; then the native search's decoding steps, and how many of them
decode a single example's beams (the rest of its batch done). ``selfmem, continuous`` is the
native search given all the sources as one stream, in the same order, at most --batch at a
time (``max_examples``): the next enters as soon as one is done. Both processes keep freed CPU memory for reuse, as
the launch scripts do (`selfmem/common/cpu_memory.py`). ``selfmem, no oneDNN`` is the native search with
PyTorch's own matrix products (``selfmem.models.linear``'s oneDNN path off, as before it).
``selfmem, read every N`` is the native search with the host reading the search state on
the schedule the device does not default to (every ``HOST_READ_EVERY`` steps on a CPU, every
step on a GPU): what the sync-free steps gain or cost there.
Where the ``ctranslate2`` package is installed and the model is a Marian one, CTranslate2's
float32 beam search on the converted weights is a further line (on CPU), run in a child
process (see ``CTranslate2Process``) with the same number of threads, the batches sent to it
one at a time and timed here, interleaved with the others. `bench/marian_init.py` makes the
Marian model docs/benchmarks.md's figures come from.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from selfmem.common.cpu_memory import keep_freed_memory, release_freed_memory  # noqa: E402
from selfmem.common.tokenizer import load_tokenizer  # noqa: E402
from selfmem.infer.beam import HOST_READ_EVERY, BeamSettings, Hypothesis, beam_search  # noqa: E402
from selfmem.infer.hf_beam import hf_beam_search  # noqa: E402
from selfmem.models import Seq2SeqModel  # noqa: E402
from selfmem.models.build import is_native_checkpoint  # noqa: E402
from selfmem.models.hf_import import import_hf  # noqa: E402
from selfmem.models.hf_weights import from_pretrained_safe  # noqa: E402
from selfmem.models.linear import weight_packing  # noqa: E402


def resident_kib(pid: int | str, field: str) -> int:
    """A ``/proc/PID/status`` memory field (``VmRSS``, ``VmHWM``: the peak resident set), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


class PeakMemory:
    """Peak memory used inside the ``with`` block, above what was in use when it began (on a
    CPU, by process ``pid``: this one by default).

    On a CPU the kernel keeps the peak: the block starts by resetting process ``pid``'s peak
    resident set to its current one (``/proc/PID/clear_refs``) and ends by reading it, so no
    sampling thread competes with the timed code for the GIL and the cores (one did: on 2
    cores a thread waking every 2 ms preempts one of PyTorch's two worker threads).
    """

    def __init__(self, device: torch.device, pid: int | str = "self"):
        self.device, self.pid, self.peak = device, pid, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")  # the peak resident set becomes the current one
            self.start = resident_kib(self.pid, "VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self.peak = resident_kib(self.pid, "VmHWM") * 1024 - self.start


def batches(sources: list[list[int]], size: int, pad: int, device) -> list[torch.Tensor]:
    """Length-sorted batches of ``size`` sources, right-padded (``size`` 0: one batch of all)."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out = []
    for start in range(0, len(order), size or len(order)):
        rows = [sources[i] for i in order[start:start + (size or len(order))]]
        width = max(map(len, rows))
        out.append(torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device))
    return out


def convert_to_ctranslate2(model_dir: Path, tokenizer_dir: Path, work_dir: Path) -> Path | None:
    """CTranslate2's copy of a Marian checkpoint's weights, or None when the ``ctranslate2``
    package is missing or the checkpoint is not a Marian model.

    The converter reads the vocabulary through a Marian tokenizer, so one is written next to
    the weights from the run's SentencePiece model. Its Marian loader also assumes Marian's
    own layout, pad last and decoding from a zero embedding; here decoding starts from pad's
    trained embedding (as in HF), and every id keeps its row.
    """
    try:
        import ctranslate2
        from ctranslate2.converters import transformers as ct2_transformers
    except ImportError:
        return None
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "marian":
        return None
    pieces = vocabulary_pieces(tokenizer_dir)
    source = work_dir / "hf"
    shutil.copytree(model_dir, source)
    for name in ("source.spm", "target.spm"):
        shutil.copy(tokenizer_dir / "spm.model", source / name)
    (source / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(pieces)}))
    (source / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": pieces[config["eos_token_id"]], "unk_token": pieces[3], "pad_token": pieces[config["pad_token_id"]]}))
    loader = ct2_transformers.MarianMTLoader
    loader._remove_pad_weights = lambda self, spec: None
    loader.set_decoder = ct2_transformers.BartLoader.set_decoder

    def set_config(self, ct2_config, model, tokenizer):
        ct2_config.eos_token, ct2_config.unk_token = tokenizer.eos_token, tokenizer.unk_token
        ct2_config.decoder_start_token = pieces[config["decoder_start_token_id"]]

    loader.set_config = set_config
    ctranslate2.converters.TransformersConverter(str(source)).convert(str(work_dir / "ct2"))
    return work_dir / "ct2"


def vocabulary_pieces(tokenizer_dir: Path) -> list[str]:
    sp = load_tokenizer(tokenizer_dir)._sp
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def _ctranslate2_worker(connection, ct2_dir: str, threads: int) -> None:
    """The child process's loop: decode each batch of pieces it is sent, until None."""
    import ctranslate2

    keep_freed_memory()  # the same malloc settings as the bench's process
    translator = ctranslate2.Translator(ct2_dir, device="cpu", intra_threads=threads)
    connection.send("ready")
    while (request := connection.recv()) is not None:
        batch, options = request
        results = translator.translate_batch(batch, return_scores=True, **options)
        connection.send([(r.hypotheses, r.scores) for r in results])


class CTranslate2Process:
    """CTranslate2's float32 beam search on the converted weights, in a child process.

    Not in this one: once CTranslate2 has decoded in a process, PyTorch's CPU kernels in that
    process run markedly slower for good (on this project's 2-core machine, this project's
    5-beam search fell from about 80 to 50 examples/s and stayed there; PyTorch's worker
    thread got about half the work it got before), while CTranslate2's own speed does not
    depend on where it runs. The child is spawned, so it shares no thread pools with this
    process; the batches go through a pipe (a few kilobytes each).
    """

    def __init__(self, ct2_dir: Path, tokenizer_dir: Path, pad_id: int):
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_ctranslate2_worker,
                                       args=(child, str(ct2_dir), torch.get_num_threads()), daemon=True)
        self.process.start()
        assert self.connection.recv() == "ready"  # loaded before any timing starts
        self.pid, self.pad_id = self.process.pid, pad_id
        self.pieces = vocabulary_pieces(tokenizer_dir)
        self.piece_id = {p: i for i, p in enumerate(self.pieces)}

    def __call__(self, src: torch.Tensor, settings: BeamSettings) -> list[list[Hypothesis]]:
        batch = [[self.pieces[i] for i in row if i != self.pad_id] for row in src.tolist()]
        options = dict(beam_size=settings.num_beams, num_hypotheses=settings.num_return,
                       length_penalty=settings.length_penalty, max_decoding_length=settings.max_len,
                       min_decoding_length=settings.min_len,
                       patience=1)  # stop an example once it holds num_beams finished hypotheses
        self.connection.send((batch, options))
        return [[Hypothesis([self.piece_id[p] for p in hyp], score) for hyp, score in zip(hyps, scores)]
                for hyps, scores in self.connection.recv()]

    def close(self) -> None:
        self.connection.send(None)
        self.process.join()


def steps_by_rows(model, decode) -> Counter:
    """How many decoding steps the native search ``decode()`` takes, by the rows a step decodes."""
    rows: Counter = Counter()
    decode_step = model.decode_step

    def counted(decoder_input_ids, *args, **kwargs):
        rows[decoder_input_ids.size(0)] += 1
        return decode_step(decoder_input_ids, *args, **kwargs)

    model.decode_step = counted
    try:
        decode()
    finally:
        del model.decode_step
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="a local HF seq2seq checkpoint directory")
    parser.add_argument("--tokenizer", required=True, type=Path, help="the run's tokenizer directory")
    parser.add_argument("--data", required=True, type=Path, help="a JSON-lines file of examples")
    parser.add_argument("--field", default="src")
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16, help="examples per batch (beams x this rows)")
    parser.add_argument("--max-len", type=int, default=128, help="max generated tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", default="5:1,50:50", help="beams:returned pairs")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()

    keep_freed_memory()  # as the launch scripts do
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    from transformers import AutoModelForSeq2SeqLM

    if is_native_checkpoint(args.model):
        hf, native = None, Seq2SeqModel.load(args.model, map_location=device).to(dtype).eval()
        start_id, eos_id, pad_id = native.config.decoder_start_id, native.config.eos_id, native.config.pad_id
    else:
        hf = from_pretrained_safe(AutoModelForSeq2SeqLM, args.model).to(device, dtype).eval()
        native = import_hf(args.model, memory="none").to(device, dtype).eval()
        start_id, eos_id, pad_id = (hf.config.decoder_start_token_id, hf.config.eos_token_id,
                                    hf.config.pad_token_id)
    ids = dict(start_id=start_id, eos_id=eos_id)
    tokenizer = load_tokenizer(args.tokenizer)
    lines = args.data.read_text(encoding="utf-8").splitlines()[: args.examples]
    sources = [tokenizer.encode(json.loads(line)[args.field])[:255] + [eos_id] for line in lines]
    print(f"{native.num_parameters() / 1e6:.1f}M parameters, {len(sources)} examples, {device} "
          f"({torch.get_num_threads()} threads), {args.dtype}, batches of {args.batch}")

    def no_onednn(src, s):
        with weight_packing(False):
            return beam_search(native, src, None, s, **ids)

    # each decodes the batches one after the other, but the continuous search: it takes them
    # as one stream, the same sources in the same order, at most --batch of them at a time
    other_reads = HOST_READ_EVERY if device.type == "cpu" else 1  # the schedule the device does not default to
    engines = {
        "selfmem": lambda src, s: beam_search(native, src, None, s, **ids),
        "selfmem, continuous": lambda stream, s: beam_search(native, stream, None, s, max_examples=args.batch, **ids),
        "selfmem, no oneDNN": no_onednn,
        f"selfmem, read every {other_reads}": lambda src, s: beam_search(native, src, None, s, read_every=other_reads,
                                                                         **ids),
    }
    if hf is not None:
        engines["hf generate"] = lambda src, s: hf_beam_search(hf, src, s, pad_id=pad_id, **ids)
    work_dir = Path(tempfile.mkdtemp(prefix="bench-beam-"))
    ct2_dir = (convert_to_ctranslate2(args.model, args.tokenizer, work_dir)
               if device.type == "cpu" and hf is not None else None)
    if ct2_dir is not None:
        engines["ctranslate2"] = CTranslate2Process(ct2_dir, args.tokenizer, pad_id)
    for beams, returned in (map(int, pair.split(":")) for pair in args.settings.split(",")):
        settings = BeamSettings(num_beams=beams, num_return=returned, max_len=args.max_len, early_stopping=True)
        inputs = batches(sources, args.batch, pad_id, device)
        stream = batches(sources, 0, pad_id, device)
        speed: dict[str, list[float]] = {name: [] for name in engines}
        peak: dict[str, int] = {}
        best: dict[str, list[list[int]]] = {}
        for repeat in range(args.repeats):
            for name, decode in engines.items():
                pid = getattr(decode, "pid", "self")  # CTranslate2's child process, or this one
                in_process = pid == "self"
                if in_process and repeat == 0 and device.type == "cpu":
                    # the free heap the engines before kept would hide this one's growth; later
                    # repeats reuse what it mapped (no page faults in their timings, nor a peak)
                    release_freed_memory(limit=0)
                with PeakMemory(device, pid) as memory:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    started = time.perf_counter()
                    outputs = [hyps[0].tokens for src in (stream if name == "selfmem, continuous" else inputs)
                               for hyps in decode(src, settings)]
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    speed[name].append(len(sources) / (time.perf_counter() - started))
                if repeat == 0 or not in_process or device.type == "cuda":
                    peak[name] = max(peak.get(name, 0), memory.peak)
                best[name] = outputs
        print(f"\nbeams {beams}, returned {returned}:")
        for name in engines:
            runs = ", ".join(f"{x:.1f}" for x in speed[name])
            same = sum(a == b for a, b in zip(best[name], best["selfmem"])) / len(sources)
            # each repeat runs the engines back to back: their ratio within a repeat is
            # steadier than the ratio of medians when the host's speed drifts
            ratio = statistics.median(ours / theirs for ours, theirs in zip(speed["selfmem"], speed[name]))
            print(f"  {name:24s} {statistics.median(speed[name]):8.1f} examples/s (runs: {runs}), "
                  f"peak memory {peak[name] / 2**20:.0f} MiB, best hypothesis as selfmem's on {same:.1%}"
                  + ("" if name == "selfmem" else f", selfmem is {ratio:.2f}x faster" if ratio >= 1
                     else f", {name} is {1 / ratio:.2f}x faster"))
        if "ctranslate2" in engines:  # the target's ratio (issue 20), the streamed search's too
            for name in ("selfmem", "selfmem, continuous"):
                ratio = statistics.median(c / ours for ours, c in zip(speed[name], speed["ctranslate2"]))
                print(f"  ctranslate2 / {name}: {ratio:.2f}x (median of the repeats' ratios)")
        # what the speed is made of: a step costs about as much with few rows as with many
        for name, inputs_of_name in (("selfmem", inputs), ("selfmem, continuous", stream)):
            rows = steps_by_rows(native, lambda: [engines[name](src, settings) for src in inputs_of_name])
            steps, alone = sum(rows.values()), rows[beams]
            print(f"  {name}'s decoding steps: {steps}, {alone} of them ({alone / steps:.0%}) decoding one "
                  f"example's {beams} beams; {sum(r * n for r, n in rows.items()) / steps:.1f} rows a step")
    if "ctranslate2" in engines:
        engines["ctranslate2"].close()
    shutil.rmtree(work_dir)


if __name__ == "__main__":
    main()
