"""A sparse autoencoder (SAE) over one layer's activations.

Math (x: [..., d_in] activations at the hook site; shapes per token):

    x_n     = normalise(x)                                  [..., d_in]
    pre     = (x_n - b_dec) @ W_enc + b_enc                 [..., d_sae]
    f       = activation(pre)                               [..., d_sae]
    x_hat_n = f @ W_dec + b_dec                             [..., d_in]
    x_hat   = denormalise(x_hat_n)                          [..., d_in]

with W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in]
(the SAELens layout). The activation is one of a small registry:

    relu       f = max(pre, 0)                                (Anthropic)
    jumprelu   f = pre * (pre > threshold)                    (Gemma Scope)
    topk       keep the k largest of relu(pre) per token      (OpenAI, EleutherAI)
    batchtopk  trained with a top-(k*batch) over a batch; at inference it
               runs as jumprelu with a learned global threshold (when one is
               stored), else as per-token topk

Input normalisation is applied in `encode` and undone in `decode`. Anything it
needs per call (a layer norm's mean and std) travels as a `NormInfo` value,
never as state on the module: one SAE is shared by all concurrent requests
and is read-only after loading.

This module does not know how SAEs are stored on disk (see `steering.sae.formats`) or how
they are attached to a model (see `hooks`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from steering.errors import ParameterError

Architecture = Literal["relu", "jumprelu", "topk", "batchtopk"]
ARCHITECTURES: tuple[str, ...] = ("relu", "jumprelu", "topk", "batchtopk")
# Names follow SAELens' `normalize_activations` values.
NORMALIZATIONS: tuple[str, ...] = ("none", "expected_average_only_in", "layer_norm")
# Where an SAE reads the model: the residual stream entering (resid_pre) or
# leaving (resid_post) decoder layer `hook_layer`.
HOOK_SITES: tuple[str, ...] = ("resid_post", "resid_pre")


class SAEConfigError(ParameterError):
    """A bad SAE configuration; `param` names the offending field."""


@dataclass(frozen=True)
class SAEConfig:
    """Everything needed to rebuild an SAE besides its weights.

    `norm_scaling_factor` is the constant c of `expected_average_only_in`
    (x_n = c * x); it is ignored by the other normalisations.
    """

    d_in: int
    d_sae: int
    architecture: Architecture = "relu"
    k: int | None = None
    hook_layer: int = 0
    hook_site: str = "resid_post"
    model_name: str | None = None
    normalize_activations: str = "none"
    norm_scaling_factor: float = 1.0
    apply_b_dec_to_input: bool = True
    dtype: str = "float32"
    # Free-form provenance (training run, data set, source format...).
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise SAEConfigError(
                f"unknown SAE architecture {self.architecture!r}; valid: {', '.join(ARCHITECTURES)}",
                "architecture",
            )
        for name in ("d_in", "d_sae"):
            if getattr(self, name) <= 0:
                raise SAEConfigError(f"{name} must be positive, got {getattr(self, name)}", name)
        if self.hook_layer < 0:
            raise SAEConfigError(f"hook_layer must be >= 0, got {self.hook_layer}", "hook_layer")
        if not (isinstance(getattr(torch, self.dtype, None), torch.dtype) and getattr(torch, self.dtype).is_floating_point):
            raise SAEConfigError(f"dtype must name a floating torch dtype (e.g. float32), got {self.dtype!r}", "dtype")
        if self.architecture in ("topk", "batchtopk") and (self.k is None or not 0 < self.k <= self.d_sae):
            raise SAEConfigError(f"{self.architecture} needs 0 < k <= d_sae, got k={self.k}", "k")
        if self.normalize_activations not in NORMALIZATIONS:
            raise SAEConfigError(
                f"unknown normalize_activations {self.normalize_activations!r}; valid: {', '.join(NORMALIZATIONS)}",
                "normalize_activations",
            )
        if self.hook_site not in HOOK_SITES:
            raise SAEConfigError(
                f"unknown hook_site {self.hook_site!r}; valid: {', '.join(HOOK_SITES)}", "hook_site"
            )
        if not (math.isfinite(self.norm_scaling_factor) and self.norm_scaling_factor > 0):
            raise SAEConfigError("norm_scaling_factor must be finite and positive", "norm_scaling_factor")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SAEConfig":
        """Build from a dict, ignoring keys this class does not know."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class NormInfo:
    """Per-call normalisation values: x_n = (x - shift) * scale.

    `scale` and `shift` broadcast against x ([..., 1] for layer norm, scalars
    otherwise). A delta in normalised space maps back as delta / scale.
    """

    scale: Tensor | float = 1.0
    shift: Tensor | float = 0.0


