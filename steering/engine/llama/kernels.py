"""CPU kernels for the decoding forward (AVX2 + FMA): matrix products and attention.

    linear      y [M, N] (+)= prologue(x) [M, K] @ W^T   x float32, W bfloat16 or float32 [N, K]
                (the nn.Linear layout), y float32; prologue: none, RMSNorm, or SwiGLU
    attention   RoPE, K/V store into a slot cache and causal grouped-query attention
                for a layer's tokens at their own positions (see `attention`)
    DecoderStack a Llama model's decoder layers in one C loop (5 products + attention per
                layer) between two SAE sites, so a step returns to Python only for the edit
    clamp       a batch's SAE feature clamps, in place (`steering.interventions`' math)

`linear` reads each weight row once per call whatever M is, widened to
float32 in registers (a bfloat16 is the high half of a float32) and
multiplied with float32 accumulation. So a decoding step with 8 rows costs
about as much memory traffic as one with 1 row, which torch's own matmuls do
not manage here (its bfloat16 matmul has no fast path on CPUs without native
bfloat16 instructions, such as AVX2 machines; its float32 one re-packs the
weights when M > 1). Each output is summed in the same order whatever M is,
and attention handles each token on its own: a row's results do not depend
on what else is in the batch, bit for bit. Fusing the norms, the SwiGLU and
the residual adds into the products leaves five calls per layer, and running
the layers in one C loop leaves no Python between them: at batch 1 the ~150
calls' Python cost (~15 us each) had been ~15% of a step of a small model.

The C source (`steering/engine/llama/csrc/kernels.c` and `products.h`) is compiled once
with the system C compiler into the cache folder
(`steering.models.default_cache_dir()/kernels`) and loaded with ctypes; it links the OpenMP runtime torch already loaded and uses torch's
thread count. `load()` returns None where there is no compiler, no AVX2/FMA,
or the build fails (or STEERING_NO_KERNELS is set): callers then use torch.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

log = logging.getLogger(__name__)

_CSRC = Path(__file__).parent / "csrc"
_SOURCES = ("kernels.c", "products.h")

_FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC", "-lm"]
_lib: ctypes.CDLL | None = None
_tried = False
_lock = threading.Lock()


def _cpu_has_avx2_fma() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def _build(cache: Path) -> Path | None:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None
    source = b"".join((_CSRC / name).read_bytes() for name in _SOURCES)
    digest = hashlib.sha1(source + " ".join(_FLAGS).encode()).hexdigest()[:12]
    target = cache / f"steering_kernels_{digest}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        out = Path(tmp) / target.name
        subprocess.run([cc, *_FLAGS, "-I", str(_CSRC), str(_CSRC / "kernels.c"), "-o", str(out)],
                       check=True, capture_output=True, timeout=120)
        os.replace(out, target)  # atomic: concurrent builders never see half a file
    for stale in cache.glob("steering_kernels_*.so"):  # builds of older sources
        if stale != target:
            stale.unlink(missing_ok=True)
    return target


def load() -> ctypes.CDLL | None:
    """The compiled kernel library, or None where it cannot be had (see the module docstring)."""
    global _lib, _tried
    with _lock:
        if _tried:
            return _lib
        _tried = True
        if os.environ.get("STEERING_NO_KERNELS") or not _cpu_has_avx2_fma():
            return None
        from steering.models import default_cache_dir

        try:
            path = _build(default_cache_dir() / "kernels")
            if path is not None:
                lib = ctypes.CDLL(str(path))
                for fn in (lib.linear_bf16, lib.linear_f32):
                    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 5 + [ctypes.c_void_p, ctypes.c_float, ctypes.c_int]
                    fn.restype = None
                lib.attention.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] + [ctypes.c_void_p] * 3 + [ctypes.c_int] * 4 + [ctypes.c_float, ctypes.c_int]
                lib.attention.restype = None
                P, I = ctypes.c_void_p, ctypes.c_int
                for fn in (lib.layers_bf16, lib.layers_f32):
                    fn.argtypes = [P, I, I, I] + [P] * 9 + [I] + [P] * 7 + [I] * 5 + [ctypes.c_float, I]
                    fn.restype = None
                lib.clamp.argtypes = [P, I, I, P, I, P, P, P, I] + [P] * 7 + [ctypes.c_float, I]
                lib.clamp.restype = None
                _lib = lib
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("bfloat16 CPU kernel unavailable, using torch: %s", exc)
        return _lib


def linear(
    x: Tensor, weight: Tensor, *, norm: Tensor | None = None, eps: float = 0.0, glu: bool = False, out: Tensor | None = None
) -> Tensor:
    """y = prologue(x) @ weight^T, float32 (needs `load()`); weight [N, K] bfloat16 or float32, contiguous.

    x [..., K] float32. norm [K] (float32): RMSNorm x first, x * rsqrt(mean(x^2) + eps) * norm.
    glu: x is [..., 2K] = [gate, up] and the input is silu(gate) * up (SwiGLU).
    out [..., N] (float32, contiguous): add the product to it in place and return it.
    """
    lib = _lib
    assert lib is not None, "call kernels.load() first"
    fn = lib.linear_bf16 if weight.dtype == torch.bfloat16 else lib.linear_f32
    N, K = weight.shape
    x2 = x.reshape(-1, x.shape[-1])
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    if x2.shape[1] != (2 * K if glu else K):
        raise ValueError(f"x has {x2.shape[1]} features; the weight takes {K}{' (x2 with glu)' if glu else ''}")
    if out is None:
        y = torch.empty((x2.shape[0], N), dtype=torch.float32)
    else:
        if not out.is_contiguous() or out.dtype != torch.float32:
            raise ValueError("out must be a contiguous float32 tensor")
        y = out
    mode = 2 if glu else (1 if norm is not None else 0)
    fn(x2.data_ptr(), weight.data_ptr(), y.data_ptr(), x2.shape[0], N, K, torch.get_num_threads(),
       mode, norm.data_ptr() if norm is not None else None, float(eps), int(out is not None))
    return out if out is not None else y.view(*x.shape[:-1], N)



def attention(qkv: Tensor, positions: Tensor, slots: Tensor, kv: Tensor, cos: Tensor, sin_signed: Tensor, n_heads: int) -> Tensor:
    """RoPE, K/V store and causal attention for one layer, all tokens at once (needs `load()`).

    qkv [BT, (H + 2 KV) * hd] float32, contiguous: each token's projections (q is rotated in place).
    positions, slots [BT] int64: each token's absolute position and KV slot.
    kv [slots, capacity, 2 KV, hd] float32: the layer's cache (`steering.engine.kv_cache.KVPool`); the
    tokens' rotated keys and values are stored at their positions first, then each query head
    attends its KV head's keys at positions 0..p (grouped-query: head h reads KV head h // g).
    cos, sin_signed [max_length, hd]: RoPE tables, sin_signed = [-sin[:hd/2], sin[hd/2:]].
    Returns the attention output [BT, H * hd].
    """
    lib = _lib
    assert lib is not None, "call kernels.load() first"
    BT = qkv.shape[0]
    KV2, hd = kv.shape[2], kv.shape[3]
    if not (qkv.is_contiguous() and kv.is_contiguous() and qkv.dtype == kv.dtype == torch.float32) or hd > 512:
        raise ValueError("attention needs contiguous float32 qkv and kv, head_dim <= 512")
    out = torch.empty((BT, n_heads * hd), dtype=torch.float32)
    lib.attention(qkv.data_ptr(), positions.data_ptr(), slots.data_ptr(), kv.data_ptr(), kv.shape[1],
                  cos.data_ptr(), sin_signed.data_ptr(), out.data_ptr(), BT, n_heads, KV2 // 2, hd,
                  float(hd) ** -0.5, torch.get_num_threads())
    return out


def _pointers(tensors: Sequence[Tensor]) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


class DecoderStack:
    """A Llama model's decoder layers as one C loop takes them (`layers_bf16` / `layers_f32`).

    `layers` holds per layer (ln1 [D], eps1, W_qkv [(H + 2 KV) hd, D], W_o [D, H hd], ln2 [D],
    eps2, W_gate_up [2 I, D], W_down [D, I]): float32 norms, weights all bfloat16 or all
    float32, contiguous (held here, so the C side's pointers stay valid). `run` computes, on h [M, D] float32 in
    place, what five `linear` calls and one `attention` per layer compute, without
    returning to Python between them (at batch 1 the calls' Python cost was ~15% of a step).
    """

    def __init__(self, layers: Sequence[tuple], n_heads: int, n_kv_heads: int, head_dim: int):
        lib = _lib
        assert lib is not None, "call kernels.load() first"
        self._layers = list(layers)
        ln1, eps1, w_qkv, w_o, ln2, eps2, w_gu, w_down = zip(*self._layers)
        self._fn = lib.layers_bf16 if w_qkv[0].dtype == torch.bfloat16 else lib.layers_f32
        self._weights = [_pointers(t) for t in (w_qkv, w_o, w_gu, w_down, ln1, ln2)]
        self._eps = [(ctypes.c_float * len(e))(*e) for e in (eps1, eps2)]
        if head_dim > 512:
            raise ValueError("the attention kernel takes head_dim <= 512")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.d_model, self.d_inter = w_o[0].shape[0], w_down[0].shape[1]
        self._kv: tuple[list[Tensor], ctypes.Array] | None = None

    def run(self, h: Tensor, first: int, last: int, kv: list[Tensor], positions: Tensor, slots: Tensor,
            cos: Tensor, sin_signed: Tensor) -> Tensor:
        """Layers first..last-1 on h [..., D] (contiguous float32, updated in place); kv, positions,
        slots, cos, sin_signed as for `attention` (kv: one cache tensor per layer)."""
        M = h.numel() // self.d_model
        H, KV, hd, I = self.n_heads, self.n_kv_heads, self.head_dim, self.d_inter
        cached = self._kv  # a local: another thread's engine may run the same stack with its own pool
        if cached is None or cached[0] is not kv:  # a pool's list changes only when it grows
            cached = self._kv = (kv, _pointers(kv))
        if not (h.is_contiguous() and h.dtype == torch.float32):
            raise ValueError("h must be a contiguous float32 tensor")
        qkv = torch.empty((M, (H + 2 * KV) * hd), dtype=torch.float32)
        att = torch.empty((M, H * hd), dtype=torch.float32)
        gu = torch.empty((M, 2 * I), dtype=torch.float32)
        self._fn(h.data_ptr(), M, first, last, *self._weights, *self._eps, cached[1], kv[0].shape[1],
                 positions.data_ptr(), slots.data_ptr(), cos.data_ptr(), sin_signed.data_ptr(),
                 qkv.data_ptr(), att.data_ptr(), gu.data_ptr(), self.d_model, H, KV, hd, I,
                 float(hd) ** -0.5, torch.get_num_threads())
        return h


def clamp(x: Tensor, rows: Tensor, positions: Tensor, start: Tensor, end: Tensor, a: Tensor, b: Tensor,
          enc: Tensor, b_enc: Tensor, theta: Tensor, dec: Tensor, b_dec: Tensor | None, scale: float,
          threshold: bool) -> Tensor:
    """SAE feature clamps on x [B, T, d] in place (float32, contiguous); see `steering.interventions`.

    rows [R] int64: the clamped batch rows; start, end [R, m] int64 (contiguous): the window of positions
    each (row, feature) clamps (start <= p < end); positions [B, T] int64 (contiguous): every token's position. a, b [R, m]:
    the affine coefficients; enc, dec [m, d]: the features' encoder columns and decoder rows;
    b_enc, theta [m]; b_dec [d] (None: not subtracted from the input); scale: the SAE's input
    normalisation factor c (x_n = c x).
    Activations are relu(pre), or pre where pre > theta when `threshold`.
    """
    lib = _lib
    assert lib is not None, "call kernels.load() first"
    B, T, d = x.shape
    if not (x.is_contiguous() and x.dtype == torch.float32):
        raise ValueError("x must be a contiguous float32 tensor")
    lib.clamp(x.data_ptr(), T, d, rows.data_ptr(), rows.numel(), positions.data_ptr(), start.data_ptr(),
              end.data_ptr(), enc.shape[0], a.data_ptr(), b.data_ptr(), enc.data_ptr(), b_enc.data_ptr(),
              theta.data_ptr(), dec.data_ptr(), b_dec.data_ptr() if b_dec is not None else None, float(scale),
              int(threshold))
    return x
