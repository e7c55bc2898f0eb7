/* Decode attention for rows that share a prefix, read in place from the paged bf16 cache, on
 * AMX tiles or, without them, in AVX-512 BF16 vectors. Built with the other CPU kernels into
 * one library by parrot_kernels/native.py.
 *
 * A work item is up to 16 query rows (the heads of one KV head in several sequences: one
 * tile's rows) that all attend to the same `prefix` tokens (the first member's blocks) and
 * each to its own tokens after it. The prefix's K and V are read once per item instead of
 * once per sequence, and both products run as tile multiplies (or their vector equivalent):
 *
 *   scores [rows x keys] = Q [rows x D] . K^T   (K packed 16 keys at a time: a dword transpose)
 *   out    [rows x D]    = P [rows x keys] . V  (V packed 32 keys at a time: pairs interleaved)
 *
 * Columns of one member's own tokens get probability 0 in the other members' rows, so one
 * softmax per row covers its prefix and its own tokens, with no partial results to merge. It
 * runs online, SPAN keys at a time (a row whose maximum grows rescales what it has summed),
 * so an item's scratch is one span wide whatever the context. The probabilities are rounded
 * to bf16 for the second product (scores, maxima and sums stay float32).
 *
 * Both products need their operand rearranged first (the transpose, the interleave), which
 * costs more than the products themselves. Items whose prefixes lie in the same cache blocks
 * (the items of one group, the tokens of one prefill chunk) therefore run together, up to
 * FUSE at a time on one thread: each span of the prefix is rearranged once and, while it is
 * in cache, used by every item of the unit.
 *
 * Without AMX (or when the caller asks for it) the same products run in AVX-512 vectors over
 * the same rearranged operands: a rearranged row of 16 keys' dimension pairs (or of 16
 * dimensions' key pairs) is exactly the vector `vdpbf16ps` multiplies by one query's pair
 * (or one row's pair of probabilities) broadcast, so no lane sums are needed, and only the
 * item's live rows are computed. This is what gives CPUs without tiles the shared-prefix
 * path: the paged kernel would read the prefix again, and sum lanes, for every row.
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

#if defined(__AVX512BF16__)

#define ROWS 16 /* query rows per item: the rows of one tile */
#define FUSE 8  /* items run together over one rearranged prefix */
#define SPAN 128 /* keys rearranged at a time: K and V 16 KB each at D = 64 */

int tile_matmul_available(void); /* tile_matmul.c: asks the OS for the tile state */

int shared_decode_available(void) { return 1; }

/* Whether `tiles` may be set: AMX built in and granted by the OS. */
int shared_decode_tiles(void) { return tile_matmul_available(); }

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define HAVE_TILES 1
/* Tiles 0-3: float32 accumulators (16 x 16); 4: A (16 x 32 bf16); 5-7: B (16 x 32 bf16).
 * Every item uses all 16 rows (an item with fewer has zero queries in the rest), so one
 * configuration serves a whole call. */
static void configure(void) {
  tile_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  for (int t = 0; t < 8; t++) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}
#else
#define HAVE_TILES 0
#endif

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

typedef struct { /* a member's own tokens: [from, to) of `table` */
  const int64_t *table;
  int64_t from, to;
  int member; /* the item's member whose rows alone see it */
} segment;

/* One item's state: its queries, and per row the running max, sum and weighted sum of V. */
typedef struct {
  const int64_t *rows_b; /* its batch rows */
  int m;                 /* query rows: its sequences x heads per KV head */
  int64_t prefix;        /* shared tokens */
  int n_seg;
  segment segs[ROWS]; /* one a member */
  uint16_t *q;  /* [ROWS x D], rows past m zero */
  float *acc;   /* [ROWS x D] */
  float maxs[ROWS], sums[ROWS];
} item_state;

typedef struct { /* a thread's scratch for one unit of up to FUSE items */
  int tiles;        /* the products on AMX tiles (else in vectors) */
  item_state items[FUSE];
  uint16_t *kpack;  /* SPAN keys of K, rearranged: 64 keys [d/32][4 tiles][512] at a time */
  uint16_t *vpack;  /* SPAN keys of V, rearranged: [d/64 chunks][SPAN/32][4 tiles][512] */
  float *scores;    /* [ROWS x SPAN] */
  uint16_t *probs;  /* [ROWS x SPAN] */
} scratch;