@dataclass(frozen=True)
class FeatureColumns:
    """Some features' encoder columns: indices [m], W [d_in, m], b [m], theta [m] (None: relu)."""

    indices: Tensor
    W: Tensor
    b: Tensor
    theta: Tensor | None


class SparseAutoencoder(nn.Module):
    """A sparse autoencoder; see the module docstring for the math.

    Parameters: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in],
    b_dec [d_in], threshold [d_sae] (jumprelu and batchtopk; zeros otherwise).
    Buffers: `max_activation` and `firing_frequency` [d_sae], per-feature
    statistics, NaN where unknown.
    """

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        dtype = getattr(torch, cfg.dtype)
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))
        self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.register_buffer("max_activation", torch.full((cfg.d_sae,), float("nan")))
        self.register_buffer("firing_frequency", torch.full((cfg.d_sae,), float("nan")))
        # Whether a batchtopk threshold is set, remembered for the tensor version it was read from: asked
        # at every sparse encode, and reading 16k values costs more than the encode of a few columns.
        self._threshold_seen: tuple[int, int, bool] | None = None

    # ----------------------------------------------------------------- sizes
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def has_stats(self) -> bool:
        return bool(torch.isfinite(self.max_activation).all())

    @property
    def supports_sparse_encode(self) -> bool:
        """True when one feature's activation depends only on its own encoder column."""
        arch = self.cfg.architecture
        return arch in ("relu", "jumprelu") or (arch == "batchtopk" and self.uses_threshold)

    @property
    def uses_threshold(self) -> bool:
        arch = self.cfg.architecture
        if arch != "batchtopk":
            return arch == "jumprelu"
        key = (self.threshold.data_ptr(), self.threshold._version)
        if self._threshold_seen is None or self._threshold_seen[:2] != key:
            self._threshold_seen = (*key, bool((self.threshold != 0).any()))
        return self._threshold_seen[2]

    # --------------------------------------------------------- normalisation
    def normalize(self, x: Tensor) -> tuple[Tensor, NormInfo]:
        """x [..., d_in] -> (x_n, info) with x_n = (x - shift) * scale."""
        mode = self.cfg.normalize_activations
        if mode == "none":
            return x, NormInfo()
        if mode == "expected_average_only_in":
            c = self.cfg.norm_scaling_factor
            return x * c, NormInfo(scale=c)
        mean = x.mean(dim=-1, keepdim=True)
        std = (x - mean).pow(2).mean(dim=-1, keepdim=True).add(1e-5).sqrt()
        return (x - mean) / std, NormInfo(scale=1.0 / std, shift=mean)

    @staticmethod
    def denormalize(x_n: Tensor, info: NormInfo) -> Tensor:
        return x_n / info.scale + info.shift

    @staticmethod
    def denormalize_delta(delta_n: Tensor, info: NormInfo) -> Tensor:
        """A difference of normalised vectors back in input space (the shift cancels)."""
        if isinstance(info.scale, float) and info.scale == 1.0:
            return delta_n  # no normalisation: skip a division by one on the per-step path
        return delta_n / info.scale

    # ------------------------------------------------------------ encode
    def encoder_input(self, x_n: Tensor) -> Tensor:
        """What the encoder multiplies: x_n - b_dec (or x_n when apply_b_dec_to_input is off) [..., d_in]."""
        return x_n - self.b_dec if self.cfg.apply_b_dec_to_input else x_n

    def pre_activations(self, x_n: Tensor, indices: Tensor | None = None) -> Tensor:
        """Normalised input [..., d_in] -> pre-activations [..., d_sae] (or [..., len(indices)])."""
        h = self.encoder_input(x_n)
        if indices is None:
            return h @ self.W_enc + self.b_enc
        return h @ self.W_enc[:, indices] + self.b_enc[indices]

    def activate(self, pre: Tensor, indices: Tensor | None = None) -> Tensor:
        """Pre-activations -> feature activations f. `indices` selects threshold columns."""
        arch = self.cfg.architecture
        if arch == "relu":
            return torch.relu(pre)
        if self.uses_threshold:
            theta = self.threshold if indices is None else self.threshold[indices]
            return pre * (pre > theta).to(pre.dtype)
        if indices is not None:
            raise ValueError("topk activations need every feature: call encode, not the sparse path")
        values, top = pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top, torch.relu(values))

    def encode(self, x: Tensor) -> Tensor:
        """Activations x [..., d_in] -> feature activations f [..., d_sae]."""
        x_n, _ = self.normalize(x)
        return self.activate(self.pre_activations(x_n))

    def encode_features(self, x: Tensor, indices: Tensor) -> Tensor:
        """f[..., indices] for x [..., d_in]; indices [m] -> [..., m].

        Costs O(m * d_in) per token when `supports_sparse_encode`, else runs the
        full encode (TopK needs every pre-activation to know the top k).
        """
        if self.supports_sparse_encode:
            return self.encode_columns(x, self.feature_columns(indices))
        x_n, _ = self.normalize(x)
        return self.activate(self.pre_activations(x_n))[..., indices]

    def feature_columns(self, indices: Tensor) -> "FeatureColumns":
        """The encoder columns of `indices` [m], gathered once for repeated sparse encodes (a caller may keep
        them while the weights do not change); needs `supports_sparse_encode`."""
        if not self.supports_sparse_encode:
            raise ValueError("topk activations need every feature: call encode, not the sparse path")
        theta = self.threshold[indices].detach().clone() if self.uses_threshold else None
        return FeatureColumns(indices, self.W_enc[:, indices].detach().contiguous(), self.b_enc[indices].detach().clone(),
                              theta)

    def encode_columns(self, x: Tensor, cols: "FeatureColumns") -> Tensor:
        """f[..., cols.indices] for x [..., d_in]: relu(pre), or pre * (pre > theta) with a threshold."""
        x_n, _ = self.normalize(x.to(cols.W.dtype))
        pre = self.encoder_input(x_n) @ cols.W + cols.b
        return torch.relu(pre) if cols.theta is None else pre * (pre > cols.theta).to(pre.dtype)

    # ------------------------------------------------------------ decode
    def decode(self, f: Tensor, info: NormInfo | None = None) -> Tensor:
        """Feature activations f [..., d_sae] -> reconstruction [..., d_in] in input space.

        `info` is the NormInfo of the encoded input; it is needed only for
        layer-norm SAEs (whose shift and scale differ per token).
        """
        x_hat_n = f @ self.W_dec + self.b_dec
        if info is None:
            mode = self.cfg.normalize_activations
            if mode == "layer_norm":
                raise ValueError("decode of a layer_norm SAE needs the NormInfo from normalize()")
            info = NormInfo(scale=self.cfg.norm_scaling_factor) if mode == "expected_average_only_in" else NormInfo()
        return self.denormalize(x_hat_n, info)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction x_hat [..., d_in] of x [..., d_in]."""
        x_n, info = self.normalize(x)
        f = self.activate(self.pre_activations(x_n))
        return self.denormalize(f @ self.W_dec + self.b_dec, info)

    # ------------------------------------------------------------- builders
    @classmethod
    def random(cls, cfg: SAEConfig, seed: int = 0) -> "SparseAutoencoder":
        """A seeded random SAE: unit-norm decoder rows, encoder = decoder transpose.

        Threshold-based architectures get a small positive threshold so that
        features are sparse; statistics stay unknown (NaN).
        """
        sae = cls(cfg)
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(cfg.d_sae, cfg.d_in, generator=gen)
        w = w / w.norm(dim=-1, keepdim=True)
        with torch.no_grad():
            sae.W_dec.copy_(w)
            sae.W_enc.copy_(w.T)
            if cfg.architecture in ("jumprelu",):
                sae.threshold.fill_(0.5)
        return sae

    def set_feature_stats(self, max_activation: Tensor | None = None, firing_frequency: Tensor | None = None) -> None:
        """Install per-feature statistics ([d_sae] each) computed at load or training time."""
        with torch.no_grad():
            if max_activation is not None:
                self.max_activation.copy_(max_activation.reshape(self.d_sae))
            if firing_frequency is not None:
                self.firing_frequency.copy_(firing_frequency.reshape(self.d_sae))

    def describe(self) -> str:
        c = self.cfg
        k = f", k={c.k}" if c.k else ""
        return f"{c.architecture} SAE, d_in={c.d_in}, d_sae={c.d_sae}{k}, layer {c.hook_layer} {c.hook_site}"
