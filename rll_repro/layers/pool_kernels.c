/* MAX pooling of a channels_last float32 tensor (N, H, W, C rows of C channels) with its backward as
 * a gather: each input cell sums the gradients of the windows whose maximum it is, so the input
 * gradient is written once instead of zero-filled and then scattered into. The same values as
 * PyTorch's CPU kernel (rll_repro.layers.pooling uses it everywhere else) bit for bit:
 *
 * - window rows max(i s - p, 0) .. min(i s - p + k, H) - 1, columns alike;
 * - the maximum starts at -inf with the window's first cell as its index and is replaced by a value
 *   v where v > max or v is NaN (the first maximum in row-major window order, the last NaN);
 * - a cell's gradient is 0 + g(window 1) + g(window 2) + ... in output order (row-major), the order in
 *   which PyTorch's scatter adds them.
 *
 * Indices are h * W + w (int32) per channel. Rows of the batch x output (or input) rows are split
 * over `threads` OpenMP threads; no sum crosses a split, so every thread count gives the same bits.
 */
#include <math.h>
#include <stdint.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* The windows i (of `count` along an axis) holding cell y: i s - p <= y < i s - p + k. */
static int64_t first_window(int64_t y, int64_t k, int64_t s, int64_t p) { return max64((y + p - k + s) / s, 0); }
static int64_t last_window(int64_t y, int64_t s, int64_t p, int64_t count) { return min64((y + p) / s, count - 1); }

/* n floats zeroed (a row of input cells). */
static void zero_cells(float *d, int64_t n) { for (int64_t j = 0; j < n; j++) d[j] = 0.0f; }

VECTOR_CLONES
static void window_max(int64_t c, const float *x, int64_t w, int64_t h0, int64_t h1, int64_t w0, int64_t w1,
                       float *o, int32_t *ix)
{
    const int32_t first = (int32_t)(h0 * w + w0);
    for (int64_t j = 0; j < c; j++) {
        o[j] = -INFINITY;
        ix[j] = first;
    }
    for (int64_t y = h0; y < h1; y++)
        for (int64_t v = w0; v < w1; v++) {
            const float *xr = x + (y * w + v) * c;
            const int32_t pos = (int32_t)(y * w + v);
            for (int64_t j = 0; j < c; j++) {
                const float val = xr[j];
                const int take = val > o[j] || val != val;
                o[j] = take ? val : o[j];
                ix[j] = take ? pos : ix[j];
            }
        }
}

void max_pool_forward(int64_t n, int64_t h, int64_t w, int64_t c, int64_t oh, int64_t ow, int64_t kh, int64_t kw,
                      int64_t sh, int64_t sw, int64_t ph, int64_t pw, const float *x, float *out, int32_t *idx,
                      int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t bi = 0; bi < n * oh; bi++) {
        const int64_t b = bi / oh, i = bi % oh;
        const int64_t hs = i * sh - ph, h0 = max64(hs, 0), h1 = min64(hs + kh, h);
        for (int64_t j = 0; j < ow; j++) {
            const int64_t ws = j * sw - pw, w0 = max64(ws, 0), w1 = min64(ws + kw, w);
            const int64_t at = (bi * ow + j) * c;
            window_max(c, x + b * h * w * c, w, h0, h1, w0, w1, out + at, idx + at);
        }
    }
}

/* Gradient of input rows (b, y, 0 .. w-1): g rows (output cells) at stride gs floats. */
VECTOR_CLONES
static void gather_row(int64_t c, int64_t w, int64_t y, int64_t oh, int64_t ow, int64_t kh, int64_t kw,
                       int64_t sh, int64_t sw, int64_t ph, int64_t pw, const float *g, int64_t gs,
                       const int32_t *idx, float *d)
{
    const int64_t i0 = first_window(y, kh, sh, ph), i1 = last_window(y, sh, ph, oh);
    zero_cells(d, w * c);
    for (int64_t v = 0; v < w; v++) {
        float *dr = d + v * c;
        const int64_t j0 = first_window(v, kw, sw, pw), j1 = last_window(v, sw, pw, ow);
        const int32_t pos = (int32_t)(y * w + v);
        for (int64_t i = i0; i <= i1; i++)
            for (int64_t q = j0; q <= j1; q++) {
                const int32_t *ix = idx + (i * ow + q) * c;
                const float *gr = g + (i * ow + q) * gs;
                for (int64_t j = 0; j < c; j++)
                    dr[j] = ix[j] == pos ? dr[j] + gr[j] : dr[j];
            }
    }
}

void max_pool_backward(int64_t n, int64_t h, int64_t w, int64_t c, int64_t oh, int64_t ow, int64_t kh, int64_t kw,
                       int64_t sh, int64_t sw, int64_t ph, int64_t pw, const float *g, int64_t gs,
                       const int32_t *idx, float *dx, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t by = 0; by < n * h; by++) {
        const int64_t b = by / h, y = by % h;
        gather_row(c, w, y, oh, ow, kh, kw, sh, sw, ph, pw, g + b * oh * ow * gs, gs, idx + b * oh * ow * c,
                   dx + by * w * c);
    }
}

/* AVE pooling's backward as a gather: each input cell sums g / divisor over the windows that hold it,
 * in output order, as PyTorch's (and Caffe's) scatter adds them. The divisor is Caffe's (and PyTorch's
 * count_include_pad): (min(i s - p + k, H + p) - (i s - p)) times the same for columns. */
VECTOR_CLONES
static void average_gather_row(int64_t c, int64_t h, int64_t w, int64_t y, int64_t oh, int64_t ow, int64_t kh,
                               int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, const float *g,
                               int64_t gs, float *d)
{
    const int64_t i0 = first_window(y, kh, sh, ph), i1 = last_window(y, sh, ph, oh);
    zero_cells(d, w * c);
    for (int64_t v = 0; v < w; v++) {
        float *dr = d + v * c;
        const int64_t j0 = first_window(v, kw, sw, pw), j1 = last_window(v, sw, pw, ow);
        for (int64_t i = i0; i <= i1; i++) {
            const int64_t hs = i * sh - ph, rows = min64(hs + kh, h + ph) - hs;
            for (int64_t q = j0; q <= j1; q++) {
                const int64_t ws = q * sw - pw, cols = min64(ws + kw, w + pw) - ws;
                const float divisor = (float)(rows * cols);
                const float *gr = g + (i * ow + q) * gs;
                for (int64_t j = 0; j < c; j++)
                    dr[j] += gr[j] / divisor;
            }
        }
    }
}

void average_pool_backward(int64_t n, int64_t h, int64_t w, int64_t c, int64_t oh, int64_t ow, int64_t kh,
                           int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, const float *g, int64_t gs,
                           float *dx, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t by = 0; by < n * h; by++) {
        const int64_t b = by / h, y = by % h;
        average_gather_row(c, h, w, y, oh, ow, kh, kw, sh, sw, ph, pw, g + b * oh * ow * gs, gs, dx + by * w * c);
    }
}
