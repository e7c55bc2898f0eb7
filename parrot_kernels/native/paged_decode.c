/* Decode attention over paged bf16 KV, read in place: one query per sequence, grouped-query
 * heads, returning the output (bf16) and the log-sum-exp (float32), with which a result over
 * part of the keys can be merged exactly with another (parrot_kernels/merge.py). Built on first use
 * by parrot_kernels/native.py; see there for why.
 *
 * Layout (as engine/builtin/kv_cache.py keeps one layer):
 *   q      [B, Hq, D] bf16, rows `q_stride` elements apart, heads contiguous
 *   k, v   [slots, Hkv, D] bf16; slot = table[b][t / bs] * bs + t % bs
 *   tables [B, nb] int64; lens [B] int64 (tokens of each sequence to attend, >= 0)
 *   out    [B, Hq, D] bf16; lse [B, Hq] float32 (-inf and a zero output where lens is 0)
 *
 * One work item per (sequence, KV head): its G = Hq / Hkv query heads share every K and V
 * row they read, so each row is loaded once per group. Two passes over the rows (scores,
 * then the weighted sum of V) with an exact softmax in between. Rows of sequences that share
 * a prefix read the same blocks, which the core's cache then serves.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "bf16.h"

#define MAX_GROUP 8
#define MAX_DIM 256

static inline const uint16_t *row(const uint16_t *base, const int64_t *table, int64_t t,
                                  int bs, int hkv, int h, int d) {
  return base + ((table[t / bs] * bs + t % bs) * hkv + h) * (int64_t)d;
}

#if defined(__AVX512F__)

int paged_decode_vectorized(void) { return 1; }

/* The loops below are written for a fixed group size G and head dim D: each shape the
 * dispatcher in attend_one names is compiled on its own, with its accumulators in registers.
 * With run-time bounds GCC kept them in memory (a store after every multiply-add in the
 * compiled code), and that version measured no faster than the per-key reduction before it. */
#define INLINE static inline __attribute__((always_inline))

#if defined(__AVX512BF16__)

/* The lane sums of v[0..15], as one vector: lane t holds the sum of v[t]'s 16 lanes. A tree
 * of 128-bit and in-lane shuffles costs about 3 operations per vector where a reduction of
 * each vector on its own costs 8, most of them on the one shuffle port. */
INLINE __m512 sum16(const __m512 v[16]) {
  __m512 a[8], b[4];
  for (int i = 0; i < 8; i++) /* [x0+x2, x1+x3, y0+y2, y1+y3] by 128-bit lane */
    a[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xee));
  for (int i = 0; i < 4; i++) /* lane j: 4 partial sums of v[4i + j] */
    b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xdd));
  __m512 c0 = _mm512_add_ps(_mm512_unpacklo_ps(b[0], b[1]), _mm512_unpackhi_ps(b[0], b[1]));
  __m512 c1 = _mm512_add_ps(_mm512_unpacklo_ps(b[2], b[3]), _mm512_unpackhi_ps(b[2], b[3]));
  __m512 s = _mm512_add_ps(_mm512_shuffle_ps(c0, c1, 0x44), _mm512_shuffle_ps(c0, c1, 0xee));
  /* s[4j + i] is the sum of v[4i + j]: put each back at its own index. */
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(order, s);
}

INLINE __mmask32 tail32(int d, int c) { /* the bf16 lanes of chunk c (32 wide) inside d */
  return d - 32 * c >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << (d - 32 * c)) - 1);
}

/* Scaled scores of one query head against n <= 16 keys `stride` apart: bf16 pair products
 * summed in float32 by vdpbf16ps (K is never converted), lane sums by sum16. */
INLINE void score16(const __m512i *qg, const uint16_t *kp, int64_t stride, int n, const int d,
                    __m512 scale, float *dst) {
  __m512 acc[16];
  for (int i = 0; i < 16; i++) {
    acc[i] = _mm512_setzero_ps();
    if (i < n)
      for (int c = 0; c < (d + 31) / 32; c++)
        acc[i] = _mm512_dpbf16_ps(
            acc[i], (__m512bh)qg[c],
            (__m512bh)_mm512_maskz_loadu_epi16(tail32(d, c), kp + i * stride + 32 * c));
  }
  _mm512_mask_storeu_ps(dst, tail(n), _mm512_mul_ps(sum16(acc), scale));
}

