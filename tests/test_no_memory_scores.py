"""The no-memory baseline's opinion of candidates: its teacher-forced score of a text against
the beam search's own score of it, the scores file written by 1 rank and by 2, a file that
belongs to other candidates refused, and an interrupted scoring resumed."""

import dataclasses
import json
import os
import shutil

import pytest
import torch
from conftest import DEMO_CONFIG, REPO, run_single, run_torchrun

from selfmem.common.config import load_config
from selfmem.common.data import load_split
from selfmem.common.distributed import DistEnv
from selfmem.common.generator_inputs import SpecialIds, collate, encode_examples
from selfmem.common.records import DataError
from selfmem.common.run import RunPaths
from selfmem.common.shards import part_paths
from selfmem.common.tokenizer import load_tokenizer
from selfmem.infer.beam import BeamSettings, beam_search
from selfmem.models.seq2seq import Seq2SeqModel
from selfmem.select import no_memory
from selfmem.select.candidates import line_mbr_scores, read_candidates, with_no_memory_opinion
from selfmem.select.no_memory import (
    candidate_log_probs,
    candidates_digest,
    parse_no_memory_scores,
    score_without_memory,
)
from selfmem.select.pick import top_b

PRETRAINED = REPO / "data" / "demo" / "pretrained"
# MBR without the retrieved memory (nothing chosen on dev), the opinion weighing 3
SETTINGS = ["data.max_examples=12", "selector.kind=mbr", "selector.mbr_retrieved_weight=0", "selector.no_memory_weight=3"]


def demo_baseline():
    config = load_config(DEMO_CONFIG, SETTINGS)
    tokenizer = load_tokenizer(PRETRAINED / "tokenizer")
    model = Seq2SeqModel.load(PRETRAINED / "no_memory", map_location="cpu").eval()
    ids = SpecialIds.of(tokenizer, model)
    return config, tokenizer, model, ids


def test_a_candidates_score_is_the_beam_searchs_score_of_it():
    """The beam search sums a hypothesis' token log-probabilities step by step with its cache
    and divides by its length (eos counted, length penalty 1); the teacher-forced forward of the
    same text must give the same number."""
    config, tokenizer, model, ids = demo_baseline()
    generator = dataclasses.replace(config.generator, memory="none")
    compared = 0
    for example in load_split(config.data, "dev")[:8]:
        encoded = encode_examples([example], [[]], tokenizer, generator)
        src = collate(encoded, "none", ids)["src"]
        [hyps] = beam_search(model, src, None, BeamSettings(num_beams=6, num_return=6, max_len=60),
                             ids.decoder_start, ids.eos)
        texts = [tokenizer.decode(h.tokens) for h in hyps]
        scores = candidate_log_probs(model, example, texts, tokenizer, config, ids, torch.device("cpu"))
        for hyp, text, score in zip(hyps, texts, scores):
            if tokenizer.encode(text) == hyp.tokens and len(hyp.tokens) < 60:  # the text is those tokens, finished
                assert score == pytest.approx(hyp.score, abs=1e-4)
                compared += 1
    assert compared >= 30


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    """A run whose dev candidates are the demo's references (several per example, one repeated)
    beside the demo's shipped no-memory baseline, scored by 1 process and by 2."""
    root = tmp_path_factory.mktemp("no_memory")
    config, _, _, _ = demo_baseline()
    targets = [ex.target for ex in load_split(config.data, "dev")]
    runs = {}
    for name, nproc in (("one", 1), ("two", 2)):
        run = root / name / "demo"
        for part, source in (("tokenizer", "tokenizer"), ("no_memory/generator", "no_memory")):
            (run / part).parent.mkdir(parents=True, exist_ok=True)
            (run / part).symlink_to(PRETRAINED / source)
        lines = [{"memories": [[targets[i]], [targets[i - 1]]],
                  "candidates": [[targets[(i + j) % 12] for j in range(3)], [targets[i], targets[(i + 5) % 12]]]}
                 for i in range(12)]
        path = run / "round_1" / "candidates" / "dev.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
        args = ["--config", str(DEMO_CONFIG), f"run.root={root / name}", *SETTINGS, "--split", "dev", "--round", "1"]
        (run_single if nproc == 1 else run_torchrun)("launch/select_memory.py", args)
        runs[name] = run
    return runs


def test_the_scores_file_holds_each_candidates_score_for_any_number_of_ranks(scored_run):
    config, tokenizer, model, ids = demo_baseline()
    one = (scored_run["one"] / "round_1" / "no_memory_scores" / "dev.jsonl").read_bytes()
    assert one == (scored_run["two"] / "round_1" / "no_memory_scores" / "dev.jsonl").read_bytes()
    candidates = [json.loads(line) for line in
                  (scored_run["one"] / "round_1" / "candidates" / "dev.jsonl").read_text().splitlines()]
    for example, line, record in zip(load_split(config.data, "dev"), candidates, map(json.loads, one.splitlines())):
        assert record["candidates_sha1"] == candidates_digest(line["candidates"])
        for texts, scores in zip(line["candidates"], record["scores"]):
            alone = [candidate_log_probs(model, example, [t], tokenizer, config, ids, torch.device("cpu"))[0]
                     for t in texts]  # each text in a batch of its own: padding changes nothing
            assert scores == pytest.approx(alone, abs=1e-4)
            assert scores == [round(s, 4) for s in scores]


