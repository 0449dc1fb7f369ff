"""Which SAE features are active at each token: the readout every inspection shares.

For activations x [T, d_in] at the SAE's hook site (before any clamp edits them),

    f        = SAE.encode(x)                         [T, d_sae]   (the full encode)
    top      = the top_k largest f_i > 0 per token   (fewer where fewer fire)
    named    = f_i for each requested feature (0 included)
    relative = f_i / max_activation_i                (None where the SAE does not know it)

An `InspectSpec` says what to read: `top_k`, the named `features`, and which
`positions` of a generation (`generated`, or `all` with the prompt's). This
module knows nothing of models, requests or HTTP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from steering.errors import SteeringError
from steering.sae import SparseAutoencoder

INSPECT_POSITIONS: tuple[str, ...] = ("generated", "all")
MAX_TOP_K = 64
MAX_NAMED_FEATURES = 64


@dataclass(frozen=True)
class InspectSpec:
    """What to read per token (see the module docstring)."""

    top_k: int = 8
    features: tuple[int, ...] = ()
    positions: str = "generated"

    def validate(self, sae: SparseAutoencoder, param: str = "inspect") -> "InspectSpec":
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or not 0 <= self.top_k <= MAX_TOP_K:
            raise SteeringError(f"top_k must be an integer in [0, {MAX_TOP_K}]", f"{param}.top_k")
        if self.top_k == 0 and not self.features:
            raise SteeringError("top_k 0 with no named features reads nothing", f"{param}.top_k")
        if len(self.features) > MAX_NAMED_FEATURES:
            raise SteeringError(f"at most {MAX_NAMED_FEATURES} named features", f"{param}.features")
        for k, i in enumerate(self.features):
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < sae.d_sae:
                raise SteeringError(f"feature {i!r} does not exist: this SAE has {sae.d_sae} features",
                                    f"{param}.features[{k}]")
        if not isinstance(self.positions, str) or self.positions not in INSPECT_POSITIONS:
            raise SteeringError(f"unknown positions {self.positions!r}; valid: {', '.join(INSPECT_POSITIONS)}",
                                f"{param}.positions")
        return self


@dataclass(frozen=True)
class FeatureValue:
    """One feature's activation at one token; `relative` = activation / the feature's max (None if unknown)."""

    index: int
    activation: float
    relative: float | None


@dataclass(frozen=True)
class TokenReading:
    """The features read at one token: the `top` active ones, best first, and the `named` ones in order."""

    position: int
    token_id: int
    top: tuple[FeatureValue, ...]
    named: tuple[FeatureValue, ...] = ()


def max_activations(sae: SparseAutoencoder) -> list[float | None]:
    """The SAE's per-feature max activation as Python floats (None where unknown or not positive)."""
    return [v if math.isfinite(v) and v > 0 else None for v in sae.max_activation.detach().float().cpu().tolist()]


def _value(index: int, activation: float, scale: list[float | None]) -> FeatureValue:
    m = scale[index]
    return FeatureValue(index, activation, activation / m if m is not None else None)


@torch.no_grad()
def read_tokens(sae: SparseAutoencoder, x: Tensor, spec: InspectSpec, positions: Sequence[int],
                token_ids: Sequence[int], scale: list[float | None] | None = None) -> list[TokenReading]:
    """Readings for activations x [T, d_in] of the tokens `token_ids` at `positions` (module docstring).

    `scale`: `max_activations(sae)`, computed once by a caller that reads often.
    """
    if x.shape[0] == 0:
        return []
    f = sae.encode(x.to(sae.W_enc.dtype)).float()  # [T, d_sae]
    return readings(f, spec, positions, token_ids, scale if scale is not None else max_activations(sae))


def readings(f: Tensor, spec: InspectSpec, positions: Sequence[int], token_ids: Sequence[int],
             scale: list[float | None]) -> list[TokenReading]:
    """Readings from feature activations f [T, d_sae] already encoded."""
    k = min(spec.top_k, f.shape[-1])
    if k:
        top_vals, top_idx = (t.cpu().tolist() for t in f.topk(k, dim=-1))
    else:
        top_vals = top_idx = [[] for _ in range(f.shape[0])]
    named = f[:, list(spec.features)].cpu().tolist() if spec.features else [[] for _ in range(f.shape[0])]
    out = []
    for t in range(f.shape[0]):
        top = tuple(_value(i, v, scale) for i, v in zip(top_idx[t], top_vals[t]) if v > 0)
        out.append(TokenReading(int(positions[t]), int(token_ids[t]), top,
                                tuple(_value(i, v, scale) for i, v in zip(spec.features, named[t]))))
    return out
