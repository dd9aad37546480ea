/* Vectorisable exponentials for non-positive arguments: npool's one exp, shared by every CPU
 * kernel (and GeM's log of a ratio, below) (the Cython kernels through _fastexp.pxd, the vector lines of _softmax_lines.h).
 *
 * exp(z) for z <= 0, without -ffast-math: Cody-Waite range reduction z = n ln2 + r with
 * |r| <= ln2/2, a Taylor polynomial for exp(r) (degree 6 for float: rel. error < 2e-7; degree 12
 * for double: rel. error < 4e-16), and 2**n built from the exponent bits. Below exp(-87) for
 * float and exp(-708) for double (about the smallest normal numbers) the result is 0, as an
 * underflowing exp would give. z must not be +inf: callers detect non-finite windows and redo
 * them on a careful path (NaN is clamped to the underflow bound, and the caller sees the NaN
 * elsewhere).
 *
 * The scalar functions are what GCC auto-vectorises in the Cython loops; the vector ones
 * (npool_vexp_*, on the types of _simd.h) are the same operations lane by lane, in the same
 * order with the same constants, so both give the same bits (the kernels compile without
 * contraction: -ffp-contract=off). tests/test_soft_pool.py checks them against each other.
 */
#ifndef NPOOL_FASTEXP_H
#define NPOOL_FASTEXP_H

#include <math.h>
#include <stdint.h>
#include "_simd.h"

/* The constants, named once for the scalar and vector forms. */
#define NPOOL_EXP_F32_LOW (-87.0f)
#define NPOOL_EXP_F32_LOG2E ((float)1.44269504088896341)
#define NPOOL_EXP_F32_ROUND 12582912.0f                  /* 1.5 * 2**23 */
#define NPOOL_EXP_F32_LN2_HI 0.693359375f
#define NPOOL_EXP_F32_LN2_LO (-2.12194440e-4f)
#define NPOOL_EXP_F32_BIAS (0x4B400000 - 127)            /* bits of ROUND, less the exponent bias */
#define NPOOL_EXP_F64_LOW (-708.0)
#define NPOOL_EXP_F64_LOG2E 1.4426950408889634074
#define NPOOL_EXP_F64_ROUND 6755399441055744.0           /* 1.5 * 2**52 */
#define NPOOL_EXP_F64_LN2_HI 6.93145751953125e-1
#define NPOOL_EXP_F64_LN2_LO 1.42860682030941723212e-6
#define NPOOL_EXP_F64_BIAS (0x4338000000000000LL - 1023)

/* exp(r) for |r| <= ln2/2, Horner's scheme from the highest term. */
#define NPOOL_EXP_F32_POLY(r) (1.0f + (r) * (1.0f + (r) * (0.5f + (r) * ((float)(1.0 / 6) + (r) * ( \
    (float)(1.0 / 24) + (r) * ((float)(1.0 / 120) + (r) * (float)(1.0 / 720)))))))
#define NPOOL_EXP_F64_POLY(r) (1.0 + (r) * (1.0 + (r) * (1.0 / 2 + (r) * (1.0 / 6 + (r) * ( \
    1.0 / 24 + (r) * (1.0 / 120 + (r) * (1.0 / 720 + (r) * (1.0 / 5040 + (r) * (1.0 / 40320 + \
    (r) * (1.0 / 362880 + (r) * (1.0 / 3628800 + (r) * (1.0 / 39916800 + \
    (r) * (1.0 / 479001600)))))))))))))

typedef union { float f; int32_t i; } npool_float_bits;
typedef union { double f; int64_t i; } npool_double_bits;

static inline float npool_exp_nonpositive_f32(float z) {
    npool_float_bits rounded, scale;
    float n, r, p;
    int underflow = z < NPOOL_EXP_F32_LOW;
    z = z > NPOOL_EXP_F32_LOW ? z : NPOOL_EXP_F32_LOW;
    /* Adding 1.5 * 2**23 rounds z log2(e) to the nearest integer n, kept in the low mantissa bits. */
    rounded.f = z * NPOOL_EXP_F32_LOG2E + NPOOL_EXP_F32_ROUND;
    n = rounded.f - NPOOL_EXP_F32_ROUND;
    r = z - n * NPOOL_EXP_F32_LN2_HI;
    r = r - n * NPOOL_EXP_F32_LN2_LO;
    p = NPOOL_EXP_F32_POLY(r);
    scale.i = (rounded.i - NPOOL_EXP_F32_BIAS) << 23;
    return underflow ? 0.0f : p * scale.f;
}

static inline double npool_exp_nonpositive_f64(double z) {
    npool_double_bits rounded, scale;
    double n, r, p;
    int underflow = z < NPOOL_EXP_F64_LOW;
    z = z > NPOOL_EXP_F64_LOW ? z : NPOOL_EXP_F64_LOW;
    rounded.f = z * NPOOL_EXP_F64_LOG2E + NPOOL_EXP_F64_ROUND;
    n = rounded.f - NPOOL_EXP_F64_ROUND;
    r = z - n * NPOOL_EXP_F64_LN2_HI;
    r = r - n * NPOOL_EXP_F64_LN2_LO;
    p = NPOOL_EXP_F64_POLY(r);
    scale.i = (rounded.i - NPOOL_EXP_F64_BIAS) << 52;
    return underflow ? 0.0 : p * scale.f;
}

