/* bf16 matmul on AMX tiles for the rows of a decode step: out = x @ W.T (+ residual).
 * Built with the other CPU kernels into one library by parrot_kernels/native.py; see there for why.
 *
 * A decode step multiplies a few to a few dozen rows by every weight of the model once, so
 * its matmuls are bound by how fast the weights stream from memory, not by arithmetic.
 * Here each weight is packed once, at load, into the order the tile loads read it: for
 * every 32 output columns (a "pair" of 16-column tiles), the K dimension in steps of 32,
 * two 1 KB tiles of 16 K-pairs x 16 columns x 2 (AMX's VNNI layout for bf16). A pair's
 * weights are then one contiguous run that is read front to back exactly once per call,
 * whatever the number of rows, while the activations (a few KB to a few MB) stay in cache.
 *
 * Per pair, rows go in chunks of 32: two 16-row A tiles, two B tiles and four float32
 * accumulator tiles (all eight tile registers). The accumulators are rounded to bf16 once,
 * after the residual (if any) is added in float32.
 *
 * Needs AMX-TILE and AMX-BF16 at compile time and the kernel's permission to use the tile
 * state at run time (Linux: arch_prctl ARCH_REQ_XCOMP_PERM); tile_matmul_available() asks
 * for it and says whether both hold. Without them every call returns -1.
 */
#include <stdint.h>
#include <string.h>

#include "bf16.h"
#include "tiles.h"

#define TILE_K 32 /* bf16 elements of K per tile row: 64 bytes */
#define PAIR_N 32 /* output columns per pair of B tiles */

/* Pack w [n, k] bf16 row-major into the tile order above (n * k elements). */
int tile_pack(const uint16_t *w, int64_t n, int64_t k, uint16_t *out) {
  if (n % PAIR_N || k % TILE_K) return -1;
  int64_t kbs = k / TILE_K;
  for (int64_t p = 0; p < n / PAIR_N; p++)
    for (int64_t kb = 0; kb < kbs; kb++)
      for (int t = 0; t < 2; t++) {
        uint16_t *tile = out + ((p * kbs + kb) * 2 + t) * 512;
        for (int r = 0; r < 16; r++)
          for (int c = 0; c < 16; c++) {
            const uint16_t *src = w + (p * PAIR_N + t * 16 + c) * k + kb * TILE_K + 2 * r;
            tile[r * 32 + c * 2] = src[0];
            tile[r * 32 + c * 2 + 1] = src[1];
          }
      }
  return 0;
}

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512F__)
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

int tile_matmul_available(void) {
  /* Idempotent: asking again once granted succeeds. */
  return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

/* Tiles 0-3: accumulators (rows 0-15 x pair halves 0/1, rows 16-31 x halves 0/1); 4-5: the
 * two A tiles; 6-7: the two B tiles. m1 == 0 leaves the second row tile unconfigured. */
static void configure(int m0, int m1) {
  tile_config cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  int rows[8] = {m0, m0, m1, m1, m0, m1, 16, 16};
  for (int t = 0; t < 8; t++) {
    cfg.rows[t] = (uint8_t)rows[t];
    cfg.colsb[t] = rows[t] ? 64 : 0;
  }
  _tile_loadconfig(&cfg);
}

/* Round a chunk's float32 results (acc [rows][32]) to bf16, adding the residual first. */
static void emit(const float *acc, int rows, const uint16_t *res, int64_t res_stride,
                 uint16_t *out, int64_t out_stride) {
  for (int r = 0; r < rows; r++)
    for (int h = 0; h < 2; h++) {
      __m512 v = _mm512_loadu_ps(acc + r * 32 + h * 16);
      if (res) v = _mm512_add_ps(v, load_bf16(res + r * res_stride + h * 16, 0xffff));
      store_bf16(out + r * out_stride + h * 16, v, 0xffff);
    }
}

/* out [m, n] (rows out_stride apart) = x [m, k] (rows x_stride apart) @ W.T, plus res
 * [m, n] (rows res_stride apart) when res is not NULL; wp from tile_pack. */
int tile_linear(const uint16_t *x, int64_t x_stride, int64_t m, int64_t k, const uint16_t *wp,
                int64_t n, const uint16_t *res, int64_t res_stride, uint16_t *out,
                int64_t out_stride, int threads) {
  if (n % PAIR_N || k % TILE_K || m < 0) return -1;
  if (m == 0) return 0;
  const int64_t kbs = k / TILE_K, pairs = n / PAIR_N, xs = x_stride * 2;
  /* Threads split the column pairs; never more threads than pairs. */
  int team = pairs < threads ? (int)pairs : threads;
#pragma omp parallel num_threads(team)
  {
    float acc[32 * 32] __attribute__((aligned(64)));
    int configured = -1;
#pragma omp for schedule(static)
    for (int64_t p = 0; p < pairs; p++) {
      const uint16_t *wpair = wp + p * kbs * 1024;
      for (int64_t r0 = 0; r0 < m; r0 += 32) {
        int rows = m - r0 < 32 ? (int)(m - r0) : 32;
        int m0 = rows < 16 ? rows : 16, m1 = rows - m0;
        if (rows != configured) {
          configure(m0, m1);
          configured = rows;
        }
        const uint16_t *xa = x + r0 * x_stride, *xb = xa + 16 * x_stride, *bp = wpair;
        _tile_zero(0);
        _tile_zero(1);
        if (m1) {
          _tile_zero(2);
          _tile_zero(3);
          for (int64_t kb = 0; kb < kbs; kb++, bp += 1024) {
            _tile_loadd(4, xa + kb * TILE_K, xs);
            _tile_loadd(5, xb + kb * TILE_K, xs);
            _tile_loadd(6, bp, 64);
            _tile_loadd(7, bp + 512, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
          }
        } else {
          for (int64_t kb = 0; kb < kbs; kb++, bp += 1024) {
            _tile_loadd(4, xa + kb * TILE_K, xs);
            _tile_loadd(6, bp, 64);
            _tile_loadd(7, bp + 512, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
          }
        }
        _tile_stored(0, acc, 128);
        _tile_stored(1, acc + 16, 128);
        if (m1) {
          _tile_stored(2, acc + 16 * 32, 128);
          _tile_stored(3, acc + 16 * 32 + 16, 128);
        }
        emit(acc, rows, res ? res + r0 * res_stride + p * PAIR_N : 0, res_stride,
             out + r0 * out_stride + p * PAIR_N, out_stride);
      }
    }
    if (configured >= 0) _tile_release();
  }
  return 0;
}

#else

int tile_matmul_available(void) { return 0; }

int tile_linear(const uint16_t *x, int64_t x_stride, int64_t m, int64_t k, const uint16_t *wp,
                int64_t n, const uint16_t *res, int64_t res_stride, uint16_t *out,
                int64_t out_stride, int threads) {
  (void)x, (void)x_stride, (void)m, (void)k, (void)wp, (void)n, (void)res, (void)res_stride;
  (void)out, (void)out_stride, (void)threads;
  return -1;
}

#endif
