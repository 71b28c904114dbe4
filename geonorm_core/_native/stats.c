/* geonorm accumulators (stats.h): what one block of values adds to a
 * quantity's moments and histogram.
 *
 * Layout of this file:
 *   1. vectors of two doubles
 *   2. block moments: the corrected two-pass statistics, with blocked sums
 *   3. histograms: Histogram.update's bin rule, value by value
 *   4. the fast path: bins read off the arithmetic index when it is clear
 *   5. log10 histograms: a cheap log10 guess, exact where it matters
 *   6. the entry points
 *
 * Plain C, single-threaded, no allocation.  The order of every floating-point
 * operation is fixed by the source, so results do not depend on the CPU.
 */
#include "stats.h"

#include <float.h>
#include <math.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* ---------------------------------------------------------------- 1. vectors of two doubles
 *
 * GCC's vector extension (also in clang): arithmetic and comparisons work lane
 * by lane, one SSE2 instruction for both lanes on x86-64 (the baseline; no
 * -march needed).  Written out by hand because gcc does not vectorize the
 * masked loops below by itself.  A comparison gives -1 (all bits set) in a lane
 * where it holds, 0 elsewhere.  gn_min and gn_max use SSE2's minpd and maxpd
 * where there is SSE2, and the same select spelled out elsewhere.
 */

typedef double gn_f64x2 __attribute__((vector_size(16)));
typedef int64_t gn_i64x2 __attribute__((vector_size(16)));
typedef uint64_t gn_u64x2 __attribute__((vector_size(16)));

