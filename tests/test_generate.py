"""Distributed generation for real: 1 rank against 2 (torchrun, gloo), batch sizes, memory inputs, modes."""

import json
import re
import shutil
from types import SimpleNamespace

import pytest
import sacrebleu
import torch

from conftest import DEMO_CONFIG, DEMO_DATA, TINY, run_single, run_torchrun

from selfmem.common.config import ConfigError, load_config
from selfmem.common.run import RunPaths
from selfmem.common.distributed import DistEnv
from selfmem.common.shards import part_paths, shard_paths
from selfmem.infer.generate import Generator, decode_share, load_generator
from selfmem.infer.generate import generate as generate_split
from selfmem.models import ModelConfig, Seq2SeqModel
from selfmem.train.selector import crossfit_halves, selector_subset

# 40 examples a split, 6 candidates each: a few seconds a run
SMALL = [*TINY, "data.max_examples=40", "candidates.num_beams=6", "candidates.num_return=6",
         "candidates.hypothesis_beams=4", "candidates.max_len=24"]


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    """A run with a tokenizer, BM25 memory and a briefly trained joint generator."""
    root = tmp_path_factory.mktemp("generate")
    args = ["--config", str(DEMO_CONFIG), f"run.root={root}", *SMALL]
    run_single("launch/train_tokenizer.py", args)
    run_single("launch/retrieve.py", args)
    run_single("launch/train_generator.py", [*args, "train.max_steps=30", "train.max_epochs=100"])
    return root


@pytest.fixture(scope="module")
def dual_root(run_root, tmp_path_factory):
    """The same run's tokenizer and memory with a briefly trained dual-memory generator."""
    root = tmp_path_factory.mktemp("generate-dual")
    for part in ("tokenizer", "memory"):
        shutil.copytree(run_root / "demo" / part, root / "demo" / part)
    args = ["--config", str(DEMO_CONFIG), f"run.root={root}", *SMALL, "generator.memory=dual"]
    run_single("launch/train_generator.py", [*args, "train.max_steps=30", "train.max_epochs=100"])
    return root


def generate(root, round_k, *extra, nproc=1, split="dev", mode="candidates"):
    memory = "dual" if root.name.startswith("generate-dual") else "joint"
    args = ["--config", str(DEMO_CONFIG), f"run.root={root}", *SMALL, f"generator.memory={memory}",
            "--split", split, "--mode", mode,
            "--round", str(round_k), *extra]
    if nproc == 1:
        run_single("launch/generate.py", args)
    else:
        run_torchrun("launch/generate.py", args, nproc=nproc)
    name = f"hyps/{split}.txt" if mode == "hypotheses" else f"{mode}/{split}.jsonl"
    return root / "demo" / f"round_{round_k}" / name


