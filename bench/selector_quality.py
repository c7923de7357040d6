"""The selector on real candidates: its pick against the beam top-1 and the oracle pick.

    python bench/selector_quality.py --config configs/libreoffice_ende.yaml [k=v ...]

Needs the run's trained generator (launch/train_generator.py). Generates the candidates
where missing (``selector.train_subset`` train examples with their BM25 memory; every dev
example with round 0's memory), trains the selector exactly as launch/train_selector.py
does (the best epoch kept by the dev metric of its pick), and prints for every epoch the
dev corpus metric of the selector's pick, of the beam top-1 (the first candidate) and of
the oracle pick (the candidate closest to the reference), with the run's settings. The
kept epoch is chosen on dev, so its dev figure is optimistic; the same three figures on
test (round 1's test candidates, scored by the kept selector) are not. Also printed: the
beam top-1 and oracle of the selector's own training candidates, to compare their quality
with the candidates it must rank.
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
from selfmem.common.distributed import agreed, close_distributed, init_distributed  # noqa: E402
from selfmem.common.io import read_jsonl  # noqa: E402
from selfmem.common.metrics import headline_score  # noqa: E402
from selfmem.common.run import start_run  # noqa: E402
from selfmem.infer.generate import generate  # noqa: E402
from selfmem.retrieve.memory import initial_memory  # noqa: E402
from selfmem.select.candidates import baseline_picks, selector_examples, sentence_metric  # noqa: E402
from selfmem.select.stage import select_memories  # noqa: E402
from selfmem.train.selector import selector_subset, train_selector  # noqa: E402


def corpus_figures(config, candidates_path: Path, examples: list, split: str,
                   picks: list[str] | None = None) -> dict[str, float]:
    """Corpus metric of the beam top-1 and the oracle pick of a candidates file of ``split``
    (and of ``picks``)."""
    references = [ex.target for ex in examples]
    chosen = baseline_picks(selector_examples(candidates_path, examples, sentence_metric(config), split))
    if picks is not None:
        chosen["pick"] = picks
    return {name: headline_score(config.data.metric, texts, references, config.data.bleu_tokenize)
            for name, texts in chosen.items()}


def main() -> None:
    config, _ = parse_args(__doc__)
    env = init_distributed()
    paths = start_run(config, env)
    started = time.perf_counter()
    train_selector(config, env, paths)
    if not agreed(paths.candidates(1, "test").exists):
        generate(config, env, paths, "test", "candidates", initial_memory(config, paths, "test"), 1)
    picks = select_memories(config, env, paths, "test", 1)
    if env.is_main:
        test = corpus_figures(config, paths.candidates(1, "test"), load_split(config.data, "test"), "test", picks)
        train = load_split(config.data, "train")
        learned_from = ([train[i] for i in selector_subset(config, len(train))]
                        if config.selector.train_from != "dev" else load_split(config.data, "dev"))
        trained_on = corpus_figures(config, paths.selector_candidates if config.selector.train_from != "dev"
                                    else paths.candidates(1, "dev"), learned_from,
                                    "dev" if config.selector.train_from == "dev" else "train")
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
        print(f"the selector's training candidates ({config.selector.train_from}): top-1 {trained_on['top1']:.2f}, "
              f"oracle {trained_on['oracle']:.2f}")
    close_distributed()


if __name__ == "__main__":
    main()
