"""The lift loop for real: one process against two torchrun "nodes" on 127.0.0.1, a run
SIGKILLed inside every stage and restarted against an uninterrupted one, a rank killed under
torchrun --max-restarts, reruns after a config change, top-B and augmented memory end to end."""

import json
import random
import re
import shutil
import subprocess
import sys

import pytest
import sacrebleu
import torch

from conftest import DEMO_CONFIG, REPO, TINY, _env, run_single, run_torchrun
from kill_in_stage import KILL_POINTS
from sacrebleu.metrics import CHRF

from selfmem.common.config import load_config
from selfmem.common.data import load_split
from selfmem.common.digest import file_digest, path_digest
from selfmem.common.distributed import DistEnv
from selfmem.common.generator_inputs import SpecialIds
from selfmem.common.io import read_jsonl
from selfmem.common.metrics import headline_score, sentence_rouge
from selfmem.common.run import RunPaths
from selfmem.common.tokenizer import load_tokenizer
from selfmem.lift.pipeline import lift
from selfmem.models.selector import Selector
from selfmem.models.seq2seq import Seq2SeqModel
from selfmem.select.no_memory import candidate_log_probs
from selfmem.select.pick import top_b
from selfmem.train.selector import selector_subset, selector_training_examples

# 40 examples a split, 4 candidates each, 2 rounds: seconds a stage; the trained selector, whose
# stages the loop's resume and rank invariance must cover (MBR's lift has its own test)
LIFT = [*TINY, "data.max_examples=40", "train.max_epochs=2", "train.save_every=1",
        "candidates.num_beams=4", "candidates.num_return=4", "candidates.hypothesis_beams=2", "candidates.max_len=16",
        "selector.kind=trained", "selector.train_subset=20", "selector.group_size=4", "selector.max_epochs=2", "selector.max_tokens=1500",
        "selector.lr=1e-3", "lift.max_rounds=2", "lift.patience=2", "lift.no_memory_baseline=false"]
# one process accumulates the two micro-batches that two ranks compute: the same global batch
ONE_PROCESS = "train.accumulate=2"
# every artifact the loop writes, but the report (which holds wall times) and training logs
ARTIFACTS = ["memory/bm25/*.jsonl", "selector_candidates/*.jsonl", "round_*/*/*", "round_*/metrics.jsonl",
             "metrics.jsonl", "generator/model.safetensors", "selector/model.safetensors"]


def lift_args(root, *extra):
    return ["--config", str(DEMO_CONFIG), f"run.root={root}", *LIFT, *extra]


def artifacts(root):
    run = root / "demo"
    return {str(p.relative_to(run)): p.read_bytes() for pattern in ARTIFACTS for p in sorted(run.glob(pattern))}


def state(root):
    return json.loads((root / "demo" / "state.json").read_text())["stages"]