static void item_init(item_state *it, const uint16_t *q, int64_t q_stride,
                      const int64_t *tables, int64_t nb, const int64_t *lens,
                      const int64_t *rows_b, int count, int64_t prefix, int g_count, int h,
                      int d) {
  it->rows_b = rows_b, it->m = count * g_count, it->prefix = prefix;
  memset(it->q, 0, sizeof(uint16_t) * ROWS * d);
  for (int i = 0; i < count; i++) /* the item's query rows, one after another */
    memcpy(it->q + i * g_count * d, q + rows_b[i] * q_stride + (int64_t)h * g_count * d,
           sizeof(uint16_t) * g_count * d);
  memset(it->acc, 0, sizeof(float) * ROWS * d); /* padding rows too: tiles read them */
  for (int r = 0; r < ROWS; r++) it->maxs[r] = -INFINITY, it->sums[r] = 0;
  int n = 0;
  for (int i = 0; i < count; i++)
    it->segs[n++] = (segment){tables + rows_b[i] * nb, prefix, lens[rows_b[i]], i};
  it->n_seg = n;
}

/* Asks for keys [t0, t0 + len) of `table`, K and V, to be brought into cache ahead of their
 * rearrangement. A step runs through every layer's cache, so the prefix is read cold; over
 * the paper's long prompts that cost a step more than the rearrangement (30 layers of 48
 * rows over four prompts: 78 ms read cold against 42 hot, 66 with this). */
static void prefetch_span(const uint16_t *k, const uint16_t *v, const int64_t *table,
                          int64_t t0, int64_t len, int bs, int hkv, int h, int d) {
  for (int64_t t = t0; t < t0 + len; t++) {
    const char *kr = (const char *)key_row(k, table, t, bs, hkv, h, d);
    const char *vr = (const char *)key_row(v, table, t, bs, hkv, h, d);
    for (int b = 0; b < d * 2; b += 64) {
      _mm_prefetch(kr + b, _MM_HINT_T0);
      _mm_prefetch(vr + b, _MM_HINT_T0);
    }
  }
}

/* Rearranges keys [t0, t0 + len) of `table` (len <= SPAN) into the scratch's packs. */
static void pack_span(scratch *sc, const uint16_t *k, const uint16_t *v, const int64_t *table,
                      int64_t t0, int64_t len, int bs, int hkv, int h, int d) {
  const int64_t stride = (int64_t)hkv * d;
  for (int64_t t = 0; t < len; t += 64)
    for (int j = 0; j < 4; j++) {
      const int64_t left = len - t - 16 * j;
      const int n = left >= 16 ? 16 : (left > 0 ? (int)left : 0);
      const uint16_t *kp = n ? key_row(k, table, t0 + t + 16 * j, bs, hkv, h, d) : k;
      for (int c = 0; c < d / 32; c++)
        pack_k(kp, stride, n, c, sc->kpack + t / 64 * 64 * d + (c * 4 + j) * 512);
    }
  for (int64_t t = 0; t < len; t += 32) {
    const int64_t left = len - t;
    int n0 = left < 16 ? (int)left : 16, n1 = left - 16 < 16 ? (int)(left - 16) : 16;
    const uint16_t *v0 = key_row(v, table, t0 + t, bs, hkv, h, d);
    const uint16_t *v1 = n1 > 0 ? key_row(v, table, t0 + t + 16, bs, hkv, h, d) : 0;
    for (int d0 = 0; d0 < d; d0 += 64) {
      const int nt = (d - d0) / 16 < 4 ? (d - d0) / 16 : 4;
      pack_v(v0, n0, v1, n1 > 0 ? n1 : 0, stride, d0, nt,
             sc->vpack + d0 / 64 * (SPAN / 32 * 2048) + t / 32 * nt * 512);
    }
  }
}

#if HAVE_TILES
/* scores [16 x len] = Q . K^T on tiles, 64 keys (4 tiles of 16) at a time: four independent
 * accumulators keep the tile unit busy where one would wait on each multiply's result. */
