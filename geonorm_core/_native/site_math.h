/* The per-site mathematics of geonorm.c, included once into it: the rotation between two rows
 * (Kahan's 2 atan2, G11/G12), a norm layer as the LN-RMS gap reads it (G9), a row's statistics
 * from one float32 or float64 pass, the gap's closed form without cancellation and the checks
 * that send a row to the exact float64 function, and a row's angle and norm from its statistics.
 * The drivers that run these over rows (gn_rotation, gn_ln_rms_gap, gn_site_values) stay in
 * geonorm.c with the others.
 */
#ifndef GN_SITE_MATH_H
#define GN_SITE_MATH_H

/* The narrow SIMD twin of the rotation for two rows of one 16/32-bit type, or NULL
 * (mixed dtypes, float64 rows, the scalar path): then the float64 row functions. */
static const gn_kernels *gn_rotation_fast(int xtype, int ytype)
{
    const gn_kernels *fast = &gn_table(gn_simd_active())[xtype];
    return xtype == ytype && fast->kahan ? fast : NULL;
}

/* Angle in degrees between two rows (G11, G12); `wide`: 2d doubles of scratch. */
static double gn_row_rotation(const gn_rowops *ops, const gn_kernels *fast, int xtype, const char *xr, int ytype,
                              const char *yr, int64_t d, double *wide)
{
    if (fast) { /* rows whose sums of squares are safely inside the float range */
        double nx, ny;
        fast->sumsq2(xr, yr, d, &nx, &ny);
        if (nx >= 0x1p-100 && ny >= 0x1p-100 && nx <= 0x1p100 && ny <= 0x1p100) {
            double qm, qp;
            fast->kahan(xr, yr, d, sqrt(nx / ny), NULL, NULL, &qm, &qp);
            return 2.0 * atan2(sqrt(qm), sqrt(qp)) * (180.0 / M_PI);
        }
    }
    int ex, ey;
    int ok = ops->widen(xtype, xr, d, wide, &ex) > 0 && ops->widen(ytype, yr, d, wide + d, &ey) > 0;
    return ok ? ops->rotation(wide, wide + d, d) : NAN;
}

/* A norm layer as the LN-RMS gap (G9) reads it: gain w and bias b (NULL: unit
 * gain, no bias), eps, and what the fast path precomputes once per call: the
 * weights gg = w^2 and gb = w b of its sums (NULL where w, resp. b, is NULL) and
 * their totals over the row, sum w^2 (d for unit gain), sum w b and sum b^2. */
typedef struct {
    const double *w, *b;
    double eps;
    double *gg, *gb;
    double g2, gbsum, b2;
    double *buf; /* owns gg and gb */
    /* gg and gb rounded to float for the float32 site pass (devw), NULL where that
     * weight is absent; f32 = 0 when some weight is outside the range where its float
     * rounding is a relative one (then the float64 sums serve every row) */
    float *ggf, *gbf;
    int f32;
} gn_gap_layer;

static int gn_gap_prepare(gn_gap_layer *L, const double *w, const double *b, double eps, int64_t d)
{
    *L = (gn_gap_layer){w, b, eps, NULL, NULL, (double)d, 0.0, 0.0, NULL, NULL, NULL, 1};
    if (!w && !b) return 0;
    /* 2d doubles, then 2d floats */
    double *buf = malloc((size_t)(2 * d) * (sizeof(double) + sizeof(float)));
    if (!buf) return -1;
    L->g2 = 0.0;
    for (int64_t i = 0; i < d; i++) {
        const double g = w ? w[i] : 1.0, bi = b ? b[i] : 0.0;
        buf[i] = g * g;
        buf[d + i] = g * bi;
        L->g2 += g * g;
        L->gbsum += g * bi;
        L->b2 += bi * bi;
    }
    L->buf = buf;
    L->gg = w ? buf : NULL;
    L->gb = b ? buf + d : NULL;
    if (!w) L->g2 = (double)d;
    float *f = (float *)(buf + 2 * d);
    for (int64_t i = 0; i < 2 * d; i++) {
        const double v = fabs(buf[i]);
        f[i] = (float)buf[i];
        /* zero, or a normal float far from both ends: gg t^2 and gb t stay normal
         * wherever the row's own sums do */
        L->f32 &= v == 0.0 || (v >= 0x1p-60 && v <= 0x1p60);
    }
    L->ggf = w ? f : NULL;
    L->gbf = b ? f + d : NULL;
    return 0;
}

static void gn_gap_release(gn_gap_layer *L)
{
    free(L->buf);
}

/* A 16/32-bit row's statistics from one float64 pass (the path's `sums`): the
 * mean mu, the variance, the largest |x|, and for the gap the sums about mu
 * S2 = sum w^2 t^2 (with `mag`, the size of the terms it came from), S1 = sum w^2 t,
 * SB = sum w b t, t = x - mu.  The sums are taken about a shift c (the head
 * sample's mean), moved to mu exactly by the corrected two-pass formula, and the
 * pass is made again around mu when c was poor, as in gn_row_moments. */
typedef struct {
    double mu, var, amax, S2, mag, S1, SB;
} gn_row_stats;