def metrics(root):
    return [json.loads(line) for line in (root / "demo" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("lift-one")
    run_single("launch/lift.py", lift_args(root, ONE_PROCESS))
    return root


def test_one_run_holds_every_round_and_its_report(uninterrupted):
    stages = state(uninterrupted)
    assert list(stages) == ["tokenizer", "retrieval", "generator", "round_0", "selector_candidates", "selector",
                            "round_1", "round_2"]
    assert all(s["done"] for s in stages.values())
    rows = metrics(uninterrupted)
    assert [(r["round"], r["split"]) for r in rows] == [(k, s) for k in range(3) for s in ("dev", "test")]
    # each figure scored afresh with sacrebleu from the round's files: its outputs, its memory (round
    # 0: the top BM25 hit), and of its candidates the first (the beam top-1) and the one of best
    # sentence BLEU (the oracle, the first of equals)
    run = uninterrupted / "demo"
    sentence = sacrebleu.metrics.BLEU(effective_order=True)
    for r in rows:
        split, k = r["split"], r["round"]
        lines = (REPO / "data" / "demo" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        references = [json.loads(line)["trg"] for line in lines[:40]]

        def bleu(texts, references=references):
            return pytest.approx(sacrebleu.corpus_bleu(texts, [references]).score, abs=1e-9)

        assert r["hyps"] == bleu((run / f"round_{k}" / "hyps" / f"{split}.txt").read_text(encoding="utf-8")
                                 .split("\n")[:-1])
        if k == 0:
            assert r["memory"] == bleu([(m["memories"] or [""])[0] for m in read_jsonl(run / "memory" / "bm25" /
                                                                                      f"{split}.jsonl")])
            continue
        assert r["memory"] == bleu([m["memories"][0][0] for m in read_jsonl(run / f"round_{k}" / "memory" /
                                                                           f"{split}.jsonl")])
        pools = [c["candidates"][0] for c in read_jsonl(run / f"round_{k}" / "candidates" / f"{split}.jsonl")]
        assert r["top1"] == bleu([pool[0] for pool in pools])
        assert r["oracle"] == bleu([max(pool, key=lambda c, ref=ref: sentence.sentence_score(c, [ref]).score)
                                    for pool, ref in zip(pools, references, strict=True)])
        assert r["oracle"] >= r["memory"]  # the selector's pick is one of the candidates
    report = (uninterrupted / "demo" / "report.md").read_text()
    assert "| 0 (BM25) |" in report and "| 2 |" in report and "## test (bleu)" in report
    best = max((r for r in rows if r["split"] == "dev"), key=lambda r: (r["hyps"], -r["round"]))["round"]
    test = next(r["hyps"] for r in rows if r["split"] == "test" and r["round"] == best)
    assert f"Best round on dev: {best}; its test bleu: **{test:.2f}**" in report
    memory = [json.loads(line) for line in (run / "round_1" / "memory" / "dev.jsonl").read_text().splitlines()]
    assert len(memory) == 40 and all(len(m["memories"]) == 1 and len(m["memories"][0]) == 1 for m in memory)
    assert (run / "lift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # matplotlib: the plot extra


def test_the_no_memory_baseline_is_trained_and_reported(uninterrupted, tmp_path):
    root = tmp_path / "baseline"
    shutil.copytree(uninterrupted, root)
    run_single("launch/lift.py", lift_args(root, ONE_PROCESS, "lift.no_memory_baseline=true"))
    after = state(root)
    # only the new stage runs: nothing else reads its outputs
    assert {s: r["fingerprint"] for s, r in after.items() if s != "no_memory"} == \
        {s: r["fingerprint"] for s, r in state(uninterrupted).items()}
    run = root / "demo"
    assert json.loads((run / "no_memory" / "generator" / "config.json").read_text())["memory"] == "none"
    rows = metrics(root)
    baseline = [r for r in rows if r["round"] == "no_memory"]
    assert [r["split"] for r in baseline] == ["dev", "test"] and rows[2:] == metrics(uninterrupted)
    hyps = (run / "no_memory" / "hyps" / "dev.txt").read_text(encoding="utf-8").split("\n")[:-1]
    dev = [json.loads(line)["trg"] for line in (REPO / "data" / "demo" / "dev.jsonl").read_text().splitlines()][:40]
    assert baseline[0]["hyps"] == pytest.approx(headline_score("bleu", hyps, dev))
    assert "| no memory |" in (run / "report.md").read_text()

    # a generator that differs only in what its memory reads (here the copy recipe and the
    # memory's positions) keeps the baseline: a model without memory would be trained the same
    weights = run / "no_memory" / "generator" / "model.safetensors"
    trained = weights.stat().st_mtime_ns
    run_single("launch/lift.py", lift_args(root, ONE_PROCESS, "lift.no_memory_baseline=true",
                                           "generator.copy_epochs=1", "generator.joint_positions=slots",
                                           "lift.max_rounds=0"))
    again = state(root)
    assert again["generator"]["fingerprint"] != after["generator"]["fingerprint"]
    assert again["no_memory"] == after["no_memory"] and weights.stat().st_mtime_ns == trained


def test_two_nodes_write_what_one_process_writes(uninterrupted, tmp_path):
    run_torchrun("launch/lift.py", lift_args(tmp_path), nproc=1, nnodes=2)
    one, two = artifacts(uninterrupted), artifacts(tmp_path)
    assert len(one) == 26 and sorted(one) == sorted(two)
    assert [name for name in one if one[name] != two[name]] == []


def test_b1_is_the_plain_selfmem_round(uninterrupted, tmp_path):
    """Round 1 of the loop equals the stand-alone stages: candidates with the retrieved
    memory, the selector's top pick, hypotheses with it."""
    root = tmp_path / "plain"
    shutil.copytree(uninterrupted, root)
    run = root / "demo"
    args = lift_args(root, ONE_PROCESS, "--split", "test", "--round", "7")
    run_single("launch/generate.py", [*args, "--mode", "candidates", "--memory", str(run / "round_0/memory/test.jsonl")])
    run_single("launch/select_memory.py", args)
    run_single("launch/generate.py", [*args, "--mode", "hypotheses", "--memory", str(run / "round_7/memory/test.jsonl")])
    for part in ("candidates/test.jsonl", "memory/test.jsonl", "hyps/test.txt"):
        assert (run / "round_7" / part).read_bytes() == (run / "round_1" / part).read_bytes()


def run_until_killed(root, stage):
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "kill_in_stage.py"), stage,
                           *lift_args(root, ONE_PROCESS)], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_killed_in_every_stage_and_restarted_equals_uninterrupted(uninterrupted, tmp_path):
    for stage in ["tokenizer", "retrieval", "generator", "round_0", "selector_candidates", "selector", "round_1"]:
        run_until_killed(tmp_path, stage)
        record = state(tmp_path)[stage]
        assert record["done"] is False  # killed inside the stage, the run picks it up there
    run_single("launch/lift.py", lift_args(tmp_path, ONE_PROCESS))
    assert artifacts(tmp_path) == artifacts(uninterrupted)
    assert metrics(tmp_path) == metrics(uninterrupted)


def test_a_resumed_round_keeps_the_decodings_it_finished(uninterrupted, tmp_path):
    root = tmp_path / "resumed"
    shutil.copytree(uninterrupted, root)
    run = root / "demo"
    # stopped in round 2 after its dev decodings, before test's: the stage is not done
    saved = json.loads((run / "state.json").read_text())
    saved["stages"]["round_2"]["done"] = False
    (run / "state.json").write_text(json.dumps(saved))
    for part in ("candidates/test.jsonl", "memory/test.jsonl", "hyps/test.txt", "metrics.jsonl"):
        (run / "round_2" / part).unlink()
    kept = {part: (run / "round_2" / part).stat().st_mtime_ns for part in ("candidates/dev.jsonl", "hyps/dev.txt")}
    output = run_single("launch/lift.py", lift_args(root, ONE_PROCESS))
    assert {part: (run / "round_2" / part).stat().st_mtime_ns for part in kept} == kept
    assert "candidates dev: kept, written before the round was resumed" in output
    # its time is its last attempt's, and says so
    assert state(root)["round_2"]["resumed"] is True and "resumed" not in state(uninterrupted)["round_2"]
    (timed,) = [line for line in (run / "report.md").read_text().splitlines() if line.startswith("| round_2 | ")]
    assert timed.endswith(" (resumed: its last attempt) |")
    assert artifacts(root) == artifacts(uninterrupted)
    assert metrics(root) == metrics(uninterrupted)


# draws the stage and the kill point as bench/faults.py does; 5 lands in the selector's training
RESTART_SEED = 5


def test_torchrun_restarts_a_rank_killed_once_and_the_run_ends_as_uninterrupted(uninterrupted, tmp_path):
    rng = random.Random(RESTART_SEED)
    stage = rng.choice(sorted(KILL_POINTS))
    calls = rng.randint(1, KILL_POINTS[stage][2])
    killed = tmp_path / "killed"
    # rank 0 makes every call a kill point watches; the file lets only the first try die
    kill = {"KILL_RANK": "0", "KILL_CALLS": str(calls), "KILL_ONCE": str(killed)}
    # dist.timeout: a restarted group that cannot meet fails in a minute instead of hanging
    [output] = run_torchrun("tests/kill_in_stage.py", [stage, *lift_args(tmp_path / "run", "dist.timeout=60")],
                            launcher=["--max-restarts", "3"], env=kill)
    # rank 0 opens each try with a line on the tokenizer stage: the first, killed, and one restart,
    # which finished the job (how torchrun words the failures varies with which rank it sees first)
    tries = re.findall(r"\[selfmem rank 0\] stage tokenizer: (?:starting|resuming|done \()", output)
    assert killed.exists() and len(tries) == 2, output
    assert f"stage {stage}: resuming" in output
    assert artifacts(tmp_path / "run") == artifacts(uninterrupted)


def test_a_changed_value_reruns_exactly_the_stages_that_read_it(uninterrupted, tmp_path):
    root = tmp_path / "changed"
    shutil.copytree(uninterrupted, root)
    before = state(root)
    generator = root / "demo" / "generator" / "model.safetensors"
    generator_time = generator.stat().st_mtime_ns

    # MBR's retrieved memory: a trained S without the MBR feature reads none
    run_single("launch/lift.py", lift_args(root, ONE_PROCESS, "selector.mbr_retrieved_weight=5",
                                           "selector.mbr_retrieved_hits=2"))
    assert state(root) == before

    run_single("launch/lift.py", lift_args(root, ONE_PROCESS, "selector.lr=3e-3"))
    after = state(root)
    unchanged = ["tokenizer", "retrieval", "generator", "round_0", "selector_candidates"]
    assert [s for s in after if after[s]["fingerprint"] == before[s]["fingerprint"]] == unchanged
    assert generator.stat().st_mtime_ns == generator_time

    # fewer rounds: nothing is redone, the rounds past the new end are dropped
    run_single("launch/lift.py", lift_args(root, ONE_PROCESS, "selector.lr=3e-3", "lift.max_rounds=1"))
    assert {s: r["fingerprint"] for s, r in state(root).items()} == \
        {s: r["fingerprint"] for s, r in after.items() if s != "round_2"}
    assert not (root / "demo" / "round_2" / "hyps" / "dev.txt").exists()
    assert [r["round"] for r in metrics(root)] == [0, 0, 1, 1]


def test_a_lift_trains_s_with_the_mbr_feature_on_each_train_rows_own_bm25_hits(uninterrupted, tmp_path):
    root = tmp_path / "features"
    shutil.copytree(uninterrupted, root)
    features = ["selector.features=[generator,mbr]", "selector.mbr_retrieved_weight=8"]
    run_single("launch/lift.py", lift_args(root, ONE_PROCESS, *features))
    before, after = state(uninterrupted), state(root)
    assert [s for s in after if after[s] == before[s]] == ["tokenizer", "retrieval", "generator", "round_0",
                                                           "selector_candidates"]
    run = root / "demo"
    assert Selector.load(run / "selector").features == ["generator", "mbr"]
    config = load_config(DEMO_CONFIG, lift_args(root, ONE_PROCESS, *features)[2:])
    train_examples, _ = selector_training_examples(config, RunPaths(config.run_dir))
    bm25 = read_jsonl(run / "memory" / "bm25" / "train.jsonl")
    lines = read_jsonl(run / "selector_candidates" / "train.jsonl")
    rows = selector_subset(config, len(bm25))
    assert len(train_examples) == len(lines) == len(rows) == 20
    metric = CHRF(word_order=2)
    for example, line, row in zip(train_examples, lines, rows):
        hits = bm25[row]["memories"][:5]
        assert line["memories"] == [hits[:1]]  # the row's candidates were decoded from its own top hit
        pool = line["candidates"][0]
        consensus = [sum(metric.sentence_score(c, [r]).score for r in dict.fromkeys(pool)) / len(set(pool))
                     for c in pool]
        mbr = [(u + 8 * sum(metric.sentence_score(c, [h]).score for h in hits) / len(hits)) / 9 if hits else u
               for c, u in zip(pool, consensus)]
        assert [v[0] for v in example.features] == line["scores"][0]
        assert [v[1] for v in example.features] == pytest.approx([m / 100 for m in mbr], abs=1e-9)


@pytest.mark.parametrize("mode", ["beam4", "augment"])
def test_top_b_and_augmented_memory_run_end_to_end(mode, uninterrupted, tmp_path):
    root = tmp_path / mode
    shutil.copytree(uninterrupted, root)
    # B = 4 reuses the generator and selector; augment needs a generator that reads 3 memories
    extra = ["selector.beam=4"] if mode == "beam4" else ["selector.mode=augment", "selector.max_memories=3",
                                                         "generator.num_memories=3"]
    run_single("launch/lift.py", lift_args(root, ONE_PROCESS, *extra))
    run = root / "demo"
    stages = state(root)
    assert (stages["generator"] == state(uninterrupted)["generator"]) == (mode == "beam4")
    last = max(int(s.split("_")[1]) for s in stages if s.startswith("round_"))
    assert last >= 1 and f"| {last} |" in (run / "report.md").read_text()
    def memories(k):
        return [json.loads(x)["memories"] for x in (run / f"round_{k}" / "memory" / "test.jsonl").read_text().splitlines()]

    for k in range(1, last + 1):
        lines = memories(k)
        if mode == "beam4":  # up to four distinct memory inputs, one candidate each
            assert all(1 <= len(m) <= 4 and len({x[0] for x in m}) == len(m) for m in lines)
            assert any(len(m) == 4 for m in lines)
            continue
        # one list, no repeats, at most 3: the previous list, or it with the new pick appended
        # (past 3, the oldest self-memory goes; the retrieved memory stays first)
        grown = 0
        for (before,), (after,) in zip(memories(k - 1), lines):
            assert len(after) <= 3 and len(set(after)) == len(after)
            assert after == before or after[:-1] == before or (
                len(before) == 3 and after[0] == before[0] and after[1:-1] == before[2:])
            grown += after != before
        assert grown > 0 or k > 1  # round 1 adds the first self-memory


def mbr_copy(uninterrupted, root):
    """A copy of the trained-selector run without its selector's stages, for an MBR lift."""
    shutil.copytree(uninterrupted, root)
    run = root / "demo"
    shutil.rmtree(run / "selector")
    shutil.rmtree(run / "selector_candidates")
    (run / "round_1" / "candidates" / "dev.jsonl").unlink()  # the selector stage's, in a trained run
    saved = json.loads((run / "state.json").read_text())
    for name in ("selector", "selector_candidates"):
        del saved["stages"][name]
    (run / "state.json").write_text(json.dumps(saved))
    return run


def chrf_utility():
    """The default utility, chrF++, of texts against each of references, averaged."""
    metric = CHRF(word_order=2)
    return lambda texts, references: [sum(metric.sentence_score(t, [r]).score for r in references) / len(references)
                                      for t in texts]


def test_an_mbr_lift_trains_no_selector_and_picks_by_consensus(uninterrupted, tmp_path):
    root = tmp_path / "mbr"
    run = mbr_copy(uninterrupted, root)

    # the retrieved memory's weight chosen on dev among three; on ties the first, which weighs
    # (the temperature stays null here: its choice is tested in test_select.py)
    mbr = ["selector.kind=mbr", "selector.mbr_retrieved_weight_choices=[8,0,2]", "selector.mbr_temperature_choices=[]"]
    run_single("launch/lift.py", lift_args(root, ONE_PROCESS, *mbr))
    stages = state(root)
    assert "selector" not in stages and "selector_candidates" not in stages
    assert not (run / "selector").exists() and not (run / "selector_candidates").exists()
    assert all(stages[s] == state(uninterrupted)[s] for s in ("tokenizer", "retrieval", "generator", "round_0"))
    config = load_config(DEMO_CONFIG, lift_args(root, ONE_PROCESS)[2:])
    chrf = chrf_utility()

    def anchored(pool, consensus, retrieved, weight):  # the top 5 BM25 hits share the weight
        return [(u + weight * chrf([c], retrieved)[0]) / (1 + weight) if retrieved else u
                for c, u in zip(pool, consensus)]

    retrieved = {split: [r["memories"][:5] for r in read_jsonl(run / "memory" / "bm25" / f"{split}.jsonl")]
                 for split in ("dev", "test")}

    def check_round(k, consensus):
        """Round k's picks on dev and test: anchored on the BM25 hits (not on the self memory that
        round 2 decodes from) with the weight among the choices whose dev picks score best."""
        pools = {split: [r["candidates"][0] for r in read_jsonl(run / f"round_{k}" / "candidates" / f"{split}.jsonl")]
                 for split in ("dev", "test")}

        def picks(split, weight):
            return [top_b(pool, anchored(pool, consensus(k, split, i, pool), hits, weight), 1)[0]
                    for i, (pool, hits) in enumerate(zip(pools[split], retrieved[split]))]
        by_weight = {w: headline_score("bleu", picks("dev", w), [ex.target for ex in load_split(config.data, "dev")])
                     for w in (8.0, 0.0, 2.0)}
        weight = max(by_weight, key=by_weight.get)  # the first of the best
        for split in ("dev", "test"):
            memories = read_jsonl(run / f"round_{k}" / "memory" / f"{split}.jsonl")
            assert len(memories) == len(load_split(config.data, split))
            assert [m["memories"] for m in memories] == [[[pick]] for pick in picks(split, weight)]
            [row] = [r for r in metrics(root) if r["round"] == k and r["split"] == split]
            assert row["retrieved_weight"] == weight and row["temperature"] is None
        # the report's columns, on dev and test: | k | hypotheses ... changed | weight | temperature | no-memory
        # opinion's weight | seconds |
        assert len(re.findall(rf"\n\| {k} \|(?: [^|]+ \|){{5}} {weight:g} \| - \| 0 \| [\d.]+ \|\n",
                              (run / "report.md").read_text())) == 2
        return weight

    assert any(len(hits) > 1 for hits in retrieved["dev"])
    assert (run / "round_2" / "memory" / "dev.jsonl").exists()
    weights = [check_round(k, lambda k, split, i, pool: chrf(pool, list(dict.fromkeys(pool)))) for k in (1, 2)]
    assert any(w > 0 for w in weights)  # the retrieved memory weighs in some round
    elsewhere = sum(r["memories"] != [hits[:1]] for split in ("dev", "test")
                    for r, hits in zip(read_jsonl(run / "round_2" / "candidates" / f"{split}.jsonl"), retrieved[split]))
    assert elsewhere > 0  # round 2 decodes from the self memory, not the top hit

    # the sampling settings count only where the rounds sample: here nothing reruns
    run_single("launch/lift.py", lift_args(root, ONE_PROCESS, *mbr, "candidates.num_samples=3"))
    assert state(root) == stages
    # with samples as the pseudo-references: the rounds rerun, each decoding its samples too
    samples = ["selector.mbr_references=samples", "candidates.num_samples=3", "candidates.epsilon=0"]
    run_single("launch/lift.py", lift_args(root, ONE_PROCESS, *mbr, *samples))
    assert all(state(root)[s] == stages[s] for s in ("generator", "round_0"))
    assert state(root)["round_1"] != stages["round_1"]
    drawn = {split: read_jsonl(run / "round_1" / "samples" / f"{split}.jsonl") for split in ("dev", "test")}
    for split in ("dev", "test"):
        records = read_jsonl(run / "round_1" / "candidates" / f"{split}.jsonl")
        assert [d["memories"] for d in drawn[split]] == [r["memories"] for r in records]
        assert all(len(d["samples"][0]) == 3 for d in drawn[split])
    check_round(1, lambda k, split, i, pool: chrf(pool, drawn[split][i]["samples"][0]))

    # the retrieved memory's keys rerun the rounds where it weighs, and nothing where it does not
    sampled = state(root)
    run_single("launch/lift.py", lift_args(root, ONE_PROCESS, *mbr, *samples,
                                           "selector.mbr_retrieved_hits=2"))
    assert all(state(root)[s] == sampled[s] for s in ("generator", "round_0"))
    assert state(root)["round_1"] != sampled["round_1"]
    consensus = ["selector.kind=mbr", *samples, "selector.mbr_retrieved_weight=0"]
    run_single("launch/lift.py", lift_args(root, ONE_PROCESS, *consensus))
    alone = state(root)
    run_single("launch/lift.py", lift_args(root, ONE_PROCESS, *consensus, "selector.mbr_retrieved_hits=3"))
    assert state(root) == alone


def test_the_no_memory_baselines_opinion_weighs_in_the_rounds_picks(uninterrupted, tmp_path):
    root = tmp_path / "opinion"
    run = mbr_copy(uninterrupted, root)
    mbr = ["selector.kind=mbr", "selector.mbr_retrieved_weight=0", "lift.no_memory_baseline=true",
           "selector.no_memory_weight=null", "selector.no_memory_weight_choices=[50,0]"]
    run_single("launch/lift.py", lift_args(root, ONE_PROCESS, *mbr))
    stages = state(root)
    assert all(stages[s] == state(uninterrupted)[s] for s in ("tokenizer", "retrieval", "generator", "round_0"))
    config = load_config(DEMO_CONFIG, lift_args(root, ONE_PROCESS, *mbr)[2:])
    chrf = chrf_utility()
    references = [ex.target for ex in load_split(config.data, "dev")]
    for k in (1, 2):
        pools = {split: [r["candidates"][0] for r in read_jsonl(run / f"round_{k}" / "candidates" / f"{split}.jsonl")]
                 for split in ("dev", "test")}
        scores = {split: run / f"round_{k}" / "no_memory_scores" / f"{split}.jsonl" for split in ("dev", "test")}

        def picks(split, weight):
            opinions = [r["scores"][0] for r in read_jsonl(scores[split])] if weight else [[0.0] * 4] * len(pools[split])
            return [top_b(pool, [u + weight * o for u, o in zip(chrf(pool, list(dict.fromkeys(pool))), opinion)], 1)[0]
                    for pool, opinion in zip(pools[split], opinions)]
        # the first of the best: the tiny generator's candidates score alike, so a tie keeps 50 and test is scored too
        by_weight = {w: headline_score("bleu", picks("dev", w), references) for w in (50.0, 0.0)}
        weight = max(by_weight, key=by_weight.get)
        assert scores["test"].exists() == (weight > 0)  # test's candidates are scored only where the opinion weighs
        for split in ("dev", "test"):
            memories = read_jsonl(run / f"round_{k}" / "memory" / f"{split}.jsonl")
            assert [m["memories"] for m in memories] == [[[pick]] for pick in picks(split, weight)]
            [row] = [r for r in metrics(root) if r["round"] == k and r["split"] == split]
            assert row["no_memory_weight"] == weight and row["retrieved_weight"] == 0
    # the scores are the baseline's: the first dev example's, computed here
    baseline = Seq2SeqModel.load(run / "no_memory" / "generator", map_location="cpu").eval()
    tokenizer = load_tokenizer(run / "tokenizer")
    ids = SpecialIds.of(tokenizer, baseline)
    [first] = read_jsonl(run / "round_1" / "candidates" / "dev.jsonl")[:1]
    expected = candidate_log_probs(baseline, load_split(config.data, "dev")[0], first["candidates"][0], tokenizer,
                                   config, ids, torch.device("cpu"))
    assert read_jsonl(run / "round_1" / "no_memory_scores" / "dev.jsonl")[0]["scores"][0] == \
        pytest.approx(expected, abs=1e-4)


def test_lift_refuses_an_opinion_without_the_no_memory_baseline(tmp_path):
    config = load_config(DEMO_CONFIG, lift_args(tmp_path, "selector.kind=mbr", "selector.no_memory_weight=2")[2:])
    with pytest.raises(ValueError, match=r"^selector.no_memory_weight weighs the no-memory baseline's opinion of the "
                                         r"candidates, which the lift trains with lift.no_memory_baseline=true"):
        lift(config, DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1), RunPaths(config.run_dir))
    assert not (tmp_path / "demo").exists()


def test_lift_refuses_an_augment_generator_that_reads_fewer_memories(tmp_path):
    with pytest.raises(pytest.fail.Exception, match=r"selector.mode augment grows memory lists to "
                       r"selector.max_memories \(4\) but the generator reads generator.num_memories \(1\)"):
        run_single("launch/lift.py", lift_args(tmp_path, "selector.mode=augment"))


def test_lift_refuses_a_global_batch_its_processes_cannot_share_before_any_stage(tmp_path):
    config = load_config(DEMO_CONFIG, lift_args(tmp_path, "train.global_batch=3")[2:])
    two_ranks = DistEnv(rank=0, world_size=2, local_rank=0, local_world_size=2)
    with pytest.raises(ValueError, match=r"^train.global_batch = 3 micro-batches per step cannot be shared by 2 "
                                         r"processes: start a number of processes that divides 3$"):
        lift(config, two_ranks, RunPaths(config.run_dir))
    assert not (tmp_path / "demo").exists()


def test_lift_refuses_copy_epochs_that_leave_none_for_the_memory_before_any_stage(tmp_path):
    """Refused before the no-memory baseline, the lift's first training, not hours after it."""
    config = load_config(DEMO_CONFIG, lift_args(tmp_path, "generator.copy_epochs=4", "train.max_epochs=4",
                                                "lift.no_memory_baseline=true")[2:])
    with pytest.raises(ValueError, match=r"^generator.copy_epochs = 4 leaves no epoch of train.max_epochs = 4 "
                                         r"for the retrieved memory$"):
        lift(config, DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1), RunPaths(config.run_dir))
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("overrides, message", [
    (["generator.init=null", "train.max_epochs=0"],
     "train.max_epochs is 0, which keeps generator.init as it is, but there is none: the generator would stay "
     "untrained; give train.max_epochs or generator.init"),
    (["generator.engine=hf", "generator.init=INIT", "selector.kind=trained"],
     "selector.backbone 'generator' copies the native generator's encoder; with generator.engine hf set "
     "selector.backbone=hf and selector.path to an encoder directory"),
    (["selector.kind=trained", "selector.backbone=hf"],
     "selector.backbone is 'hf' but selector.path (an encoder directory) is not set"),
    (["generator.engine=hf", "generator.init=INIT", "selector.kind=mbr", "selector.mbr_references=samples"],
     "sampling (launch/generate.py --mode samples, and selector.mbr_references samples) needs generator.engine "
     "native: HF generate's sampling is not rank-invariant"),
    (["generator.init=null", "generator.d_model=30", "generator.heads=4"],
     "generator.d_model (30) must be divisible by generator.heads (4): each head takes an equal share"),
    (["generator.memory=dual", "generator.engine=hf", "generator.init=INIT"],
     "generator.engine 'hf' supports generator.memory none or joint, not dual"),
])
def test_lift_refuses_settings_its_later_stages_cannot_use_before_any_stage(overrides, message, tmp_path):
    """Each of these used to fail in the stage that reads it: after the generator's training for
    the selector's and the sampler's, after the tokenizer and BM25 for the model's. (INIT: a
    checkpoint directory, never read.)"""
    overrides = [o.replace("INIT", str(tmp_path / "checkpoint")) for o in overrides]
    config = load_config(DEMO_CONFIG, lift_args(tmp_path, *overrides)[2:])
    with pytest.raises(ValueError) as info:
        lift(config, DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1), RunPaths(config.run_dir))
    assert str(info.value) == message
    assert not (tmp_path / "demo").exists()