def records(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_two_ranks_and_any_batch_size_give_the_same_candidates(run_root):
    one = generate(run_root, 0)
    two = generate(run_root, 1, nproc=2)
    assert two.read_bytes() == one.read_bytes()

    lines = records(one)
    assert len(lines) == 40
    assert all(len(r["candidates"]) == 1 and len(r["candidates"][0]) == 6 for r in lines)
    assert all(r["scores"][0] == sorted(r["scores"][0], reverse=True) for r in lines)
    bm25 = records(run_root / "demo" / "memory" / "bm25" / "dev.jsonl")
    assert [r["memories"] for r in lines] == [[b["memories"][:1]] for b in bm25]

    small_path = generate(run_root, 2, "candidates.max_tokens=300")  # one or two examples a batch
    small = records(small_path)
    assert [r["candidates"] for r in small] == [r["candidates"] for r in lines]
    for a, b in zip(small, lines):
        assert a["scores"][0] == pytest.approx(b["scores"][0], abs=2e-4)  # padding moves float rounding only

    # such batches decoded 8 at a time as one stream (candidates.stream_batches), an example
    # entering as another is done: the same streams on 2 ranks, and the candidates of batch
    # by batch up to float rounding (this briefly trained generator decodes every example to
    # max_len, so examples enter only as a whole batch leaves: tests/test_beam.py decodes
    # streams whose examples end at different steps)
    streamed_path = generate(run_root, 17, "candidates.max_tokens=300", "candidates.stream_batches=8")
    streamed = records(streamed_path)
    assert [r["candidates"] for r in streamed] == [r["candidates"] for r in small]
    for a, b in zip(streamed, small):
        assert a["scores"][0] == pytest.approx(b["scores"][0], abs=2e-4)
    assert generate(run_root, 18, "candidates.max_tokens=300", "candidates.stream_batches=8",
                    nproc=2).read_bytes() == streamed_path.read_bytes()


# the briefly trained generator's next-token probabilities are all below the default epsilon
# (sampling would be greedy): draw from the whole distribution
SAMPLES = ["candidates.num_samples=5", "candidates.epsilon=0"]


class Crash(Exception):
    pass


def test_an_interrupted_decoding_resumes_from_its_finished_streams_at_any_number_of_ranks(run_root, monkeypatch):
    """Two ranks killed midway (each after some streams), then one rank resuming: it decodes
    only the streams that no part holds whole, and writes the uninterrupted file byte for byte."""
    config = load_config(DEMO_CONFIG, [f"run.root={run_root}", *SMALL, "candidates.max_tokens=300"])
    paths = RunPaths(config.run_dir)
    memory = paths.bm25_memory("dev")
    one = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)
    real_decode, calls, allowed = Generator.decode, [], [10**9]

    def decode(self, encoded, *args, **kwargs):  # a stream a call
        if len(calls) == allowed[0]:
            raise Crash
        calls.append(len(encoded))
        return real_decode(self, encoded, *args, **kwargs)

    def decode_until_crash(call, limit):
        calls.clear()
        allowed[0] = limit
        with pytest.raises(Crash):
            call()
        allowed[0] = 10**9
        calls.clear()

    monkeypatch.setattr(Generator, "decode", decode)
    expected = generate_split(config, one, paths, "dev", "candidates", memory, 5).read_bytes()
    streams = len(calls)
    output = paths.candidates(6, "dev")
    for rank, limit in [(0, 2), (1, 3)]:  # the ranks of a 2-process attempt, each killed at its own point
        two = DistEnv(rank=rank, world_size=2, local_rank=rank, local_world_size=2)
        decode_until_crash(lambda: decode_share(config, two, paths, "dev", "candidates", memory, None, output,
                                                shard_paths(output, 2)[two.rank]), limit)
    parts = part_paths(output)
    assert len(parts) == 2 and not output.exists() and streams > 10
    # rank 0's last stream cut short by the kill: its last line half written; that stream is decoded again
    *whole, last = parts[0].read_bytes().splitlines(keepends=True)
    parts[0].write_bytes(b"".join(whole) + last[:20])
    generate_split(config, one, paths, "dev", "candidates", memory, 6, resume=True)
    assert len(calls) == streams - 4  # 1 + 3 streams kept
    assert output.read_bytes() == expected and part_paths(output) == []

    # without resume, whatever an interrupted call left is removed first, never read
    output = paths.candidates(7, "dev")
    decode_until_crash(lambda: generate_split(config, one, paths, "dev", "candidates", memory, 7), 3)
    assert len(part_paths(output)) == 1
    generate_split(config, one, paths, "dev", "candidates", memory, 7)
    assert len(calls) == streams and output.read_bytes() == expected


def test_samples_depend_on_the_example_and_memory_input_alone(run_root, tmp_path):
    one = generate(run_root, 13, *SAMPLES, mode="samples")
    two = generate(run_root, 14, *SAMPLES, nproc=2, mode="samples")
    small = generate(run_root, 15, *SAMPLES, "candidates.max_tokens=150", mode="samples")
    assert two.read_bytes() == one.read_bytes() == small.read_bytes()
    lines = records(one)
    bm25 = records(run_root / "demo" / "memory" / "bm25" / "dev.jsonl")
    assert [r["memories"] for r in lines] == [[b["memories"][:1]] for b in bm25]
    assert all(len(r["samples"]) == 1 and len(r["samples"][0]) == 5 for r in lines)
    assert len({s for r in lines for s in r["samples"][0]}) > 2 * len(lines)  # draws, not the beam's order
    # a second memory input draws its own samples; the first one's stay as they were
    two_inputs = tmp_path / "dev.jsonl"
    two_inputs.write_text("".join(json.dumps({"memories": [r["memories"][:1], r["memories"][:1]]}) + "\n"
                                  for r in bm25), encoding="utf-8")
    both = records(generate(run_root, 16, *SAMPLES, "--memory", str(two_inputs), mode="samples"))
    assert [r["samples"][0] for r in both] == [r["samples"][0] for r in lines]
    assert [r["samples"][1] for r in both] != [r["samples"][0] for r in both]


