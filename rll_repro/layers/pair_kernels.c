/* Per-pair arithmetic of the two papers' pair losses over one block row of rll_repro.layers._pairwise
 * (rows r0 .. r0+k-1 against columns r0 .. r0+m-1, row-major k x m; columns 0 .. k-1 are the diagonal
 * block). One pass where the PyTorch path makes one pass per operation; every float operation is the
 * float32 operation the PyTorch path (and Caffe) performs, in the same order, so the two paths agree
 * bit for bit except for powf/exp (libm here, SLEEF or CUDA's there: within an ulp), sqrtf (correctly
 * rounded here, as Caffe's; torch's vectorised float sqrt can be an ulp off) and the order of the
 * float64 sums. Built with -ffp-contract=off and no fast-math: nothing is fused or reassociated.
 *
 * Labels are int64 class ids (equal ids <=> equal labels). Sums are float64 accumulators the caller
 * owns (added to, not overwritten). A pair (i, j) of the diagonal block appears in both orders; a pair
 * right of it once, so its column-side sums go to the column accumulators.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* Row chunks: each pass splits its k rows into chunks fixed by k alone (at least 32 rows, at most 8
 * chunks), runs them on `threads` OpenMP threads (built with -fopenmp, the process's OpenMP runtime:
 * PyTorch's own, whose threads are already spinning after its last GEMM) and adds each chunk's
 * accumulators in chunk order, so the results are the same for every thread count (and without
 * OpenMP, where the pragmas are ignored). */
#define MAX_CHUNKS 8 /* the per-chunk arrays below are this long */
static int64_t chunk_rows(int64_t k) { int64_t s = (k + MAX_CHUNKS - 1) / MAX_CHUNKS; return s < 32 ? 32 : s; }
static int64_t chunk_count(int64_t k) { return (k + chunk_rows(k) - 1) / chunk_rows(k); }
static int64_t chunk_end(int64_t k, int64_t c) { int64_t e = (c + 1) * chunk_rows(k); return e < k ? e : k; }

/* Wider-vector clones of the product loops where the toolchain supports them (GCC on x86-64 Linux);
 * products and sums stay separate, so every clone gives the same bits. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* torch.minimum's semantics: NaN in, NaN out. */
static double min_nan(double a, double b) { return (a != a || b != b) ? NAN : (a < b ? a : b); }
static float minf_nan(float a, float b) { return (a != a || b != b) ? NAN : (a < b ? a : b); }

/* sum_c (double)(a[c] * b[c]) with the float products rounded (Caffe's float x*x), or exact double
 * products (exact = 1), summed in double in 8 interleaved chains: the order differs from a plain loop
 * by float64 rounding only (the callers round the sum to float). */
static double dot64(int64_t dim, const float *a, const float *b, int exact)
{
    double acc[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    int64_t c = 0;
    for (; c + 8 <= dim; c += 8)
        for (int l = 0; l < 8; l++)
            acc[l] += exact ? (double)a[c + l] * (double)b[c + l] : (double)(a[c + l] * b[c + l]);
    double s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; c < dim; c++)
        s += exact ? (double)a[c] * (double)b[c] : (double)(a[c] * b[c]);
    return s;
}

/* RLL (SPEC rll 1.1-1.5), pass 1 over rows i0 .. i1-1: w = pow(base, T t) where t > 0 (t = d - pb for positives, nb - d
 * for negatives; the diagonal 0) into w_out; per-anchor float64 sums of w over all / positive pairs
 * for the rows (row_all, row_pos) and, for columns k.., the columns (col_all, col_pos, indexed by
 * column); *total += sum over both orders of the squared value hinge (thresholds vlo / vhi, or t
 * itself where same_bounds). Returns the number of nonzero w. */
