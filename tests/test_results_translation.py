"""results/translation.py for real on the demo data: systems that share a generator train it
once, a second call resumes (redoes nothing), and the report's figures are the runs'."""

import importlib.util
import json
import shutil
import statistics
import subprocess
import sys

import pytest
from conftest import DEMO_CONFIG, DEMO_DATA, REPO, _env

from selfmem.common.io import atomic_write_jsonl, read_jsonl, read_lines
from selfmem.common.metrics import corpus_bleu, corpus_chrf

# the demo's shipped generators (not trained further), 20 examples a split, 2 rounds
EXAMPLES = 20
SMALL = ["--config", str(DEMO_CONFIG), "train.max_epochs=0", f"data.max_examples={EXAMPLES}", "candidates.num_beams=4",
         "candidates.num_return=4", "candidates.hypothesis_beams=2", "lift.max_rounds=2", "lift.patience=2"]


def drive(root, data, report):
    return subprocess.run([sys.executable, str(REPO / "results" / "translation.py"), "--corpora", "tm",
                           "--systems", "joint", "topb4", "upper", "--root", str(root), "--data", str(data),
                           "--nproc", "1", "--report", str(report), *SMALL],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)


def report_only(root, data, report):
    """The report rebuilt from the runs under ``root`` as they are."""
    again = subprocess.run([sys.executable, str(REPO / "results" / "translation.py"), "--corpora", "tm",
                            "--root", str(root), "--data", str(data), "--report", str(report), "--report-only",
                            *SMALL], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    return report.read_text()


def stages(run):
    return json.loads((run / "state.json").read_text())["stages"]


@pytest.fixture(scope="module")
def driven(tmp_path_factory):
    root = tmp_path_factory.mktemp("translation")
    data = root / "data"
    data.mkdir()
    (data / "libreoffice_ende_tm").symlink_to(DEMO_DATA)
    report = root / "report.md"
    first = drive(root / "runs", data, report)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return root / "runs" / "tm", data, report


def test_a_system_that_shares_the_generator_trains_it_once(driven):
    runs, _, _ = driven
    joint, topb4 = stages(runs / "joint"), stages(runs / "topb4")
    for stage in ("tokenizer", "retrieval", "generator", "no_memory"):
        assert topb4[stage] == {**joint[stage], "forked_from": "joint"}  # copied done, not redone
    assert (runs / "topb4" / "generator" / "model.safetensors").read_bytes() == \
        (runs / "joint" / "generator" / "model.safetensors").read_bytes()
    assert topb4["round_1"]["fingerprint"] != joint["round_1"]["fingerprint"]
    # B = 4 memory inputs an example, each one of its distinct candidates (fewer where it has fewer)
    pools = [{text for texts in r["candidates"] for text in texts}
             for r in read_jsonl(runs / "topb4" / "round_1" / "candidates" / "dev.jsonl")]
    kept = [r["memories"] for r in read_jsonl(runs / "topb4" / "round_1" / "memory" / "dev.jsonl")]
    assert [len(memories) for memories in kept] == [min(4, len(pool)) for pool in pools]
    for memories, pool in zip(kept, pools):
        texts = [text for (text,) in memories]
        assert len(set(texts)) == len(texts) and set(texts) <= pool
    assert sum(len(memories) == 4 for memories in kept) > EXAMPLES // 2


def test_a_second_call_resumes_and_redoes_nothing(driven):
    runs, data, report = driven
    before = {name: stages(runs / name) for name in ("joint", "topb4")}
    upper = (runs / "upper" / "round_0" / "hyps" / "test.txt").stat().st_mtime_ns
    again = drive(runs.parent, data, report)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {name: stages(runs / name) for name in ("joint", "topb4")} == before
    assert (runs / "upper" / "round_0" / "hyps" / "test.txt").stat().st_mtime_ns == upper


def test_the_report_holds_each_systems_test_scores_at_its_best_dev_round(driven):
    runs, data, report = driven
    text = report.read_text()
    references = {split: [json.loads(line)["trg"] for line in (DEMO_DATA / f"{split}.jsonl").read_text().splitlines()][:EXAMPLES]
                  for split in ("dev", "test")}

    def cells(hyps, split="test"):
        texts = read_lines(hyps)
        return f"{corpus_bleu(texts, references[split], '13a').value:.2f} | {corpus_chrf(texts, references[split]).value:.2f}"

    rows = read_jsonl(runs / "joint" / "metrics.jsonl")
    dev = {r["round"]: r["hyps"] for r in rows if r["split"] == "dev"}
    best = max((1, 2), key=lambda k: (dev[k], -k))  # chosen on dev, among the rounds of self memory
    assert f"| Transformer (no memory) | - | {dev['no_memory']:.2f} | " \
           f"{cells(runs / 'joint' / 'no_memory' / 'hyps' / 'test.txt')} |" in text
    assert text.count("| Transformer (no memory) |") == 1  # topb4's baseline is joint's, copied: one row
    assert f"| Transformer-Joint (BM25 memory, round 0) | 0 | {dev[0]:.2f} | " \
           f"{cells(runs / 'joint' / 'round_0' / 'hyps' / 'test.txt')} |" in text
    assert f"| Selfmem Joint | {best} | {dev[best]:.2f} | " \
           f"{cells(runs / 'joint' / f'round_{best}' / 'hyps' / 'test.txt')} |" in text
    upper = runs / "upper" / "round_0" / "hyps"
    dev_upper = corpus_bleu(read_lines(upper / "dev.txt"), references["dev"], "13a").value
    assert f"| upper bound (the reference as memory) | - | {dev_upper:.2f} | {cells(upper / 'test.txt')} |" in text
    # the upper bound decodes with each example's own reference as its memory
    memory = read_jsonl(runs / "upper" / "reference_memory" / "test.jsonl")
    assert [m["memories"] for m in memory] == [[r] for r in references["test"]]
    assert "Joint, Top-B (B = 4), per round" in text
    # does G copy its memory: the share of a round's outputs that are a text of their memory input
    for k, memory_file in ((0, runs / "joint" / "memory" / "bm25" / "dev.jsonl"),
                           (1, runs / "joint" / "round_1" / "memory" / "dev.jsonl")):
        memories = [m["memories"] for m in read_jsonl(memory_file)]
        first = [m[:1] if k == 0 else m[0] for m in memories]  # joint: the top hit; later, the first input
        hyps = read_lines(runs / "joint" / f"round_{k}" / "hyps" / "dev.txt")
        share = sum(h in texts for h, texts in zip(hyps, first)) / len(hyps)
        joint_table = text.split("Joint, per round")[1].split("wall seconds per stage")[0]
        (cells_k,) = [line for line in joint_table.splitlines() if line.startswith(f"| {k} | dev |")]
        assert cells_k.split(" | ")[4] == f"{share:.1%}"
    # each run's own stage times: Top-B's generator is the joint run's, timed there
    times = [line for line in text.splitlines() if line.startswith("wall seconds per stage: ")]
    assert len(times) == 2 and "generator" in times[0] and "generator" not in times[1]
    assert (report.parent / "report_tm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prepare_only_runs_the_stages_that_read_no_generator(driven, tmp_path):
    """--prepare-only (a CPU's share before a GPU run): joint's tokenizer and BM25 memory, as the
    full run makes them, and nothing else; the forks copy them later, with the no-memory
    baseline, which comes before the generator so that they can."""
    runs, data, _ = driven
    prepared = subprocess.run([sys.executable, str(REPO / "results" / "translation.py"), "--corpora", "tm",
                               "--root", str(tmp_path / "runs"), "--data", str(data), "--nproc", "1",
                               "--prepare-only", *SMALL], cwd=REPO, env=_env(), capture_output=True, text=True,
                              timeout=600)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert [run.name for run in (tmp_path / "runs" / "tm").iterdir()] == ["joint"]
    joint = stages(runs / "joint")
    assert {stage: record["fingerprint"] for stage, record in stages(tmp_path / "runs" / "tm" / "joint").items()} \
        == {stage: joint[stage]["fingerprint"] for stage in ("tokenizer", "retrieval")}
    assert list(joint)[:5] == ["tokenizer", "retrieval", "no_memory", "generator", "round_0"]


def test_a_round_being_redone_is_left_out_of_the_report(driven, tmp_path):
    runs, data, _ = driven
    copy = tmp_path / "runs" / "tm"
    shutil.copytree(runs, copy, symlinks=True)
    # a rerun of round 2 under way: its files are gone, the run's metrics.jsonl still lists it
    shutil.rmtree(copy / "joint" / "round_2")
    text = report_only(tmp_path / "runs", data, tmp_path / "report.md")
    dev = {r["round"]: r["hyps"] for r in read_jsonl(runs / "joint" / "metrics.jsonl") if r["split"] == "dev"}
    assert f"| Selfmem Joint | 1 | {dev[1]:.2f} | " in text
    joint = text[text.index("Joint, per round"):text.index("Joint, Top-B (B = 4), per round")]
    assert "| 1 | dev |" in joint and "| 2 | dev |" not in joint
    # round 1 being redone: round 2's files, still there, are from before it and left out too
    shutil.rmtree(copy)
    shutil.copytree(runs, copy, symlinks=True)
    shutil.rmtree(copy / "joint" / "round_1")
    text = report_only(tmp_path / "runs", data, tmp_path / "report.md")
    joint = text[text.index("Joint, per round"):text.index("Joint, Top-B (B = 4), per round")]
    assert "| 0 | dev |" in joint and "| 1 | dev |" not in joint and "| 2 | dev |" not in joint
    assert "| Selfmem Joint |" not in text and "| Selfmem Joint, Top-B (B = 4) |" in text
    # joint's generator being trained anew: its rounds' files are the old generator's, left out
    shutil.rmtree(copy)
    shutil.copytree(runs, copy, symlinks=True)
    state = json.loads((copy / "joint" / "state.json").read_text())
    state["stages"]["generator"]["done"] = False
    (copy / "joint" / "state.json").write_text(json.dumps(state))
    text = report_only(tmp_path / "runs", data, tmp_path / "report.md")
    assert "| Transformer (no memory) |" in text and "Transformer-Joint (BM25 memory" not in text
    assert "Joint, per round" not in text and "| Selfmem Joint, Top-B (B = 4) |" in text


def test_a_run_before_its_first_round_of_self_memory_reports_its_finished_stages(driven, tmp_path):
    """A run's own metrics.jsonl is written once a round of self memory ends: until then the
    report reads the no-memory baseline's and round 0's rows from their stages' own files
    (a run stopped at a deadline in round 1 still shows them)."""
    runs, data, _ = driven
    copy = tmp_path / "runs" / "tm" / "joint"
    shutil.copytree(runs / "joint", copy, symlinks=True)
    (copy / "metrics.jsonl").unlink()
    for round_dir in ("round_1", "round_2"):
        shutil.rmtree(copy / round_dir)
    text = report_only(tmp_path / "runs", data, tmp_path / "report.md")
    dev = {r["round"]: r["hyps"] for r in read_jsonl(runs / "joint" / "metrics.jsonl") if r["split"] == "dev"}
    assert f"| Transformer (no memory) | - | {dev['no_memory']:.2f} | " in text
    assert f"| Transformer-Joint (BM25 memory, round 0) | 0 | {dev[0]:.2f} | " in text
    assert "| Selfmem Joint |" not in text and "| 0 | dev |" in text


def test_every_system_with_a_generator_of_its_own_reports_its_round_0(driven, tmp_path):
    runs, data, _ = driven
    copy = tmp_path / "runs" / "tm"
    copy.mkdir(parents=True)
    shutil.copytree(runs / "joint", copy / "augment", symlinks=True)  # a finished augment run, as it would look
    text = report_only(tmp_path / "runs", data, tmp_path / "report.md")
    dev = {r["round"]: r["hyps"] for r in read_jsonl(runs / "joint" / "metrics.jsonl") if r["split"] == "dev"}
    assert f"| Transformer-Joint, augmented memory (BM25 memory, round 0) | 0 | {dev[0]:.2f} | " in text


def test_the_driver_does_not_import_torch():
    """It only reads runs and starts launch scripts: it starts in a moment, not in seconds."""
    loaded = subprocess.run([sys.executable, "-c", "import runpy, sys; sys.argv = ['translation.py', '--help']\n"
                             f"try: runpy.run_path({str(REPO / 'results' / 'translation.py')!r}, run_name='__main__')\n"
                             "except SystemExit: print('torch' in sys.modules)"],
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    assert loaded.stdout.splitlines()[-1] == "False", loaded.stdout[-2000:] + loaded.stderr[-2000:]


def translation_module():
    spec = importlib.util.spec_from_file_location("translation", REPO / "results" / "translation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["translation"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_system_with_a_generator_of_its_own_starts_from_the_stages_that_read_none(driven, tmp_path):
    """dual forks joint's tokenizer, BM25 memory and no-memory baseline only: joint's generator
    and round 0, copied, would stand in the report as dual's own until its lift retrained them.
    The report leaves out a run's round 0 while it is being redone (the plot's BM25 line too),
    and the rounds after it."""
    translation = translation_module()
    runs, data, _ = driven
    copy = tmp_path / "runs" / "tm"
    shutil.copytree(runs, copy, symlinks=True)
    assert translation.BY_NAME["dual"].own_generator and not translation.BY_NAME["topb4"].own_generator
    assert translation.BY_NAME["close"].own_generator  # its memories are others: so is its generator
    translation.fork(copy / "joint", copy / "dual", own_generator=True)
    assert sorted(p.name for p in (copy / "dual").iterdir()) == ["memory", "no_memory", "state.json", "tokenizer"]
    joint = stages(copy / "joint")
    assert stages(copy / "dual") == {name: {**joint[name], "forked_from": "joint"}
                                     for name in ("tokenizer", "retrieval", "no_memory")}
    shutil.rmtree(copy / "joint" / "round_0")  # joint's round 0 being redone
    text = report_only(tmp_path / "runs", data, tmp_path / "report.md")
    # and joint's rounds after it, decoded from the round 0 being redone
    assert "Dual" not in text and "BM25 memory, round 0" not in text and "| Selfmem Joint |" not in text
    assert "| Selfmem Joint, Top-B (B = 4) |" in text
    # the augment system's own settings reach the config its report reads
    setup = translation.Setup(tmp_path / "runs", data, DEMO_CONFIG, (), 1)
    assert translation.run_config(setup, "tm", "augment", translation.BY_NAME["augment"].overrides) \
        .generator.num_memories == 2


def test_the_upper_bound_waits_for_joints_generator_and_follows_it(driven, tmp_path, monkeypatch):
    translation = translation_module()
    runs, data, _ = driven
    copy = tmp_path / "runs" / "tm"
    shutil.copytree(runs, copy, symlinks=True)
    setup = translation.Setup(tmp_path / "runs", data, DEMO_CONFIG, tuple(SMALL[2:]), 1)
    decoded = []
    monkeypatch.setattr(translation, "launch",
                        lambda script, args, nproc: decoded.append(args[args.index("--split") + 1]))
    translation.run_upper_bound(setup, "tm")
    assert decoded == []  # both splits decoded already, with joint's generator as it is
    # the report shows an upper bound decoded with joint's generator as it is now only
    assert "| upper bound" in report_only(tmp_path / "runs", data, tmp_path / "report.md")
    decoded_with = (copy / "upper" / "generator_fingerprint").read_text()
    (copy / "upper" / "generator_fingerprint").write_text("an older generator")
    assert "| upper bound" not in report_only(tmp_path / "runs", data, tmp_path / "report.md")
    (copy / "upper" / "generator_fingerprint").write_text(decoded_with)
    state = json.loads((copy / "joint" / "state.json").read_text())
    state["stages"]["generator"]["fingerprint"] = "retrained"
    (copy / "joint" / "state.json").write_text(json.dumps(state))
    translation.run_upper_bound(setup, "tm")
    assert decoded == ["dev", "test"]  # joint's generator trained anew: decoded again with it
    assert (copy / "upper" / "generator_fingerprint").read_text() == "retrained"
    state["stages"]["generator"]["done"] = False
    (copy / "joint" / "state.json").write_text(json.dumps(state))
    with pytest.raises(SystemExit, match=r"joint: its generator is not trained yet, which the upper bound decodes "
                                         r"with: run --systems joint first"):
        translation.run_upper_bound(setup, "tm")
    with pytest.raises(SystemExit, match=r"tm/none: no run there, which dual starts from: run it first "
                                         r"\(--systems none\)"):
        translation.fork(copy / "none", copy / "dual", own_generator=True)


def test_across_runs_lists_each_runs_gain_and_their_mean(driven, tmp_path):
    runs, data, _ = driven
    references = [json.loads(line)["trg"] for line in (DEMO_DATA / "test.jsonl").read_text().splitlines()][:EXAMPLES]
    # two other runs of the experiment, copies of this one: in the second every dev figure is 5
    # higher but round 2's, which is 5 lower (its best round on dev: 1), and its test hypotheses of
    # round 0 are the references; the third stopped after its round 0
    second, third = tmp_path / "second", tmp_path / "third"
    for other in (second, third):
        shutil.copytree(runs, other / "tm", ignore=shutil.ignore_patterns("*.safetensors", "*.pt"))
    joint = second / "tm" / "joint"
    for k, shift in ((0, 5), (1, 5), (2, -5)):
        rows = read_jsonl(joint / f"round_{k}" / "metrics.jsonl")
        atomic_write_jsonl(joint / f"round_{k}" / "metrics.jsonl",
                           [{**r, "hyps": r["hyps"] + shift} if r["split"] == "dev" else r for r in rows])
    (joint / "round_0" / "hyps" / "test.txt").write_text("\n".join(references) + "\n")
    for k in (1, 2):
        shutil.rmtree(third / "tm" / "joint" / f"round_{k}")
    report = tmp_path / "report.md"
    command = [sys.executable, str(REPO / "results" / "translation.py"), "--corpora", "tm", "--data", str(data),
               "--report", str(report), *SMALL, "--across"]
    done = subprocess.run([*command, str(runs.parent), str(second), str(third)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = report.read_text().split("### libreoffice_ende_tm, across runs")[1]

    def test_bleu(run, k):
        return corpus_bleu(read_lines(run / f"round_{k}" / "hyps" / "test.txt"), references, "13a").value

    def dev_bleu(run, k):
        return next(r["hyps"] for r in read_jsonl(run / f"round_{k}" / "metrics.jsonl") if r["split"] == "dev")

    figures = []
    for root in (runs.parent, second):
        run = root / "tm" / "joint"
        best = max((1, 2), key=lambda k: (dev_bleu(run, k), -k))
        figures.append([dev_bleu(run, 0), test_bleu(run, 0), dev_bleu(run, best), test_bleu(run, best),
                        dev_bleu(run, best) - dev_bleu(run, 0), test_bleu(run, best) - test_bleu(run, 0)])
        f = figures[-1]
        assert f"| Joint | `{root}` | {f[0]:.2f} | {f[1]:.2f} | {best} | {f[2]:.2f} | {f[3]:.2f} | " \
               f"{f[4]:+.2f} | {f[5]:+.2f} |" in table
    assert abs(figures[1][1] - 100) < 1e-9  # the second's round 0 test hypotheses are the references
    third_joint = third / "tm" / "joint"
    assert f"| Joint | `{third}` | {dev_bleu(third_joint, 0):.2f} | {test_bleu(third_joint, 0):.2f} | " \
           "- | - | - | - | - |" in table
    spread = [f"{statistics.mean(c):.2f} ({statistics.stdev(c):.2f})" for c in zip(*figures)]
    assert f"| Joint | mean (sd) of 2 runs | {spread[0]} | {spread[1]} | - | {spread[2]} | {spread[3]} | " \
           f"{spread[4]} | {spread[5]} |" in table  # the third, without a round of self memory, left out
    assert "| Joint, Top-B" not in table  # Top-B shares joint's generator: its round 0 is joint's
    # a k=v setting after --across would be read as a root: refused
    refused = subprocess.run([*command, str(second), "lift.max_rounds=1"], cwd=REPO, env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2
    assert "--across: lift.max_rounds=1 is no directory of runs (k=v settings go before --across)" in refused.stderr