INLINE void score_keys(const uint16_t *q, const uint16_t *k, const int64_t *table, int64_t len,
                       const int g_count, int hkv, int h, const int d, int bs, float scale,
                       float *scores, int64_t padded) {
  const int64_t stride = (int64_t)hkv * d;
  const __m512 sc = _mm512_set1_ps(scale);
  __m512i qv[MAX_GROUP][MAX_DIM / 32];
  for (int g = 0; g < g_count; g++)
    for (int c = 0; c < (d + 31) / 32; c++)
      qv[g][c] = _mm512_maskz_loadu_epi16(tail32(d, c), q + g * d + 32 * c);
  for (int64_t t0 = 0; t0 < len; t0 += bs) {
    const uint16_t *block = row(k, table, t0, bs, hkv, h, d);
    const int64_t in_block = len - t0 < bs ? len - t0 : bs;
    int64_t c0 = 0;
    for (; c0 + 16 <= in_block; c0 += 16) /* whole chunks: n is a constant here */
      for (int g = 0; g < g_count; g++)
        score16(qv[g], block + c0 * stride, stride, 16, d, sc, scores + g * padded + t0 + c0);
    if (c0 < in_block)
      for (int g = 0; g < g_count; g++)
        score16(qv[g], block + c0 * stride, stride, (int)(in_block - c0), d, sc,
                scores + g * padded + t0 + c0);
  }
}

#else /* AVX-512 without BF16: convert each K row to float32 and reduce per key */

INLINE void score_keys(const uint16_t *q, const uint16_t *k, const int64_t *table, int64_t len,
                       const int g_count, int hkv, int h, const int d, int bs, float scale,
                       float *scores, int64_t padded) {
  const int64_t stride = (int64_t)hkv * d;
  __m512 qv[MAX_GROUP][MAX_DIM / 16];
  for (int g = 0; g < g_count; g++)
    for (int j = 0; j < d / 16; j++)
      qv[g][j] = _mm512_mul_ps(load_bf16(q + g * d + 16 * j, 0xffff), _mm512_set1_ps(scale));
  for (int64_t t0 = 0; t0 < len; t0 += bs) { /* block by block: no division per row */
    const uint16_t *kp = row(k, table, t0, bs, hkv, h, d);
    const int64_t n = len - t0 < bs ? len - t0 : bs;
    for (int64_t o = 0; o < n; o++, kp += stride) {
      __m512 kr[MAX_DIM / 16];
      for (int j = 0; j < d / 16; j++) kr[j] = load_bf16(kp + 16 * j, 0xffff);
      for (int g = 0; g < g_count; g++) {
        __m512 acc = _mm512_mul_ps(qv[g][0], kr[0]);
        for (int j = 1; j < d / 16; j++) acc = _mm512_fmadd_ps(qv[g][j], kr[j], acc);
        scores[g * padded + t0 + o] = _mm512_reduce_add_ps(acc);
      }
    }
  }
}

#endif

INLINE void attend_fixed(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                         const int64_t *table, int64_t len, const int g_count, int hkv, int h,
                         const int d, int bs, float scale, float *scores, uint16_t *out,
                         float *lse) {
  const int nv = d / 16;
  const int64_t padded = (len + 15) & ~(int64_t)15;
  const int64_t stride = (int64_t)hkv * d; /* between a block's rows, for one KV head */
  score_keys(q, k, table, len, g_count, hkv, h, d, bs, scale, scores, padded);

  float max[MAX_GROUP], sum[MAX_GROUP];
  for (int g = 0; g < g_count; g++) {
    float *s = scores + g * padded;
    for (int64_t t = len; t < padded; t++) s[t] = -INFINITY;
    __m512 m = _mm512_set1_ps(-INFINITY);
    for (int64_t t = 0; t < padded; t += 16) m = _mm512_max_ps(m, _mm512_load_ps(s + t));
    max[g] = _mm512_reduce_max_ps(m);
    __m512 mg = _mm512_set1_ps(max[g]), total = _mm512_setzero_ps();
    for (int64_t t = 0; t < padded; t += 16) {
      __mmask16 live = t + 16 <= len ? 0xffff : (__mmask16)((1u << (len - t)) - 1);
      __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_load_ps(s + t), mg));
      __m512 p = _mm512_maskz_mov_ps(live, e);
      _mm512_store_ps(s + t, p);
      total = _mm512_add_ps(total, p);
    }
    sum[g] = _mm512_reduce_add_ps(total);
  }

  __m512 acc[MAX_GROUP][MAX_DIM / 16];
  for (int g = 0; g < g_count; g++)
    for (int j = 0; j < nv; j++) acc[g][j] = _mm512_setzero_ps();
  for (int64_t t0 = 0; t0 < len; t0 += bs) {
    const uint16_t *vp = row(v, table, t0, bs, hkv, h, d);
    const int64_t n = len - t0 < bs ? len - t0 : bs;
    for (int64_t o = 0; o < n; o++, vp += stride) {
      __m512 vr[MAX_DIM / 16];
      for (int j = 0; j < nv; j++) vr[j] = load_bf16(vp + 16 * j, 0xffff);
      for (int g = 0; g < g_count; g++) {
        __m512 p = _mm512_set1_ps(scores[g * padded + t0 + o]);
        for (int j = 0; j < nv; j++) acc[g][j] = _mm512_fmadd_ps(p, vr[j], acc[g][j]);
      }
    }
  }

  for (int g = 0; g < g_count; g++) {
    __m512 inv = _mm512_set1_ps(1.0f / sum[g]);
    for (int j = 0; j < nv; j++)
      store_bf16(out + g * d + 16 * j, _mm512_mul_ps(acc[g][j], inv), 0xffff);
    lse[g] = max[g] + logf(sum[g]);
  }
}

