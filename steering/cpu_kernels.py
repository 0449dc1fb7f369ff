"""CPU kernels for the decoding forward (AVX2 + FMA): matrix products and attention.

    linear      y [M, N] (+)= prologue(x) [M, K] @ W^T   x float32, W bfloat16 or float32 [N, K]
                (the nn.Linear layout), y float32; prologue: none, RMSNorm, or SwiGLU
    attention   RoPE, K/V store into a slot cache and causal grouped-query attention
                for a layer's tokens at their own positions (see `attention`)

`linear` reads each weight row once per call whatever M is, widened to
float32 in registers (a bfloat16 is the high half of a float32) and
multiplied with float32 accumulation. So a decoding step with 8 rows costs
about as much memory traffic as one with 1 row, which torch's own matmuls do
not manage here (its bfloat16 matmul has no fast path on CPUs without native
bfloat16 instructions, such as AVX2 machines; its float32 one re-packs the
weights when M > 1). Each output is summed in the same order whatever M is,
and attention handles each token on its own: a row's results do not depend
on what else is in the batch, bit for bit. Fusing the norms, the SwiGLU and
the residual adds into the products leaves five calls per layer, which
matters as much as the products at batch 1 for a small model.

The C source below is compiled once with the system C compiler into the
cache folder (`steering.models.default_cache_dir()/kernels`) and loaded with
ctypes; it links the OpenMP runtime torch already loaded and uses torch's
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

import torch
from torch import Tensor

log = logging.getLogger(__name__)

_TEMPLATE = r"""
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static inline __m256 bf16x8(const uint16_t *p) {
    __m128i v = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline float hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
/* e^x for 8 floats (Cephes' expf: range reduction by ln 2, degree-5 polynomial; relative
   error ~2e-7); inputs below -88.38 give 0 (2^-127 flushed), as softmax's -inf should. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f)), _mm256_set1_ps(88.3762626647949f));
    __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}
static inline float bf16f(uint16_t h) {
    union { uint32_t u; float f; } c; c.u = ((uint32_t)h) << 16; return c.f;
}
static inline __m256 f32x8(const float *p) { return _mm256_loadu_ps(p); }
static inline float f32f(float v) { return v; }

"""

_KERNELS = r"""
/* Software prefetch: while a block of weight rows is summed, the rows that follow it (the same
   thread's next block, as a rule) are requested as fast as these are consumed. Without it a
   core waits on DRAM latency between lines; measured on a 2-core AVX2 machine (2 threads, bfloat16,
   SmolLM2-135M's shapes), one decoding step's products went from 16.1 to 12.4 ms at batch 1 and from
   33.4 to 25.6 ms at batch 8. Prefetches never fault; `end` only saves useless ones. */
static inline void SUF(prefetch)(const char *p, const char *end, int bytes) {
    for (int b = 0; b < bytes; b += 64)
        if (p + b < end) _mm_prefetch(p + b, _MM_HINT_T0);
}

/* rows n0, n0+1 of W against rows m0..m0+MB-1 of x (MB <= 4): 2*MB accumulators */
static inline void SUF(block2)(const float *x, const WT *w, float *y, int M, int N, int K,
                          int n0, int m0, const int MB, const int two, int acc) {
    __m256 a0[4], a1[4];
    for (int j = 0; j < 4; j++) { a0[j] = _mm256_setzero_ps(); a1[j] = _mm256_setzero_ps(); }
    const WT *w0 = w + (long)n0 * K, *w1 = w0 + K;
    const char *ahead = (const char *)(w0 + 2L * K), *end = (const char *)(w + (long)N * K);
    const int per_iter = 2 * 8 * (int)sizeof(WT);
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        if (m0 == 0) SUF(prefetch)(ahead + (long)k * 2 * sizeof(WT), end, per_iter);
        __m256 v0 = LOADW(w0 + k);
        __m256 v1 = two ? LOADW(w1 + k) : v0;
        for (int j = 0; j < MB; j++) {
            __m256 xv = _mm256_loadu_ps(x + (long)(m0 + j) * K + k);
            a0[j] = _mm256_fmadd_ps(xv, v0, a0[j]);
            if (two) a1[j] = _mm256_fmadd_ps(xv, v1, a1[j]);
        }
    }
    for (int j = 0; j < MB; j++) {
        const float *xr = x + (long)(m0 + j) * K;
        float s0 = hsum(a0[j]), s1 = two ? hsum(a1[j]) : 0.f;
        for (int kk = k; kk < K; kk++) {
            s0 += xr[kk] * SCALARW(w0[kk]);
            if (two) s1 += xr[kk] * SCALARW(w1[kk]);
        }
        float *yr = y + (long)(m0 + j) * N + n0;
        yr[0] = acc ? yr[0] + s0 : s0;
        if (two) yr[1] = acc ? yr[1] + s1 : s1;
    }
}