static void gn_stats_finish(const gn_gap_layer *L, double c, const double *s, double n, gn_row_stats *st);

/* Returns 0 for a row with NaN or Inf (its sums are not finite), else 1. */
static int gn_row_stats64(const gn_kernels *k, const gn_rowops *ops, const gn_gap_layer *L, int dtype,
                          const char *row, int64_t d, gn_row_stats *st)
{
    const double n = (double)d;
    const double *gg = L ? L->gg : NULL, *gb = L ? L->gb : NULL;
    double c = gn_sample_mean(k, dtype, row, d), s[6];
    ops->sums(dtype, row, d, c, gg, gb, s);
    if (!(s[1] * s[1] / n <= (s[0] - s[1] * s[1] / n) / 16.0)) { /* a poor shift: again around the mean */
        c += s[1] / n;
        if (!isfinite(c)) return 0;
        ops->sums(dtype, row, d, c, gg, gb, s);
    }
    if (!(isfinite(s[0]) && isfinite(s[2]) && isfinite(s[4]))) return 0;
    gn_stats_finish(L, c, s, n, st);
    return 1;
}

/* The float32 twin of gn_row_stats64 for the SIMD paths (the path's devw: float32
 * lanes with float64 carries per block, as decompose sums): 0 where it cannot vouch
 * for the row (no devw, weights out of its range, non-finite sums, sums of squares
 * under 2^-100 where float32 squares lose bits), and the caller takes the float64
 * pass instead. */
static int gn_row_stats32(const gn_kernels *k, const gn_gap_layer *L, int dtype, const char *row, int64_t d,
                          gn_row_stats *st)
{
    if (!k[dtype].devw || (L && !L->f32)) return 0;
    const double n = (double)d;
    const float *gg = L ? L->ggf : NULL, *gb = L ? L->gbf : NULL;
    double c = (float)gn_sample_mean(k, dtype, row, d), s[6];
    if (!isfinite(c)) return 0;
    k[dtype].devw(row, d, c, gg, gb, s);
    if (!(s[1] * s[1] / n <= (s[0] - s[1] * s[1] / n) / 16.0)) { /* a poor shift: again around the mean */
        const double c2 = (float)(c + s[1] / n);
        if (!isfinite(c2)) return 0;
        if (c2 != c) {
            c = c2;
            k[dtype].devw(row, d, c, gg, gb, s);
        }
    }
    const double tiny = 0x1p-100;
    if (!(s[0] >= tiny && s[0] <= 0x1p100 && isfinite(s[2]) && isfinite(s[3]) && isfinite(s[4])
          && (!gg || s[2] >= tiny)))
        return 0;
    gn_stats_finish(L, c, s, n, st);
    return 1;
}

static void gn_stats_finish(const gn_gap_layer *L, double c, const double *s, double n, gn_row_stats *st)
{
    const double *gg = L ? L->gg : NULL, *gb = L ? L->gb : NULL;
    const double dc = s[1] / n;
    st->mu = c + dc;
    st->var = fmax(s[0] - s[1] * dc, 0.0) / n;
    st->amax = s[5];
    st->S2 = st->mag = st->var * n;
    st->S1 = 0.0;
    if (gg) { /* t = (x - c) - dc */
        st->S2 = s[2] - 2.0 * dc * s[3] + dc * dc * L->g2;
        st->mag = s[2] + fabs(2.0 * dc * s[3]) + dc * dc * L->g2;
        st->S1 = s[3] - dc * L->g2;
    }
    st->SB = gb ? s[4] - dc * L->gbsum : 0.0;
}

/* The LN-RMS gap from a row's statistics, or NaN when they cannot vouch for it.
 * With a = 1/sqrt(var + eps), r = 1/sqrt(ms + eps), ms = var + mu^2, A = a - r:
 *   LN - (RMS + b) = w (t A - mu r),          LN = w t a + b,
 *   num = A^2 S2 - 2 A mu r S1 + mu^2 r^2 sum w^2,
 *   den = a^2 S2 + 2 a SB + sum b^2,
 * and A = mu^2 a r / (sqrt(var + eps) + sqrt(ms + eps)) has no cancellation.
 * num, den and S2 are sums of terms that cancel only for rows built so that LN
 * and RMS agree where the gain is; when one keeps less than 2^-12 of its terms'
 * size, the exact row function decides instead. */
typedef struct {
    double a, r, A, n2, n3, d2, num, den; /* as named above */
} gn_gap_terms;

