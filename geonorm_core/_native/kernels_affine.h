/* The affine kernel of a 16/32-bit type: out = ((x - mu) * scale) * w + b.  Included by
 * kernels_narrow.h for every (SIMD path, type), and by geonorm.c once more for bf16 on the
 * avx512_bf16 path, whose GN_STORE rounds with VCVTNEPS2BF16.  Uses the path's vector macros,
 * GN_FN, GN_T, GN_CT, GN_LOAD, GN_STORE, GN_STREAM, GN_TO_FLOAT and GN_FROM_FLOAT. */

/* out = ((x - mu) * scale) * w + b, in float32 (see below), rounded once to the output type.  stream: write
 * with non-temporal stores (gn_normalize's choice for an output too large to stay in cache: no
 * read for ownership of its lines, so a large norm moves the bytes a copy moves). */
GN_TARGET static void GN_FN(affine)(const void *xv, void *ov, int64_t d, double mu, double scale,
                                    const void *wv, const void *bv, int stream)
{
    const GN_CT *x = (const GN_CT *)xv;
    GN_CT *o = (GN_CT *)ov;
    const float *w = (const float *)wv, *b = (const float *)bv;
    /* mu = hi + lo (floats); (x - hi) is exact where it cancels (Sterbenz) and the rest is one fused
     * step: t = (x - hi) s + (-lo s), so the add pipe takes one operation per vector and the
     * multiply pipe the others (at small d the add pipe was the bound) */
    const float hi = (float)mu, lo = (float)(mu - (double)hi), s = (float)scale, nls = -(lo * s);
    const VF vhi = VF_SET1(hi), vs = VF_SET1(s), vnls = VF_SET1(nls);
    int64_t i = 0;
#define GN_AFFINE_ONE(i)                                               \
    do {                                                               \
        float t_ = fmaf(GN_TO_FLOAT(x[i]) - hi, s, nls);               \
        if (w && b) t_ = fmaf(t_, w[i], b[i]);                         \
        else if (w) t_ *= w[i];                                        \
        else if (b) t_ += b[i];                                        \
        o[i] = GN_FROM_FLOAT(t_);                                      \
    } while (0)
#define GN_AFFINE_VEC(i) /* the row's W elements at i */                                                    \
    (t = VF_FMA(VF_SUB(GN_LOAD(x + (i)), vhi), vs, vnls),                                                   \
     w && b ? VF_FMA(t, VF_LOADU(w + (i)), VF_LOADU(b + (i))) : w ? VF_MUL(t, VF_LOADU(w + (i)))          \
                                                           : b ? VF_ADD(t, VF_LOADU(b + (i))) : t)
    VF t;
    /* A row is streamed only when it is whole 64-byte lines (aligned start, length a multiple of
     * 64 bytes): a line written partly by plain stores and partly by streaming ones cost 2-3x
     * either (measured: rows of NumPy arrays, which start 16 bytes into a page, with their ends
     * stored plainly), so other rows take plain stores. */
    if (stream && (uintptr_t)o % 64 == 0 && (d * (int64_t)sizeof(GN_CT)) % 64 == 0)
        for (; i + W <= d; i += W) GN_STREAM(o + i, GN_AFFINE_VEC(i));
    for (; i + W <= d; i += W) GN_STORE(o + i, GN_AFFINE_VEC(i));
    for (; i < d; i++) GN_AFFINE_ONE(i);
#undef GN_AFFINE_VEC
#undef GN_AFFINE_ONE
}

/* affine for the rows j < n with ok[j] > 0 (rows[j] -> outs[j], mu[j], scale[j]): a block of short
 * rows in one call, the row kernel inlined (at small d a call per row costs as much as its work). */
GN_TARGET static void GN_FN(affine_rows)(const void *const *rows, void *const *outs, int n, int64_t d,
                                         const double *mu, const double *scale, const int *ok, const void *wv,
                                         const void *bv, int stream)
{
    for (int j = 0; j < n; j++)
        if (ok[j] > 0) GN_FN(affine)(rows[j], outs[j], d, mu[j], scale[j], wv, bv, stream);
}