@pytest.mark.parametrize("memory", ["joint", "dual"])
def test_each_memory_input_is_decoded_on_its_own(memory, request, tmp_path):
    # dual memory encodes the source once for both memory inputs
    run_root = request.getfixturevalue("run_root" if memory == "joint" else "dual_root")
    bm25 = records(run_root / "demo" / "memory" / "bm25" / "dev.jsonl")
    two_inputs = tmp_path / "dev.jsonl"
    two_inputs.write_text("".join(json.dumps({"memories": [r["memories"][:1], r["memories"][1:2]]}) + "\n"
                                  for r in bm25), encoding="utf-8")
    both = records(generate(run_root, 3, "--memory", str(two_inputs)))
    first = records(generate(run_root, 4))  # BM25 top memory only
    swapped = tmp_path / "swapped.jsonl"
    swapped.write_text("".join(json.dumps({"memories": [r["memories"][1:2]]}) + "\n" for r in bm25),
                       encoding="utf-8")
    second = records(generate(run_root, 5, "--memory", str(swapped)))
    assert all(len(r["candidates"]) == 2 for r in both)
    assert [r["candidates"][0] for r in both] == [r["candidates"][0] for r in first]
    assert [r["candidates"][1] for r in both] == [r["candidates"][0] for r in second]
    # hypotheses decode the first (top) memory input only
    top = generate(run_root, 11, "--memory", str(two_inputs), mode="hypotheses")
    assert top.read_bytes() == generate(run_root, 12, mode="hypotheses").read_bytes()


def test_hypotheses_are_the_top_candidate_of_the_same_search(run_root):
    hyps = generate(run_root, 6, mode="hypotheses").read_text(encoding="utf-8").splitlines()
    same_search = records(generate(run_root, 7, "candidates.num_beams=4", "candidates.num_return=1"))
    assert len(hyps) == 40
    assert hyps == [r["candidates"][0][0] for r in same_search]


def test_memory_file_must_match_the_split(run_root, tmp_path):
    short = tmp_path / "short.jsonl"
    short.write_text('{"memories": ["x"]}\n', encoding="utf-8")
    with pytest.raises(pytest.fail.Exception, match="short.jsonl: 1 lines for 40 dev examples"):
        generate(run_root, 8, "--memory", str(short))


def test_selector_trains_on_candidates_of_a_train_subset(run_root):
    args = ["--config", str(DEMO_CONFIG), f"run.root={run_root}", *SMALL, "selector.kind=trained",
            "selector.train_subset=20", "selector.group_size=4", "selector.max_epochs=2", "selector.max_tokens=1500", "selector.lr=1e-3"]
    run_single("launch/train_selector.py", args)
    selector = run_root / "demo" / "selector"
    assert len((run_root / "demo" / "selector_candidates" / "train.jsonl").read_text().splitlines()) == 20
    # evaluated on round 1's dev candidates: those of round 0's memory, the top BM25 hit
    dev = records(run_root / "demo" / "round_1" / "candidates" / "dev.jsonl")
    bm25 = records(run_root / "demo" / "memory" / "bm25" / "dev.jsonl")
    assert [r["memories"] for r in dev] == [[b["memories"][:1]] for b in bm25]
    assert len(selector_evaluations(run_root)) == 2
    assert (selector / "selector.json").exists()


def selector_evaluations(root):
    """The selector's logged dev evaluations, their top-1 and oracle checked against sacrebleu:
    each example's first candidate, and the one of best sentence BLEU against its reference
    (the first of equals), on round 1's dev candidates."""
    evals = [json.loads(line)["eval"] for line in (root / "demo" / "selector" / "train_log.jsonl").read_text()
             .splitlines() if "eval" in json.loads(line)]
    references = [json.loads(line)["trg"] for line in open(DEMO_DATA / "dev.jsonl", encoding="utf-8")][:40]
    sentence = sacrebleu.metrics.BLEU(effective_order=True)
    pools = [r["candidates"][0] for r in records(root / "demo" / "round_1" / "candidates" / "dev.jsonl")]
    top1 = [pool[0] for pool in pools]
    oracle = [max(pool, key=lambda c, ref=ref: sentence.sentence_score(c, [ref]).score)
              for pool, ref in zip(pools, references, strict=True)]
    for e in evals:
        assert e["top1"] == pytest.approx(sacrebleu.corpus_bleu(top1, [references]).score, abs=1e-9)
        assert e["oracle"] == pytest.approx(sacrebleu.corpus_bleu(oracle, [references]).score, abs=1e-9)
        assert e["oracle"] >= e["metric"]
    return evals


def copy_run(run_root, tmp_path):
    root = tmp_path / "copy"
    for part in ("tokenizer", "memory", "generator"):
        shutil.copytree(run_root / "demo" / part, root / "demo" / part)
    return root


SELECTOR = ["selector.kind=trained", "selector.train_subset=20", "selector.group_size=4", "selector.max_epochs=1",
            "selector.max_tokens=1500"]


