/* Scalar conversions between float and the 16-bit formats, exact and portable.
 *
 * bf16 -> float is a 16-bit shift; half -> float is exact for every half
 * (subnormals included); float -> half/bf16 round to nearest even.
 */
#ifndef GEONORM_DTYPES_H
#define GEONORM_DTYPES_H

#include <stdint.h>
#include <string.h>

static inline uint32_t gn_f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float gn_u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline float gn_bf16_to_float(uint16_t h) { return gn_u2f((uint32_t)h << 16); }

static inline uint16_t gn_float_to_bf16(float f)
{
    uint32_t u = gn_f2u(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline float gn_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1fu) return gn_u2f(sign | 0x7f800000u | (man << 13));      /* inf, nan */
    if (exp != 0) return gn_u2f(sign | ((exp + 112u) << 23) | (man << 13)); /* normal */
    float sub = (float)man * 0x1p-24f;                                      /* subnormal, zero */
    return sign ? -sub : sub;
}

static inline uint16_t gn_float_to_half(float f)
{
    uint32_t u = gn_f2u(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);        /* nan */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);       /* >= 65520 rounds to inf */
    if (a >= 0x38800000u) {                                         /* normal half */
        uint32_t r = a + 0x0fffu + ((a >> 13) & 1u);
        return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
    }
    /* subnormal half: m = round(|f| * 2^24), |f| = M * 2^(e - 150) */
    int shift = 126 - (int)(a >> 23);
    if (a < 0x00800000u || shift > 24) return (uint16_t)sign;       /* below half the smallest half */
    uint32_t M = (a & 0x7fffffu) | 0x800000u, m = M >> shift;
    uint32_t rem = M & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (m & 1u))) m++;
    return (uint16_t)(sign | m);
}

static inline int gn_itemsize(int dtype) { return dtype == 0 ? 8 : dtype == 1 ? 4 : 2; }

#endif