static void tile_scores(const item_state *it, const scratch *sc, int64_t len, int d) {
  for (int64_t t = 0; t < len; t += 64) {
    const int64_t left = len - t;
    const int chunks = left >= 64 ? 4 : (int)((left + 15) / 16);
    const uint16_t *packed = sc->kpack + t / 64 * 64 * d;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int c = 0; c < d / 32; c++) {
      const uint16_t *b = packed + c * 4 * 512;
      _tile_loadd(4, it->q + 32 * c, d * 2);
      _tile_loadd(5, b, 64);
      _tile_loadd(6, b + 512, 64);
      _tile_loadd(7, b + 1024, 64);
      _tile_dpbf16ps(0, 4, 5);
      _tile_dpbf16ps(1, 4, 6);
      _tile_dpbf16ps(2, 4, 7);
      _tile_loadd(5, b + 1536, 64);
      _tile_dpbf16ps(3, 4, 5);
    }
    float *dst = sc->scores + t;
    _tile_stored(0, dst, SPAN * 4);
    if (chunks > 1) _tile_stored(1, dst + 16, SPAN * 4);
    if (chunks > 2) _tile_stored(2, dst + 32, SPAN * 4);
    if (chunks > 3) _tile_stored(3, dst + 48, SPAN * 4);
  }
}

/* acc [16 x D] += P [16 x cols] . V on tiles, 32 keys and up to 64 dims at a time. */
static void tile_weighted(item_state *it, const scratch *sc, int64_t cols, int d) {
  for (int d0 = 0; d0 < d; d0 += 64) {
    const int nt = (d - d0) / 16 < 4 ? (d - d0) / 16 : 4;
    float *acc = it->acc + d0;
    const int64_t ld = (int64_t)d * 4;
    _tile_loadd(0, acc, ld);
    if (nt > 1) _tile_loadd(1, acc + 16, ld);
    if (nt > 2) _tile_loadd(2, acc + 32, ld);
    if (nt > 3) _tile_loadd(3, acc + 48, ld);
    const uint16_t *vp = sc->vpack + d0 / 64 * (SPAN / 32 * 2048);
    for (int64_t t = 0; t < cols; t += 32) {
      _tile_loadd(4, sc->probs + t, SPAN * 2);
      for (int j = 0; j < nt; j++) {
        _tile_loadd(5, vp + t / 32 * nt * 512 + j * 512, 64);
        /* Tile numbers are immediates: one call per accumulator. */
        if (j == 0) _tile_dpbf16ps(0, 4, 5);
        if (j == 1) _tile_dpbf16ps(1, 4, 5);
        if (j == 2) _tile_dpbf16ps(2, 4, 5);
        if (j == 3) _tile_dpbf16ps(3, 4, 5);
      }
    }
    _tile_stored(0, acc, ld);
    if (nt > 1) _tile_stored(1, acc + 16, ld);
    if (nt > 2) _tile_stored(2, acc + 32, ld);
    if (nt > 3) _tile_stored(3, acc + 48, ld);
  }
}
#endif

/* Query rows the vector products take at a time: 4 rows x 4 vectors of accumulators, plus
 * the 4 operand vectors they share, fit the 32 vector registers. */
#define VROWS 4

static inline __m512bh pair_of(const uint16_t *p) { /* two bf16 at p, in every dword lane */
  uint32_t x;
  memcpy(&x, p, sizeof x);
  return (__m512bh)_mm512_set1_epi32((int)x);
}

/* As tile_scores for the item's live rows, in vectors: row r's scores of 16 keys gather,
 * dimension pair by pair, the products of its pair (broadcast) with the 16 keys' pairs (one
 * row of a K tile). */
