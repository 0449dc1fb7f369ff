"""Feature clamps: what a request asks for, and the exact edit it makes.

A clamp spec names SAE features and what to do with each. For a token's
activation x (at the SAE's hook site) with feature activations f = SAE(x),
each clamped feature i gets a new activation f'_i and the edit is

    x' = x + sum_i (f'_i - f_i(x)) * W_dec[i]          (mapped back through
                                                         the SAE's normalisation)

so the SAE's reconstruction error x - SAE(x) is kept and an empty spec leaves
x untouched. Modes (a small registry, like transformers' logits processors):

    clamp   f'_i = v                  (Anthropic's method)
    add     f'_i = f_i + v            i.e. x' = x + v * W_dec[i]
    scale   f'_i = v * f_i

Units: `max` (v is a multiple of the feature's max activation; the default, as
in the paper's "10x max") or `raw`. The unit applies to `clamp` and `add`;
a `scale` factor has no unit. Positions: `all` (prompt and generated tokens,
the default) or `generated` (only tokens the model produced).

Every mode is affine in f_i: f'_i - f_i = a * f_i + b, with (a, b) = (-1, v)
for clamp, (0, v) for add and (v - 1, 0) for scale. A `BatchPlan` stores a and
b per (row, feature) for a whole batch, so rows with different specs share one
forward pass; rows without clamps are never touched (bit for bit).

This module knows nothing of hooks, models or HTTP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from steering.sae import SparseAutoencoder

CLAMP_MODES: tuple[str, ...] = ("clamp", "add", "scale")
CLAMP_UNITS: tuple[str, ...] = ("max", "raw")
POSITIONS: tuple[str, ...] = ("all", "generated")


class SteeringError(ValueError):
    """A bad steering request; `param` names the offending parameter (e.g. `features[0].value`)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class FeatureClamp:
    """One feature's clamp: see the module docstring for modes and units."""

    index: int
    value: float
    mode: str = "clamp"
    unit: str = "max"

    def validate(self, sae: SparseAutoencoder, param: str = "features[0]") -> None:
        if isinstance(self.index, bool) or not isinstance(self.index, int):
            raise SteeringError(f"{param}.index must be an integer", f"{param}.index")
        if not 0 <= self.index < sae.d_sae:
            raise SteeringError(
                f"feature index {self.index} is out of range: this SAE has {sae.d_sae} features (0..{sae.d_sae - 1})",
                f"{param}.index",
            )
        if not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise SteeringError(f"{param}.value must be a finite number, got {self.value!r}", f"{param}.value")
        if self.mode not in CLAMP_MODES:
            raise SteeringError(
                f"unknown mode {self.mode!r}; valid: {', '.join(CLAMP_MODES)}", f"{param}.mode"
            )
        if self.unit not in CLAMP_UNITS:
            raise SteeringError(
                f"unknown unit {self.unit!r}; valid: {', '.join(CLAMP_UNITS)}", f"{param}.unit"
            )
        if self.unit == "max" and self.mode != "scale":
            max_act = float(sae.max_activation[self.index])
            if not math.isfinite(max_act):
                raise SteeringError(
                    f"feature {self.index} has no known max activation; use unit 'raw'", f"{param}.unit"
                )

    def raw_value(self, sae: SparseAutoencoder) -> float:
        """The value in activation units (the unit resolved)."""
        if self.unit == "max" and self.mode != "scale":
            return self.value * float(sae.max_activation[self.index])
        return float(self.value)

    def affine(self, sae: SparseAutoencoder) -> tuple[float, float]:
        """(a, b) with f' - f = a * f + b."""
        v = self.raw_value(sae)
        if self.mode == "clamp":
            return -1.0, v
        if self.mode == "add":
            return 0.0, v
        return v - 1.0, 0.0


@dataclass(frozen=True)
class SteeringSpec:
    """A row's clamps and where they apply. Empty: the row is untouched."""

    features: tuple[FeatureClamp, ...] = ()
    positions: str = "all"

    @property
    def is_empty(self) -> bool:
        return not self.features

    def validate(self, sae: SparseAutoencoder, param: str = "features") -> "SteeringSpec":
        if self.positions not in POSITIONS:
            raise SteeringError(
                f"unknown positions {self.positions!r}; valid: {', '.join(POSITIONS)}", "positions"
            )
        seen: set[int] = set()
        for i, clamp in enumerate(self.features):
            clamp.validate(sae, f"{param}[{i}]")
            if clamp.index in seen:
                raise SteeringError(f"feature {clamp.index} is listed twice", f"{param}[{i}].index")
            seen.add(clamp.index)
        return self

    def merged_over(self, base: "SteeringSpec") -> "SteeringSpec":
        """This spec's features over `base`'s; on the same index this spec wins."""
        mine = {c.index for c in self.features}
        kept = tuple(c for c in base.features if c.index not in mine)
        return SteeringSpec(features=kept + self.features, positions=self.positions)


def parse_clamp(text: str) -> FeatureClamp:
    """Parse the CLI form `INDEX=VALUE[:MODE][:UNIT]`, e.g. `123=10`, `456=-3:add`, `7=2.5:clamp:raw`."""
    try:
        index_text, rest = text.split("=", 1)
        parts = rest.split(":")
        value = float(parts[0])
        index = int(index_text)
    except ValueError:
        raise SteeringError(f"bad clamp {text!r}: expected INDEX=VALUE[:MODE][:UNIT]", "clamp") from None
    mode = parts[1] if len(parts) > 1 and parts[1] else "clamp"
    unit = parts[2] if len(parts) > 2 and parts[2] else "max"
    return FeatureClamp(index=index, value=value, mode=mode, unit=unit)


