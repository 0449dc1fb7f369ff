/* CPU kernels for the decoding forward (AVX2 + FMA), built and loaded by steering/engine/llama/kernels.py,
   which documents each entry point. This file holds what does not depend on the weights' type;
   products.h, included once per weight type below, holds the matrix products and the layer loop. */
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
/* The eight sums of v0..v7 as one vector: [sum(v0), ..., sum(v7)]. Lane r of the result is
   (v[0]+v[1]) + (v[2]+v[3]) of vr's low half plus the same of its high half, whatever the other v. */
static inline __m256 hsum8(__m256 v0, __m256 v1, __m256 v2, __m256 v3, __m256 v4, __m256 v5, __m256 v6, __m256 v7) {
    __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(v0, v1), _mm256_hadd_ps(v2, v3));
    __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(v4, v5), _mm256_hadd_ps(v6, v7));
    return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
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

/* The input of a product, row by row: mode 1 RMSNorm, x * rsqrt(mean(x^2) + eps) * nw (x [M, K]);
   mode 2 SwiGLU, silu(g) * u with [g, u] = x [M, 2K], silu(g) = g / (1 + e^-g) through exp8. Rows
   are independent (a row's result never depends on M); many rows are split between threads. */
static void prologue(const float *x, float *xe, int M, int K, int mode, const float *nw, float eps, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static) if ((long)M * K >= 32768)
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
            const __m256 one = _mm256_set1_ps(1.0f);
            int k = 0;
            for (; k + 8 <= K; k += 8) {
                __m256 gv = _mm256_loadu_ps(g + k);
                __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
                _mm256_storeu_ps(out + k, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + k)));
            }
            for (; k < K; k++) out[k] = g[k] / (1.0f + expf(-g[k])) * u[k];
        }
    }
}


/* Attention of BT tokens over a slot KV cache (see `attention` in Python for the layout). */
void attention(float *qkv, const int64_t *pos, const int64_t *slot, float *kv, int cap,
               const float *cos, const float *sin_s, float *out,
               int BT, int H, int KV, int hd, float scale, int threads) {
    const int g = H / KV, half = hd / 2, width = (H + 2 * KV) * hd;
    const long tok_stride = 2L * KV * hd, slot_stride = (long)cap * tok_stride;
    const int per_task = BT * KV >= 4 * threads ? g : 1, tasks = BT * H / per_task;  /* see 2 */
    #pragma omp parallel num_threads(threads)
    {
    /* 1: RoPE on q (in place) and k, then k and v into the cache at each token's position */
    #pragma omp for schedule(static)
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
    /* 2: query head h of token i attends the keys of KV head h / g at positions 0..pos[i]. A task
       is one token's g query heads of one KV head, one after the other, so that each key and value
       comes from memory once and from the core's cache for the other g - 1 heads; with fewer such
       tasks than 4 per thread (a batch of one or two), a task is one head, to keep every thread
       busy. A head's arithmetic is the same either way (bit for bit). For head_dim 64 the query
       stays in registers and eight keys are scored at once (eight independent sums); exp is
       vectorised (exp8); the padding past n up to a multiple of 8 scores -inf, so its weight is
       exactly 0; the output row is accumulated in registers. (One parallel region for both
       parts: the implicit barrier after part 1 is cheaper than a second region.) */
        float *w = (float *)malloc(sizeof(float) * (size_t)(cap + 8));
        #pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < tasks; t++)
        for (int h = (t * per_task) % H, h_end = h + per_task; h < h_end; h++) {
            const int i = t * per_task / H, j = h / g;
            const long n = pos[i] + 1, n8 = (n + 7) & ~7L;
            const float *base = kv + slot[i] * slot_stride;
            const float *q = qkv + (long)i * width + (long)h * hd;
            const float *k0 = base + (long)j * hd;
            if (hd == 64) {
                const __m256 q0 = _mm256_loadu_ps(q), q1 = _mm256_loadu_ps(q + 8), q2 = _mm256_loadu_ps(q + 16),
                             q3 = _mm256_loadu_ps(q + 24), q4 = _mm256_loadu_ps(q + 32), q5 = _mm256_loadu_ps(q + 40),
                             q6 = _mm256_loadu_ps(q + 48), q7 = _mm256_loadu_ps(q + 56);
#define DOT64(kp) _mm256_fmadd_ps(q7, _mm256_loadu_ps((kp) + 56), _mm256_fmadd_ps(q6, _mm256_loadu_ps((kp) + 48), \
                  _mm256_fmadd_ps(q5, _mm256_loadu_ps((kp) + 40), _mm256_fmadd_ps(q4, _mm256_loadu_ps((kp) + 32), \
                  _mm256_fmadd_ps(q3, _mm256_loadu_ps((kp) + 24), _mm256_fmadd_ps(q2, _mm256_loadu_ps((kp) + 16), \
                  _mm256_fmadd_ps(q1, _mm256_loadu_ps((kp) + 8), _mm256_mul_ps(q0, _mm256_loadu_ps(kp)))))))))
                long p = 0;
                for (; p + 8 <= n; p += 8) {
                    const float *ka = k0 + p * tok_stride;
                    __m256 s0 = DOT64(ka), s1 = DOT64(ka + tok_stride), s2 = DOT64(ka + 2 * tok_stride),
                           s3 = DOT64(ka + 3 * tok_stride), s4 = DOT64(ka + 4 * tok_stride), s5 = DOT64(ka + 5 * tok_stride),
                           s6 = DOT64(ka + 6 * tok_stride), s7 = DOT64(ka + 7 * tok_stride);
                    _mm256_storeu_ps(w + p, _mm256_mul_ps(hsum8(s0, s1, s2, s3, s4, s5, s6, s7), _mm256_set1_ps(scale)));
                }
                for (; p < n; p++) {  /* the same sums as hsum8's, one lane used */
                    __m256 s0 = DOT64(k0 + p * tok_stride), z = _mm256_setzero_ps();
                    w[p] = _mm256_cvtss_f32(hsum8(s0, z, z, z, z, z, z, z)) * scale;
                }
#undef DOT64
            } else {
                for (long p = 0; p < n; p++) {
                    const float *k = k0 + p * tok_stride;
                    __m256 a = _mm256_setzero_ps();
                    int d = 0;
                    for (; d + 8 <= hd; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(k + d), a);
                    float sc = hsum(a);
                    for (; d < hd; d++) sc += q[d] * k[d];
                    w[p] = sc * scale;
                }
            }
            for (long p = n; p < n8; p++) w[p] = -INFINITY;
            __m256 m8 = _mm256_set1_ps(-INFINITY);
            for (long p = 0; p < n8; p += 8) m8 = _mm256_max_ps(m8, _mm256_loadu_ps(w + p));
            __m256 mx = _mm256_set1_ps(hmax(m8)), s8 = _mm256_setzero_ps();
            for (long p = 0; p < n8; p += 8) {
                __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(w + p), mx));
                _mm256_storeu_ps(w + p, e);
                s8 = _mm256_add_ps(s8, e);
            }
            const float inv = 1.f / hsum(s8);
            float *o = out + (long)i * H * hd + (long)h * hd;
            const float *v0 = base + (long)(KV + j) * hd;
            if (hd == 64) {  /* the common head size: the output row stays in registers */
                __m256 o0 = _mm256_setzero_ps(), o1 = o0, o2 = o0, o3 = o0, o4 = o0, o5 = o0, o6 = o0, o7 = o0;
                for (long p = 0; p < n; p++) {
                    const float *v = v0 + p * tok_stride;
                    __m256 wp = _mm256_set1_ps(w[p]);
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
                    for (int d = 0; d < hd; d++) o[d] += w[p] * v[d];
                }
                for (int d = 0; d < hd; d++) o[d] *= inv;
            }
        }
        free(w);
    }
}