static int64_t rll_weights_rows(int64_t k, int64_t m, int64_t i0, int64_t i1, const float *d2, const int64_t *y,
                                float pb, float nb, float tp, float tn, float bp, float bn, int same_bounds,
                                float vlo, float vhi, float *w_out, double *row_all, double *row_pos,
                                double *col_all, double *col_pos, double *total)
{
    double diag_sum = 0.0, right_sum = 0.0;
    int64_t nonzeros = 0;
    for (int64_t i = i0; i < i1; i++) {
        const float *dr = d2 + i * m;
        float *wr = w_out + i * m;
        const int64_t yi = y[i];
        double all = 0.0, pos = 0.0;
        for (int64_t j = 0; j < m; j++) {
            const float d = sqrtf(dr[j]);
            const int same = y[j] == yi;
            const float t = same ? d - pb : nb - d;
            float w = 0.0f;
            if (!(t <= 0.0f) && j != i)
                w = powf(same ? bp : bn, t * (same ? tp : tn));
            wr[j] = w;
            nonzeros += w != 0.0f;
            const double w64 = (double)w;
            all += w64;
            if (same)
                pos += w64;
            if (j >= k) {
                col_all[j] += w64;
                if (same)
                    col_pos[j] += w64;
            }
            float h = same_bounds ? t : (same ? d - vlo : vhi - d);
            h = h < 0.0f ? 0.0f : h;
            const float sq = j == i ? 0.0f : h * h;
            if (j < k)
                diag_sum += (double)sq;
            else
                right_sum += (double)sq;
        }
        row_all[i] += all;
        row_pos[i] += pos;
    }
    *total += diag_sum + 2.0 * right_sum;
    return nonzeros;
}

/* rll_weights_rows over the row chunks (each with its own column sums, total and count, added in
 * chunk order); returns the number of nonzero w, or -1 without memory for the chunks' sums. */
int64_t rll_weights(int64_t k, int64_t m, const float *d2, const int64_t *y, float pb, float nb, float tp,
                    float tn, float bp, float bn, int same_bounds, float vlo, float vhi, float *w_out,
                    double *row_all, double *row_pos, double *col_all, double *col_pos, double *total, int threads)
{
    const int64_t chunks = chunk_count(k), width = 2 * m + 2;
    double *part = calloc((size_t)(chunks * width), sizeof(double)); /* per chunk: columns all, pos; total; count */
    if (!part)
        return -1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t c = 0; c < chunks; c++) {
        double *pc = part + c * width;
        pc[2 * m + 1] = (double)rll_weights_rows(k, m, c * chunk_rows(k), chunk_end(k, c), d2, y, pb, nb, tp, tn, bp,
                                                 bn, same_bounds, vlo, vhi, w_out, row_all, row_pos, pc, pc + m,
                                                 pc + 2 * m);
    }
    int64_t nonzeros = 0;
    for (int64_t c = 0; c < chunks; c++) {
        const double *pc = part + c * width;
        for (int64_t j = k; j < m; j++) {
            col_all[j] += pc[j];
            col_pos[j] += pc[m + j];
        }
        *total += pc[2 * m];
        nonzeros += (int64_t)pc[2 * m + 1];
    }
    free(part);
    return nonzeros;
}

/* RLL's signed coefficient of one pair for the anchor a (the row i, or the column j): K = ((0.5 w /
 * S_a) * share_a) * scale (S_a = S+_a for positives, -S-_a for negatives), scale = float(1 /
 * (double(d) + 1e-6)) * lam (unit direction, V12) or lam (raw difference, CVPR era); sp, sn, share
 * are indexed like the columns (global r0 ..). */
static double rll_coefficient(float w, float d2, int same, int64_t a, const float *sp, const float *sn,
                              const float *share, float lam, int unit)
{
    const float hw = w * 0.5f;
    const float scale = unit ? (float)(1.0 / ((double)sqrtf(d2) + 1e-6)) * lam : lam;
    return (double)(hw / (same ? sp[a] : -sn[a]) * share[a] * scale);
}

/* RLL pass 2, dense: K as float64, row anchor into a_row and, where a_col is not NULL, the column
 * anchor for columns k.. into a_col; the diagonal (and a_col's diagonal block) 0. */
void rll_coefficients(int64_t k, int64_t m, const float *d2, const float *w, const int64_t *y,
                      const float *sp, const float *sn, const float *share, float lam, int unit,
                      double *a_row, double *a_col, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < k; i++)
        for (int64_t j = 0; j < m; j++) {
            const int64_t e = i * m + j;
            const int same = y[j] == y[i];
            a_row[e] = j == i ? 0.0 : rll_coefficient(w[e], d2[e], same, i, sp, sn, share, lam, unit);
            if (a_col)
                a_col[e] = j < k ? 0.0 : rll_coefficient(w[e], d2[e], same, j, sp, sn, share, lam, unit);
        }
}

