"""Pack a finished run's tokenizer and generators into a small folder that a config can start from.

    python data/pack_checkpoints.py runs/demo_pretrain data/demo/pretrained

Writes ``tokenizer/spm.model``, ``generator/`` and (when the run has the no-memory baseline)
``no_memory/``, each generator as ``config.json`` and ``model.safetensors`` with the weights in
float16: half the bytes of the float32 run, for a repository that ships them. A config starts
from them with ``tokenizer.path=OUT/tokenizer generator.init=OUT/generator
lift.no_memory_init=OUT/no_memory`` (and ``train.max_epochs=0`` to keep them as they are; see
``configs/demo.yaml``). Native (``engine: native``) generators only.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from selfmem.common.tokenizer import SPM_FILE  # noqa: E402
from selfmem.models import Seq2SeqModel  # noqa: E402


def pack_generator(source: Path, target: Path) -> None:
    """Copy the generator in ``source`` to ``target`` with float16 weights."""
    model = Seq2SeqModel.load(source).to(torch.float16)
    model.save(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run directory (run.root/run.name) whose generator is trained")
    parser.add_argument("out", type=Path, help="the folder to write")
    args = parser.parse_args()
    generators = {"generator": args.run_dir / "generator", "no_memory": args.run_dir / "no_memory" / "generator"}
    if not (args.run_dir / "tokenizer" / SPM_FILE).is_file() or not (generators["generator"] / "config.json").is_file():
        sys.exit(f"{args.run_dir}: needs tokenizer/{SPM_FILE} and a trained generator/ (run launch/lift.py first)")
    (args.out / "tokenizer").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.run_dir / "tokenizer" / SPM_FILE, args.out / "tokenizer" / SPM_FILE)
    for name, source in generators.items():
        if (source / "config.json").is_file():
            pack_generator(source, args.out / name)
            print(f"{source} -> {args.out / name}")


if __name__ == "__main__":
    main()
