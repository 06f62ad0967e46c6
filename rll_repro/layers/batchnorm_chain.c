/* Caffe's BatchNorm (TRAIN, batch statistics) -> Scale (per channel, bias_term) -> ReLU (optional,
 * negative_slope 0) over a channels_last float32 tensor, seen as `rows` = N*H*W rows of `c` channels
 * (row r, channel j at p[r * stride + j]). One pass for the statistics and one elementwise pass
 * forward, two passes backward, where the layers make one or more passes each; every float operation is the
 * one Caffe's layers perform, in their order (batch_norm_layer.cpp, scale_layer.cpp, bias_layer.cpp,
 * relu_layer.cpp):
 *
 *   forward   mean = sum(x) / m;  var = sum((x - mean)^2) / m (see bn_statistics);  std = sqrt(var + eps)
 *             y = (x - mean) / std;  z = y * gamma + beta (two roundings);  out = max(z, 0)
 *   backward  gz = g * (out > 0);  dbeta = sum(gz);  dgamma = sum(gz * y);  dy = gz * gamma
 *             dx = (dy + (-1/m) * (y * sum(y * dy) + sum(dy))) / std
 *
 * with y and z recomputed from x bit for bit (so out > 0 is z > 0: out is not read back). Caffe sums
 * with float32 BLAS calls (gemv) in an order of the BLAS's choosing; here every sum is a float64
 * accumulator rounded to float once, sum(dy) and sum(y * dy) taken as gamma * sum(gz) and
 * gamma * sum(gz * y) (the per-term roundings of gz * gamma lie below the float32 summation error). Built with
 * -ffp-contract=off and no fast-math: nothing is fused or reassociated.
 *
 * Row chunks: each pass splits the rows into chunks fixed by `rows` alone (at least 256 rows, at most
 * MAX_CHUNKS chunks), runs them on `threads` OpenMP threads (PyTorch's own runtime when built with
 * -fopenmp) and adds the chunks' float64 sums in chunk order: the same bits for every thread count.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CHUNKS 16
static int64_t chunk_rows(int64_t rows) { int64_t s = (rows + MAX_CHUNKS - 1) / MAX_CHUNKS; return s < 256 ? 256 : s; }
static int64_t chunk_count(int64_t rows) { return rows ? (rows + chunk_rows(rows) - 1) / chunk_rows(rows) : 0; }

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* Caffe's ReLU with negative_slope 0: std::max(z, 0) + 0 * std::min(z, 0) (NaN stays NaN, -0 stays -0). */
static inline float relu(float z) { return z < 0.0f ? 0.0f : z; }

/* Per-chunk float64 sums of x - K and (x - K)^2 over the chunk's rows, per channel, about a shift K
 * (the first row: one pass instead of two, without the cancellation of raw sums of squares). */
VECTOR_CLONES
static void chunk_moments(int64_t r0, int64_t r1, int64_t c, const float *x, int64_t xs, const float *shift,
                          double *acc)
{
    double *s1 = acc, *s2 = acc + c;
    memset(acc, 0, 2 * (size_t)c * sizeof(double));
    for (int64_t r = r0; r < r1; r++) {
        const float *xr = x + r * xs;
        for (int64_t j = 0; j < c; j++) {
            const double d = (double)xr[j] - (double)shift[j];
            s1[j] += d;
            s2[j] += d * d;
        }
    }
}

/* mean, var (biased) and std = sqrt(var + eps) of each channel over the rows, in one pass over x.
 * Caffe makes two: mean = sum(x) / m, then var = sum((x - mean)^2) / m with x - mean and its square
 * rounded to float. Here sum((x - mean)^2) about the float mean is had from the shifted float64 sums
 * (S2 - 2 (mean - K) S1 + m (mean - K)^2), which is its exact value up to float64 rounding: the
 * float roundings of Caffe's terms (relative 2^-23 each) lie below the float32 summation error of its
 * BLAS, and no order of that summation is Caffe's own. Returns 0, or -1 without scratch memory. */
