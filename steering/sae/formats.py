"""SAEs on disk: read the common public formats, write the SAELens one.

Formats read by `load_sae` (detected from the files present, in this order):

    saelens      DIR/cfg.json + DIR/sae_weights.safetensors
                 W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae],
                 b_dec [d_in], threshold [d_sae] (jumprelu). Optional
                 DIR/sparsity.safetensors ("sparsity" = log10 firing frequency)
                 and DIR/feature_stats.safetensors (our own statistics).
                 architecture standard -> relu, jumprelu, topk, batchtopk.
    gemma_scope  DIR/params.npz or the .npz file itself: W_enc, W_dec, b_enc,
                 b_dec, threshold (no config: a JumpReLU SAE at resid_post that
                 does not subtract b_dec from its input). The layer comes from
                 `hook_layer` or a path part like ".../layer_12/...".
    sparsify     DIR/cfg.json + DIR/sae.safetensors (EleutherAI): encoder.weight
                 [d_sae, d_in], encoder.bias [d_sae], W_dec [d_sae, d_in],
                 b_dec [d_in]; a TopK SAE. DIR may instead hold one such folder
                 per hookpoint ("layers.15" -> layer 15, resid_post), chosen
                 with `hook_layer`.

`save_sae` writes the SAELens layout. Its cfg.json carries the keys SAELens
reads (old flat names, which current SAELens still accepts) plus our whole
`SAEConfig` under "steering_config", which `load_sae` prefers when present.
SAELens keeps no "batchtopk" inference SAE: like SAELens itself, cfg.json
calls one "jumprelu" when it has a learned threshold and "topk" otherwise,
i.e. by what it computes at inference.

This module only moves tensors between files and `SparseAutoencoder`; it does
not download anything, pick a default SAE, or attach an SAE to a model.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from steering.sae.autoencoder import SAEConfig, SAEConfigError, SparseAutoencoder

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
STATS_FILE = "feature_stats.safetensors"
GEMMA_SCOPE_FILE = "params.npz"
SPARSIFY_FILE = "sae.safetensors"
STATS = ("max_activation", "firing_frequency")
_SAELENS_ARCH = {"standard": "relu", "relu": "relu", "jumprelu": "jumprelu", "topk": "topk", "batchtopk": "batchtopk"}


class SAEFormatError(SAEConfigError):
    """Files that are no known SAE format, or an SAE this project cannot run."""

    def __init__(self, message: str, param: str = "path"):
        super().__init__(message, param)


@dataclass
class _Raw:
    """What a reader found: SAEConfig fields, SAELens-named weights, statistics."""

    cfg: dict[str, Any]
    weights: dict[str, Tensor]
    stats: dict[str, Tensor] = field(default_factory=dict)


# ----------------------------------------------------------------- helpers
def _dtype_name(dtype: torch.dtype | str) -> str:
    name = str(dtype).removeprefix("torch.")
    if not (isinstance(getattr(torch, name, None), torch.dtype) and getattr(torch, name).is_floating_point):
        raise SAEConfigError(f"dtype must be a floating torch dtype, got {dtype!r}", "dtype")
    return name


def _hook(layer: int | None, site: str | None, hook_layer: int | None, hook_site: str | None, source: str) -> tuple[int, str]:
    """The (layer, site) a file names, the caller's arguments winning."""
    layer = hook_layer if hook_layer is not None else layer
    site = hook_site or site
    if layer is None:
        raise SAEFormatError(f"cannot tell the layer of the SAE from {source}; pass hook_layer=", "hook_layer")
    if site is None:
        raise SAEFormatError(f"{source} is not a residual-stream site (resid_pre/resid_post); pass hook_site=", "hook_site")
    return int(layer), site


def _has(path: Path, *names: str) -> bool:
    return all((path / name).is_file() for name in names)


def _read_stats(path: Path) -> dict[str, Tensor]:
    stats: dict[str, Tensor] = {}
    if (path / SPARSITY_FILE).is_file():
        log_sparsity = load_file(path / SPARSITY_FILE).get("sparsity")
        if log_sparsity is not None:
            stats["firing_frequency"] = torch.pow(10.0, log_sparsity.float())
    if (path / STATS_FILE).is_file():
        stats.update({k: v.float() for k, v in load_file(path / STATS_FILE).items() if k in STATS})
    return stats


