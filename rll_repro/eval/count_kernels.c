/* How many similarities of each row (and column) of a tile lie above a threshold: the counts of
 * rll_repro/eval/counts.py in one pass, built by rll_repro/native.py. The counts are exact integers
 * of IEEE float comparisons (NaN compares false, as numpy's), so the ranks they give are the same. */
#include <math.h>
#include <stdint.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* #{v > t} into *above and #{v >= t} into *at_or_above, over cols values. */
VECTOR_CLONES
static void count_row(const float *v, int64_t cols, float t, int64_t *above, int64_t *at_or_above)
{
    int32_t g = 0, a = 0;
    for (int64_t c = 0; c < cols; c++) {
        g += v[c] > t;
        a += v[c] >= t;
    }
    *above = g;
    *at_or_above = a;
}

/* Rows 0 .. rows-1 of values (row stride `stride` floats): above[r] = #{v > thr[r]},
 * at_or_above[r] = #{v >= thr[r]} over the first cols entries, on `threads` OpenMP threads (the
 * process's runtime: PyTorch's, when built with -fopenmp; exact integers whatever the split). */
void rows_above(int64_t rows, int64_t cols, int64_t stride, const float *values, const float *thr,
                int64_t *above, int64_t *at_or_above, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++)
        count_row(values + r * stride, cols, thr[r], above + r, at_or_above + r);
}

/* A tile's counts for its rows and, from column `off` on, for its columns: row_g[r] += #{v > t_rows[r]},
 * row_a[r] += #{v >= t_rows[r]} over all cols; col_g[c] += #{v > t_cols[c]}, col_a[c] += #{v >=
 * t_cols[c]} over all rows, for c in off .. cols-1 (t_cols, col_g, col_a indexed from off). */
void tile_counts(int64_t rows, int64_t cols, int64_t stride, const float *values, const float *t_rows,
                 int64_t off, const float *t_cols, int64_t *row_g, int64_t *row_a, int64_t *col_g,
                 int64_t *col_a)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *v = values + r * stride;
        int64_t g, a;
        count_row(v, cols, t_rows[r], &g, &a);
        row_g[r] += g;
        row_a[r] += a;
        const float *w = v + off;
        for (int64_t c = 0; c < cols - off; c++) {
            col_g[c] += w[c] > t_cols[c];
            col_a[c] += w[c] >= t_cols[c];
        }
    }
}

/* Each row's most similar same-label item: over its candidates pos[r, 0 .. width-1] (gallery
 * indices, -1 = none), best[r] = the highest similarity (-inf without candidates; NaN if one is
 * NaN, as numpy's max), first[r] = the lowest index reaching it and tied[r] = how many do (none when
 * best is NaN: NaN equals nothing). */
void best_positive(int64_t rows, int64_t stride, const float *values, const int64_t *pos, int64_t width,
                   float *best, int64_t *first, int64_t *tied, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *v = values + r * stride;
        const int64_t *pr = pos + r * width;
        float b = -INFINITY;
        int64_t p = INT64_MAX, n = 0;
        int nan = 0;
        for (int64_t c = 0; c < width; c++) {
            if (pr[c] < 0)
                continue;
            const float x = v[pr[c]];
            if (x != x)
                nan = 1;
            else if (x > b) {
                b = x;
                p = pr[c];
                n = 1;
            } else if (x == b) {
                n++;
                p = pr[c] < p ? pr[c] : p;
            }
        }
        best[r] = nan ? NAN : b;
        first[r] = nan || n == 0 ? INT64_MAX : p;
        tied[r] = nan ? 0 : n;
    }
}