int bn_statistics(int64_t rows, int64_t c, const float *x, int64_t xs, float eps, float *mean, float *var,
                  float *std, int threads)
{
    const int64_t chunks = chunk_count(rows), step = chunk_rows(rows);
    double *acc = (double *)malloc((size_t)(chunks ? chunks : 1) * 2 * (size_t)c * sizeof(double));
    if (!acc)
        return -1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t k = 0; k < chunks; k++) {
        const int64_t r0 = k * step, r1 = r0 + step < rows ? r0 + step : rows;
        chunk_moments(r0, r1, c, x, xs, x, acc + k * 2 * c);
    }
    const double m = (double)rows;
    for (int64_t j = 0; j < c; j++) {
        double s1 = 0.0, s2 = 0.0;
        for (int64_t k = 0; k < chunks; k++) {
            s1 += acc[(k * 2) * c + j];
            s2 += acc[(k * 2 + 1) * c + j];
        }
        const double shift = (double)x[j];
        mean[j] = (float)(shift + s1 / m);
        const double offset = (double)mean[j] - shift;
        const double centred = s2 - 2.0 * offset * s1 + m * offset * offset;
        var[j] = (float)((centred > 0.0 ? centred : 0.0) / m);
        std[j] = sqrtf(var[j] + eps); /* caffe_add_scalar(eps), then caffe_powx(0.5) */
    }
    free(acc);
    return 0;
}

/* stage 0: y = (x - mean) / std (BatchNorm's top); 1: z = y * gamma + beta (Scale's top);
 * 2: relu(z). Output rows of c floats, contiguous (stride c). */
VECTOR_CLONES
static void apply_rows(int64_t r0, int64_t r1, int64_t c, const float *x, int64_t xs, const float *mean,
                       const float *std, const float *gamma, const float *beta, int stage, float *out)
{
    for (int64_t r = r0; r < r1; r++) {
        const float *xr = x + r * xs;
        float *o = out + r * c;
        if (stage == 0) {
            for (int64_t j = 0; j < c; j++)
                o[j] = (xr[j] - mean[j]) / std[j];
        } else if (stage == 1) {
            for (int64_t j = 0; j < c; j++)
                o[j] = (xr[j] - mean[j]) / std[j] * gamma[j] + beta[j];
        } else {
            for (int64_t j = 0; j < c; j++)
                o[j] = relu((xr[j] - mean[j]) / std[j] * gamma[j] + beta[j]);
        }
    }
}

void bn_apply(int64_t rows, int64_t c, const float *x, int64_t xs, const float *mean, const float *std,
              const float *gamma, const float *beta, int stage, float *out, int threads)
{
    const int64_t chunks = chunk_count(rows), step = chunk_rows(rows);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t k = 0; k < chunks; k++) {
        const int64_t r0 = k * step, r1 = r0 + step < rows ? r0 + step : rows;
        apply_rows(r0, r1, c, x, xs, mean, std, gamma, beta, stage, out);
    }
}

/* The ReLU's backward, Caffe's top_diff * (bottom_data > 0) with its in-place bottom (the output):
 * g where z > 0, else g * 0. */
static inline float relu_gradient(float g, float y, float gamma, float beta)
{
    return g * (y * gamma + beta > 0.0f ? 1.0f : 0.0f);
}

/* Backward pass 1 over a chunk: per channel sum(gz) and sum(gz * y) into acc (2 x c doubles).
 * beta == NULL: no ReLU (gz = g). */
