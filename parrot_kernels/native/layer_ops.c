/* The small per-layer ops of a CPU decoder step in C: RMSNorm, rotary embedding (in place)
 * and the SwiGLU product. Built with paged_decode.c into one library by parrot_kernels/native.py;
 * see there for why.
 *
 * In torch each of these is several elementwise ops (RMSNorm alone upcasts, squares, means,
 * takes the root, scales and downcasts), each its own pass over memory and its own parallel
 * region; at decode batch sizes the rows are a few KB, so the fixed cost per op dominates.
 * Here each op is one pass in float32 with a single rounding to bf16 at the end.
 *
 * All tensors are bf16 (uint16_t) with contiguous rows; `*_stride` is the distance between
 * rows in elements. Small calls run on the calling thread; only calls big enough to pay
 * for a parallel region (prefill chunks) split rows over `threads` OpenMP threads.
 */
#include <math.h>
#include <stdint.h>

#include "bf16.h"

/* Elements below which a call stays on one thread: a decode batch of 32 rows is well under,
 * a 512-token prefill chunk well over. */
#define PARALLEL_MIN 65536

#if defined(__AVX512F__)

int layer_ops_vectorized(void) { return 1; }

/* Widths need not be multiples of 16: the last vector of a row is masked to its tail
 * (`tail` in bf16.h). */

static void rms_norm_row(const uint16_t *x, const uint16_t *w, uint16_t *out, int64_t dim,
                         float eps) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < dim; i += 16) {
    __m512 v = load_bf16(x + i, tail(dim - i));
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  __m512 inv = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(acc) / (float)dim + eps));
  for (int64_t i = 0; i < dim; i += 16) {
    __mmask16 m = tail(dim - i);
    __m512 y = _mm512_mul_ps(_mm512_mul_ps(load_bf16(x + i, m), inv), load_bf16(w + i, m));
    store_bf16(out + i, y, m);
  }
}

/* One head: x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin over the two halves of x. */
static void rope_head(uint16_t *x, const float *cos, const float *sin, int half) {
  for (int i = 0; i < half; i += 16) {
    __mmask16 m = tail(half - i);
    __m512 a = load_bf16(x + i, m), b = load_bf16(x + half + i, m);
    __m512 c = _mm512_maskz_loadu_ps(m, cos + i), s = _mm512_maskz_loadu_ps(m, sin + i);
    store_bf16(x + i, _mm512_fnmadd_ps(b, s, _mm512_mul_ps(a, c)), m);
    store_bf16(x + half + i, _mm512_fmadd_ps(a, s, _mm512_mul_ps(b, c)), m);
  }
}

static void silu_mul_row(const uint16_t *gate, const uint16_t *up, uint16_t *out, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = tail(n - i);
    __m512 g = load_bf16(gate + i, m);
    /* sigmoid(g) from e = e^-|g| <= 1, which cannot overflow: 1/(1+e) for g >= 0,
     * e/(1+e) below. */
    __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(g)));
    __m512 rcp = _mm512_div_ps(one, _mm512_add_ps(one, e));
    __mmask16 neg = _mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_LT_OQ);
    __m512 sig = _mm512_mask_mul_ps(rcp, neg, rcp, e);
    store_bf16(out + i, _mm512_mul_ps(_mm512_mul_ps(g, sig), load_bf16(up + i, m)), m);
  }
}

#else /* portable C: what the vectorized code computes, one element at a time */

int layer_ops_vectorized(void) { return 0; }

static void rms_norm_row(const uint16_t *x, const uint16_t *w, uint16_t *out, int64_t dim,
                         float eps) {
  float ss = 0.0f;
  for (int64_t i = 0; i < dim; i++) ss += bf16_to_float(x[i]) * bf16_to_float(x[i]);
  float inv = 1.0f / sqrtf(ss / (float)dim + eps);
  for (int64_t i = 0; i < dim; i++)
    out[i] = float_to_bf16(bf16_to_float(x[i]) * inv * bf16_to_float(w[i]));
}

static void rope_head(uint16_t *x, const float *cos, const float *sin, int half) {
  for (int i = 0; i < half; i++) {
    float a = bf16_to_float(x[i]), b = bf16_to_float(x[half + i]);
    x[i] = float_to_bf16(a * cos[i] - b * sin[i]);
    x[half + i] = float_to_bf16(b * cos[i] + a * sin[i]);
  }
}

static void silu_mul_row(const uint16_t *gate, const uint16_t *up, uint16_t *out, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    float g = bf16_to_float(gate[i]);
    out[i] = float_to_bf16(g / (1.0f + expf(-g)) * bf16_to_float(up[i]));
  }
}

#endif

/* out[r] = x[r] / rms(x[r]) * w; out rows are `dim` apart. Returns 0, or -1 for an empty
 * width (nothing written). */
int rms_norm(const uint16_t *x, int64_t x_stride, const uint16_t *w, uint16_t *out,
             int64_t rows, int64_t dim, float eps, int threads) {
  if (dim <= 0) return -1;
#pragma omp parallel for num_threads(threads) if (rows * dim >= PARALLEL_MIN)
  for (int64_t r = 0; r < rows; r++)
    rms_norm_row(x + r * x_stride, w, out + r * dim, dim, eps);
  return 0;
}

/* Rotates the first `heads` heads of each row in place by the row's position: cos/sin are
 * float32 tables [positions, head_dim / 2]. Returns 0, or -1 for an odd or empty head size
 * (nothing written). */
int rope_inplace(uint16_t *x, int64_t x_stride, const int64_t *positions, int64_t rows,
                 int heads, int head_dim, const float *cos, const float *sin, int threads) {
  const int half = head_dim / 2;
  if (head_dim % 2 || head_dim <= 0) return -1;
#pragma omp parallel for num_threads(threads) if (rows * heads * head_dim >= PARALLEL_MIN)
  for (int64_t r = 0; r < rows; r++) {
    const float *c = cos + positions[r] * half, *s = sin + positions[r] * half;
    for (int h = 0; h < heads; h++)
      rope_head(x + r * x_stride + (int64_t)h * head_dim, c, s, half);
  }
  return 0;
}

/* out[r] = silu(gate) * up, where row r of `gate_up` holds gate then up (n each). Returns 0,
 * or -1 for an empty width. */
int silu_mul(const uint16_t *gate_up, int64_t rows, int64_t n, uint16_t *out, int threads) {
  if (n <= 0) return -1;
#pragma omp parallel for num_threads(threads) if (rows * n >= PARALLEL_MIN)
  for (int64_t r = 0; r < rows; r++)
    silu_mul_row(gate_up + r * 2 * n, gate_up + r * 2 * n + n, out + r * n, n);
  return 0;
}
