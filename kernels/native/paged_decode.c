/* Decode attention over paged bf16 KV, read in place: one query per sequence, grouped-query
 * heads, returning the output (bf16) and the log-sum-exp (float32) for merging with a shared
 * prefix's partial result. Built on first use by kernels/native.py; see there for why.
 *
 * Layout (as engine/builtin/kv_cache.py keeps one layer):
 *   q      [B, Hq, D] bf16, rows `q_stride` elements apart, heads contiguous
 *   k, v   [slots, Hkv, D] bf16; slot = table[b][t / bs] * bs + t % bs
 *   tables [B, nb] int64; lens [B] int64 (tokens of each sequence to attend, >= 0)
 *   out    [B, Hq, D] bf16; lse [B, Hq] float32 (-inf and a zero output where lens is 0)
 *
 * One work item per (sequence, KV head): its G = Hq / Hkv query heads share every K and V
 * row they read, so each row is loaded once per group. Two passes over the rows (scores,
 * then the weighted sum of V) with an exact softmax in between.
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

static void attend_one(const uint16_t *q, const uint16_t *k, const uint16_t *v,
                       const int64_t *table, int64_t len, int g_count, int hkv, int h, int d,
                       int bs, float scale, float *scores, uint16_t *out, float *lse) {
  const int nv = d / 16;
  const int64_t padded = (len + 15) & ~(int64_t)15;
  __m512 qv[MAX_GROUP][MAX_DIM / 16];
  for (int g = 0; g < g_count; g++)
    for (int j = 0; j < nv; j++)
      qv[g][j] = _mm512_mul_ps(load_bf16(q + g * d + 16 * j, 0xffff), _mm512_set1_ps(scale));

  for (int64_t t = 0; t < len; t++) {
    const uint16_t *kp = row(k, table, t, bs, hkv, h, d);
    __m512 kr[MAX_DIM / 16];
    for (int j = 0; j < nv; j++) kr[j] = load_bf16(kp + 16 * j, 0xffff);
    for (int g = 0; g < g_count; g++) {
      __m512 acc = _mm512_mul_ps(qv[g][0], kr[0]);
      for (int j = 1; j < nv; j++) acc = _mm512_fmadd_ps(qv[g][j], kr[j], acc);
      scores[g * padded + t] = _mm512_reduce_add_ps(acc);
    }
  }

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
  for (int64_t t = 0; t < len; t++) {
    const uint16_t *vp = row(v, table, t, bs, hkv, h, d);
    __m512 vr[MAX_DIM / 16];
    for (int j = 0; j < nv; j++) vr[j] = load_bf16(vp + 16 * j, 0xffff);
    for (int g = 0; g < g_count; g++) {
      __m512 p = _mm512_set1_ps(scores[g * padded + t]);
      for (int j = 0; j < nv; j++) acc[g][j] = _mm512_fmadd_ps(p, vr[j], acc[g][j]);
    }
  }

  for (int g = 0; g < g_count; g++) {
    __m512 inv = _mm512_set1_ps(1.0f / sum[g]);
    for (int j = 0; j < nv; j++)
      store_bf16(out + g * d + 16 * j, _mm512_mul_ps(acc[g][j], inv), 0xffff);
    lse[g] = max[g] + logf(sum[g]);
  }
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