static inline gn_f64x2 gn_load(const double *p) /* unaligned */
{
    gn_f64x2 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline gn_f64x2 gn_and(gn_f64x2 v, gn_i64x2 mask) { return (gn_f64x2)((gn_i64x2)v & mask); }

/* a < b ? a : b and a > b ? a : b lane by lane: a NaN in a is passed over. */
static inline gn_f64x2 gn_min(gn_f64x2 a, gn_f64x2 b)
{
#ifdef __SSE2__
    return _mm_min_pd(a, b);
#else
    gn_i64x2 lt = a < b;
    return (gn_f64x2)(((gn_i64x2)a & lt) | ((gn_i64x2)b & ~lt));
#endif
}

static inline gn_f64x2 gn_max(gn_f64x2 a, gn_f64x2 b)
{
#ifdef __SSE2__
    return _mm_max_pd(a, b);
#else
    gn_i64x2 gt = a > b;
    return (gn_f64x2)(((gn_i64x2)a & gt) | ((gn_i64x2)b & ~gt));
#endif
}

/* ---------------------------------------------------------------- 2. block moments
 *
 * Accuracy.  Each of the three sums (x, x - m, (x - m)^2) is taken leaf by
 * leaf: a leaf of GN_LEAF values is summed by GN_LANES accumulators (value i
 * goes to accumulator i mod GN_LANES), the accumulators are added pairwise, and
 * the leaves' sums go into a compensated total (Knuth's two-sum keeps the
 * rounding error of every addition).  The rounding error is then at most about
 * (GN_LEAF / GN_LANES + log2 GN_LANES + 2) eps sum|x_i| = 21 eps sum|x_i|,
 * whatever n is.  NumPy's pairwise sum, which accumulate.py used before, has
 * leaves of up to 128 values into 8 accumulators too, and adds log2(n / 128)
 * levels of plain additions above them: about the same bound for a few hundred
 * values, a growing one beyond.
 *
 * The corrected two-pass formula needs little of the first pass: an error in
 * m shows up in r = sum(x - m) and is taken out again (mean = m + r/n,
 * M2 = sum((x - m)^2) - r^2/n).  What counts is the second pass, whose terms
 * are deviations, small even when the mean is 1e8 SDs.
 *
 * Non-finite values.  The first pass runs as if every value were finite.  A
 * NaN or Inf makes its sum non-finite; then it runs again with the non-finite
 * values masked out (v - v == 0 is false exactly for NaN and +-Inf), and the
 * second pass masks them too.  A masked value adds 0 to the sums, so the other
 * values' sums come out the same bits either way.  The last group of a block,
 * when shorter than GN_LANES, is padded with NaN and always masked.
 */

#define GN_LANES 8             /* accumulators per sum */
#define GN_VECS (GN_LANES / 2) /* ... as vectors of two */
#define GN_LEAF 128            /* values per leaf, a multiple of GN_LANES */

/* s + c: a running total and the rounding errors it has dropped. */
typedef struct {
    double s, c;
} gn_sum2;

static inline void gn_sum2_add(gn_sum2 *a, double v)
{
    const double s = a->s + v, v_in_s = s - a->s; /* Knuth's two-sum: s + err == a->s + v exactly */
    a->c += (a->s - (s - v_in_s)) + (v - v_in_s);
    a->s = s;
}

static inline double gn_lanes_sum(const gn_f64x2 *a) /* pairwise, in a fixed order */
{
    const gn_f64x2 t = (a[0] + a[1]) + (a[2] + a[3]);
    return t[0] + t[1];
}

/* The GN_LANES values from x[i] (i < end): x + i itself, or the last values
 * padded with NaN in pad. */
static inline const double *gn_group(const double *x, int64_t i, int64_t end, double *pad)
{
    if (end - i >= GN_LANES) return x + i;
    for (int j = 0; j < GN_LANES; j++) pad[j] = i + j < end ? x[i + j] : NAN;
    return pad;
}

/* The first pass's accumulators.  The order of min, max and count does not
 * matter, so they make do with fewer registers than the sum. */
typedef struct {
    gn_sum2 total;
    gn_i64x2 minus_finite; /* minus the finite values of the masked groups (true is -1) */
    int64_t unmasked;      /* values in the unmasked groups */
    gn_f64x2 lo[2], hi[2];
} gn_first;

static inline void gn_first_group(gn_first *a, gn_f64x2 *s, const double *p, int masked)
{
    for (int j = 0; j < GN_VECS; j++) {
        gn_f64x2 v = gn_load(p + 2 * j);
        if (masked) {
            const gn_i64x2 finite = v - v == 0;
            a->minus_finite += finite;
            s[j] += gn_and(v, finite);
            v = (gn_f64x2)((gn_i64x2)v | ~finite); /* all bits set, a NaN, where not finite */
        } else {
            s[j] += v;
        }
        a->lo[j % 2] = gn_min(v, a->lo[j % 2]); /* a NaN is passed over */
        a->hi[j % 2] = gn_max(v, a->hi[j % 2]);
    }
    if (!masked) a->unmasked += GN_LANES;
}

static void gn_first_pass(const double *x, int64_t n, int masked, gn_first *a)
{
    const gn_f64x2 inf = {INFINITY, INFINITY};
    double pad[GN_LANES];
    memset(a, 0, sizeof *a);
    a->lo[0] = a->lo[1] = inf;
    a->hi[0] = a->hi[1] = -inf;
    for (int64_t start = 0; start < n; start += GN_LEAF) {
        const int64_t end = n - start > GN_LEAF ? start + GN_LEAF : n;
        gn_f64x2 s[GN_VECS] = {{0.0, 0.0}, {0.0, 0.0}, {0.0, 0.0}, {0.0, 0.0}};
        int64_t i = start;
        for (; end - i >= GN_LANES; i += GN_LANES) gn_first_group(a, s, x + i, masked);
        if (i < end) gn_first_group(a, s, gn_group(x, i, end, pad), 1);
        gn_sum2_add(&a->total, gn_lanes_sum(s));
    }
}

static inline void gn_second_group(gn_f64x2 *r, gn_f64x2 *q, const double *p, gn_f64x2 m, int masked)
{
    for (int j = 0; j < GN_VECS; j++) {
        const gn_f64x2 v = gn_load(p + 2 * j);
        const gn_f64x2 d = masked ? gn_and(v - m, v - v == 0) : v - m;
        r[j] += d;
        q[j] += d * d;
    }
}

/* Second pass: r = sum(x - m) and q = sum((x - m)^2). */
static void gn_second_pass(const double *x, int64_t n, double m, int masked, double *r, double *q)
{
    const gn_f64x2 mv = {m, m};
    gn_sum2 rt = {0.0, 0.0}, qt = {0.0, 0.0};
    double pad[GN_LANES];
    for (int64_t start = 0; start < n; start += GN_LEAF) {
        const int64_t end = n - start > GN_LEAF ? start + GN_LEAF : n;
        gn_f64x2 rs[GN_VECS] = {{0.0, 0.0}, {0.0, 0.0}, {0.0, 0.0}, {0.0, 0.0}};
        gn_f64x2 qs[GN_VECS] = {{0.0, 0.0}, {0.0, 0.0}, {0.0, 0.0}, {0.0, 0.0}};
        int64_t i = start;
        for (; end - i >= GN_LANES; i += GN_LANES) gn_second_group(rs, qs, x + i, mv, masked);
        if (i < end) gn_second_group(rs, qs, gn_group(x, i, end, pad), mv, 1);
        gn_sum2_add(&rt, gn_lanes_sum(rs));
        gn_sum2_add(&qt, gn_lanes_sum(qs));
    }
    *r = rt.s + rt.c;
    *q = qt.s + qt.c;
}

void gn_block_moments(const double *x, int64_t n, gn_block_stats *out)
{
    gn_first a;
    int masked = 0;
    gn_first_pass(x, n, masked, &a);
    if (!isfinite(a.total.s + a.total.c)) { /* a NaN or Inf inside (or an overflowing sum) */
        masked = 1;
        gn_first_pass(x, n, masked, &a);
    }
    const gn_f64x2 lo = gn_min(a.lo[0], a.lo[1]), hi = gn_max(a.hi[0], a.hi[1]);
    out->count = a.unmasked - (a.minus_finite[0] + a.minus_finite[1]);
    out->nan_count = n - out->count;
    out->min = lo[0] < lo[1] ? lo[0] : lo[1];
    out->max = hi[0] > hi[1] ? hi[0] : hi[1];
    out->m = out->r = out->m2 = 0.0;
    if (out->count == 0) return;

    const double cnt = (double)out->count;
    double r, q;
    out->m = (a.total.s + a.total.c) / cnt;
    gn_second_pass(x, n, out->m, masked, &r, &q);
    out->r = r;
    const double m2 = q - r * r / cnt; /* >= 0 in exact arithmetic */
    out->m2 = m2 < 0.0 ? 0.0 : m2;
}

/* ---------------------------------------------------------------- 3. histograms
 *
 * The rule of Histogram.update, for lo <= v <= hi: the arithmetic index
 * t = (v - lo) * (bins / (hi - lo)), truncated and clamped to the last bin, is
 * settled against the edges, where it can be one off.  Values below lo,
 * above hi and NaN go to the outside counters.
 */

/* A histogram's rule and counters, in locals the compiler can keep in
 * registers (through a gn_histogram pointer, every count written could alias
 * its fields). */
typedef struct {
    double lo, hi, scale; /* scale = bins / (hi - lo), as Histogram.update computes it */
    const double *edges;
    int64_t last; /* bins - 1 */
    int64_t *counts;
    int64_t underflow, overflow, nan;
} gn_bins;

static inline int64_t gn_bin(const gn_bins *b, double v) /* lo <= v <= hi */
{
    int64_t k = (int64_t)((v - b->lo) * b->scale);
    if (k > b->last) k = b->last; /* v == hi, or rounding just below it */
    k -= v < b->edges[k];
    k += k < b->last && v >= b->edges[k + 1]; /* the last bin is closed: it has no upper edge to pass */
    return k;
}

static inline void gn_count(gn_bins *b, double v)
{
    if (v >= b->lo && v <= b->hi)
        b->counts[gn_bin(b, v)]++;
    else if (v < b->lo)
        b->underflow++;
    else if (v > b->hi)
        b->overflow++;
    else
        b->nan++;
}

/* ---------------------------------------------------------------- 4. the fast path
 *
 * Most values sit well inside a bin, where the rule's answer is simply the
 * truncated arithmetic index t, and that can be found two values at a time
 * without looking at the edges.  How close to a bin boundary may t be?
 *
 * With eps = 2^-53 and w = (hi - lo)/bins, t is within 4 eps bins of the exact
 * position (v - lo)/w (four roundings), and the edges, lo + k step + rounding
 * as np.linspace makes them, are within eps (3 bins + max(|lo|, |hi|) / w) of
 * k w.  So when t is more than eps bins (7 + max(|lo|, |hi|) / (hi - lo))
 * from every integer k, v is strictly between edges[floor(t)] and the next
 * edge, and the rule gives floor(t) (the same bound keeps the arithmetic index
 * within one of the edges' bin, so the rule always finds the edges' bin).
 *
 * gn_slack_ok asks for that bound to be below a quarter of the slack used:
 * GN_SLACK (1e-6) bins for values, more for log10 guesses (part 5).  Values
 * within the slack of a boundary (2 in a million of uniform data), outside
 * [lo, hi] or NaN go through the rule; so does every value of a histogram that
 * fails the check (absurdly narrow ranges far from 0, or 10^9 bins).
 */

#define GN_SLACK 1e-6
#define GN_CHUNK 256 /* values binned in one go */

static inline int gn_slack_ok(const gn_bins *b, double slack)
{
    const double far = fmax(fabs(b->lo), fabs(b->hi));
    const double bound = 0x1p-53 * (double)(b->last + 1) * (7.0 + far / (b->hi - b->lo));
    return bound < slack / 4 && slack < 0.01;
}

/* Count x[0..n) by the positions u (u == x for a histogram of the values),
 * two at a time: a position more than slack from a bin boundary and inside
 * [lo, hi] is counted in its bin right away; the others are left in doubt and
 * go through the rule afterwards, xform turning each value into what the rule
 * bins (log10, or nothing).  The bin is worked out with arithmetic and bit
 * operations only (gcc turns a masked select into scalar code on SSE2). */
static void gn_count_fast(gn_bins *b, const double *x, const double *u, int64_t n, double slack,
                          double (*xform)(double))
{
    const double two52 = 0x1p52;
    const gn_f64x2 top = {(double)(b->last + 1), (double)(b->last + 1)}, zero = {0.0, 0.0};
    const gn_u64x2 sign = {1ULL << 63, 1ULL << 63};
    int64_t *counts = b->counts;
    int32_t doubt[GN_CHUNK]; /* n <= GN_CHUNK */
    int32_t nd = 0;
    for (int32_t i = 0; i < (int32_t)n; i += 2) {
        const gn_f64x2 v = n - i >= 2 ? gn_load(u + i) : (gn_f64x2){u[i], NAN};
        /* the arithmetic index, clamped to [0, bins] (NaN to bins): then outside and NaN are never clear */
        const gn_f64x2 t = gn_max(gn_min((v - b->lo) * b->scale, top), zero);
        const gn_f64x2 big = t + two52, nearest = big - two52; /* t rounded to an integer, exactly */
        const gn_f64x2 off = t - nearest;                       /* in [-1/2, 1/2] */
        const gn_u64x2 below = (gn_u64x2)off >> 63;             /* 1 when t < nearest */
        const gn_f64x2 margin = (gn_f64x2)((gn_u64x2)off & ~sign) - slack; /* |off| - slack */
        /* floor(t) is the integer in big's low bits, less one when t is below it;
         * the sign bit of margin makes it negative when t is not clear */
        const gn_i64x2 k = (gn_i64x2)(((gn_u64x2)big - (gn_u64x2)(gn_f64x2){two52, two52} - below) |
                                      ((gn_u64x2)margin & sign));
        for (int32_t j = 0; j < 2 && i + j < (int32_t)n; j++) {
            if (k[j] >= 0)
                counts[k[j]]++;
            else
                doubt[nd++] = i + j;
        }
    }
    for (int32_t j = 0; j < nd; j++) gn_count(b, xform ? xform(x[doubt[j]]) : x[doubt[j]]);
}

/* ---------------------------------------------------------------- 5. log10 histograms
 *
 * The C library's log10 costs ~6 ns a value, more than everything else here
 * together.  So each value first gets a guess g, |g - log10(x)| below
 * GN_LOG10_GUESS_ERR (6e-7), two at a time, and the fast path reads the bin
 * off g with the slack widened by the guess's error (in bins: 2 err * scale,
 * twice what is needed; 2.5e-5 of a bin for the default 20 bins per decade).
 * The values it leaves, and every value when the slack would be too wide, get
 * the exact log10 and the rule.
 *
 * The guess is only meaningful for positive normal numbers.  For any other
 * input (zero, negative, subnormal, Inf, NaN) it comes out below -307.6 or
 * above 308, so it can never look clear when lo > -307 and hi < 307, which
 * gn_count_log10 asks before it trusts a guess (positive normal numbers have
 * log10 in [-307.66, 308.26]).
 */

/* log10(x) = e log10(2) + ln(z) log10(e) for x = 2^e z, z in [sqrt(1/2), sqrt(2)), and
 * ln z = 2 atanh s = 2 (s + s^3/3 + s^5/5 + ...), s = (z - 1)/(z + 1), |s| <= 0.1716.
 * Three terms leave 2 s^7/7 (1 + s^2 + ...) < 1.29e-6 in ln z, 5.6e-7 in log10; the
 * roundings add less than 1e-13 (e log10(2) reaches 308, whose ulp is 6e-14). */
static inline gn_f64x2 gn_log10_guess2(gn_f64x2 x)
{
    const gn_u64x2 bits = (gn_u64x2)x;
    /* adding 1.0's bits minus sqrt(1/2)'s carries into the exponent field exactly
     * when z must be halved: the field then holds e + 1023 */
    const gn_u64x2 biased_e = (bits + (0x3ff0000000000000 - 0x3fe6a09e667f3bcd)) >> 52;
    const gn_f64x2 e = (gn_f64x2)(biased_e | 0x4330000000000000) - (0x1p52 + 1023); /* exact */
    const gn_f64x2 z = (gn_f64x2)(bits - (biased_e << 52) + 0x3ff0000000000000);
    const gn_f64x2 s = (z - 1.0) / (z + 1.0), s2 = s * s;
    const gn_f64x2 series = 1.0 + s2 * (1.0 / 3 + s2 * (1.0 / 5));
    const double log10_2 = 0.301029995663981195213738894724493027;
    const double log10_e = 0.434294481903251827651128918916605082;
    return e * log10_2 + (2.0 * s * series) * log10_e;
}

double gn_log10_guess(double x) { return gn_log10_guess2((gn_f64x2){x, x})[0]; }

static void gn_count_log10(gn_bins *b, const double *x, int64_t n)
{
    const double slack = GN_SLACK + 2 * GN_LOG10_GUESS_ERR * b->scale;
    if (!(gn_slack_ok(b, slack) && b->lo > -307.0 && b->hi < 307.0)) {
        for (int64_t i = 0; i < n; i++) gn_count(b, log10(x[i]));
        return;
    }
    double g[GN_CHUNK];
    for (int64_t start = 0; start < n; start += GN_CHUNK) {
        const int64_t len = n - start < GN_CHUNK ? n - start : GN_CHUNK;
        int64_t i = 0;
        for (; i + 2 <= len; i += 2) {
            const gn_f64x2 v = gn_log10_guess2(gn_load(x + start + i));
            memcpy(g + i, &v, sizeof v);
        }
        if (i < len) g[i] = gn_log10_guess(x[start + i]);
        gn_count_fast(b, x + start, g, len, slack, log10);
    }
}

static void gn_count_values(gn_bins *b, const double *x, int64_t n)
{
    if (!gn_slack_ok(b, GN_SLACK)) {
        for (int64_t i = 0; i < n; i++) gn_count(b, x[i]);
        return;
    }
    for (int64_t start = 0; start < n; start += GN_CHUNK) {
        const int64_t len = n - start < GN_CHUNK ? n - start : GN_CHUNK;
        gn_count_fast(b, x + start, x + start, len, GN_SLACK, NULL);
    }
}

/* ---------------------------------------------------------------- 6. the entry points */

void gn_histogram_add(gn_histogram *h, const double *x, int64_t n, int take_log10)
{
    gn_bins b = {h->lo, h->hi, (double)h->bins / (h->hi - h->lo), h->edges, h->bins - 1, h->counts, 0, 0, 0};
    if (take_log10)
        gn_count_log10(&b, x, n);
    else
        gn_count_values(&b, x, n);
    h->underflow += b.underflow;
    h->overflow += b.overflow;
    h->nan += b.nan;
}

void gn_quantity_add(const double *x, int64_t n, int take_log10, gn_block_stats *out, gn_histogram *h)
{
    gn_block_moments(x, n, out);
    gn_histogram_add(h, x, n, take_log10);
}