/* Common shapes get their own compiled copy; any other runs the same code with run-time
 * bounds (correct, slower). */
#define SHAPE(G, D)                                                                          \
  if (g_count == G && d == D) {                                                              \
    attend_fixed(q, k, v, table, len, G, hkv, h, D, bs, scale, scores, out, lse);            \
    return;                                                                                  \
  }
#define SHAPES(D) SHAPE(1, D) SHAPE(2, D) SHAPE(3, D) SHAPE(4, D) SHAPE(5, D) SHAPE(6, D) \
  SHAPE(7, D) SHAPE(8, D)

static void attend_one(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                       const int64_t *table, int64_t len, int g_count, int hkv, int h, int d,
                       int bs, float scale, float *scores, uint16_t *out, float *lse) {
  SHAPES(64)
  SHAPES(128)
  attend_fixed(q, k, v, table, len, g_count, hkv, h, d, bs, scale, scores, out, lse);
}

#else /* portable C: correct everywhere, but slower than the torch path, so not used by default */

int paged_decode_vectorized(void) { return 0; }

static void attend_one(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                       const int64_t *table, int64_t len, int g_count, int hkv, int h, int d,
                       int bs, float scale, float *scores, uint16_t *out, float *lse) {
  float qf[MAX_GROUP][MAX_DIM], acc[MAX_GROUP][MAX_DIM], max[MAX_GROUP], sum[MAX_GROUP];
  for (int g = 0; g < g_count; g++) {
    max[g] = -INFINITY;
    sum[g] = 0.0f;
    for (int i = 0; i < d; i++) {
      qf[g][i] = bf16_to_float(q[g * d + i]) * scale;
      acc[g][i] = 0.0f;
    }
  }
  for (int64_t t = 0; t < len; t++) {
    const uint16_t *kp = row(k, table, t, bs, hkv, h, d);
    for (int g = 0; g < g_count; g++) {
      float s = 0.0f;
      for (int i = 0; i < d; i++) s += qf[g][i] * bf16_to_float(kp[i]);
      scores[g * len + t] = s;
      if (s > max[g]) max[g] = s;
    }
  }
  for (int64_t t = 0; t < len; t++) {
    const uint16_t *vp = row(v, table, t, bs, hkv, h, d);
    for (int g = 0; g < g_count; g++) {
      float p = expf(scores[g * len + t] - max[g]);
      sum[g] += p;
      for (int i = 0; i < d; i++) acc[g][i] += p * bf16_to_float(vp[i]);
    }
  }
  for (int g = 0; g < g_count; g++) {
    for (int i = 0; i < d; i++) out[g * d + i] = float_to_bf16(acc[g][i] / sum[g]);
    lse[g] = max[g] + logf(sum[g]);
  }
}

#endif

/* Returns 0; -1 when a shape is outside what this kernel handles (nothing written); -2 when
 * a work item could not allocate its scores (that item's rows are left unwritten). */
int paged_decode(const uint16_t *q, int64_t q_stride, const uint16_t *k, const uint16_t *v,
                 const int64_t *tables, int64_t nb, const int64_t *lens, int b_count, int hq,
                 int hkv, int d, int bs, float scale, uint16_t *out, float *lse, int threads) {
  const int g_count = hq / hkv;
  if (hq % hkv || g_count > MAX_GROUP || d % 16 || d > MAX_DIM || bs <= 0) return -1;
  int failed = 0;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int w = 0; w < b_count * hkv; w++) {
    const int b = w / hkv, h = w % hkv;
    const int64_t len = lens[b];
    float *lse_w = lse + (int64_t)b * hq + h * g_count;
    uint16_t *out_w = out + ((int64_t)b * hq + h * g_count) * d;
    if (len <= 0) {
      for (int i = 0; i < g_count * d; i++) out_w[i] = 0;
      for (int g = 0; g < g_count; g++) lse_w[g] = -INFINITY;
      continue;
    }
    /* 64-byte aligned and padded to 16 scores per head for the vector softmax. */
    size_t bytes = sizeof(float) * g_count * (size_t)((len + 15) & ~(int64_t)15);
    float *scores = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!scores) {
#pragma omp atomic write
      failed = 1;
      continue;
    }
    attend_one(q + b * q_stride + (int64_t)h * g_count * d, k, v, tables + b * nb, len,
               g_count, hkv, h, d, bs, scale, scores, out_w, lse_w);
    free(scores);
  }
  return failed ? -2 : 0;
}
