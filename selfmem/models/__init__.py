"""The generator model (none | joint | dual memory) and its Hugging Face weight import.

``import_hf`` lives in ``selfmem.models.hf_import`` so that importing the model does not
import transformers.
"""

import torch

from selfmem.models.config import ModelConfig
from selfmem.models.seq2seq import DecoderCache, EncoderOut, LayerCache, Seq2SeqModel

# Every model here (and HF models run through this project) calls scaled_dot_product_attention
# with a padding mask on batches whose shapes change from one step to the next: token-budget
# training batches, beam-search steps. On Hopper and newer GPUs PyTorch tries cuDNN attention
# first, and cuDNN builds a new execution plan for each new shape (about half a second each
# way): on an H100 that made fp16/bf16 training 3x slower than fp32. The flash and
# memory-efficient kernels need no per-shape plan.
torch.backends.cuda.enable_cudnn_sdp(False)

__all__ = ["DecoderCache", "EncoderOut", "LayerCache", "ModelConfig", "Seq2SeqModel"]
