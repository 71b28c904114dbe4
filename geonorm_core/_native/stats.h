/* geonorm accumulators: what one block of values adds to a quantity's moments
 * and histogram (geonorm_core/analysis/accumulate.py's Moments, Histogram, Quantity).
 *
 * Single-threaded and allocation-free; blocks are small (one value per token of
 * a batch).  The Python side keeps the running state and merges each block's
 * statistics into it (Chan's formula in double-double, accumulate.py).
 */
#ifndef GEONORM_STATS_H
#define GEONORM_STATS_H

#include <stdint.h>

/* One block's corrected two-pass statistics (Bjorck; Chan, Golub & LeVeque):
 *   m  = fl(sum(x) / count)                first pass
 *   r  = sum(x - m)                        second pass: the residual of m
 *   m2 = sum((x - m)^2) - r^2 / count      clamped >= 0
 * over the finite values x; the block's mean is m + r / count. */
typedef struct {
    int64_t count;     /* finite values */
    int64_t nan_count; /* NaN and +-Inf values, skipped */
    double m, r, m2;   /* all 0 when count == 0 */
    double min, max;   /* of the finite values; +inf and -inf when count == 0 */
} gn_block_stats;

/* Fixed bins over [lo, hi]: bin k holds edges[k] <= v < edges[k + 1], the last
 * bin also v == hi.  v < lo counts in underflow, v > hi in overflow, NaN in nan. */
typedef struct {
    double lo, hi;
    int64_t bins;
    const double *edges; /* bins + 1 values: np.linspace(lo, hi, bins + 1) */
    int64_t *counts;     /* bins counters, added to */
    int64_t underflow, overflow, nan; /* added to */
} gn_histogram;

/* The statistics of x[0..n). */
void gn_block_moments(const double *x, int64_t n, gn_block_stats *out);

/* Count x[0..n) into h; with take_log10, count log10(x) instead (0 -> -inf ->
 * underflow, negative -> NaN -> nan), log10 being the C library's. */
void gn_histogram_add(gn_histogram *h, const double *x, int64_t n, int take_log10);

/* Both for one quantity: the moments of x, the histogram of x or of log10(x). */
void gn_quantity_add(const double *x, int64_t n, int take_log10, gn_block_stats *out, gn_histogram *h);

/* The log10 histograms' first guess at log10(x): within GN_LOG10_GUESS_ERR of
 * the C library's log10 for a positive normal x, meaningless for any other x
 * (exposed for the tests). */
#define GN_LOG10_GUESS_ERR 6e-7
double gn_log10_guess(double x);

#endif