@dataclass(frozen=True)
class BatchPlan:
    """The clamps of a whole batch, compiled once per batch composition.

    rows [R] are the batch rows with clamps; features [m] the union of their
    feature indices; a, b [R, m] the affine coefficients (zero where a row does
    not clamp a feature); start [R] the first position each row clamps (0 for
    `all`, the prompt length for `generated`). The SAE columns of `features`
    are gathered here so the per-step hot path does no indexing of the SAE.
    """

    rows: Tensor
    features: Tensor
    a: Tensor
    b: Tensor
    start: Tensor
    needs_encode: bool
    # Some row clamps only generated tokens (start > 0): decided here, not by a per-step check.
    needs_positions: bool
    # How the clamped features are encoded, decided once per plan (not per step):
    # "relu" / "threshold" use only their own encoder columns; "full" (TopK) encodes all.
    encoder: str
    W_enc: Tensor = field(repr=False)  # [d_in, m]
    b_enc: Tensor = field(repr=False)  # [m]
    threshold: Tensor = field(repr=False)  # [m]
    W_dec: Tensor = field(repr=False)  # [m, d_in]

    @property
    def is_empty(self) -> bool:
        return self.rows.numel() == 0


def build_plan(
    sae: SparseAutoencoder,
    specs: Sequence[SteeringSpec | None],
    prompt_lengths: Sequence[int] | None = None,
) -> BatchPlan:
    """Compile one spec per batch row (None or empty: untouched) into a BatchPlan.

    Specs are validated here, so a bad spec fails before any forward pass.
    `prompt_lengths` (per row) is needed only by `generated` positions.
    """
    rows: list[int] = []
    row_specs: list[SteeringSpec] = []
    for r, spec in enumerate(specs):
        if spec is None or spec.is_empty:
            continue
        spec.validate(sae)
        if spec.positions == "generated" and prompt_lengths is None:
            raise SteeringError("positions 'generated' needs the prompt lengths", "positions")
        rows.append(r)
        row_specs.append(spec)
    features = sorted({c.index for spec in row_specs for c in spec.features})
    column = {f: j for j, f in enumerate(features)}
    a = torch.zeros(len(rows), len(features))
    b = torch.zeros(len(rows), len(features))
    start = torch.zeros(len(rows), dtype=torch.long)
    for i, (r, spec) in enumerate(zip(rows, row_specs)):
        for clamp in spec.features:
            a[i, column[clamp.index]], b[i, column[clamp.index]] = clamp.affine(sae)
        if spec.positions == "generated":
            start[i] = int(prompt_lengths[r])  # type: ignore[index]
    idx = torch.tensor(features, dtype=torch.long)
    dev, dtype = sae.W_dec.device, sae.W_dec.dtype
    with torch.no_grad():
        return BatchPlan(
            rows=torch.tensor(rows, dtype=torch.long, device=dev),
            features=idx.to(dev),
            a=a.to(dev, dtype),
            b=b.to(dev, dtype),
            start=start.to(dev),
            needs_encode=bool((a != 0).any()),
            needs_positions=bool((start > 0).any()),
            encoder=_encoder_kind(sae),
            W_enc=sae.W_enc[:, idx.to(dev)].detach().clone(),
            b_enc=sae.b_enc[idx.to(dev)].detach().clone(),
            threshold=sae.threshold[idx.to(dev)].detach().clone(),
            W_dec=sae.W_dec[idx.to(dev)].detach().clone(),
        )


def _encoder_kind(sae: SparseAutoencoder) -> str:
    if not sae.supports_sparse_encode:
        return "full"
    return "relu" if sae.cfg.architecture == "relu" else "threshold"


def _clamped_activations(sae: SparseAutoencoder, plan: BatchPlan, x_n: Tensor) -> Tensor:
    """f[..., plan.features] for normalised x_n [R, T, d_in] -> [R, T, m]."""
    if plan.encoder != "full":
        pre = sae._pre_input(x_n) @ plan.W_enc + plan.b_enc
        if plan.encoder == "relu":
            return torch.relu(pre)
        return pre * (pre > plan.threshold).to(pre.dtype)
    # TopK: a feature's activation depends on every other pre-activation.
    return sae.activate(sae.pre_activations(x_n))[..., plan.features]


def apply_plan(
    sae: SparseAutoencoder,
    plan: BatchPlan,
    x: Tensor,
    positions: Tensor | None = None,
) -> Tensor:
    """Apply the batch's clamps to activations x [B, T, d_in]; returns a new tensor.

    positions [B, T] holds each token's absolute position in its own sequence
    (needed when a row clamps only generated tokens); None means positions
    0..T-1 for every row. Rows outside `plan.rows` are returned bit for bit.
    """
    if plan.is_empty:
        return x
    xs = x.index_select(0, plan.rows).to(sae.W_dec.dtype)  # [R, T, d]
    x_n, info = sae.normalize(xs)
    coeff = plan.b[:, None, :].expand(xs.shape[0], xs.shape[1], -1)  # [R, T, m]
    if plan.needs_encode:
        coeff = coeff + plan.a[:, None, :] * _clamped_activations(sae, plan, x_n)
    if plan.needs_positions:
        if positions is None:
            pos = torch.arange(x.shape[1], device=x.device).expand(xs.shape[0], -1)
        else:
            pos = positions.index_select(0, plan.rows)
        active = (pos >= plan.start[:, None]).to(coeff.dtype)  # [R, T]
        coeff = coeff * active[..., None]
    delta = sae.denormalize_delta(coeff @ plan.W_dec, info)  # [R, T, d]
    return x.index_add(0, plan.rows, delta.to(x.dtype))