def test_path_digest_follows_the_files_behind_a_path(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    (checkpoint / "sub").mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "sub" / "model.bin").write_bytes(b"weights")
    first = path_digest(checkpoint)
    assert path_digest(str(checkpoint)) == first
    (checkpoint / "sub" / "model.bin").write_bytes(b"other weights")
    assert path_digest(checkpoint) != first
    (checkpoint / "sub" / "model.bin").write_bytes(b"weights")
    assert path_digest(checkpoint) == first
    (checkpoint / "config.json").rename(checkpoint / "renamed.json")  # same bytes, another name
    assert path_digest(checkpoint) != first
    assert path_digest(checkpoint / "sub" / "model.bin") == file_digest(checkpoint / "sub" / "model.bin")
    assert path_digest(None) is None


def test_a_stage_killed_while_its_old_outputs_go_is_neither_skipped_nor_resumed(tmp_path, monkeypatch):
    from selfmem.lift import state as state_module

    output = tmp_path / "stage"
    runs = []

    def work(tag):
        def write():
            output.mkdir(exist_ok=True)
            (output / "checkpoint").write_text(tag)
            runs.append(tag)
        return write

    state = state_module.RunState(tmp_path / "state.json")
    state.run("stage", ["old"], [output], work("old"))
    real_remove = state_module.remove

    def killed_midway(paths):  # the inputs changed; killed while the old outputs are removed
        raise KeyboardInterrupt

    monkeypatch.setattr(state_module, "remove", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        state_module.RunState(tmp_path / "state.json").run("stage", ["new"], [output], work("new"))
    assert "stage" not in json.loads((tmp_path / "state.json").read_text())["stages"]
    monkeypatch.setattr(state_module, "remove", real_remove)
    # back to the old inputs: the old outputs may be half gone, so the stage runs again
    state_module.RunState(tmp_path / "state.json").run("stage", ["old"], [output], work("old"))
    assert runs == ["old", "old"]
    # the new inputs: the old checkpoint is removed before the work, never resumed from
    seen = []
    state_module.RunState(tmp_path / "state.json").run(
        "stage", ["new"], [output], lambda: seen.append(output.exists()) or work("new")())
    assert seen == [False] and (output / "checkpoint").read_text() == "new"


def test_a_summarization_lift_scores_its_oracle_with_the_rouge_weights_and_reruns_when_they_change(tmp_path):
    """MBR on a ROUGE corpus: the rounds' oracle column is each example's best candidate by
    the weighted ROUGE-1/ROUGE-2 of ``selector.rouge_weights``, so changing them reruns the
    rounds (and only them) and the column follows."""
    data = REPO / "tests" / "fixtures" / "debian_sum"
    args = ["--config", str(REPO / "configs" / "debian_sum.yaml"), f"data.dir={data}", f"run.root={tmp_path}",
            *[a for a in TINY if not a.startswith(("lift.no_memory_init", "data.max_examples"))],
            "tokenizer.vocab_size=600", "data.max_examples=40", "train.max_epochs=2", "candidates.num_beams=4",
            "candidates.num_return=4", "candidates.hypothesis_beams=2", "candidates.max_len=16",
            "selector.kind=mbr", "selector.mbr_retrieved_weight=0", "lift.max_rounds=1",
            "lift.no_memory_baseline=false"]
    run = tmp_path / "debian_sum"
    config = load_config(REPO / "configs" / "debian_sum.yaml", args[2:])
    references = {split: [ex.target for ex in load_split(config.data, split)] for split in ("dev", "test")}

    def oracle(split, weights):  # the first of each example's best candidates, scored afresh
        pools = [r["candidates"][0] for r in read_jsonl(run / "round_1" / "candidates" / f"{split}.jsonl")]
        best = [max(pool, key=lambda c, ref=ref: sentence_rouge(c, ref, weights))
                for pool, ref in zip(pools, references[split])]
        return headline_score("rouge", best, references[split])

    def stages():
        return json.loads((run / "state.json").read_text())["stages"]

    def rows():
        return {r["split"]: r for r in read_jsonl(run / "metrics.jsonl") if r["round"] == 1}

    run_single("launch/lift.py", [*args, "selector.rouge_weights=[1,0]"])
    first = stages()
    assert {split: rows()[split]["oracle"] for split in ("dev", "test")} == \
        {split: oracle(split, (1.0, 0.0)) for split in ("dev", "test")}
    run_single("launch/lift.py", [*args, "selector.rouge_weights=[0,1]"])
    assert [s for s in stages() if stages()[s]["fingerprint"] != first[s]["fingerprint"]] == ["round_1"]
    assert {split: rows()[split]["oracle"] for split in ("dev", "test")} == \
        {split: oracle(split, (0.0, 1.0)) for split in ("dev", "test")}
    assert oracle("dev", (0.0, 1.0)) != oracle("dev", (1.0, 0.0))  # the weights pick other candidates