/* A batch's SAE feature clamps on x [B*T, d] in place (see `clamp` in Python): for plan row i
   (batch row rows[i]), each of its T tokens and each feature j whose window holds the token's
   position, start[i, j] <= p < end[i, j] (start, end [R, m]), with x_n = c x,
       pre_j = (x_n - b_dec) . e_j + b_enc_j          (b_dec == NULL: no b_dec term)
       f_j   = relu(pre_j) (act 0) or pre_j [pre_j > theta_j] (act 1)
       x    += sum_j (a_ij f_j + b_ij) d_j / c
   e_j, d_j: rows of enc, dec [m, d] (the clamped features' encoder columns and decoder rows).
   Every coefficient is taken from the unedited x before any is applied. */
void clamp(float *x, int T, int d, const int64_t *rows, int R, const int64_t *pos, const int64_t *start,
           const int64_t *end, int m,
           const float *a, const float *b, const float *enc, const float *b_enc, const float *theta,
           const float *dec, const float *b_dec, float c, int act) {
    float *coef = (float *)malloc(sizeof(float) * (size_t)(m > 0 ? m : 1));
    const __m256 cv = _mm256_set1_ps(c);
    for (int i = 0; i < R; i++) {
        for (int t = 0; t < T; t++) {
            const long row = rows[i] * T + t;
            const int64_t p = pos[row];
            float *xr = x + row * d;
            for (int j = 0; j < m; j++) {
                const long ij = (long)i * m + j;
                if (p < start[ij] || p >= end[ij]) { coef[j] = 0.f; continue; }
                const float aj = a[ij];
                coef[j] = b[ij];
                if (aj == 0.f) continue;
                const float *e = enc + (long)j * d;
                __m256 acc = _mm256_setzero_ps();
                int k = 0;
                for (; k + 8 <= d; k += 8) {
                    __m256 xn = _mm256_mul_ps(_mm256_loadu_ps(xr + k), cv);
                    if (b_dec) xn = _mm256_sub_ps(xn, _mm256_loadu_ps(b_dec + k));
                    acc = _mm256_fmadd_ps(xn, _mm256_loadu_ps(e + k), acc);
                }
                float pre = hsum(acc) + b_enc[j];
                for (; k < d; k++) pre += (xr[k] * c - (b_dec ? b_dec[k] : 0.f)) * e[k];
                const float f = act == 0 ? (pre > 0.f ? pre : 0.f) : (pre > theta[j] ? pre : 0.f);
                coef[j] += aj * f;
            }
            for (int j = 0; j < m; j++) {
                if (coef[j] == 0.f) continue;
                const float s = coef[j] / c;
                const float *dj = dec + (long)j * d;
                const __m256 sv = _mm256_set1_ps(s);
                int k = 0;
                for (; k + 8 <= d; k += 8)
                    _mm256_storeu_ps(xr + k, _mm256_fmadd_ps(sv, _mm256_loadu_ps(dj + k), _mm256_loadu_ps(xr + k)));
                for (; k < d; k++) xr[k] += s * dj[k];
            }
        }
    }
    free(coef);
}

#define WT uint16_t
#define LOADW bf16x8
#define SCALARW bf16f
#define SUF(name) name##_bf16
#include "products.h"
#undef WT
#undef LOADW
#undef SCALARW
#undef SUF

#define WT float
#define LOADW f32x8
#define SCALARW f32f
#define SUF(name) name##_f32
#include "products.h"
#undef WT
#undef LOADW
#undef SCALARW
#undef SUF
