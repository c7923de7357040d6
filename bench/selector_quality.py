"""The selector on real candidates: its pick against the beam top-1 and the oracle pick.

    python bench/selector_quality.py --config configs/libreoffice_ende.yaml [k=v ...]

Needs the run's trained generator (launch/train_generator.py). Generates the candidates
where missing (``selector.train_subset`` train examples with their BM25 memory; every dev
example with round 0's memory), trains the selector exactly as launch/train_selector.py
does (the best epoch kept by the dev metric of its pick), and prints for every epoch the
dev corpus metric of the selector's pick, of the beam top-1 (the first candidate) and of
the oracle pick (the candidate closest to the reference), with the run's settings. The
kept epoch is chosen on dev, so its dev figure is optimistic; the same three figures on
test (round 1's test candidates, scored by the kept selector) are not.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from selfmem.common.config import parse_args  # noqa: E402
from selfmem.common.data import load_split  # noqa: E402
from selfmem.common.distributed import close_distributed, init_distributed  # noqa: E402
from selfmem.common.io import read_jsonl  # noqa: E402
from selfmem.common.metrics import headline_score  # noqa: E402
from selfmem.common.run import start_run  # noqa: E402
from selfmem.infer.generate import generate  # noqa: E402
from selfmem.retrieve.memory import initial_memory  # noqa: E402
from selfmem.select.stage import select_memories  # noqa: E402
from selfmem.train.selector import baseline_picks, selector_examples, sentence_metric, train_selector  # noqa: E402


def main() -> None:
    config, _ = parse_args(__doc__)
    env = init_distributed()
    paths = start_run(config, env)
    started = time.perf_counter()
    train_selector(config, env, paths)
    if not paths.candidates(1, "test").exists():
        generate(config, env, paths, "test", "candidates", initial_memory(config, paths, "test"), 1)
    picks = select_memories(config, env, paths, "test", 1)
    if env.is_main:
        examples = load_split(config.data, "test")
        references = baseline_picks(selector_examples(paths.candidates(1, "test"), examples, sentence_metric(config)))

        def test_score(texts: list[str]) -> float:
            return headline_score(config.data.metric, texts, [ex.target for ex in examples], config.data.bleu_tokenize)

        test = {"pick": test_score(picks), "top1": test_score(references["top1"]),
                "oracle": test_score(references["oracle"])}
        generator_evals = [r["eval"] for r in read_jsonl(paths.generator / "train_log.jsonl") if "eval" in r]
        evals = [r for r in read_jsonl(paths.selector / "train_log.jsonl") if "eval" in r]
        dev = read_jsonl(paths.candidates(1, "dev"))
        per_example = sorted({len([c for cs in r["candidates"] for c in cs]) for r in dev})
        s, c = config.selector, config.candidates
        print(f"\nrun {paths.root}: generator {config.generator.memory} memory, best dev "
              f"{config.data.metric} {max(e['metric'] for e in generator_evals):.2f}")
        print(f"candidates: {c.num_beams} beams, {c.num_return} returned ({per_example[0]}-{per_example[-1]} per dev "
              f"example); selector: {s.backbone} backbone, {s.train_subset} train examples, group {s.group_size}, "
              f"lr {s.lr}, temperature {s.temperature}, {s.max_epochs} epochs, {time.perf_counter() - started:.0f} s")
        print(f"\n{'epoch':>5} {'S pick':>8} {'top-1':>8} {'oracle':>8}   (dev corpus {config.data.metric})")
        for record in evals:
            e = record["eval"]
            kept = "  kept" if record.get("best") else ""
            print(f"{record['epoch']:>5} {e['metric']:>8.2f} {e['top1']:>8.2f} {e['oracle']:>8.2f}{kept}")
        best = max(evals, key=lambda r: r["eval"]["metric"])["eval"]
        for split, figures in (("dev", {"pick": best["metric"], "top1": best["top1"], "oracle": best["oracle"]}),
                               ("test", test)):
            print(f"kept selector, {split}: pick {figures['pick']:.2f} vs top-1 {figures['top1']:.2f} "
                  f"({figures['pick'] - figures['top1']:+.2f}); oracle {figures['oracle']:.2f}")
            print(json.dumps({"split": split, **figures}))
    close_distributed()


if __name__ == "__main__":
    main()