/* OSM+CAA (SPEC osm 2.1-2.3), pass 1 over rows i0 .. i1-1: hinge = max(m - d, 0); raw = the Gaussian pdf of d for
 * positives (q = (d - mean) / sigma, or d / sigma when mean is 0; float((double)((q * -0.5) * q)
 * exp * inv_divider)), the hinge for negatives, into raw_out; sums[0] += both orders of the value
 * terms (d^2 for positives, hinge^2 for negatives), sums[1] / sums[2] += both orders of raw * c over
 * all / positive pairs, c = min(s_i, s_j). The diagonal is 0. Returns the number of nonzero raw
 * off the diagonal. */
static int64_t osm_terms_rows(int64_t k, int64_t m, int64_t i0, int64_t i1, const float *d2, const int64_t *y,
                              const float *s, float margin, float mean, float sigma, double inv_divider,
                              float *raw_out, double *sums)
{
    double value[2] = {0.0, 0.0}, set[2] = {0.0, 0.0}, pos[2] = {0.0, 0.0};
    int64_t nonzeros = 0;
    for (int64_t i = i0; i < i1; i++) {
        const float *dr = d2 + i * m;
        float *rr = raw_out + i * m;
        const int64_t yi = y[i];
        const float si = s[i];
        for (int64_t j = 0; j < m; j++) {
            const int side = j >= k;
            const float d = sqrtf(dr[j]);
            const int same = y[j] == yi;
            float hinge = margin - d;
            hinge = hinge < 0.0f ? 0.0f : hinge;
            float raw = hinge;
            if (same) {
                const float q = mean == 0.0f ? d / sigma : (d - mean) / sigma;
                const float e = q * -0.5f * q;
                raw = (float)(exp((double)e) * inv_divider);
            }
            const float c = minf_nan(si, s[j]);
            const float rc = raw * c;
            if (j == i) {
                rr[j] = raw;
                continue;
            }
            rr[j] = raw;
            nonzeros += raw != 0.0f;
            value[side] += (double)(same ? dr[j] : hinge * hinge);
            set[side] += (double)rc;
            if (same)
                pos[side] += (double)rc;
        }
    }
    sums[0] += value[0] + 2.0 * value[1];
    sums[1] += set[0] + 2.0 * set[1];
    sums[2] += pos[0] + 2.0 * pos[1];
    return nonzeros;
}

/* osm_terms_rows over the row chunks (each with its own sums, added in chunk order). */
int64_t osm_terms(int64_t k, int64_t m, const float *d2, const int64_t *y, const float *s, float margin,
                  float mean, float sigma, double inv_divider, float *raw_out, double *sums, int threads)
{
    const int64_t chunks = chunk_count(k);
    double part[MAX_CHUNKS][4] = {{0.0}}; /* per chunk: the three sums and the count */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t c = 0; c < chunks; c++)
        part[c][3] = (double)osm_terms_rows(k, m, c * chunk_rows(k), chunk_end(k, c), d2, y, s, margin, mean, sigma,
                                            inv_divider, raw_out, part[c]);
    int64_t nonzeros = 0;
    for (int64_t c = 0; c < chunks; c++) {
        for (int l = 0; l < 3; l++)
            sums[l] += part[c][l];
        nonzeros += (int64_t)part[c][3];
    }
    return nonzeros;
}

/* OSM's (symmetric) coefficient of one pair: a = float(double(raw) * double(c) / (2 S)) * coef (S = S+
 * for positives, S- for negatives; coef = alpha for positives, (hinge * -alpha) / (d + eps_neg) for
 * negatives). */
static double osm_coefficient(float d2, float raw, int same, float si, float sj, float margin, float alpha,
                              float eps_neg, double twice_pos, double twice_neg)
{
    const float d = sqrtf(d2);
    float hinge = margin - d;
    hinge = hinge < 0.0f ? 0.0f : hinge;
    const float coef = same ? alpha : hinge * -alpha / (d + eps_neg);
    const float c = minf_nan(si, sj);
    const float w = (float)((double)raw * (double)c / (same ? twice_pos : twice_neg));
    return (double)(w * coef);
}

