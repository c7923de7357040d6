"""A randomly initialised Hugging Face Marian model sized like the brief's 7.8M-parameter
reference, for a run's SentencePiece vocabulary: the model `bench/beam.py` decodes.

    python bench/marian_init.py --tokenizer runs/NAME/tokenizer --out DIR

Train it through the project's loop (engine hf) before benchmarking, so that beams end
as a trained model's do; docs/benchmarks.md lists the commands.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import MarianConfig, MarianMTModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from selfmem.common.tokenizer import load_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.tokenizer)
    config = MarianConfig(
        vocab_size=tokenizer.vocab_size, d_model=256, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_id, eos_token_id=tokenizer.eos_id, decoder_start_token_id=tokenizer.pad_id,
        forced_eos_token_id=None, activation_function="swish", scale_embedding=True, dropout=0.1,
    )
    torch.manual_seed(0)
    model = MarianMTModel(config)
    model.save_pretrained(args.out)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters -> {args.out}")


if __name__ == "__main__":
    main()
