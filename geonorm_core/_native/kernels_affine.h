/* The affine kernel of a 16/32-bit type: out = ((x - mu) * scale) * w + b.  Included by
 * kernels_narrow.h for every (SIMD path, type), and by geonorm.c once more for bf16 on the
 * avx512_bf16 path, whose GN_STORE rounds with VCVTNEPS2BF16.  Uses the path's vector macros,
 * GN_FN, GN_T, GN_CT, GN_LOAD, GN_STORE, GN_STREAM, GN_TO_FLOAT and GN_FROM_FLOAT. */

/* out = ((x - mu) * scale) * w + b, in float32, rounded once to the output type.  stream: write
 * with non-temporal stores (gn_normalize's choice for an output too large to stay in cache: no
 * read for ownership of its lines, so a large norm moves the bytes a copy moves); a row that does
 * not start on a vector store's alignment is written normally. */
GN_TARGET static void GN_FN(affine)(const void *xv, void *ov, int64_t d, double mu, double scale,
                                    const void *wv, const void *bv, int stream)
{
    const GN_CT *x = (const GN_CT *)xv;
    GN_CT *o = (GN_CT *)ov;
    const float *w = (const float *)wv, *b = (const float *)bv;
    const float hi = (float)mu, lo = (float)(mu - (double)hi), s = (float)scale;
    const VF vhi = VF_SET1(hi), vlo = VF_SET1(lo), vs = VF_SET1(s);
    int64_t i = 0;
#define GN_AFFINE_LOOP(STORE)                                          \
    for (; i + W <= d; i += W) {                                       \
        VF t = VF_MUL(VF_SUB(VF_SUB(GN_LOAD(x + i), vhi), vlo), vs);   \
        if (w) t = VF_MUL(t, VF_LOADU(w + i));                         \
        if (b) t = VF_ADD(t, VF_LOADU(b + i));                         \
        STORE(o + i, t);                                               \
    }
    if (stream && (uintptr_t)o % (W * sizeof(GN_CT)) == 0) GN_AFFINE_LOOP(GN_STREAM)
    GN_AFFINE_LOOP(GN_STORE)
#undef GN_AFFINE_LOOP
    for (; i < d; i++) {
        float t = ((GN_TO_FLOAT(x[i]) - hi) - lo) * s;
        if (w) t *= w[i];
        if (b) t += b[i];
        o[i] = GN_FROM_FLOAT(t);
    }
}
