/* Matrix products and the decoder-layer loop for one weight type, included by kernels.c with
   WT (the weight element type), LOADW (8 weights -> __m256), SCALARW (one weight -> float) and
   SUF (the name suffix: _bf16, _f32) defined. No include guard: it is included once per type. */
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
    prologue(x, xe, M, K, mode, nw, eps, threads);
    SUF(matmul)(xe, w, y, M, N, K, threads, acc);
    free(xe);
}

/* Decoder layers first..last-1 of a Llama model on h [M, D] in place (see `decoder_layers`):
   five calls per layer, with the scratch rows qkv [M, (H + 2 KV) hd], att [M, H hd], gu [M, 2 I]. */
void SUF(layers)(float *h, int M, int first, int last, const WT **w_qkv, const WT **w_o, const WT **w_gu,
                 const WT **w_down, const float **ln1, const float **ln2, const float *eps1, const float *eps2,
                 float **kv, int cap, const int64_t *pos, const int64_t *slot, const float *cos, const float *sin_s,
                 float *qkv, float *att, float *gu, int D, int H, int KV, int hd, int I, float scale, int threads) {
    const int n_qkv = (H + 2 * KV) * hd;
    for (int l = first; l < last; l++) {
        SUF(linear)(h, w_qkv[l], qkv, M, n_qkv, D, threads, 1, ln1[l], eps1[l], 0);
        attention(qkv, pos, slot, kv[l], cap, cos, sin_s, att, M, H, KV, hd, scale, threads);
        SUF(linear)(att, w_o[l], h, M, D, H * hd, threads, 0, NULL, 0.f, 1);
        SUF(linear)(h, w_gu[l], gu, M, 2 * I, D, threads, 1, ln2[l], eps2[l], 0);
        SUF(linear)(gu, w_down[l], h, M, D, I, threads, 2, NULL, 0.f, 1);
    }
}