def _atomic_write(target: Path, write: Callable[[Path], None]) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------- readers
def _read_saelens(path: Path, hook_layer: int | None, hook_site: str | None) -> _Raw:
    c = json.loads((path / CFG_FILE).read_text())
    weights = load_file(path / WEIGHTS_FILE)
    # Training checkpoints and fine-tuned SAEs store a few tensors differently.
    if "log_threshold" in weights:
        weights["threshold"] = weights.pop("log_threshold").exp()
    if "topk_threshold" in weights:  # BatchTopK: one global threshold
        weights["threshold"] = weights.pop("topk_threshold").float().expand(weights["b_enc"].shape).clone()
    for key in ("scaling_factor", "finetuning_scaling_factor"):
        if key in weights:  # decode(f * s) == decode with W_dec rows scaled by s
            weights["W_dec"] = weights["W_dec"] * weights.pop(key)[:, None]
    if isinstance(c.get("steering_config"), dict):
        return _Raw(dict(c["steering_config"]), weights, _read_stats(path))

    meta = c.get("meta") or {}  # SAELens >= 6 moved hook and model names here

    def get(*keys: str) -> Any:
        return next((src[k] for k in keys for src in (c, meta) if src.get(k) is not None), None)

    arch_name = c.get("architecture") or "standard"
    if arch_name == "standard" and get("activation_fn", "activation_fn_str") == "topk":
        arch_name = "topk"  # SAELens < 6 marked TopK SAEs by their activation only
    if arch_name not in _SAELENS_ARCH:
        raise SAEFormatError(
            f"SAELens architecture {arch_name!r} is not supported; supported: {', '.join(_SAELENS_ARCH)}", "architecture"
        )
    arch = _SAELENS_ARCH[arch_name]
    k = None
    if arch in ("topk", "batchtopk"):
        k = (c.get("activation_fn_kwargs") or {}).get("k", c.get("k"))
        k = None if k is None else max(1, round(float(k)))  # BatchTopK's k may be a float mean
    hook_name = get("hook_name", "hook_point")
    block = re.match(r"blocks\.(\d+)\.", hook_name or "")
    site_match = re.search(r"\.hook_(resid_pre|resid_post)$", hook_name or "")
    layer = int(block[1]) if block else get("hook_layer", "hook_point_layer")
    site = site_match[1] if site_match else (None if hook_name else "resid_post")
    layer, site = _hook(layer, site, hook_layer, hook_site, f"SAELens hook {hook_name!r}")
    norm = c.get("normalize_activations")
    if norm is None or isinstance(norm, bool):  # old configs: a bool, Gemma Scope conversions: null
        norm = "expected_average_only_in" if norm else "none"
    extra = {k: get(k) for k in ("neuronpedia_id", "dataset_path", "context_size", "prepend_bos") if get(k) is not None}
    cfg = dict(
        d_in=int(c["d_in"]), d_sae=int(c["d_sae"]), architecture=arch, k=k, hook_layer=layer, hook_site=site,
        model_name=get("model_name"),
        normalize_activations=norm,
        # SAELens keeps this factor outside cfg.json and runs without it at
        # inference, i.e. as 1.0, unless it was folded into the weights.
        norm_scaling_factor=float(c.get("norm_scaling_factor") or 1.0),
        apply_b_dec_to_input=bool(c.get("apply_b_dec_to_input", True)),
        metadata={"source_format": "saelens", "source_path": str(path), **extra},
    )
    return _Raw(cfg, weights, _read_stats(path))


def _read_gemma_scope(path: Path, hook_layer: int | None, hook_site: str | None) -> _Raw:
    file = path if path.suffix == ".npz" else path / GEMMA_SCOPE_FILE
    names = {"w_enc": "W_enc", "w_dec": "W_dec", "b_enc": "b_enc", "b_dec": "b_dec", "threshold": "threshold"}
    with np.load(file) as data:
        weights = {names.get(k.lower(), k): torch.from_numpy(np.asarray(data[k], dtype=np.float32)) for k in data.files}
    if "W_enc" not in weights:
        raise SAEFormatError(f"{file} has no W_enc; found {sorted(weights)}")
    found = re.findall(r"layer_(\d+)", file.as_posix())
    layer, site = _hook(int(found[-1]) if found else None, "resid_post", hook_layer, hook_site, f"the path {file}")
    d_in, d_sae = weights["W_enc"].shape
    cfg = dict(d_in=d_in, d_sae=d_sae, architecture="jumprelu", hook_layer=layer, hook_site=site)
    cfg["apply_b_dec_to_input"] = False  # Gemma Scope encodes x @ W_enc + b_enc
    return _Raw({**cfg, "metadata": {"source_format": "gemma_scope", "source_path": str(file)}}, weights)


