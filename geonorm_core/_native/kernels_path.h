/* One SIMD path: the narrow-type kernels three times and the float64 kernels,
 * then the path's vector macros are cleared for the next path. */

#define GN_T f32
#define GN_CT float
#define GN_RAW16 0
#define GN_LOAD LOAD_F32
#define GN_STORE STORE_F32
#define GN_STREAM STREAM_F32
#define GN_TO_FLOAT(v) (v)
#define GN_FROM_FLOAT(v) (v)
#include "kernels_narrow.h"
#undef GN_T
#undef GN_CT
#undef GN_LOAD
#undef GN_STORE
#undef GN_STREAM
#undef GN_TO_FLOAT
#undef GN_FROM_FLOAT
#undef GN_RAW16
#undef GN_PAIR

#define GN_T f16
#define GN_CT uint16_t
#define GN_RAW16 1
#define GN_PAIR PAIR_F16
#define GN_LOAD LOAD_F16
#define GN_STORE STORE_F16
#define GN_STREAM STREAM_F16
#define GN_TO_FLOAT(v) gn_half_to_float(v)
#define GN_FROM_FLOAT(v) gn_float_to_half(v)
#include "kernels_narrow.h"
#undef GN_T
#undef GN_CT
#undef GN_LOAD
#undef GN_STORE
#undef GN_STREAM
#undef GN_TO_FLOAT
#undef GN_FROM_FLOAT
#undef GN_RAW16
#undef GN_PAIR

#define GN_T bf16
#define GN_CT uint16_t
#define GN_RAW16 1
#define GN_PAIR PAIR_BF16
#define GN_LOAD LOAD_BF16
#define GN_STORE STORE_BF16
#define GN_STREAM STREAM_BF16
#define GN_TO_FLOAT(v) gn_bf16_to_float(v)
#define GN_FROM_FLOAT(v) gn_float_to_bf16(v)
#include "kernels_narrow.h"
#undef GN_T
#undef GN_CT
#undef GN_LOAD
#undef GN_STORE
#undef GN_STREAM
#undef GN_TO_FLOAT
#undef GN_FROM_FLOAT
#undef GN_RAW16
#undef GN_PAIR

#include "kernels_f64.h"

#undef GN_ISA
#undef GN_TARGET
#undef W
#undef WD
#undef VF
#undef VD
#undef VF_ZERO
#undef VF_SET1
#undef VF_ADD
#undef VF_SUB
#undef VF_MUL
#undef VF_FMA
#undef VF_FNMA
#undef VF_LOADU
#undef VD_ZERO
#undef VD_SET1
#undef VD_ADD
#undef VD_SUB
#undef VD_MUL
#undef VD_FMA
#undef VD_LOADU
#undef VD_STOREU
#undef VD_REDUCE
#undef VF_SUM16
#undef VF_MAX
#undef VF_ABS
#undef VF_REDUCE_MAX
#undef VD_MAX
#undef VD_ABS
#undef VD_REDUCE_MAX
#undef VD_LO
#undef VD_HI
#undef LOAD_F32
#undef LOAD_F16
#undef LOAD_BF16
#undef STORE_F32
#undef STORE_F16
#undef STORE_BF16
#undef STREAM_F32
#undef STREAM_F16
#undef STREAM_BF16
#undef VD_STREAM
#undef VI
#undef VI_ZERO
#undef VI_LOADU
#undef VI_MAXMAG16
#undef VI_REDUCE_MAX16
#undef PAIR_F16
#undef PAIR_BF16