def test_the_memories_are_mbr_plus_the_weighted_opinion(scored_run):
    config, _, _, _ = demo_baseline()
    run = scored_run["one"]
    paths = RunPaths(run)
    lines = read_candidates(paths.candidates(1, "dev"), 12, "dev",
                            no_memory_path=paths.no_memory_scores(1, "dev"))
    memories = [json.loads(line)["memories"] for line in paths.round_memory(1, "dev").read_text().splitlines()]
    two = [json.loads(line)["memories"] for line in
           RunPaths(scored_run["two"]).round_memory(1, "dev").read_text().splitlines()]
    assert memories == two
    cfg = config.selector
    expected = [[[top_b(line.pool, with_no_memory_opinion(line, line_mbr_scores(line, cfg, "13a"), 3.0), 1)[0]]]
                for line in lines]
    assert memories == expected
    plain = [[[top_b(line.pool, line_mbr_scores(line, cfg, "13a"), 1)[0]]] for line in lines]
    assert plain != expected  # the opinion changes some picks


def test_scores_of_other_candidates_are_refused(scored_run):
    paths = RunPaths(scored_run["one"])
    record = json.loads(paths.no_memory_scores(1, "dev").read_text().splitlines()[0])
    with pytest.raises(DataError, match=r"f.jsonl:1: these no-memory scores are not of the candidates of c.jsonl:1"):
        parse_no_memory_scores("f.jsonl:1", record, [["another text"]], "c.jsonl:1")
    record["candidates_sha1"] = candidates_digest([["a", "b"]])
    message = ("f.jsonl:1: \"scores\" must be a list of lists of numbers shaped like the candidates of "
               "c.jsonl:1")
    for scores in (record["scores"], [["x", None]], [[1.0, True]]):  # another shape, not numbers
        with pytest.raises(DataError) as info:
            parse_no_memory_scores("f.jsonl:1", {**record, "scores": scores}, [["a", "b"]], "c.jsonl:1")
        assert str(info.value) == message
    assert parse_no_memory_scores("f.jsonl:1", {**record, "scores": [[-1, -2.5]]}, [["a", "b"]],
                                  "c.jsonl:1") == [-1.0, -2.5]


def test_an_interrupted_scoring_keeps_the_lines_it_finished_that_still_match_their_candidates(
        scored_run, tmp_path, monkeypatch):
    root = tmp_path / "resumed"
    shutil.copytree(scored_run["one"].parent, root, symlinks=True)
    config = load_config(DEMO_CONFIG, [f"run.root={root}", *SETTINGS])
    paths, one = RunPaths(config.run_dir), DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)
    candidates, output = paths.candidates(1, "dev"), paths.no_memory_scores(1, "dev")
    expected = output.read_bytes()
    output.unlink()
    real, calls, allowed = no_memory.candidate_log_probs, [], [4]

    def scored(*args):  # an example a call
        if len(calls) == allowed[0]:
            raise KeyboardInterrupt  # killed after 4 examples
        calls.append(args[1].source)
        return real(*args)

    monkeypatch.setattr(no_memory, "candidate_log_probs", scored)
    with pytest.raises(KeyboardInterrupt):
        score_without_memory(config, one, paths, "dev", candidates, output)
    assert not output.exists() and len(part_paths(output)) == 1
    # example 0's candidates decoded anew since: its kept line is another file's, scored again
    lines = candidates.read_text(encoding="utf-8").splitlines(keepends=True)
    changed = json.loads(lines[0])
    changed["candidates"][0][0] = "Ein anderer Kandidat."
    lines[0] = json.dumps(changed) + "\n"
    candidates.write_text("".join(lines), encoding="utf-8")
    calls.clear()
    allowed[0] = 10**9
    score_without_memory(config, one, paths, "dev", candidates, output)
    examples = load_split(config.data, "dev")
    assert calls == [examples[i].source for i in [0, *range(4, 12)]]
    assert part_paths(output) == []
    resumed = output.read_bytes().splitlines()
    assert resumed[1:] == expected.splitlines()[1:]
    assert json.loads(resumed[0])["candidates_sha1"] == candidates_digest(changed["candidates"])


def test_scores_are_kept_only_for_the_candidates_they_score(scored_run, tmp_path, monkeypatch):
    """A scores file is fresh when its digests are those of the candidates it is asked for,
    whatever the files' ages: another candidates file, older than the round's scores (a
    stand-alone script's ``--candidates``), is scored, not refused later as another file's."""
    root = tmp_path / "fresh"
    shutil.copytree(scored_run["one"].parent, root, symlinks=True)
    config = load_config(DEMO_CONFIG, [f"run.root={root}", *SETTINGS])
    paths, one = RunPaths(config.run_dir), DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)
    own, output = paths.candidates(1, "dev"), paths.no_memory_scores(1, "dev")
    lines = [json.loads(line) for line in own.read_text(encoding="utf-8").splitlines()]
    for line in lines:
        line["candidates"] = [list(reversed(texts)) for texts in reversed(line["candidates"])]
        line["memories"] = list(reversed(line["memories"]))
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    os.utime(other, (0, 0))  # older than the round's scores
    real, calls = no_memory.candidate_log_probs, []
    monkeypatch.setattr(no_memory, "candidate_log_probs", lambda *args: calls.append(1) or real(*args))
    no_memory.ensure_no_memory_scores(config, one, paths, "dev", own, output)
    assert calls == []  # the round's own scores: kept
    no_memory.ensure_no_memory_scores(config, one, paths, "dev", other, output)
    assert len(calls) == 12
    assert [json.loads(line)["candidates_sha1"] for line in output.read_text().splitlines()] == \
        [candidates_digest(line["candidates"]) for line in lines]
    no_memory.ensure_no_memory_scores(config, one, paths, "dev", other, output)
    assert len(calls) == 12  # fresh now