/* OSM pass 2, dense: a as float64, diagonal 0. */
void osm_coefficients(int64_t k, int64_t m, const float *d2, const float *raw, const int64_t *y,
                      const float *s, float margin, float alpha, float eps_neg, double twice_pos,
                      double twice_neg, double *a, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < k; i++)
        for (int64_t j = 0; j < m; j++) {
            const int64_t e = i * m + j;
            a[e] = j == i ? 0.0 : osm_coefficient(d2[e], raw[e], y[j] == y[i], s[i], s[j], margin, alpha, eps_neg,
                                                   twice_pos, twice_neg);
        }
}

/* |f_i|^2 of float32 rows in float64 (exact products, float64 sum). */
void squared_norms(int64_t n, int64_t dim, const float *f, double *out, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; i++)
        out[i] = dot64(dim, f + i * dim, f + i * dim, 1);
}

/* Rows i0 .. i1-1 of gram_distances (its diagonal block already clamped): their d2 and their first
 * cap near pairs in row-major order; returns how many. */
static int64_t gram_rows(int64_t k, int64_t m, int64_t i0, int64_t i1, const double *g, const double *sq,
                         const float *ns, float *d2, int64_t cap, int64_t *near)
{
    int64_t found = 0;
    for (int64_t i = i0; i < i1; i++) {
        const double *gr = g + i * m;
        float *dr = d2 + i * m;
        for (int64_t j = 0; j < m; j++) {
            double v;
            if (j < k)
                v = j == i ? 0.0 : min_nan(gr[j], g[j * m + i]);
            else {
                v = gr[j] + sq[j];
                v = v != v ? v : (v < 0.0 ? 0.0 : v);
            }
            const float x = (float)v;
            dr[j] = x;
            if (found < cap && j != i && x < ns[i] + ns[j]) {
                near[2 * found] = i;
                near[2 * found + 1] = j;
                found++;
            }
        }
    }
    return found;
}

/* A Gram block g (float64 k x m, holding |f_i|^2 - 2 f_i.f_j) into squared distances: d2 = float(max(g
 * + |f_j|^2, 0)), the diagonal block made symmetric (the minimum of both orders; this writes g's
 * diagonal block) with its diagonal 0. Near pairs, d2 < ns_i + ns_j (float sum; the diagonal
 * excluded), are listed in row-major order as local (i, j) into near (2 * cap int64). Returns the
 * number of near pairs listed (the first cap), or -1 without memory for the chunks' lists. */
int64_t gram_distances(int64_t k, int64_t m, double *g, const double *sq, const float *ns, float *d2,
                       int64_t cap, int64_t *near, int threads)
{
    for (int64_t i = 0; i < k; i++) /* the diagonal block first: rows read each other's entries there */
        for (int64_t j = 0; j < k; j++) {
            const double v = g[i * m + j] + sq[j];
            g[i * m + j] = v != v ? v : (v < 0.0 ? 0.0 : v);
        }
    const int64_t chunks = chunk_count(k);
    int64_t found[MAX_CHUNKS] = {0};
    int64_t *lists = malloc((size_t)(chunks * 2 * cap + 1) * sizeof(int64_t)); /* + 1: cap may be 0 */
    if (!lists)
        return -1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t c = 0; c < chunks; c++)
        found[c] = gram_rows(k, m, c * chunk_rows(k), chunk_end(k, c), g, sq, ns, d2, cap, lists + c * 2 * cap);
    int64_t total = 0; /* the first cap in row-major order: the chunks' lists in chunk order */
    for (int64_t c = 0; c < chunks && total < cap; c++)
        for (int64_t p = 0; p < found[c] && total < cap; p++, total++) {
            near[2 * total] = lists[c * 2 * cap + 2 * p];
            near[2 * total + 1] = lists[c * 2 * cap + 2 * p + 1];
        }
    free(lists);
    return total;
}

