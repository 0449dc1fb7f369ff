"""Per-row sampling parameters and next-token choice.

Each row of a batch has its own temperature, top-p and seeded generator, so a
seeded request samples the same tokens whatever else shares its batch:
row r's randomness comes only from row r's generator, one number per step.

    p     = softmax(logits / temperature)          [V]  (temperature > 0)
    keep  = smallest set of tokens whose p sums to >= top_p  (others get p = 0)
    u     ~ U[0, 1)                                 (one draw from the row's generator)
    token = first j with  cumsum(p)_j > u * sum(p)  (inverse-CDF sampling)

temperature == 0 is greedy (argmax of the raw logits). Inverse-CDF sampling
needs one random number per step instead of one per vocabulary entry (the
exponential race drew V of them, which cost more than a decoding step's
attention). Log-probabilities reported to clients are those of the
unmodified model distribution (log_softmax of the raw logits), as OpenAI and
vLLM report them.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

import torch
from torch import Tensor

from steering.errors import SteeringError

MAX_STOP_STRINGS = 4
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is decoded. Errors name the OpenAI parameter."""

    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False

    def validate(self) -> "SamplingParams":
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            raise SteeringError("max_tokens must be a positive integer", "max_tokens")
        if not (math.isfinite(self.temperature) and 0.0 <= self.temperature <= 2.0):
            raise SteeringError("temperature must be between 0 and 2", "temperature")
        if not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise SteeringError("top_p must be in (0, 1]", "top_p")
        if len(self.stop) > MAX_STOP_STRINGS or any(not s for s in self.stop):
            raise SteeringError(f"stop takes at most {MAX_STOP_STRINGS} non-empty strings", "stop")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise SteeringError(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}", "top_logprobs")
        return self


@dataclass
class RowSampler:
    """Sampling state of one row: its parameters and its own generator."""

    params: SamplingParams
    generator: torch.Generator | None = field(default=None, repr=False)

    @classmethod
    def create(cls, params: SamplingParams, device: torch.device) -> "RowSampler":
        if params.temperature == 0:
            return cls(params)
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        gen = torch.Generator(device=device)
        gen.manual_seed(int(seed) % (2**63))
        return cls(params, gen)

    def choose(self, logits: Tensor) -> int:
        """Next token id from one row's logits [V]."""
        if self.generator is None:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / self.params.temperature, dim=-1)
        if self.params.top_p < 1.0:
            probs = _top_p_filter(probs, self.params.top_p)
        cdf = probs.double().cumsum(-1)
        u = torch.rand((), dtype=torch.float64, generator=self.generator, device=cdf.device)
        return min(int(torch.searchsorted(cdf, (u * cdf[-1]).reshape(1), right=True)), probs.numel() - 1)


def _top_p_filter(probs: Tensor, top_p: float) -> Tensor:
    """Zero the tail of probs [V] outside the smallest nucleus with mass >= top_p."""
    sorted_p, order = probs.sort(descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass strictly above each token
    sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_p)


def token_logprobs(logits: Tensor, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """(log p(token), [(id, log p)] of the `top` likeliest) under the raw logits [V]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    best: list[tuple[int, float]] = []
    if top:
        values, ids = logp.topk(top)
        best = [(int(i), float(v)) for i, v in zip(ids, values)]
    return float(logp[token]), best