static void vector_scores(const item_state *it, const scratch *sc, int64_t len, int d) {
  for (int64_t t = 0; t < len; t += 64) {
    const uint16_t *packed = sc->kpack + t / 64 * 64 * d;
    for (int r0 = 0; r0 < it->m; r0 += VROWS) {
      __m512 acc[VROWS][4];
      for (int r = 0; r < VROWS; r++)
        for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_ps();
      for (int p = 0; p < d / 2; p++) { /* pair p: dims 2p, 2p + 1 */
        const uint16_t *b = packed + (p / 16) * 4 * 512 + (p % 16) * 32;
        __m512bh kv[4];
        for (int j = 0; j < 4; j++) kv[j] = (__m512bh)_mm512_load_si512(b + j * 512);
        for (int r = 0; r < VROWS; r++) {
          const __m512bh qp = pair_of(it->q + (r0 + r) * d + 2 * p);
          for (int j = 0; j < 4; j++) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], qp, kv[j]);
        }
      }
      /* Rows past m (zero queries) are stored too: the scratch has ROWS rows. */
      for (int r = 0; r < VROWS; r++)
        for (int j = 0; j < 4; j++)
          _mm512_store_ps(sc->scores + (r0 + r) * SPAN + t + 16 * j, acc[r][j]);
    }
  }
}

/* As tile_weighted for the item's live rows and dims [d0, d0 + 16 * nt), in vectors: 16
 * dims of row r gather, key pair by key pair, its two probabilities (broadcast) times the
 * pair's values (one row of a V tile). Inlined for each constant nt: with a run-time bound
 * GCC kept the accumulators in memory, which took twice as long as the scores. */
static inline __attribute__((always_inline)) void weighted_dims(item_state *it,
                                                                const scratch *sc, int64_t cols,
                                                                int d, int d0, const int nt) {
  const uint16_t *vp = sc->vpack + d0 / 64 * (SPAN / 32 * 2048);
  for (int r0 = 0; r0 < it->m; r0 += VROWS) {
    __m512 acc[VROWS][4];
    for (int r = 0; r < VROWS; r++)
      for (int j = 0; j < nt; j++)
        acc[r][j] = _mm512_loadu_ps(it->acc + (r0 + r) * d + d0 + 16 * j);
    for (int64_t t = 0; t < cols; t += 32) {
      const uint16_t *block = vp + t / 32 * nt * 512;
      for (int pair = 0; pair < 16; pair++) { /* keys t + 2 pair, t + 2 pair + 1 */
        __m512bh vv[4];
        for (int j = 0; j < nt; j++)
          vv[j] = (__m512bh)_mm512_load_si512(block + j * 512 + pair * 32);
        for (int r = 0; r < VROWS; r++) {
          const __m512bh pp = pair_of(sc->probs + (r0 + r) * SPAN + t + 2 * pair);
          for (int j = 0; j < nt; j++) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], pp, vv[j]);
        }
      }
    }
    for (int r = 0; r < VROWS; r++)
      for (int j = 0; j < nt; j++)
        _mm512_storeu_ps(it->acc + (r0 + r) * d + d0 + 16 * j, acc[r][j]);
  }
}

static void vector_weighted(item_state *it, const scratch *sc, int64_t cols, int d) {
  for (int d0 = 0; d0 < d; d0 += 64) {
    switch ((d - d0) / 16 < 4 ? (d - d0) / 16 : 4) {
    case 4: weighted_dims(it, sc, cols, d, d0, 4); break;
    case 3: weighted_dims(it, sc, cols, d, d0, 3); break;
    case 2: weighted_dims(it, sc, cols, d, d0, 2); break;
    default: weighted_dims(it, sc, cols, d, d0, 1); break;
    }
  }
}

/* One item over the first `len` keys of the packed span: the rows that see them (all, or
 * one member's) take them into their running softmax and weighted sum. */