/* The gradient's last step, g = float(f * rowsum - af) (float64 product and difference, rounded). */
void combine_gradient(int64_t n, int64_t dim, const double *f, const double *rowsum, const double *af, float *out,
                      int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < dim; c++)
            out[i * dim + c] = (float)(f[i * dim + c] * rowsum[i] - af[i * dim + c]);
}

/* The gradient product over the nonzero coefficients only (the coefficient of a pair that violates
 * no margin is 0), fused with pass 2: where few pairs are active this replaces the dense coefficient
 * matrices and their GEMM. f, af, rowsum are indexed like the columns (global r0 ..). Row side, per
 * row chunk: af[i] += a_row f[j] and rowsum[i] += a_row over all j; column side (where columns), per
 * chunk of the columns k .. m-1: af[j] += a_col f[i] and rowsum[j] += a_col over all rows i < k. The
 * two sides write different rows of af, so all chunks run at once. The near pairs (row-major local
 * (i, j), near_count of them) are left out; their coefficients go to near_row / near_col (zeroed by
 * the caller) for its difference-vector terms. Each output element adds its terms in a fixed order
 * (j for a row, i for a column), products and sums kept separate: neither the chunks' threads nor
 * the vector width of the clone change a bit. */
VECTOR_CLONES
static void add_scaled(int64_t dim, double c, const double *src, double *dst)
{
    for (int64_t e = 0; e < dim; e++)
        dst[e] += c * src[e];
}

typedef struct {
    const double *f;
    double *af, *rowsum, *near_out;
    const int64_t *near;
    int64_t dim, near_count, next;
} Product;

/* Whether (i, j) is a near pair, for pairs visited in row-major order (the index only moves forward;
 * p->next is then its position in the list). */
static int is_near(Product *p, int64_t i, int64_t j)
{
    while (p->next < p->near_count &&
           (p->near[2 * p->next] < i || (p->near[2 * p->next] == i && p->near[2 * p->next + 1] < j)))
        p->next++;
    return p->next < p->near_count && p->near[2 * p->next] == i && p->near[2 * p->next + 1] == j;
}

/* c f[src] into af[dst] and c into rowsum[dst], or c recorded where (i, j) is a near pair. */
static void add_term(Product *p, int64_t i, int64_t j, int64_t dst, int64_t src, double c)
{
    if (is_near(p, i, j)) {
        p->near_out[p->next] = c;
        return;
    }
    if (c != 0.0) {
        p->rowsum[dst] += c;
        add_scaled(p->dim, c, p->f + src * p->dim, p->af + dst * p->dim);
    }
}

/* The tasks of one sparse pass: row chunks, then (with columns) chunks of the columns k .. m-1;
 * task t's row range (row side) or column range (column side). */
static int64_t sparse_tasks(int64_t k, int64_t m, int columns)
{
    return chunk_count(k) + (columns && m > k ? chunk_count(m - k) : 0);
}

static int sparse_task(int64_t k, int64_t m, int64_t t, int64_t *lo, int64_t *hi)
{
    if (t < chunk_count(k)) {
        *lo = t * chunk_rows(k);
        *hi = chunk_end(k, t);
        return 0;
    }
    t -= chunk_count(k);
    *lo = k + t * chunk_rows(m - k);
    *hi = k + chunk_end(m - k, t);
    return 1;
}

/* The traversal both sparse passes share: task t of sparse_tasks, pairs visited in row-major order,
 * those with active[e] == 0 (no coefficient) skipped unless near; coef gives the pair's coefficient
 * for its anchor (the row on the row side, the column on the column side). */
typedef double (*Coefficient)(const void *ctx, int64_t e, int64_t i, int64_t j, int64_t anchor);

static void sparse_pass(int64_t k, int64_t m, int columns, const float *active, Coefficient coef, const void *ctx,
                        int64_t dim, const double *f, double *af, double *rowsum, int64_t near_count,
                        const int64_t *near, double *near_row, double *near_col, int threads)
{
    const int64_t tasks = sparse_tasks(k, m, columns);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t lo, hi;
        const int column_side = sparse_task(k, m, t, &lo, &hi);
        Product p = {f, af, rowsum, column_side ? near_col : near_row, near, dim, near_count, 0};
        for (int64_t i = column_side ? 0 : lo; i < (column_side ? k : hi); i++)
            for (int64_t j = column_side ? lo : 0; j < (column_side ? hi : m); j++) {
                const int64_t e = i * m + j;
                if (j == i || (active[e] == 0.0f && !is_near(&p, i, j)))
                    continue;
                const int64_t anchor = column_side ? j : i;
                add_term(&p, i, j, anchor, column_side ? i : j, coef(ctx, e, i, j, anchor));
            }
    }
}