VECTOR_CLONES
static void chunk_gradient_sums(int64_t r0, int64_t r1, int64_t c, const float *g, int64_t gs, const float *x,
                                int64_t xs, const float *mean, const float *std, const float *gamma,
                                const float *beta, double *acc)
{
    double *s_gz = acc, *s_gzy = acc + c;
    memset(acc, 0, 2 * (size_t)c * sizeof(double));
    for (int64_t r = r0; r < r1; r++) {
        const float *gr = g + r * gs, *xr = x + r * xs;
        for (int64_t j = 0; j < c; j++) {
            const float y = (xr[j] - mean[j]) / std[j];
            const float gz = beta ? relu_gradient(gr[j], y, gamma[j], beta[j]) : gr[j];
            s_gz[j] += (double)gz;
            s_gzy[j] += (double)(gz * y);
        }
    }
}

/* Backward pass 2 over a chunk: dx = (dy + neg_inv_m * (y * sum_ydy + sum_dy)) / std (Caffe's
 * caffe_mul, gemm with beta 1, axpby and caffe_div, each rounded). */
VECTOR_CLONES
static void chunk_input_gradient(int64_t r0, int64_t r1, int64_t c, const float *g, int64_t gs, const float *x,
                                 int64_t xs, const float *mean, const float *std, const float *gamma,
                                 const float *beta, const float *sum_dy, const float *sum_ydy, float neg_inv_m,
                                 float *dx)
{
    for (int64_t r = r0; r < r1; r++) {
        const float *gr = g + r * gs, *xr = x + r * xs;
        float *dr = dx + r * c;
        for (int64_t j = 0; j < c; j++) {
            const float y = (xr[j] - mean[j]) / std[j];
            const float gz = beta ? relu_gradient(gr[j], y, gamma[j], beta[j]) : gr[j];
            const float dy = gz * gamma[j];
            const float t = y * sum_ydy[j] + sum_dy[j];
            dr[j] = (dy + neg_inv_m * t) / std[j];
        }
    }
}

/* The chain's backward: dx (rows of c floats, contiguous), dgamma and dbeta (c floats each, written,
 * not added). relu_beta: Scale's beta for a chain with ReLU (the mask is recomputed from x), NULL
 * without. Returns 0, or -1 without scratch memory. */
int bn_chain_backward(int64_t rows, int64_t c, const float *g, int64_t gs, const float *x, int64_t xs,
                      const float *mean, const float *std, const float *gamma, const float *relu_beta,
                      float neg_inv_m, float *dx, float *dgamma, float *dbeta, int threads)
{
    const int64_t chunks = chunk_count(rows), step = chunk_rows(rows);
    double *acc = (double *)malloc((size_t)(chunks ? chunks : 1) * 2 * (size_t)c * sizeof(double));
    float *sums = (float *)malloc(2 * (size_t)c * sizeof(float));
    if (!acc || !sums) {
        free(acc);
        free(sums);
        return -1;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t k = 0; k < chunks; k++) {
        const int64_t r0 = k * step, r1 = r0 + step < rows ? r0 + step : rows;
        chunk_gradient_sums(r0, r1, c, g, gs, x, xs, mean, std, gamma, relu_beta, acc + k * 2 * c);
    }
    float *sum_dy = sums, *sum_ydy = sums + c;
    for (int64_t j = 0; j < c; j++) {
        double s_gz = 0.0, s_gzy = 0.0;
        for (int64_t k = 0; k < chunks; k++) {
            s_gz += acc[(k * 2) * c + j];
            s_gzy += acc[(k * 2 + 1) * c + j];
        }
        dbeta[j] = (float)s_gz;
        dgamma[j] = (float)s_gzy;
        /* sum(dy) = gamma sum(gz) and sum(y dy) = gamma sum(gz y), rounded once */
        sum_dy[j] = (float)((double)gamma[j] * s_gz);
        sum_ydy[j] = (float)((double)gamma[j] * s_gzy);
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t k = 0; k < chunks; k++) {
        const int64_t r0 = k * step, r1 = r0 + step < rows ? r0 + step : rows;
        chunk_input_gradient(r0, r1, c, g, gs, x, xs, mean, std, gamma, relu_beta, sum_dy, sum_ydy, neg_inv_m,
                             dx);
    }
    free(acc);
    free(sums);
    return 0;
}
