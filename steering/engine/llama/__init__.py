"""The lean decoding forward for Llama-family models, and its C kernels.

    runner    LlamaRunner: the model's function over a slot KV cache, with per-row clamps
    kernels   AVX2/FMA matrix products, attention, the decoder loop and the SAE clamp (ctypes)
    csrc/     the kernels' C source, compiled once into the cache folder

`unsupported_reason(model)` says which models qualify; every other model runs
Hugging Face's forward (`steering.engine.backends.HFBackend`).
"""

from steering.engine.llama.runner import LlamaRunner, unsupported_reason

__all__ = ["LlamaRunner", "unsupported_reason"]
