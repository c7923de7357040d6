"""The bad-input matrix as a markdown table (docs/reliability.md, "Bad input").

    python bench/bad_inputs.py [--root /tmp/bad_inputs]

Runs the rows of tests/test_bad_inputs.py, the same inputs made the same way: a tiny
prepared run, then each bad input through its launcher under torchrun with 2 processes. One
row per input: what is wrong (and the launcher), the error line every rank printed (a
path shown from the row's directory; where rank 0 alone meets the input, rank 1's relayed
line too), and the exit codes: torchrun's, then each rank's as torchrun's summary reports
it (-15: torchrun stopped that rank with SIGTERM after the other's failure, its line
already printed). The test asserts the same lines.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from test_bad_inputs import ROWS, launch_all  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("/tmp/bad_inputs"))
    args = parser.parse_args()
    shutil.rmtree(args.root, ignore_errors=True)
    outcomes = launch_all(ROWS, args.root)
    print("| input | message | exit codes: torchrun; rank 0, rank 1 |")
    print("|---|---|---|")
    for row in ROWS:
        row_dir, outcome = outcomes[row.name]
        lines = dict.fromkeys(line for _, (_, line) in sorted(outcome.ranks.items()))  # distinct, rank 0's first
        message = "<br>".join(f"`{line.replace(f'{row_dir}/', '')}`" for line in lines)
        codes = ", ".join(str(code) for _, (code, _) in sorted(outcome.ranks.items()))
        print(f"| {row.input} (`{row.script}`) | {message} | {outcome.returncode}; {codes} |")


if __name__ == "__main__":
    main()