static void attend_span(item_state *it, const scratch *sc, int64_t len, int member, int g_count,
                        int d, float scale) {
#if HAVE_TILES
  if (sc->tiles)
    tile_scores(it, sc, len, d);
  else
#endif
    vector_scores(it, sc, len, d);

  /* Online softmax: a row whose max grows rescales what it has summed so far. The
   * probabilities go to bf16, 0 in the columns up to the next 32 that the row does not see. */
  const int64_t cols = (len + 31) & ~(int64_t)31;
  const __m512 sc_v = _mm512_set1_ps(scale);
  for (int r = 0; r < it->m; r++) {
    uint16_t *pr = sc->probs + r * SPAN;
    if (member >= 0 && r / g_count != member) {
      memset(pr, 0, sizeof(uint16_t) * cols);
      continue;
    }
    const float *sr = sc->scores + r * SPAN;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t t = 0; t < len; t += 16) {
      __mmask16 live = tail(len - t);
      const __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(live, sr + t), sc_v);
      mx = _mm512_mask_max_ps(mx, live, mx, x);
    }
    const float span_max = _mm512_reduce_max_ps(mx);
    if (span_max > it->maxs[r]) {
      if (it->maxs[r] > -INFINITY) {
        const float corr = expf(it->maxs[r] - span_max);
        it->sums[r] *= corr;
        const __m512 cv = _mm512_set1_ps(corr);
        float *a = it->acc + (int64_t)r * d;
        for (int j = 0; j < d; j += 16)
          _mm512_storeu_ps(a + j, _mm512_mul_ps(_mm512_loadu_ps(a + j), cv));
      }
      it->maxs[r] = span_max;
    }
    const __m512 mb = _mm512_set1_ps(it->maxs[r]);
    __m512 total = _mm512_setzero_ps();
    for (int64_t t = 0; t < cols; t += 16) {
      __mmask16 live = t < len ? tail(len - t) : 0;
      __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(live, sr + t), sc_v);
      __m512 p = _mm512_maskz_mov_ps(live, exp_nonpositive(_mm512_sub_ps(x, mb)));
      total = _mm512_add_ps(total, p);
      _mm256_storeu_si256((__m256i *)(pr + t), (__m256i)_mm512_cvtneps_pbh(p));
    }
    it->sums[r] += _mm512_reduce_add_ps(total);
  }

#if HAVE_TILES
  if (sc->tiles) {
    tile_weighted(it, sc, cols, d);
    return;
  }
#endif
  vector_weighted(it, sc, cols, d);
}

/* A unit: n items over one KV head, whose prefixes lie in the blocks of `table` (the item
 * with the longest, `top` tokens). The prefix goes SPAN keys at a time, each span rearranged
 * once for every item that reaches it; then each item's members' own tokens. */
static void attend_unit(scratch *sc, int n, const int64_t *table, int64_t top, const uint16_t *k,
                        const uint16_t *v, int hq, int hkv, int h, int d, int bs, float scale,
                        uint16_t *out, float *lse) {
  const int g_count = hq / hkv;
  for (int64_t t0 = 0; t0 < top; t0 += SPAN) {
    const int64_t len = top - t0 < SPAN ? top - t0 : SPAN;
    if (t0 + SPAN < top) /* the next span, read while this one is worked on */
      prefetch_span(k, v, table, t0 + SPAN, top - t0 - SPAN < SPAN ? top - t0 - SPAN : SPAN,
                    bs, hkv, h, d);
    pack_span(sc, k, v, table, t0, len, bs, hkv, h, d);
    for (int i = 0; i < n; i++) {
      item_state *it = &sc->items[i];
      if (it->prefix > t0)
        attend_span(it, sc, it->prefix - t0 < len ? it->prefix - t0 : len, -1, g_count, d, scale);
    }
  }
  for (int i = 0; i < n; i++) {
    item_state *it = &sc->items[i];
    for (int s = 0; s < it->n_seg; s++) {
      const segment *sg = &it->segs[s];
      for (int64_t t0 = sg->from; t0 < sg->to; t0 += SPAN) {
        const int64_t len = sg->to - t0 < SPAN ? sg->to - t0 : SPAN;
        pack_span(sc, k, v, sg->table, t0, len, bs, hkv, h, d);
        attend_span(it, sc, len, sg->member, g_count, d, scale);
      }
    }
    for (int r = 0; r < it->m; r++) {
      const int i2 = r / g_count, g = r % g_count;
      const int64_t at = it->rows_b[i2] * hq + (int64_t)h * g_count + g;
      const __m512 inv = _mm512_set1_ps(1 / it->sums[r]);
      for (int j = 0; j < d; j += 16)
        store_bf16(out + at * d + j, _mm512_mul_ps(_mm512_loadu_ps(it->acc + r * d + j), inv),
                   0xffff);
      lse[at] = it->maxs[r] + logf(it->sums[r]);
    }
  }
}

