"""Batched, steered text generation over a Hugging Face causal LM.

`generate_batch` decodes a group of sequences together as one static batch:
prompts are left-padded, each row has its own sampling parameters, seed,
stop strings, token budget and clamp spec, and every decoding step is one
forward pass with the rows' clamps applied per row by one SteeringHook.
It yields, after each step, the events of the rows that produced something.

This module knows nothing of HTTP or threads; `steering.engine` runs it for
the server. Nothing here mutates the shared model or SAE.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor
from transformers import DynamicCache

from steering.detokenize import TextStream
from steering.hooks import steering
from steering.interventions import SteeringError, SteeringSpec, build_plan
from steering.sae import SparseAutoencoder
from steering.sampling import RowSampler, SamplingParams, token_logprobs


@dataclass(frozen=True)
class SequenceRequest:
    """One sequence to generate: prompt token ids, how to sample, how to steer."""

    prompt_ids: tuple[int, ...]
    sampling: SamplingParams = SamplingParams()
    steering: SteeringSpec | None = None


@dataclass(frozen=True)
class TokenEvent:
    """What one row produced in one step.

    `text` is the newly released text (whole characters; may be "" while
    held back). `finish_reason` is "stop" or "length" on a row's last event,
    "cancelled" if generation was cancelled, else None.
    """

    index: int
    token_id: int | None
    text: str
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()
    finish_reason: str | None = None
    completion_tokens: int = 0


def _eos_ids(tokenizer: object, model: torch.nn.Module) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """-> input_ids [B, L], attention_mask [B, L] with prompts right-aligned."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[r, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def generate_batch(
    model: torch.nn.Module,
    tokenizer: object,
    sae: SparseAutoencoder | None,
    requests: Sequence[SequenceRequest],
    cancel: threading.Event | None = None,
) -> Iterator[list[TokenEvent]]:
    """Generate all requests as one batch; yield each step's events.

    Raises SteeringError for a bad request before any forward pass.
    """
    if not requests:
        return
    for req in requests:
        req.sampling.validate()
        if not req.prompt_ids:
            raise SteeringError("the prompt is empty", "messages")
    specs = [req.steering for req in requests]
    if any(s is not None and not s.is_empty for s in specs) and sae is None:
        raise SteeringError("this server has no SAE loaded; steering is unavailable", "steering")
    device = _model_device(model)
    lengths = [len(req.prompt_ids) for req in requests]
    plan = build_plan(sae, specs, lengths) if sae is not None else None
    eos = _eos_ids(tokenizer, model)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    pad_id = pad_id if pad_id is not None else (min(eos) if eos else 0)

    samplers = [RowSampler.create(req.sampling, device) for req in requests]
    streams = [TextStream(tokenizer, req.sampling.stop) for req in requests]
    counts = [0] * len(requests)
    done = [False] * len(requests)

    input_ids, mask = _left_pad([req.prompt_ids for req in requests], pad_id, device)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, -1)
    cache = DynamicCache()
    context = steering(model, sae, plan) if sae is not None else _nullhook()
    with context as hook, torch.inference_mode():
        while True:
            if cancel is not None and cancel.is_set():
                yield [TokenEvent(r, None, "", finish_reason="cancelled") for r in range(len(requests)) if not done[r]]
                return
            if hook is not None:
                hook.positions = positions
            out = model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions.clamp(min=0),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            logits = out.logits[:, -1, :]
            events: list[TokenEvent] = []
            next_ids = torch.full((len(requests),), pad_id, dtype=torch.long)
            for r, req in enumerate(requests):
                if done[r]:
                    continue
                events.append(_step_row(r, req, logits[r], samplers[r], streams[r], counts, done, eos))
                if not done[r]:
                    next_ids[r] = events[-1].token_id  # type: ignore[assignment]
            yield events
            if all(done):
                return
            input_ids = next_ids[:, None].to(device)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1


def _step_row(
    r: int,
    req: SequenceRequest,
    logits: Tensor,
    sampler: RowSampler,
    stream: TextStream,
    counts: list[int],
    done: list[bool],
    eos: set[int],
) -> TokenEvent:
    """Choose row r's next token and turn it into an event (marking the row done if it ends)."""
    params = req.sampling
    token = sampler.choose(logits)
    logprob, top = (None, ())
    if params.logprobs:
        lp, best = token_logprobs(logits, token, params.top_logprobs)
        logprob, top = lp, tuple(best)
    if token in eos and not params.ignore_eos:
        done[r] = True
        return TokenEvent(r, None, stream.flush(), finish_reason="stop", completion_tokens=counts[r])
    counts[r] += 1
    text = stream.push(token)
    if stream.stopped:
        done[r] = True
        return TokenEvent(r, token, text, logprob, top, "stop", counts[r])
    if counts[r] >= params.max_tokens:
        done[r] = True
        return TokenEvent(r, token, text + stream.flush(), logprob, top, "length", counts[r])
    return TokenEvent(r, token, text, logprob, top, None, counts[r])


class _nullhook:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