/* log(x / y) for positive normal floats x and y, y given as 2**ky times a mantissa whose log is
 * ly (ly = npool_log_ratio_f32(y, ky, 0) with ky = npool_log_exponent_f32(y)): GeM's log of a
 * cell relative to its map's maximum, exact to a few 1e-8 absolute whatever the magnitudes
 * (log(x) - log(y) would lose ulp(log x); x / y may underflow). x = 2**k r with r in
 * [sqrt(1/2), sqrt(2)) from the bits, log(r) = log1p(r - 1) by Cephes' degree-9 minimax
 * polynomial (rel. error < 1e-7), k ln2 in two parts. Branch-free, so loops vectorise. */
static inline float npool_log_exponent_f32(float x) {
    npool_float_bits b;
    b.f = x;
    return (float)((b.i - 0x3f3504f3) >> 23);   /* 0x3f3504f3: the bits of sqrt(1/2) */
}

static inline float npool_log_ratio_f32(float x, float ky, float ly) {
    npool_float_bits b;
    int32_t e;
    float f, f2, lx, k;
    b.f = x;
    e = (b.i - 0x3f3504f3) >> 23;
    b.i = (int32_t)((uint32_t)b.i - ((uint32_t)e << 23));   /* r in [sqrt(1/2), sqrt(2)) */
    f = b.f - 1.0f;
    f2 = f * f;
    lx = ((((((((7.0376836292e-2f * f - 1.1514610310e-1f) * f + 1.1676998740e-1f) * f
               - 1.2420140846e-1f) * f + 1.4249322787e-1f) * f - 1.6668057665e-1f) * f
             + 2.0000714765e-1f) * f - 2.4999993993e-1f) * f + 3.3333331174e-1f) * f * f2;
    lx = f + (lx - 0.5f * f2);
    k = (float)e - ky;
    return k * NPOOL_EXP_F32_LN2_HI + ((lx - ly) + k * NPOOL_EXP_F32_LN2_LO);
}

/* The same for doubles, log(r) from libm (so not vectorised): ln2 split as fdlibm splits it. */
#define NPOOL_LOG_F64_LN2_HI 6.93147180369123816490e-01
#define NPOOL_LOG_F64_LN2_LO 1.90821492927058770002e-10

static inline double npool_log_exponent_f64(double x) {
    npool_double_bits b;
    b.f = x;
    return (double)((b.i - 0x3fe6a09e667f3bcdLL) >> 52);   /* the bits of sqrt(1/2) */
}

static inline double npool_log_ratio_f64(double x, double ky, double ly) {
    npool_double_bits b;
    int64_t e;
    double k;
    b.f = x;
    e = (b.i - 0x3fe6a09e667f3bcdLL) >> 52;
    b.i = (int64_t)((uint64_t)b.i - ((uint64_t)e << 52));
    k = (double)e - ky;
    return k * NPOOL_LOG_F64_LN2_HI + ((log(b.f) - ly) + k * NPOOL_LOG_F64_LN2_LO);
}

#if NPOOL_SIMD
NPOOL_VECTOR_FN npool_vf32 npool_vexp_nonpositive_f32(npool_vf32 z) {
    npool_vi32 underflow = z < NPOOL_EXP_F32_LOW;
    npool_vf32 n, r, p, rounded;
    z = npool_vmax_f32(z, npool_splat_f32(NPOOL_EXP_F32_LOW));
    rounded = z * NPOOL_EXP_F32_LOG2E + NPOOL_EXP_F32_ROUND;
    n = rounded - NPOOL_EXP_F32_ROUND;
    r = z - n * NPOOL_EXP_F32_LN2_HI;
    r = r - n * NPOOL_EXP_F32_LN2_LO;
    p = NPOOL_EXP_F32_POLY(r);
    p = p * (npool_vf32)(((npool_vi32)rounded - NPOOL_EXP_F32_BIAS) << 23);
    return (npool_vf32)((npool_vi32)p & ~underflow);
}

NPOOL_VECTOR_FN npool_vf64 npool_vexp_nonpositive_f64(npool_vf64 z) {
    npool_vi64 underflow = z < NPOOL_EXP_F64_LOW;
    npool_vf64 n, r, p, rounded;
    z = npool_vmax_f64(z, npool_splat_f64(NPOOL_EXP_F64_LOW));
    rounded = z * NPOOL_EXP_F64_LOG2E + NPOOL_EXP_F64_ROUND;
    n = rounded - NPOOL_EXP_F64_ROUND;
    r = z - n * NPOOL_EXP_F64_LN2_HI;
    r = r - n * NPOOL_EXP_F64_LN2_LO;
    p = NPOOL_EXP_F64_POLY(r);
    p = p * (npool_vf64)(((npool_vi64)rounded - NPOOL_EXP_F64_BIAS) << 52);
    return (npool_vf64)((npool_vi64)p & ~underflow);
}
#endif

#endif