/* M == 1: four weight rows at a time, four independent accumulator chains */
static inline void SUF(gemv4)(const float *x, const WT *w, float *y, int N, int K, int n0, int acc) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const WT *w0 = w + (long)n0 * K;
    const char *ahead = (const char *)(w0 + 4L * K), *end = (const char *)(w + (long)N * K);
    const int per_iter = 4 * 8 * (int)sizeof(WT); /* bytes of W consumed per iteration: 64 or 128 */
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        SUF(prefetch)(ahead + (long)k * 4 * sizeof(WT), end, per_iter);
        __m256 xv = _mm256_loadu_ps(x + k);
        a0 = _mm256_fmadd_ps(xv, LOADW(w0 + k), a0);
        a1 = _mm256_fmadd_ps(xv, LOADW(w0 + K + k), a1);
        a2 = _mm256_fmadd_ps(xv, LOADW(w0 + 2L * K + k), a2);
        a3 = _mm256_fmadd_ps(xv, LOADW(w0 + 3L * K + k), a3);
    }
    float s[4] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3)};
    for (int r = 0; r < 4; r++) {
        for (int kk = k; kk < K; kk++) s[r] += x[kk] * SCALARW(w0[(long)r * K + kk]);
        y[n0 + r] = acc ? y[n0 + r] + s[r] : s[r];
    }
}

static void SUF(matmul)(const float *x, const WT *w, float *y, int M, int N, int K, int threads, int acc) {
    /* dynamic chunks, about 8 per thread: a thread the OS preempts holds up only its chunk */
    if (M == 1 && N % 4 == 0) {
        int chunk = N / 4 / (8 * threads) + 1;
        #pragma omp parallel for num_threads(threads) schedule(dynamic, chunk)
        for (int n = 0; n < N; n += 4) SUF(gemv4)(x, w, y, N, K, n, acc);
        return;
    }
    int nblocks = (N + 1) / 2;
    int chunk = nblocks / (8 * threads) + 1;
    #pragma omp parallel for num_threads(threads) schedule(dynamic, chunk)
    for (int b = 0; b < nblocks; b++) {
        int n0 = 2 * b, two = (n0 + 1 < N);
        int m0 = 0;
        for (; m0 + 4 <= M; m0 += 4) {
            if (two) SUF(block2)(x, w, y, M, N, K, n0, m0, 4, 1, acc); else SUF(block2)(x, w, y, M, N, K, n0, m0, 4, 0, acc);
        }
        int rest = M - m0;
        if (rest == 3) { if (two) SUF(block2)(x, w, y, M, N, K, n0, m0, 3, 1, acc); else SUF(block2)(x, w, y, M, N, K, n0, m0, 3, 0, acc); }
        else if (rest == 2) { if (two) SUF(block2)(x, w, y, M, N, K, n0, m0, 2, 1, acc); else SUF(block2)(x, w, y, M, N, K, n0, m0, 2, 0, acc); }
        else if (rest == 1) { if (two) SUF(block2)(x, w, y, M, N, K, n0, m0, 1, 1, acc); else SUF(block2)(x, w, y, M, N, K, n0, m0, 1, 0, acc); }
    }
}

/* y (+)= prologue(x) @ W^T. prologue: mode 0 none (x [M, K]); 1 rmsnorm, x * rsqrt(mean(x^2) + eps) * nw
   (x [M, K]); 2 SwiGLU, silu(x[:, :K]) * x[:, K:] (x [M, 2K]). acc != 0 adds to y instead of writing it. */
