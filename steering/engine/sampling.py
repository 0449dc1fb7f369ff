"""Per-row sampling parameters and next-token choice.

Each row of a batch has its own parameters, token counts and seeded
generator, so a seeded request samples the same tokens whatever else shares
its batch: row r's randomness comes only from row r's generator, one number
per step, and its logits are processed from row r's own history. With c_j
the count of token j among the row's generated tokens and S the tokens of
its prompt and generated text (the order and meaning of vLLM's processors;
the first two are OpenAI's):

    l_j  = logits_j + logit_bias_j
    l_j -= frequency_penalty * c_j + presence_penalty * [c_j > 0]
    l_j  = l_j / repetition_penalty  if l_j > 0,  l_j * repetition_penalty  otherwise   (j in S; CTRL's penalty)
    l_eos = -inf                      while fewer than min_tokens tokens are generated
    p     = softmax(l / temperature)                [V]  (temperature > 0)
    keep  = the top_k likeliest (top_k > 0), those with p >= min_p * max(p),
            and the smallest set whose p sums to >= top_p  (others get p = 0)
    u     ~ U[0, 1)                                 (one draw from the row's generator)
    token = first j with  cumsum(p)_j > u * sum(p)  (inverse-CDF sampling)

temperature == 0 is greedy (argmax of the processed logits; of the raw ones
when nothing processes them, which the scheduler takes for all rows at once). Inverse-CDF sampling
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
from typing import Sequence

import torch
from torch import Tensor

from steering.errors import SteeringError

MAX_STOP_STRINGS = 4
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 300  # entries (OpenAI's limit)
MAX_TOP_K = 1_000_000

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
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias in [-100, 100])
    min_tokens: int = 0
    top_k: int = 0  # 0: off
    min_p: float = 0.0

    @property
    def processes(self) -> bool:
        """Whether the logits are changed before choosing (else greedy is the raw argmax)."""
        return bool(self.frequency_penalty or self.presence_penalty or self.repetition_penalty != 1.0
                    or self.logit_bias or self.min_tokens)

    def validate(self, vocab_size: int | None = None) -> "SamplingParams":
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
        for name in ("frequency_penalty", "presence_penalty"):
            if not (math.isfinite(getattr(self, name)) and -2.0 <= getattr(self, name) <= 2.0):
                raise SteeringError(f"{name} must be between -2 and 2", name)
        if not (math.isfinite(self.repetition_penalty) and 0.0 < self.repetition_penalty <= 2.0):
            raise SteeringError("repetition_penalty must be in (0, 2]", "repetition_penalty")
        if len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise SteeringError(f"logit_bias takes at most {MAX_LOGIT_BIAS} tokens", "logit_bias")
        for token, bias in self.logit_bias:
            if token < 0 or (vocab_size is not None and token >= vocab_size):
                raise SteeringError(f"token id {token} is not in the vocabulary (0 <= id < {vocab_size})", "logit_bias")
            if not (math.isfinite(bias) and -100.0 <= bias <= 100.0):
                raise SteeringError(f"the bias of token {token} must be between -100 and 100", "logit_bias")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise SteeringError("min_tokens must be between 0 and max_tokens", "min_tokens")
        if not 0 <= self.top_k <= MAX_TOP_K:
            raise SteeringError("top_k must be >= 0 (0: off)", "top_k")
        if not (math.isfinite(self.min_p) and 0.0 <= self.min_p <= 1.0):
            raise SteeringError("min_p must be in [0, 1]", "min_p")
        return self


@dataclass
class RowSampler:
    """Sampling state of one row: its parameters, its own generator, and what its logits processors
    remember (generated-token counts, the prompt and generated tokens seen)."""

    params: SamplingParams
    generator: torch.Generator | None = field(default=None, repr=False)
    eos: tuple[int, ...] = ()
    counts: dict[int, int] = field(default_factory=dict, repr=False)
    seen: set[int] = field(default_factory=set, repr=False)
    generated: int = 0
    processing: bool = field(init=False)  # params.processes, read once: it is asked per row and token

    def __post_init__(self) -> None:
        self.processing = self.params.processes

    @classmethod
    def create(cls, params: SamplingParams, device: torch.device, prompt_ids: Sequence[int] = (),
               eos_ids: Sequence[int] = ()) -> "RowSampler":
        seen = set(prompt_ids) if params.repetition_penalty != 1.0 else set()
        if params.temperature == 0:
            return cls(params, None, tuple(eos_ids), seen=seen)
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        gen = torch.Generator(device=device)
        gen.manual_seed(int(seed) % (2**63))
        return cls(params, gen, tuple(eos_ids), seen=seen)

    @property
    def raw_greedy(self) -> bool:
        """Greedy on unprocessed logits: the batch's argmax is this row's choice."""
        return self.generator is None and not self.processing

    def observe(self, token: int) -> None:
        """Remember a generated token (its count for the penalties)."""
        self.generated += 1
        if self.processing:
            self.counts[token] = self.counts.get(token, 0) + 1
            if self.params.repetition_penalty != 1.0:
                self.seen.add(token)

    def process(self, logits: Tensor) -> Tensor:
        """One row's logits [V] after bias, penalties and min_tokens (see the module docstring)."""
        if not self.processing:
            return logits
        p = self.params
        out = logits.float().clone()
        if p.logit_bias:
            ids = torch.tensor([t for t, _ in p.logit_bias], device=out.device)
            out.index_add_(0, ids, torch.tensor([b for _, b in p.logit_bias], device=out.device))
        if self.counts and (p.frequency_penalty or p.presence_penalty):
            ids = torch.tensor(list(self.counts), device=out.device)
            c = torch.tensor(list(self.counts.values()), dtype=out.dtype, device=out.device)
            out.index_add_(0, ids, -(p.frequency_penalty * c + p.presence_penalty))
        if self.seen and p.repetition_penalty != 1.0:
            ids = torch.tensor(sorted(self.seen), device=out.device)
            v = out[ids]
            out[ids] = torch.where(v > 0, v / p.repetition_penalty, v * p.repetition_penalty)
        if self.generated < p.min_tokens and self.eos and not p.ignore_eos:
            out[list(self.eos)] = -math.inf
        return out

    def choose(self, logits: Tensor) -> int:
        """Next token id from one row's logits [V]."""
        logits = self.process(logits)
        if self.generator is None:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / self.params.temperature, dim=-1)
        if self.params.top_k and self.params.top_k < probs.numel():
            kth = probs.topk(self.params.top_k).values[-1]
            probs = probs.masked_fill(probs < kth, 0.0)
        if self.params.min_p > 0:
            probs = probs.masked_fill(probs < self.params.min_p * probs.max(), 0.0)
        if self.params.top_p < 1.0:
            probs = _top_p_filter(probs / probs.sum(), self.params.top_p)
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
