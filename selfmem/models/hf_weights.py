"""Loading Hugging Face checkpoints from safetensors only.

A ``pytorch_model.bin`` is a pickle, and unpickling a file can run any code it holds: a
checkpoint directory from elsewhere is loaded only from its ``model.safetensors`` (or the
shards its index names), and one with pickled weights alone is refused with the way to
convert it.
"""

from __future__ import annotations

from pathlib import Path

SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def check_safetensors(path: str | Path, loader: str) -> None:
    """Refuse the checkpoint directory ``path`` unless it holds safetensors weights; ``loader``
    (a transformers class name) is the class the conversion command loads it with."""
    path = Path(path)
    if any((path / name).is_file() for name in SAFE_WEIGHTS):
        return
    pickled = [name for name in PICKLED_WEIGHTS if (path / name).is_file()]
    if pickled:
        raise ValueError(
            f"{path}: its weights are pickled ({pickled[0]}), and loading a pickle can run any code it holds; "
            f"selfmem loads safetensors only. Convert them once where you trust the files: python -c "
            f"\"from transformers import {loader}; {loader}.from_pretrained('{path}', use_safetensors=False)"
            f".save_pretrained('{path}')\" (transformers writes safetensors)")
    raise FileNotFoundError(f"{path}: no {SAFE_WEIGHTS[0]} (a Hugging Face checkpoint directory saved with "
                            f"save_pretrained)")


def from_pretrained_safe(model_class, path: str | Path, loader: str | None = None, **kwargs):
    """``model_class.from_pretrained(path)`` from local safetensors weights only (see
    ``check_safetensors``; ``loader`` defaults to the class's name)."""
    check_safetensors(path, loader or model_class.__name__)
    return model_class.from_pretrained(str(path), local_files_only=True, use_safetensors=True, **kwargs)