/* Returns 0; -1 when a shape or an item is outside what this kernel handles (nothing
 * written); -2 when scratch could not be allocated (rows left unwritten). */
int shared_decode(const uint16_t *q, int64_t q_stride, const uint16_t *k, const uint16_t *v,
                  const int64_t *tables, int64_t nb, const int64_t *lens, int hq, int hkv, int d,
                  int bs, float scale, uint16_t *out, float *lse, const int64_t *members,
                  const int64_t *starts, const int64_t *prefix, int n_items, int tiles,
                  int threads) {
  const int g_count = hq / hkv;
  if (hq % hkv || g_count > ROWS || d % 32 || d > 256 || bs % 16) return -1;
  if (tiles && !HAVE_TILES) return -1; /* the grant is checked once, by the caller */
  for (int i = 0; i < n_items; i++) {
    const int64_t count = starts[i + 1] - starts[i];
    if (count < 1 || count * g_count > ROWS || prefix[i] < 0 || prefix[i] % 16) return -1;
    for (int64_t j = starts[i]; j < starts[i + 1]; j++)
      if (lens[members[j]] <= prefix[i]) return -1;
  }
  /* Units: items whose prefixes lie in the same blocks (the first row's table agrees over
   * the shorter of the two prefixes), up to FUSE each, in the order given. */
  int *order = malloc(sizeof(int) * (n_items + 1)); /* items, unit by unit */
  int *unit_at = malloc(sizeof(int) * (n_items + 1)); /* unit u: order[unit_at[u] ..) */
  int *unit_top = malloc(sizeof(int) * (n_items + 1)); /* its item with the longest prefix */
  char *placed = calloc(n_items + 1, 1);
  int64_t *cost = malloc(sizeof(int64_t) * (n_items + 1)); /* unit u's work, about */
  int *by_cost = malloc(sizeof(int) * (n_items + 1));      /* units, largest first */
  if (!order || !unit_at || !unit_top || !placed || !cost || !by_cost) {
    free(order), free(unit_at), free(unit_top), free(placed), free(cost), free(by_cost);
    return -2;
  }
  /* Fewer items per unit where there would be too few units to keep the threads busy. */
  int fuse = (int)(((int64_t)n_items * hkv + 4 * threads - 1) / (4 * threads));
  fuse = fuse < 1 ? 1 : (fuse > FUSE ? FUSE : fuse);
  int n_units = 0, n_placed = 0;
  for (int i = 0; i < n_items; i++) {
    if (placed[i]) continue;
    unit_at[n_units] = n_placed, unit_top[n_units] = i;
    order[n_placed++] = i, placed[i] = 1;
    for (int j = i + 1; prefix[i] > 0 && j < n_items && n_placed - unit_at[n_units] < fuse; j++) {
      if (placed[j] || prefix[j] == 0) continue;
      const int64_t *tt = tables + members[starts[unit_top[n_units]]] * nb;
      const int64_t top = prefix[unit_top[n_units]];
      const int64_t common = prefix[j] < top ? prefix[j] : top;
      const size_t blocks = (size_t)((common + bs - 1) / bs);
      if (memcmp(tables + members[starts[j]] * nb, tt, sizeof(int64_t) * blocks)) continue;
      order[n_placed++] = j, placed[j] = 1;
      if (prefix[j] > top) unit_top[n_units] = j;
    }
    n_units++;
  }
  unit_at[n_units] = n_placed;
  /* Largest units first: the threads take work in order, so a long prefix left for last
   * keeps one thread busy while the others idle (30 layers of 48 rows over four prompts of
   * 1.1k-7.4k tokens, given shortest first: 38 -> 32 ms hot). A unit's work is about its
   * longest prefix times its rows, plus its members' own tokens. */
  for (int u = 0; u < n_units; u++) {
    int64_t rows = 0, own = 0;
    for (int x = unit_at[u]; x < unit_at[u + 1]; x++)
      for (int64_t j = starts[order[x]]; j < starts[order[x] + 1]; j++)
        rows++, own += lens[members[j]] - prefix[order[x]];
    cost[u] = prefix[unit_top[u]] * rows + own;
    by_cost[u] = u;
  }
  for (int a = 1; a < n_units; a++) /* insertion sort, stable: units are few */
    for (int b = a; b > 0 && cost[by_cost[b - 1]] < cost[by_cost[b]]; b--) {
      const int t = by_cost[b];
      by_cost[b] = by_cost[b - 1], by_cost[b - 1] = t;
    }

  int failed = 0;
#pragma omp parallel num_threads(threads)
  {
    /* Scratch, once per thread and call, sized by D (about 90 KB at D = 64). */
    scratch *sc = calloc(1, sizeof(scratch));
    float *scores = aligned_alloc(64, sizeof(float) * ROWS * SPAN);
    uint16_t *probs = aligned_alloc(64, sizeof(uint16_t) * ROWS * SPAN);
    uint16_t *qs = aligned_alloc(64, sizeof(uint16_t) * FUSE * ROWS * d);
    float *accs = aligned_alloc(64, sizeof(float) * FUSE * ROWS * d);
    uint16_t *kpack = aligned_alloc(64, sizeof(uint16_t) * SPAN * d);
    uint16_t *vpack = aligned_alloc(64, sizeof(uint16_t) * SPAN * d);
    const int ok = sc && scores && probs && qs && accs && kpack && vpack;
    if (ok) {
      memset(probs, 0, sizeof(uint16_t) * ROWS * SPAN); /* rows past an item's m: finite */
      sc->kpack = kpack, sc->vpack = vpack, sc->scores = scores, sc->probs = probs;
      sc->tiles = tiles;
      for (int i = 0; i < FUSE; i++) {
        sc->items[i].q = qs + i * ROWS * d;
        sc->items[i].acc = accs + i * ROWS * d;
      }
#if HAVE_TILES
      if (tiles) configure();
#endif
    }
#pragma omp for schedule(dynamic, 1)
    for (int w = 0; w < n_units * hkv; w++) {
      /* Unit-major: the threads take the heads of one unit about together, and one token's
       * heads lie side by side in the cache, so a cache line one thread's reading pulled in
       * for a neighbouring head is likely still there for the other (read cold, 30 layers
       * of 48 rows over four prompts: 61-62 ms against 66-72 head-major). */
      const int h = w % hkv, u = by_cost[w / hkv];
      if (!ok) {
#pragma omp atomic write
        failed = 1;
        continue;
      }
      const int n = unit_at[u + 1] - unit_at[u];
      for (int x = 0; x < n; x++) {
        const int i = order[unit_at[u] + x];
        item_init(&sc->items[x], q, q_stride, tables, nb, lens, members + starts[i],
                  (int)(starts[i + 1] - starts[i]), prefix[i], g_count, h, d);
      }
      const int top = unit_top[u];
      attend_unit(sc, n, tables + members[starts[top]] * nb, prefix[top], k, v, hq, hkv, h, d,
                  bs, scale, out, lse);
    }
#if HAVE_TILES
    if (ok && tiles) _tile_release();
#endif
    free(sc), free(scores), free(probs), free(qs), free(accs), free(kpack), free(vpack);
  }
  free(order), free(unit_at), free(unit_top), free(placed), free(cost), free(by_cost);
  return failed ? -2 : 0;
}

#else

int shared_decode_available(void) { return 0; }

int shared_decode_tiles(void) { return 0; }

int shared_decode(const uint16_t *q, int64_t q_stride, const uint16_t *k, const uint16_t *v,
                  const int64_t *tables, int64_t nb, const int64_t *lens, int hq, int hkv, int d,
                  int bs, float scale, uint16_t *out, float *lse, const int64_t *members,
                  const int64_t *starts, const int64_t *prefix, int n_items, int tiles,
                  int threads) {
  (void)q, (void)q_stride, (void)k, (void)v, (void)tables, (void)nb, (void)lens, (void)hq;
  (void)hkv, (void)d, (void)bs, (void)scale, (void)out, (void)lse, (void)members, (void)starts;
  (void)prefix, (void)n_items, (void)tiles, (void)threads;
  return -1;
}

#endif
