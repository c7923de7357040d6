"""The generator model (none | joint | dual memory) and its Hugging Face weight import.

``import_hf`` lives in ``selfmem.models.hf_import`` so that importing the model does not
import transformers.
"""

from selfmem.models.config import ModelConfig
from selfmem.models.seq2seq import DecoderCache, EncoderOut, LayerCache, Seq2SeqModel

__all__ = ["DecoderCache", "EncoderOut", "LayerCache", "ModelConfig", "Seq2SeqModel"]
