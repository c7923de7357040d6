"""Convert a tab-separated parallel file (JRC-Acquis as the Selfmem authors distribute it) to JSON
lines: each line is source<TAB>target; subword-nmt "@@ " markers are removed.

reads:   INPUT, one source<TAB>target pair a line
writes:  OUTPUT, one {"src": ..., "trg": ...} object a line (--source-field, --target-field)
example:
  python launch/convert_tsv.py raw/train.txt data/jrc_ende/train.jsonl
"""

from selfmem.common.config import script_parser
from selfmem.common.data import convert_parallel_tsv
from selfmem.common.entry import entry_point


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("input", help="tab-separated source/target file")
    parser.add_argument("output", help="JSON-lines file to write")
    parser.add_argument("--source-field", default="src")
    parser.add_argument("--target-field", default="trg")
    args = parser.parse_args()
    count = convert_parallel_tsv(args.input, args.output, args.source_field, args.target_field)
    print(f"{args.output}: {count} examples")


if __name__ == "__main__":
    entry_point(main)