def test_selector_trains_from_cross_fitted_halves(run_root, tmp_path):
    root = copy_run(run_root, tmp_path)
    out = run_single("launch/train_selector.py", ["--config", str(DEMO_CONFIG), f"run.root={root}", *SMALL,
                                                  *SELECTOR, "selector.train_from=crossfit", "train.max_steps=10"])
    assert "selector: 20 train examples (crossfit), 40 dev examples" in out
    config = load_config(DEMO_CONFIG, [f"run.root={root}", *SMALL, *SELECTOR])
    halves = crossfit_halves(config, 40)
    assert sorted(halves[0] + halves[1]) == list(range(40)) and abs(len(halves[0]) - len(halves[1])) <= 1
    subset = selector_subset(config, 40)
    merged = records(root / "demo" / "selector_candidates" / "train.jsonl")
    assert len(merged) == len(subset) == 20
    # each subset example is decoded by the generator of the half that does not hold it
    by_half = [dict(zip([i for i in subset if i not in halves[h]],
                        records(root / "demo" / "crossfit" / f"half{h}" / "candidates.jsonl"))) for h in (0, 1)]
    assert merged == [by_half[0 if i in halves[1] else 1][i] for i in subset]
    for h in (0, 1):
        assert (root / "demo" / "crossfit" / f"half{h}" / "generator" / "model.safetensors").exists()
    assert (root / "demo" / "selector" / "selector.json").exists()
    # a stage resumed after the halves' candidates were written decodes nothing again
    (root / "demo" / "selector_candidates" / "train.jsonl").unlink()
    again = run_single("launch/train_selector.py", ["--config", str(DEMO_CONFIG), f"run.root={root}", *SMALL,
                                                    *SELECTOR, "selector.train_from=crossfit", "train.max_steps=10"])
    assert "candidates train:" not in again
    assert records(root / "demo" / "selector_candidates" / "train.jsonl") == merged


def test_selector_backbone_generator_needs_the_native_engine(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="selector.backbone 'generator' copies the native generator's "
                       "encoder; with generator.engine hf set selector.backbone=hf"):
        run_single("launch/train_selector.py", ["--config", str(DEMO_CONFIG), f"run.root={tmp_path}",
                                                "selector.kind=trained", "generator.engine=hf"])


def test_selector_trains_from_dev(run_root, tmp_path):
    root = copy_run(run_root, tmp_path)
    out = run_single("launch/train_selector.py", ["--config", str(DEMO_CONFIG), f"run.root={root}", *SMALL,
                                                  *SELECTOR, "selector.train_from=dev"])
    assert "selector: 40 train examples (dev), 40 dev examples" in out
    assert not (root / "demo" / "selector_candidates").exists()  # no train candidates are made
    assert len(selector_evaluations(root)) == 1
    assert (root / "demo" / "selector" / "selector.json").exists()


@pytest.mark.parametrize("memory", ["joint", "dual"])
def test_augmented_memory_lists_are_one_input(memory, request, tmp_path):
    run_root = request.getfixturevalue("run_root" if memory == "joint" else "dual_root")
    bm25 = records(run_root / "demo" / "memory" / "bm25" / "dev.jsonl")
    # the retrieved memory and two self-memories, one word each: the models were built for one
    # memory of 32 tokens (66 positions), so three fit only with a smaller memory budget
    lists = tmp_path / "lists.jsonl"
    lists.write_text("".join(json.dumps({"memories": [[" ".join(m.split()[:1]) for m in r["memories"][:3]]]}) + "\n"
                             for r in bm25), encoding="utf-8")
    lines = records(generate(run_root, 10, "generator.num_memories=3", "generator.max_memory_len=11", "--memory",
                             str(lists)))
    assert [r["memories"] for r in lines] == [[[" ".join(m.split()[:1]) for m in b["memories"][:3]]] for b in bm25]
    assert all(len(r["candidates"]) == 1 and len(r["candidates"][0]) == 6 for r in lines)


def test_a_slotted_generator_refuses_inputs_longer_than_its_slots(tmp_path):
    config = load_config(DEMO_CONFIG, [f"run.root={tmp_path}", "generator.max_source_len=40",
                                       "generator.max_memory_len=30"])
    paths = RunPaths(config.run_dir)
    Seq2SeqModel(ModelConfig(vocab_size=48, d_model=16, encoder_layers=1, decoder_layers=1, heads=2, ffn_dim=32,
                             memory="joint", source_slot=40, memory_slot=30)).save(paths.generator)
    tokenizer = SimpleNamespace(vocab_size=48, pad_id=0, bos_id=1, eos_id=2, sep_id=4)  # the ModelConfig's ids
    assert load_generator(config, paths, torch.device("cpu"), tokenizer).config.source_slot == 40
    table = re.escape(str(paths.generator / "config.json"))
    for key, value, slot, part in (("max_memory_len", 31, 30, "memory"), ("max_source_len", 41, 40, "source")):
        too_long = load_config(DEMO_CONFIG, [f"run.root={tmp_path}", "generator.max_source_len=40",
                                             "generator.max_memory_len=30", f"generator.{key}={value}"])
        with pytest.raises(ConfigError, match=f"generator.{key} = {value} is more than the {slot} positions of each "
                                              f"{part} slot of {table}: lower generator.{key} to {slot} or less"):
            load_generator(too_long, paths, torch.device("cpu"), tokenizer)
