"""The lift's report: ``metrics.jsonl``, ``report.md`` and ``lift.png`` from the finished rounds.

A row holds one round (or the no-memory baseline) on one split: the corpus metric of the
hypotheses, of the memory (round 0: BM25's top hit; round k: the selector's pick among the
round's candidates, which is the next top memory), of the oracle pick and of the beam
top-1 among those candidates, and how many examples' memories changed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from selfmem.common.io import atomic_open, atomic_write_jsonl, atomic_write_text
from selfmem.common.run import NO_MEMORY, stage_of

log = logging.getLogger(__name__)

# (key, title, format spec of its cells)
COLUMNS = [("hyps", "hypotheses", ".2f"), ("memory", "memory", ".2f"), ("oracle", "oracle pick", ".2f"),
           ("top1", "beam top-1", ".2f"), ("changed", "memories changed", "d"),
           ("retrieved_weight", "BM25 hits' weight", "g"), ("temperature", "temperature", "g"),
           ("no_memory_weight", "no-memory opinion's weight", "g")]


def best_round(rows: list[dict]) -> int:
    """The round with the highest dev metric (the earliest of equals)."""
    dev = [r for r in rows if r["split"] == "dev" and isinstance(r["round"], int)]
    return max(dev, key=lambda r: (r["hyps"], -r["round"]))["round"]


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _seconds(value: float | None, resumed: bool) -> str:
    return "-" if value is None else f"{value:.1f}" + (" (resumed: its last attempt)" if resumed else "")


def _round_name(value) -> str:
    return {0: "0 (BM25)", NO_MEMORY: "no memory"}.get(value, str(value))


def render(name: str, metric: str, rows: list[dict], seconds: dict[str, float | None],
           resumed: set[str]) -> str:
    """The Markdown report: the result, a table per split, the wall time of each stage (of the
    last attempt only for the ``resumed`` stages)."""
    best = best_round(rows)
    test = next(r["hyps"] for r in rows if r["split"] == "test" and r["round"] == best)
    lines = [f"# selfmem lift: {name}", "",
             f"Best round on dev: {best}; its test {metric}: **{test:.2f}** (the test split steers nothing).", ""]
    for split in ("dev", "test"):
        lines += [f"## {split} ({metric})", "",
                  "| round | " + " | ".join(title for _, title, _ in COLUMNS) + " | seconds |",
                  "|---" * (len(COLUMNS) + 2) + "|"]
        for row in (r for r in rows if r["split"] == split):
            stage = stage_of(row["round"])
            cells = [_cell(row.get(key), spec) for key, _, spec in COLUMNS]
            cells.append(_seconds(seconds.get(stage), stage in resumed))
            lines.append(f"| {_round_name(row['round'])} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## stages (wall seconds, dev and test together)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {_seconds(s, stage in resumed)} |" for stage, s in seconds.items()]
    return "\n".join(lines) + "\n"


def plot(path: Path, metric: str, rows: list[dict]) -> bool:
    """``lift.png``: the metric per round on dev and test, the baselines as lines; False
    without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for split, color in (("dev", "tab:blue"), ("test", "tab:orange")):
        rounds = [r for r in rows if r["split"] == split and isinstance(r["round"], int)]
        ax.plot([r["round"] for r in rounds], [r["hyps"] for r in rounds], "o-", color=color,
                label=f"{split}: self memory")
        ax.axhline(rounds[0]["hyps"], color=color, linestyle="--", linewidth=1, label=f"{split}: retrieved memory")
        for r in rows:
            if r["split"] == split and r["round"] == NO_MEMORY:
                ax.axhline(r["hyps"], color=color, linestyle=":", linewidth=1, label=f"{split}: no memory")
    ax.set_xlabel("round")
    ax.set_ylabel(metric)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize="small")
    fig.tight_layout()
    save_figure(fig, path)
    return True


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as a PNG at ``path`` whole or not at all, and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_open(path, "wb") as f:
            fig.savefig(f, dpi=120, format="png")
    finally:
        plt.close(fig)


def write_report(root: Path, name: str, metric: str, rows: list[dict], seconds: dict[str, float | None],
                 resumed: set[str]) -> str:
    """Write the three report files under ``root``; returns the Markdown text."""
    atomic_write_jsonl(root / "metrics.jsonl", rows)
    text = render(name, metric, rows, seconds, resumed)
    atomic_write_text(root / "report.md", text)
    if not plot(root / "lift.png", metric, rows):
        log.info("no lift.png: matplotlib is not installed (pip install -e '.[plot]')")
    return text
