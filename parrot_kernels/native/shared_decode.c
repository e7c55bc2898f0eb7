/* Decode attention on AMX tiles for rows that share a prefix, read in place from the paged
 * bf16 cache. Built with the other CPU kernels into one library by parrot_kernels/native.py.
 *
 * A work item is up to 16 query rows (the heads of one KV head in several sequences: one
 * tile's rows) that all attend to the same `prefix` tokens (the first member's blocks) and
 * each to its own tokens after it. The prefix's K and V are read once per item instead of
 * once per sequence, and both products run as tile multiplies:
 *
 *   scores [rows x keys] = Q [rows x D] . K^T   (K packed 16 keys at a time: a dword transpose)
 *   out    [rows x D]    = P [rows x keys] . V  (V packed 32 keys at a time: pairs interleaved)
 *
 * Columns of one member's own tokens get probability 0 in the other members' rows, so one
 * exact softmax per row covers its prefix and its own tokens, with no merge afterwards. The
 * probabilities are rounded to bf16 for the second product (scores and sums stay float32).
 *
 * Layout as paged_decode.c; items: members[starts[i] .. starts[i+1]) are the batch rows of
 * item i, prefix[i] its shared tokens (a multiple of 16, below every member's length).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "tiles.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)

#define ROWS 16 /* query rows per item: the rows of one tile */

int tile_matmul_available(void); /* tile_matmul.c: asks the OS for the tile state */

int shared_decode_available(void) { return tile_matmul_available(); }

/* Tiles 0-3: float32 accumulators (rows x 16); 4: A (rows x 32 bf16); 5-7: B (16 x 32 bf16). */
static void configure(int m) {
  tile_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  for (int t = 0; t < 8; t++) {
    cfg.rows[t] = (uint8_t)(t >= 5 ? 16 : m);
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

/* r[j] lane i <- r[i] lane j, for 16 vectors of 16 dwords. */
static inline void transpose16(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int a = 0; a < 16; a += 4) { /* u[a + e], lane l: rows a..a+3 of column 4l + e */
    u[a] = _mm512_unpacklo_epi64(t[a], t[a + 2]);
    u[a + 1] = _mm512_unpackhi_epi64(t[a], t[a + 2]);
    u[a + 2] = _mm512_unpacklo_epi64(t[a + 1], t[a + 3]);
    u[a + 3] = _mm512_unpackhi_epi64(t[a + 1], t[a + 3]);
  }
  for (int e = 0; e < 4; e++) {
    __m512i v0 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0x88);
    __m512i v1 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0xdd);
    __m512i v2 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0x88);
    __m512i v3 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0xdd);
    r[e] = _mm512_shuffle_i32x4(v0, v2, 0x88);
    r[8 + e] = _mm512_shuffle_i32x4(v0, v2, 0xdd);
    r[4 + e] = _mm512_shuffle_i32x4(v1, v3, 0x88);
    r[12 + e] = _mm512_shuffle_i32x4(v1, v3, 0xdd);
  }
}

/* B tile of Q.K^T for dims [32c, 32c + 32) of n <= 16 keys `stride` apart (the rest zero):
 * row j holds dims 32c + 2j and 32c + 2j + 1 of every key, key by key. */
static inline void pack_k(const uint16_t *kp, int64_t stride, int n, int c, uint16_t *dst) {
  __m512i r[16];
  for (int i = 0; i < 16; i++)
    r[i] = i < n ? _mm512_loadu_si512(kp + i * stride + 32 * c) : _mm512_setzero_si512();
  transpose16(r);
  for (int j = 0; j < 16; j++) _mm512_store_si512(dst + 32 * j, r[j]);
}

/* The B tiles of P.V for dims [d0, d0 + 16 * nt) of 32 keys: keys [0, n0) at v0 and
 * [16, 16 + n1) at v1, rows `stride` apart, the rest zero. Tile j's row r interleaves keys
 * 2r and 2r + 1 over dims d0 + 16j .. + 15. */