typedef struct {
    const float *d2, *w, *sp, *sn, *share;
    const int64_t *y;
    float lam;
    int unit;
} RLLPass;

static double rll_pair(const void *ctx, int64_t e, int64_t i, int64_t j, int64_t anchor)
{
    const RLLPass *c = ctx;
    return rll_coefficient(c->w[e], c->d2[e], c->y[j] == c->y[i], anchor, c->sp, c->sn, c->share, c->lam, c->unit);
}

/* RLL pass 2 (the coefficients of rll_coefficients) and the product, sparse. */
void rll_sparse_gradient(int64_t k, int64_t m, const float *d2, const float *w, const int64_t *y,
                         const float *sp, const float *sn, const float *share, float lam, int unit,
                         int columns, int64_t dim, const double *f, double *af, double *rowsum,
                         int64_t near_count, const int64_t *near, double *near_row, double *near_col, int threads)
{
    const RLLPass ctx = {d2, w, sp, sn, share, y, lam, unit};
    sparse_pass(k, m, columns, w, rll_pair, &ctx, dim, f, af, rowsum, near_count, near, near_row, near_col, threads);
}

typedef struct {
    const float *d2, *raw, *s;
    const int64_t *y;
    float margin, alpha, eps_neg;
    double twice_pos, twice_neg;
} OSMPass;

static double osm_pair(const void *ctx, int64_t e, int64_t i, int64_t j, int64_t anchor)
{
    const OSMPass *c = ctx;
    (void)anchor; /* symmetric */
    return osm_coefficient(c->d2[e], c->raw[e], c->y[j] == c->y[i], c->s[i], c->s[j], c->margin, c->alpha,
                           c->eps_neg, c->twice_pos, c->twice_neg);
}

/* OSM pass 2 (the coefficients of osm_coefficients) and the product, sparse; raw == 0 gives a == 0. */
void osm_sparse_gradient(int64_t k, int64_t m, const float *d2, const float *raw, const int64_t *y,
                         const float *s, float margin, float alpha, float eps_neg, double twice_pos,
                         double twice_neg, int columns, int64_t dim, const double *f, double *af,
                         double *rowsum, int64_t near_count, const int64_t *near, double *near_row,
                         double *near_col, int threads)
{
    const OSMPass ctx = {d2, raw, s, y, margin, alpha, eps_neg, twice_pos, twice_neg};
    sparse_pass(k, m, columns, raw, osm_pair, &ctx, dim, f, af, rowsum, near_count, near, near_row, near_col,
                threads);
}

/* L2 Normalization (SPEC rll 2.1, osm 2.5), per sample: scale = float(pow(double(q) + eps, -0.5)),
 * q = float(sum of float(x * x)) summed in double; y = x * scale. */
void l2_normalize_forward(int64_t n, int64_t dim, const float *x, double eps, float *y, float *scale, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float *xr = x + i * dim;
        const float s = (float)pow((double)(float)dot64(dim, xr, xr, 0) + eps, -0.5);
        scale[i] = s;
        for (int64_t c = 0; c < dim; c++)
            y[i * dim + c] = xr[c] * s;
    }
}

/* Its backward: g_x = (g_y - float(dot(y, g_y)) * y) * scale, the dot of float products summed in double. */
void l2_normalize_backward(int64_t n, int64_t dim, const float *y, const float *g, const float *scale, float *out,
                           int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float *yr = y + i * dim, *gr = g + i * dim;
        const float d = (float)dot64(dim, yr, gr, 0), s = scale[i];
        for (int64_t c = 0; c < dim; c++)
            out[i * dim + c] = (gr[c] - d * yr[c]) * s;
    }
}