/* The closed form's terms; 0 when a sum keeps less than 2^-12 of its terms' size. */
static int gn_gap_terms_of(const gn_gap_layer *L, const gn_row_stats *st, gn_gap_terms *t)
{
    const double lost = 0x1p-12, mu = st->mu;
    const double sv = sqrt(st->var + L->eps), sm = sqrt(st->var + mu * mu + L->eps);
    t->a = 1.0 / sv;
    t->r = 1.0 / sm;
    t->A = mu * mu * t->a * t->r / (sv + sm);
    const double n1 = t->A * t->A * st->S2, d1 = t->a * t->a * st->S2;
    t->n2 = 2.0 * t->A * mu * t->r * st->S1;
    t->n3 = mu * mu * t->r * t->r * L->g2;
    t->d2 = 2.0 * t->a * st->SB;
    t->num = n1 - t->n2 + t->n3;
    t->den = d1 + t->d2 + L->b2;
    return st->S2 >= lost * st->mag && t->num >= lost * (n1 + fabs(t->n2) + t->n3)
           && t->den >= lost * (d1 + fabs(t->d2) + L->b2) && t->den > 0.0 && isfinite(t->num) && isfinite(t->den);
}

static double gn_gap_from_stats(const gn_gap_layer *L, const gn_row_stats *st)
{
    gn_gap_terms t;
    return gn_gap_terms_of(L, st, &t) ? sqrt(t.num / t.den) : NAN;
}

/* The gap from the float32 statistics (gn_row_stats32), or NaN when its error
 * estimate is not well inside the contract (1e-6 absolute; the float64 sums then
 * decide).  The estimate takes every sum, and the mean, as off by EPS32 of the size
 * of its terms (8u: float32 lanes of GN_BLOCK terms, float64 carries):
 *   gap^2 = num/den is off by EPS32 (T_num + gap^2 T_den) / den, T the sums of the
 *   terms' magnitudes; the mean by EPS32 sigma, which moves the gap by about
 *   EPS32 sigma r sqrt(sum w^2 / den) (the mu-derivative of its n3 part).
 * Rows where the sums cancel (LN and RMS nearly agreeing where the gain is, large
 * gaps with a small LN output) go to the float64 pass. */
#define GN_EPS32 0x1p-23
static double gn_gap_from_stats32(const gn_gap_layer *L, const gn_row_stats *st)
{
    gn_gap_terms t;
    if (!gn_gap_terms_of(L, st, &t)) return NAN;
    const double g2 = t.num / t.den, gap = sqrt(g2);
    const double e2 = GN_EPS32 * ((t.A * t.A * st->mag + fabs(t.n2) + t.n3) + g2 * (t.a * t.a * st->mag + fabs(t.d2) + L->b2))
                      / t.den;
    const double err = e2 / (gap + sqrt(e2)) + GN_EPS32 * sqrt(st->var) * t.r * sqrt(L->g2 / t.den);
    return err <= 9e-7 ? gap : NAN;
}

/* One row's LN-RMS gap (G9) by the exact float64 row function; `wide`: d doubles. */
static double gn_row_gap_exact(const gn_rowops *ops, const gn_gap_layer *L, int dtype, const char *row, int64_t d,
                               double *wide)
{
    int ex;
    return ops->widen(dtype, row, d, wide, &ex) >= 0 ? ops->gap(wide, d, ex, L->w, L->b, L->eps) : NAN;
}

/* One row's LN-RMS gap (G9) for 16/32-bit rows: from the float32 site pass on the
 * SIMD paths, else (and whenever that declines) from one float64 pass, else (and
 * whenever that declines) the exact row function; `wide`: d doubles.  *st gets the
 * statistics of the first pass that had them, and the return of *have says which:
 * 0 none (a float64 row, a row with NaN/Inf), 1 the float32 pass, 2 the float64 one. */
static double gn_row_gap_stats(const gn_kernels *k, const gn_rowops *ops, const gn_gap_layer *L, int dtype,
                               const char *row, int64_t d, double *wide, gn_row_stats *st, int *have)
{
    *have = 0;
    if (dtype != GN_F64) {
        double g = NAN;
        if (gn_row_stats32(k, L, dtype, row, d, st)) {
            *have = 1;
            g = gn_gap_from_stats32(L, st);
            gn_row_stats s64;
            if (isnan(g) && gn_row_stats64(k, ops, L, dtype, row, d, &s64)) g = gn_gap_from_stats(L, &s64);
        } else if (gn_row_stats64(k, ops, L, dtype, row, d, st)) {
            *have = 2;
            g = gn_gap_from_stats(L, st);
        }
        if (!isnan(g)) return g;
    }
    return gn_row_gap_exact(ops, L, dtype, row, d, wide);
}

static double gn_row_gap(const gn_kernels *k, const gn_rowops *ops, const gn_gap_layer *L, int dtype,
                         const char *row, int64_t d, double *wide)
{
    gn_row_stats st;
    int have;
    return gn_row_gap_stats(k, ops, L, dtype, row, d, wide, &st, &have);
}

/* angle with 1 (degrees) and norm of a row from its statistics, as gn_row_decompose
 * forms them: ||x||^2 = d mu^2 + ||Px||^2 (G5), angle = atan2(||Px||, sqrt(d) mu). */
static void gn_angle_norm(const gn_row_stats *st, int64_t d, double *angle, double *norm)
{
    const double perp = sqrt(st->var * (double)d), coef = st->mu * sqrt((double)d);
    *norm = sqrt(coef * coef + perp * perp);
    *angle = *norm > 0.0 ? atan2(perp, coef) * (180.0 / M_PI) : NAN;
}

#endif /* GN_SITE_MATH_H */