static inline void pack_v(const uint16_t *v0, int n0, const uint16_t *v1, int n1,
                          int64_t stride, int d0, int nt, uint16_t *dst) {
  static const uint16_t pairs[32] = {0, 32, 1, 33, 2,  34, 3,  35, 4,  36, 5,
                                      37, 6, 38, 7, 39, 8,  40, 9,  41, 10, 42,
                                      11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i lo = _mm512_loadu_si512(pairs);
  const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
  for (int r = 0; r < 16; r++) {
    int k0 = 2 * r, k1 = 2 * r + 1; /* keys of this row, 0..31 */
    const uint16_t *p0 = k0 < 16 ? (k0 < n0 ? v0 + k0 * stride : 0)
                                 : (k0 - 16 < n1 ? v1 + (k0 - 16) * stride : 0);
    const uint16_t *p1 = k1 < 16 ? (k1 < n0 ? v0 + k1 * stride : 0)
                                 : (k1 - 16 < n1 ? v1 + (k1 - 16) * stride : 0);
    for (int j = 0; j < nt; j += 2) {
      __m512i a = p0 ? _mm512_loadu_si512(p0 + d0 + 16 * j) : _mm512_setzero_si512();
      __m512i b = p1 ? _mm512_loadu_si512(p1 + d0 + 16 * j) : _mm512_setzero_si512();
      _mm512_store_si512(dst + j * 512 + 32 * r, _mm512_permutex2var_epi16(a, lo, b));
      if (j + 1 < nt)
        _mm512_store_si512(dst + (j + 1) * 512 + 32 * r, _mm512_permutex2var_epi16(a, hi, b));
    }
  }
}

static inline const uint16_t *key_row(const uint16_t *base, const int64_t *table, int64_t t,
                                      int bs, int hkv, int h, int d) {
  return base + ((table[t / bs] * bs + t % bs) * hkv + h) * (int64_t)d;
}

typedef struct { /* a run of key columns: tokens [from, to) of `table` */
  const int64_t *table;
  int64_t from, to, col; /* col: its first column, a multiple of 32 */
  int member;            /* -1: every row sees it; else only that member's rows */
} segment;

/* One item, one KV head. scores/probs: scratch for 16 rows of the widest item's columns. */
static void attend_item(const uint16_t *q, int64_t q_stride, const uint16_t *k,
                        const uint16_t *v, const int64_t *tables, int64_t nb,
                        const int64_t *lens, const int64_t *rows_b, int count, int64_t prefix,
                        int hq, int hkv, int h, int d, int bs, float scale, uint16_t *out,
                        float *lse, float *scores, uint16_t *probs, segment *segs,
                        int *configured) {
  const int g_count = hq / hkv, m = count * g_count;
  const int64_t stride = (int64_t)hkv * d;
  uint16_t qbuf[ROWS * 256] __attribute__((aligned(64)));
  uint16_t pack[8 * 4 * 512] __attribute__((aligned(64))); /* up to 8 dim chunks x 4 */
  float acc[ROWS * 16] __attribute__((aligned(64)));

  for (int i = 0; i < count; i++) /* the item's query rows, one after another */
    memcpy(qbuf + i * g_count * d, q + rows_b[i] * q_stride + (int64_t)h * g_count * d,
           sizeof(uint16_t) * g_count * d);
  int n_seg = 0;
  int64_t col = 0;
  if (prefix > 0) {
    segs[n_seg++] = (segment){tables + rows_b[0] * nb, 0, prefix, 0, -1};
    col = (prefix + 31) & ~(int64_t)31;
  }
  for (int i = 0; i < count; i++) {
    segs[n_seg++] = (segment){tables + rows_b[i] * nb, prefix, lens[rows_b[i]], col, i};
    col += (lens[rows_b[i]] - prefix + 31) & ~(int64_t)31;
  }
  const int64_t cols = col; /* the scratch rows' width: every segment, 32-column aligned */
  if (*configured != m) {
    configure(m);
    *configured = m;
  }

  /* Scores, 64 keys (4 tiles of 16) at a time: four independent accumulators keep the
   * tile unit busy where one would wait on each multiply's result. */
  for (int s = 0; s < n_seg; s++)
    for (int64_t t = segs[s].from; t < segs[s].to; t += 64) {
      const int64_t left = segs[s].to - t;
      const int chunks = left >= 64 ? 4 : (int)((left + 15) / 16);
      for (int j = 0; j < 4; j++) {
        int n = j < chunks ? (left - 16 * j < 16 ? (int)(left - 16 * j) : 16) : 0;
        const uint16_t *kp = n ? key_row(k, segs[s].table, t + 16 * j, bs, hkv, h, d) : k;
        for (int c = 0; c < d / 32; c++) pack_k(kp, stride, n, c, pack + (c * 4 + j) * 512);
      }
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int c = 0; c < d / 32; c++) {
        const uint16_t *b = pack + c * 4 * 512;
        _tile_loadd(4, qbuf + 32 * c, d * 2);
        _tile_loadd(5, b, 64);
        _tile_loadd(6, b + 512, 64);
        _tile_loadd(7, b + 1024, 64);
        _tile_dpbf16ps(0, 4, 5);
        _tile_dpbf16ps(1, 4, 6);
        _tile_dpbf16ps(2, 4, 7);
        _tile_loadd(5, b + 1536, 64);
        _tile_dpbf16ps(3, 4, 5);
      }
      float *dst = scores + segs[s].col + (t - segs[s].from);
      _tile_stored(0, dst, cols * 4); /* later chunks only where they hold keys: a segment's */
      if (chunks > 1) _tile_stored(1, dst + 16, cols * 4); /* columns end 32 past its start */
      if (chunks > 2) _tile_stored(2, dst + 32, cols * 4);
      if (chunks > 3) _tile_stored(3, dst + 48, cols * 4);
    }

  /* Softmax per row over the columns it sees; probabilities to bf16, 0 elsewhere. */
  const __m512 sc = _mm512_set1_ps(scale);
  float maxs[ROWS], sums[ROWS];
  for (int r = 0; r < m; r++) {
    float *sr = scores + r * cols;
    uint16_t *pr = probs + r * cols;
    memset(pr, 0, sizeof(uint16_t) * cols);
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int s = 0; s < n_seg; s++) {
      if (segs[s].member >= 0 && segs[s].member != r / g_count) continue;
      for (int64_t t = 0; t < segs[s].to - segs[s].from; t += 16) {
        __mmask16 live = tail(segs[s].to - segs[s].from - t);
        __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(live, sr + segs[s].col + t), sc);
        mx = _mm512_mask_max_ps(mx, live, mx, x);
      }
    }
    maxs[r] = _mm512_reduce_max_ps(mx);
    __m512 mb = _mm512_set1_ps(maxs[r]), total = _mm512_setzero_ps();
    for (int s = 0; s < n_seg; s++) {
      if (segs[s].member >= 0 && segs[s].member != r / g_count) continue;
      for (int64_t t = 0; t < segs[s].to - segs[s].from; t += 16) {
        __mmask16 live = tail(segs[s].to - segs[s].from - t);
        __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(live, sr + segs[s].col + t), sc);
        __m512 p = _mm512_maskz_mov_ps(live, exp_nonpositive(_mm512_sub_ps(x, mb)));
        total = _mm512_add_ps(total, p);
        _mm256_mask_storeu_epi16(pr + segs[s].col + t, live,
                                 (__m256i)_mm512_cvtneps_pbh(p));
      }
    }
    sums[r] = _mm512_reduce_add_ps(total);
  }

  /* Weighted sum of V, 32 keys and up to 64 dims at a time. */
  for (int d0 = 0; d0 < d; d0 += 64) {
    const int nt = (d - d0) / 16 < 4 ? (d - d0) / 16 : 4;
    _tile_zero(0); /* zeroing an unused tile costs nothing and keeps the numbers immediate */
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int s = 0; s < n_seg; s++)
      for (int64_t t = segs[s].from; t < segs[s].to; t += 32) {
        int64_t left = segs[s].to - t;
        int n0 = left < 16 ? (int)left : 16, n1 = left - 16 < 16 ? (int)(left - 16) : 16;
        const uint16_t *v0 = key_row(v, segs[s].table, t, bs, hkv, h, d);
        const uint16_t *v1 = n1 > 0 ? key_row(v, segs[s].table, t + 16, bs, hkv, h, d) : 0;
        pack_v(v0, n0, v1, n1 > 0 ? n1 : 0, stride, d0, nt, pack);
        _tile_loadd(4, probs + segs[s].col + (t - segs[s].from), cols * 2);
        for (int j = 0; j < nt; j++) {
          _tile_loadd(5, pack + j * 512, 64);
          /* Tile numbers are immediates: one call per accumulator. */
          if (j == 0) _tile_dpbf16ps(0, 4, 5);
          if (j == 1) _tile_dpbf16ps(1, 4, 5);
          if (j == 2) _tile_dpbf16ps(2, 4, 5);
          if (j == 3) _tile_dpbf16ps(3, 4, 5);
        }
      }
    for (int j = 0; j < nt; j++) {
      if (j == 0) _tile_stored(0, acc, 64);
      if (j == 1) _tile_stored(1, acc, 64);
      if (j == 2) _tile_stored(2, acc, 64);
      if (j == 3) _tile_stored(3, acc, 64);
      for (int r = 0; r < m; r++) {
        const int i = r / g_count, g = r % g_count;
        uint16_t *o = out + (rows_b[i] * hq + (int64_t)h * g_count + g) * d + d0 + 16 * j;
        store_bf16(o, _mm512_mul_ps(_mm512_load_ps(acc + 16 * r), _mm512_set1_ps(1 / sums[r])),
                   0xffff);
      }
    }
  }
  for (int r = 0; r < m; r++) {
    const int i = r / g_count, g = r % g_count;
    lse[rows_b[i] * hq + (int64_t)h * g_count + g] = maxs[r] + logf(sums[r]);
  }
}