def _sparsify_folders(path: Path) -> list[Path]:
    if not path.is_dir():
        return []
    return sorted(d for d in path.iterdir() if _has(d, CFG_FILE, SPARSIFY_FILE))


def _sparsify_layer(hookpoint: str) -> int | None:
    match = re.search(r"(?:^|\.)(?:layers|h)\.(\d+)$", hookpoint)  # "layers.15", "model.layers.15", "h.3"
    return int(match[1]) if match else None


def _read_sparsify(path: Path, hook_layer: int | None, hook_site: str | None) -> _Raw:
    if not _has(path, SPARSIFY_FILE):
        folders = _sparsify_folders(path)
        chosen = [d for d in folders if hook_layer is None or _sparsify_layer(d.name) == hook_layer]
        if len(chosen) != 1:
            raise SAEFormatError(
                f"{path} holds sparsify SAEs for hookpoints {[d.name for d in folders]}; "
                f"choose one with hook_layer= or pass its folder (hook_layer={hook_layer})",
                "hook_layer",
            )
        path = chosen[0]
    c = json.loads((path / CFG_FILE).read_text())
    w = load_file(path / SPARSIFY_FILE)
    if c.get("activation", "topk") != "topk" or c.get("transcode") or "W_skip" in w:
        raise SAEFormatError(f"{path}: only plain TopK sparsify autoencoders are supported (no transcoders or skips)")
    enc = w["encoder.weight"]  # [d_sae, d_in], an nn.Linear
    d_sae, d_in = enc.shape
    expected = c.get("num_latents") or int(c.get("d_in", d_in)) * int(c.get("expansion_factor", 0))
    if expected and expected != d_sae:
        raise SAEFormatError(f"{path}: cfg.json says {expected} latents, encoder.weight has {d_sae}")
    layer = _sparsify_layer(path.name)
    layer, site = _hook(layer, None if layer is None else "resid_post", hook_layer, hook_site, f"hookpoint {path.name!r}")
    weights = {"W_enc": enc.T.contiguous(), "b_enc": w["encoder.bias"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    cfg = dict(d_in=d_in, d_sae=d_sae, architecture="topk", k=int(c.get("k", 32)), hook_layer=layer, hook_site=site)
    return _Raw({**cfg, "metadata": {"source_format": "sparsify", "source_path": str(path)}}, weights)


@dataclass(frozen=True)
class SAEFormat:
    """One on-disk format: its name, the files it expects, a detector and a reader."""

    name: str
    files: str
    detect: Callable[[Path], bool]
    read: Callable[[Path, int | None, str | None], _Raw]


# Detection tries these in order; add a format by adding a reader and a line here.
FORMATS: dict[str, SAEFormat] = {
    f.name: f
    for f in (
        SAEFormat("saelens", f"{CFG_FILE} + {WEIGHTS_FILE}", lambda p: _has(p, CFG_FILE, WEIGHTS_FILE), _read_saelens),
        SAEFormat(
            "gemma_scope",
            f"{GEMMA_SCOPE_FILE} (or any .npz file)",
            lambda p: (p.suffix == ".npz" and p.is_file()) or _has(p, GEMMA_SCOPE_FILE),
            _read_gemma_scope,
        ),
        SAEFormat(
            "sparsify",
            f"{CFG_FILE} + {SPARSIFY_FILE}, or one such folder per hookpoint",
            lambda p: _has(p, CFG_FILE, SPARSIFY_FILE) or bool(_sparsify_folders(p)),
            _read_sparsify,
        ),
    )
}


def detect_format(path: str | Path) -> SAEFormat:
    """The format of the SAE at `path`; raises SAEFormatError listing the known ones."""
    path = Path(path)
    for fmt in FORMATS.values():
        if fmt.detect(path):
            return fmt
    known = "; ".join(f"{f.name}: {f.files}" for f in FORMATS.values())
    raise SAEFormatError(f"no known SAE format at {path}. Known formats: {known}")


# ----------------------------------------------------------------- public API
def load_sae(
    path: str | Path,
    *,
    hook_layer: int | None = None,
    hook_site: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> SparseAutoencoder:
    """Load an SAE in any format of `FORMATS` (see the module docstring).

    `hook_layer` / `hook_site` override what the files say (Gemma Scope has no
    config at all). Weights are cast to `dtype` (default float32) and moved to
    `device`; per-feature statistics are installed when the files have them.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no SAE at {path}")
    if path.is_file() and path.suffix != ".npz":
        path = path.parent  # e.g. the path of a cfg.json
    raw = detect_format(path).read(path, hook_layer, hook_site)
    overrides = {"hook_layer": hook_layer, "hook_site": hook_site}
    cfg = SAEConfig.from_dict(
        {**raw.cfg, **{k: v for k, v in overrides.items() if v is not None}, "dtype": _dtype_name(dtype or torch.float32)}
    )
    d_in, d_sae = cfg.d_in, cfg.d_sae
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,), "threshold": (d_sae,)}
    sae = SparseAutoencoder(cfg)
    with torch.no_grad():
        for name, shape in shapes.items():
            tensor = raw.weights.get(name)
            if tensor is None:
                if name == "threshold" and cfg.architecture != "jumprelu":
                    continue  # a batchtopk SAE without one runs as per-token topk
                raise SAEFormatError(f"{path}: missing tensor {name!r}; found {sorted(raw.weights)}", name)
            if tuple(tensor.shape) != shape:
                raise SAEFormatError(f"{path}: {name} has shape {tuple(tensor.shape)}, expected {shape}", name)
            getattr(sae, name).copy_(tensor)
        if cfg.architecture == "jumprelu":
            # SAELens and Gemma Scope compute relu(pre) * (pre > theta), which
            # equals our pre * (pre > theta) once negative thresholds are raised to 0.
            sae.threshold.clamp_(min=0)
    for name, value in raw.stats.items():
        if tuple(value.shape) != (cfg.d_sae,):
            raise SAEFormatError(f"{path}: statistic {name} has shape {tuple(value.shape)}, expected ({cfg.d_sae},)", name)
    sae.set_feature_stats(**raw.stats)
    return sae if device is None else sae.to(device)


def _saelens_cfg(sae: SparseAutoencoder, stored_dtype: str) -> dict[str, Any]:
    c = sae.cfg
    arch = c.architecture
    if arch == "batchtopk":  # see the module docstring
        arch = "jumprelu" if sae.uses_threshold else "topk"
    out: dict[str, Any] = {
        "architecture": "standard" if arch == "relu" else arch,
        **{"d_in": c.d_in, "d_sae": c.d_sae, "dtype": stored_dtype, "device": "cpu"},
        "model_name": c.model_name,
        "hook_name": f"blocks.{c.hook_layer}.hook_{c.hook_site}",
        "hook_layer": c.hook_layer,
        "hook_head_index": None,
        "normalize_activations": c.normalize_activations,
        "apply_b_dec_to_input": c.apply_b_dec_to_input,
        # SAELens >= 6 reads "activation_fn", older versions "activation_fn_str".
        **dict.fromkeys(("activation_fn", "activation_fn_str"), "topk" if arch == "topk" else "relu"),
        "activation_fn_kwargs": {"k": c.k} if arch == "topk" else {},
        "finetuning_scaling_factor": False,
    }
    if arch == "topk":
        out["k"] = c.k
    if c.normalize_activations == "expected_average_only_in":
        out["norm_scaling_factor"] = c.norm_scaling_factor
    out["steering_config"] = c.to_dict()
    return out


def save_sae(sae: SparseAutoencoder, path: str | Path, *, dtype: torch.dtype | str | None = None) -> Path:
    """Write `sae` to the folder `path` in the SAELens layout; returns the folder.

    Weights are stored in `dtype` (default: the SAE's own), e.g. float16 to
    halve the files; statistics stay float32. Each file is written to a
    temporary name and renamed into place.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    stored = _dtype_name(dtype) if dtype is not None else _dtype_name(sae.W_enc.dtype)
    names = ["W_enc", "W_dec", "b_enc", "b_dec"]
    if sae.cfg.architecture in ("jumprelu", "batchtopk"):
        names.append("threshold")
    tensors = {n: getattr(sae, n).detach().to("cpu", getattr(torch, stored)).contiguous() for n in names}
    _atomic_write(path / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp))
    stats = {n: getattr(sae, n).detach().to("cpu", torch.float32).contiguous() for n in STATS}
    stats = {n: t for n, t in stats.items() if bool(torch.isfinite(t).any())}
    if stats:
        _atomic_write(path / STATS_FILE, lambda tmp: save_file(stats, tmp))
    else:
        (path / STATS_FILE).unlink(missing_ok=True)  # never read back stale statistics
    text = json.dumps(_saelens_cfg(sae, stored), indent=2)
    _atomic_write(path / CFG_FILE, lambda tmp: tmp.write_text(text))
    return path