void SUF(linear)(const float *x, const WT *w, float *y, int M, int N, int K, int threads,
                 int mode, const float *nw, float eps, int acc) {
    if (mode == 0) { SUF(matmul)(x, w, y, M, N, K, threads, acc); return; }
    float *xe = (float *)aligned_alloc(32, ((sizeof(float) * (size_t)M * K + 31) / 32) * 32);
    for (int m = 0; m < M; m++) {
        float *out = xe + (long)m * K;
        if (mode == 1) {
            const float *xr = x + (long)m * K;
            double ss = 0.0;
            for (int k = 0; k < K; k++) ss += (double)xr[k] * xr[k];
            float r = 1.0f / sqrtf((float)(ss / K) + eps);
            for (int k = 0; k < K; k++) out[k] = xr[k] * r * nw[k];
        } else {
            const float *g = x + (long)m * 2 * K, *u = g + K;
            for (int k = 0; k < K; k++) out[k] = g[k] / (1.0f + expf(-g[k])) * u[k];
        }
    }
    SUF(matmul)(xe, w, y, M, N, K, threads, acc);
    free(xe);
}
"""

_ATTENTION = r"""
/* Attention of BT tokens over a slot KV cache (see `attention` in Python for the layout). */
void attention(float *qkv, const int64_t *pos, const int64_t *slot, float *kv, int cap,
               const float *cos, const float *sin_s, float *out,
               int BT, int H, int KV, int hd, float scale, int threads) {
    const int g = H / KV, half = hd / 2, width = (H + 2 * KV) * hd;
    const long tok_stride = 2L * KV * hd, slot_stride = (long)cap * tok_stride;
    /* 1: RoPE on q (in place) and k, then k and v into the cache at each token's position */
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int i = 0; i < BT; i++) {
        float *row = qkv + (long)i * width, tmp[512];
        const float *c = cos + pos[i] * hd, *sn = sin_s + pos[i] * hd;
        float *dst = kv + slot[i] * slot_stride + pos[i] * tok_stride;
        for (int h = 0; h < H + KV; h++) {
            float *x = row + (long)h * hd;
            for (int d = 0; d < hd; d++) tmp[d] = x[d] * c[d] + x[d < half ? d + half : d - half] * sn[d];
            float *to = h < H ? x : dst + (long)(h - H) * hd;
            for (int d = 0; d < hd; d++) to[d] = tmp[d];
        }
        for (int d = 0; d < KV * hd; d++) dst[KV * hd + d] = row[(long)(H + KV) * hd + d];
    }
    /* 2: the g query heads of KV head j attend its keys at positions 0..pos[i]. Scores for
       all g heads are taken per key (each key read once); exp is vectorised (exp8); the
       padding past n up to a multiple of 8 scores -inf, so its weight is exactly 0. */
    #pragma omp parallel num_threads(threads)
    {
        const long wstride = (long)cap + 8;
        float *w = (float *)malloc(sizeof(float) * (size_t)(g * wstride));
        #pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < BT * KV; t++) {
            int i = t / KV, j = t % KV;
            long n = pos[i] + 1, n8 = (n + 7) & ~7L;
            const float *base = kv + slot[i] * slot_stride;
            const float *q0 = qkv + (long)i * width + (long)(j * g) * hd;
            for (long p = 0; p < n; p++) {
                const float *k = base + p * tok_stride + (long)j * hd;
                for (int gi = 0; gi < g; gi++) {
                    const float *q = q0 + (long)gi * hd;
                    __m256 a = _mm256_setzero_ps();
                    int d = 0;
                    for (; d + 8 <= hd; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(k + d), a);
                    float sc = hsum(a);
                    for (; d < hd; d++) sc += q[d] * k[d];
                    w[gi * wstride + p] = sc * scale;
                }
            }
            for (int gi = 0; gi < g; gi++) {
                float *wg = w + gi * wstride;
                for (long p = n; p < n8; p++) wg[p] = -INFINITY;
                __m256 m8 = _mm256_set1_ps(-INFINITY);
                for (long p = 0; p < n8; p += 8) m8 = _mm256_max_ps(m8, _mm256_loadu_ps(wg + p));
                __m256 mx = _mm256_set1_ps(hmax(m8)), s8 = _mm256_setzero_ps();
                for (long p = 0; p < n8; p += 8) {
                    __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(wg + p), mx));
                    _mm256_storeu_ps(wg + p, e);
                    s8 = _mm256_add_ps(s8, e);
                }
                const float inv = 1.f / hsum(s8);
                float *o = out + (long)i * H * hd + (long)(j * g + gi) * hd;
                const float *v0 = base + (long)(KV + j) * hd;
                if (hd == 64) {  /* the common head size: the output row stays in registers */
                    __m256 o0 = _mm256_setzero_ps(), o1 = o0, o2 = o0, o3 = o0, o4 = o0, o5 = o0, o6 = o0, o7 = o0;
                    for (long p = 0; p < n; p++) {
                        const float *v = v0 + p * tok_stride;
                        __m256 wp = _mm256_set1_ps(wg[p]);
                        o0 = _mm256_fmadd_ps(wp, _mm256_loadu_ps(v), o0);
                        o1 = _mm256_fmadd_ps(wp, _mm256_loadu_ps(v + 8), o1);
                        o2 = _mm256_fmadd_ps(wp, _mm256_loadu_ps(v + 16), o2);
                        o3 = _mm256_fmadd_ps(wp, _mm256_loadu_ps(v + 24), o3);
                        o4 = _mm256_fmadd_ps(wp, _mm256_loadu_ps(v + 32), o4);
                        o5 = _mm256_fmadd_ps(wp, _mm256_loadu_ps(v + 40), o5);
                        o6 = _mm256_fmadd_ps(wp, _mm256_loadu_ps(v + 48), o6);
                        o7 = _mm256_fmadd_ps(wp, _mm256_loadu_ps(v + 56), o7);
                    }
                    __m256 sc = _mm256_set1_ps(inv);
                    _mm256_storeu_ps(o, _mm256_mul_ps(o0, sc));
                    _mm256_storeu_ps(o + 8, _mm256_mul_ps(o1, sc));
                    _mm256_storeu_ps(o + 16, _mm256_mul_ps(o2, sc));
                    _mm256_storeu_ps(o + 24, _mm256_mul_ps(o3, sc));
                    _mm256_storeu_ps(o + 32, _mm256_mul_ps(o4, sc));
                    _mm256_storeu_ps(o + 40, _mm256_mul_ps(o5, sc));
                    _mm256_storeu_ps(o + 48, _mm256_mul_ps(o6, sc));
                    _mm256_storeu_ps(o + 56, _mm256_mul_ps(o7, sc));
                } else {
                    for (int d = 0; d < hd; d++) o[d] = 0.f;
                    for (long p = 0; p < n; p++) {
                        const float *v = v0 + p * tok_stride;
                        for (int d = 0; d < hd; d++) o[d] += wg[p] * v[d];
                    }
                    for (int d = 0; d < hd; d++) o[d] *= inv;
                }
            }
        }
        free(w);
    }
}
"""

_SOURCE = _TEMPLATE + _ATTENTION + "".join(
    "\n#define WT %s\n#define LOADW %s\n#define SCALARW %s\n#define SUF(name) name##%s\n%s\n#undef WT\n#undef LOADW\n#undef SCALARW\n#undef SUF\n"
    % (wt, load, scalar, suffix, _KERNELS)
    for wt, load, scalar, suffix in (("uint16_t", "bf16x8", "bf16f", "_bf16"), ("float", "f32x8", "f32f", "_f32"))
)

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
    digest = hashlib.sha1((_SOURCE + " ".join(_FLAGS)).encode()).hexdigest()[:12]
    target = cache / f"steering_kernels_{digest}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        src = Path(tmp) / "steering_kernels.c"
        src.write_text(_SOURCE)
        out = Path(tmp) / target.name
        subprocess.run([cc, *_FLAGS, str(src), "-o", str(out)], check=True, capture_output=True, timeout=120)
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
    assert lib is not None, "call cpu_kernels.load() first"
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


linear_bf16 = linear  # the name it had first


def attention(qkv: Tensor, positions: Tensor, slots: Tensor, kv: Tensor, cos: Tensor, sin_signed: Tensor, n_heads: int) -> Tensor:
    """RoPE, K/V store and causal attention for one layer, all tokens at once (needs `load()`).

    qkv [BT, (H + 2 KV) * hd] float32, contiguous: each token's projections (q is rotated in place).
    positions, slots [BT] int64: each token's absolute position and KV slot.
    kv [slots, capacity, 2 KV, hd] float32: the layer's cache (`steering.kv_cache.KVPool`); the
    tokens' rotated keys and values are stored at their positions first, then each query head
    attends its KV head's keys at positions 0..p (grouped-query: head h reads KV head h // g).
    cos, sin_signed [max_length, hd]: RoPE tables, sin_signed = [-sin[:hd/2], sin[hd/2:]].
    Returns the attention output [BT, H * hd].
    """
    lib = _lib
    assert lib is not None, "call cpu_kernels.load() first"
    BT = qkv.shape[0]
    KV2, hd = kv.shape[2], kv.shape[3]
    if not (qkv.is_contiguous() and kv.is_contiguous() and qkv.dtype == kv.dtype == torch.float32) or hd > 512:
        raise ValueError("attention needs contiguous float32 qkv and kv, head_dim <= 512")
    out = torch.empty((BT, n_heads * hd), dtype=torch.float32)
    lib.attention(qkv.data_ptr(), positions.data_ptr(), slots.data_ptr(), kv.data_ptr(), kv.shape[1],
                  cos.data_ptr(), sin_signed.data_ptr(), out.data_ptr(), BT, n_heads, KV2 // 2, hd,
                  float(hd) ** -0.5, torch.get_num_threads())
    return out