/* Returns 0; -1 when a shape or an item is outside what this kernel handles (nothing
 * written); -2 when a work item could not allocate its scratch (its rows left unwritten). */
int shared_decode(const uint16_t *q, int64_t q_stride, const uint16_t *k, const uint16_t *v,
                  const int64_t *tables, int64_t nb, const int64_t *lens, int hq, int hkv, int d,
                  int bs, float scale, uint16_t *out, float *lse, const int64_t *members,
                  const int64_t *starts, const int64_t *prefix, int n_items, int threads) {
  const int g_count = hq / hkv;
  if (hq % hkv || g_count > ROWS || d % 32 || d > 256 || bs % 16) return -1;
  int64_t widest = 0;
  for (int i = 0; i < n_items; i++) {
    const int64_t count = starts[i + 1] - starts[i];
    if (count < 1 || count * g_count > ROWS || prefix[i] < 0 || prefix[i] % 16) return -1;
    int64_t cols = (prefix[i] + 31) & ~(int64_t)31;
    for (int64_t j = starts[i]; j < starts[i + 1]; j++) {
      if (lens[members[j]] <= prefix[i]) return -1;
      cols += (lens[members[j]] - prefix[i] + 31) & ~(int64_t)31;
    }
    if (cols > widest) widest = cols;
  }
  int failed = 0;
#pragma omp parallel num_threads(threads)
  {
    /* Scratch sized for the widest item, once per thread. */
    float *scores = aligned_alloc(64, sizeof(float) * ROWS * widest);
    uint16_t *probs = aligned_alloc(64, sizeof(uint16_t) * ROWS * widest);
    segment *segs = malloc(sizeof(segment) * (ROWS + 1));
    int configured = -1;
#pragma omp for schedule(dynamic, 1)
    for (int w = 0; w < n_items * hkv; w++) {
      /* Head-major: a thread's next item is likely over the same head's prefix, still in
       * its cache (one head's K and V over 2,000 tokens: 512 KB at D = 64). */
      const int h = w / n_items, i = w % n_items;
      if (!scores || !probs || !segs) {
#pragma omp atomic write
        failed = 1;
        continue;
      }
      const int count = (int)(starts[i + 1] - starts[i]);
      attend_item(q, q_stride, k, v, tables, nb, lens, members + starts[i], count, prefix[i],
                  hq, hkv, h, d, bs, scale, out, lse, scores, probs, segs, &configured);
    }
    if (configured >= 0) _tile_release();
    free(scores);
    free(probs);
    free(segs);
  }
  return failed ? -2 : 0;
}

#else

int shared_decode_available(void) { return 0; }

int shared_decode(const uint16_t *q, int64_t q_stride, const uint16_t *k, const uint16_t *v,
                  const int64_t *tables, int64_t nb, const int64_t *lens, int hq, int hkv, int d,
                  int bs, float scale, uint16_t *out, float *lse, const int64_t *members,
                  const int64_t *starts, const int64_t *prefix, int n_items, int threads) {
  (void)q, (void)q_stride, (void)k, (void)v, (void)tables, (void)nb, (void)lens, (void)hq;
  (void)hkv, (void)d, (void)bs, (void)scale, (void)out, (void)lse, (void)members, (void)starts;
  (void)prefix, (void)n_items, (void)threads;
  return -1;
}

#endif
