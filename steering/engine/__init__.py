"""Generation: continuously batched, per-row steered decoding over a Hugging Face causal LM.

    requests     SequenceRequest (prompt ids, sampling, clamps) and TokenEvent: the values in and out
    sampling     SamplingParams and each row's seeded sampler and logits processors (penalties, bias, ...)
    detokenize   incremental UTF-8-safe text with stop strings
    scheduler    rows join and leave at decoding steps; chunked prefill; prefix reuse
    backends     what runs the forward: the Llama runner, or Hugging Face's forward
    kv_cache     slot KV pool and prompt-prefix cache
    llama/       the lean Llama forward and its C kernels
    compute      the one thread that runs a process's torch work
    core_share   how many threads to use while other processes keep cores busy
    worker       Engine: the scheduler's loop on that thread, fed by submit()
    handle       RequestHandle: one submitted group's events; QueueFullError; EngineShutdown
    readout      inspection and monitors of generating rows
    generation   generate_batch: the scheduler in the caller's thread

The engine knows nothing of HTTP: a server translates requests into
SequenceRequests and TokenEvents into its wire format. It never mutates the
shared model or SAE; clamps attach through `steering.hooks` or run inside
the Llama runner's forward.
"""

from steering.engine.compute import ComputeThread
from steering.engine.generation import generate_batch
from steering.engine.handle import EngineShutdown, QueueFullError, RequestHandle
from steering.engine.requests import FINISH_REASONS, SequenceRequest, TokenEvent
from steering.engine.sampling import MAX_LOGIT_BIAS, MAX_STOP_STRINGS, MAX_TOP_LOGPROBS, SamplingParams
from steering.engine.worker import Engine, EngineConfig

__all__ = [
    "ComputeThread", "generate_batch", "EngineShutdown", "QueueFullError", "RequestHandle", "FINISH_REASONS", "SequenceRequest",
    "TokenEvent", "MAX_LOGIT_BIAS", "MAX_STOP_STRINGS", "MAX_TOP_LOGPROBS", "SamplingParams", "Engine", "EngineConfig",
]
