/* Portable SIMD vectors for the CPU kernels: GCC/Clang vector extensions, as wide as the
 * build's instruction set (64 bytes with AVX-512, 32 with AVX/AVX2, else 16: SSE2, NEON).
 *
 * Every operation is IEEE arithmetic lane by lane, so a kernel written on these types gives
 * the same bits in every build and as the same scalar code (the kernels compile without
 * contraction and without -ffast-math). Compilers without vector extensions (MSVC) get
 * NPOOL_SIMD 0 and the kernels keep to their scalar paths.
 */
#ifndef NPOOL_SIMD_H
#define NPOOL_SIMD_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
#define NPOOL_SIMD 1
/* Vectors pass through registers only once their functions are inlined. */
#define NPOOL_VECTOR_FN static inline __attribute__((always_inline))
#if defined(__AVX512F__)
#define NPOOL_VECTOR_BYTES 64
#elif defined(__AVX__)
#define NPOOL_VECTOR_BYTES 32
#else
#define NPOOL_VECTOR_BYTES 16
#endif
#if defined(__SSE__) || defined(__AVX__)
#include <immintrin.h>
#endif

/* aligned(element): loads and stores at any element address; may_alias: they read and write
 * float/double arrays. */
typedef float npool_vf32 __attribute__((vector_size(NPOOL_VECTOR_BYTES), aligned(4), may_alias));
typedef int32_t npool_vi32 __attribute__((vector_size(NPOOL_VECTOR_BYTES), aligned(4), may_alias));
typedef double npool_vf64 __attribute__((vector_size(NPOOL_VECTOR_BYTES), aligned(8), may_alias));
typedef int64_t npool_vi64 __attribute__((vector_size(NPOOL_VECTOR_BYTES), aligned(8), may_alias));
#define NPOOL_LANES_F32 (NPOOL_VECTOR_BYTES / 4)
#define NPOOL_LANES_F64 (NPOOL_VECTOR_BYTES / 8)

NPOOL_VECTOR_FN npool_vf32 npool_splat_f32(float v) { return (npool_vf32){0} + v; }
NPOOL_VECTOR_FN npool_vf64 npool_splat_f64(double v) { return (npool_vf64){0} + v; }

/* mask ? a : b, lane by lane (mask lanes all ones or all zeros, as comparisons give). */
NPOOL_VECTOR_FN npool_vf32 npool_vselect_f32(npool_vi32 mask, npool_vf32 a, npool_vf32 b) {
    return (npool_vf32)((mask & (npool_vi32)a) | (~mask & (npool_vi32)b));
}
NPOOL_VECTOR_FN npool_vf64 npool_vselect_f64(npool_vi64 mask, npool_vf64 a, npool_vf64 b) {
    return (npool_vf64)((mask & (npool_vi64)a) | (~mask & (npool_vi64)b));
}

/* a > b ? a : b, lane by lane: what x86's MAXPS/MAXPD compute exactly (NaN or equal: b). */
NPOOL_VECTOR_FN npool_vf32 npool_vmax_f32(npool_vf32 a, npool_vf32 b) {
#if NPOOL_VECTOR_BYTES == 64
    return (npool_vf32)_mm512_max_ps((__m512)a, (__m512)b);
#elif NPOOL_VECTOR_BYTES == 32
    return (npool_vf32)_mm256_max_ps((__m256)a, (__m256)b);
#elif defined(__SSE__)
    return (npool_vf32)_mm_max_ps((__m128)a, (__m128)b);
#else
    return npool_vselect_f32(a > b, a, b);
#endif
}
NPOOL_VECTOR_FN npool_vf64 npool_vmax_f64(npool_vf64 a, npool_vf64 b) {
#if NPOOL_VECTOR_BYTES == 64
    return (npool_vf64)_mm512_max_pd((__m512d)a, (__m512d)b);
#elif NPOOL_VECTOR_BYTES == 32
    return (npool_vf64)_mm256_max_pd((__m256d)a, (__m256d)b);
#elif defined(__SSE2__)
    return (npool_vf64)_mm_max_pd((__m128d)a, (__m128d)b);
#else
    return npool_vselect_f64(a > b, a, b);
#endif
}

/* Shuffle masks: the even and odd lanes of a pair of vectors (one vector of a stride-2 row),
 * and the low and high halves of two vectors interleaved (a stride-2 row from two vectors). */
#if NPOOL_VECTOR_BYTES == 64
#define NPOOL_EVENS_f32 ((npool_vi32){0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30})
#define NPOOL_ODDS_f32 ((npool_vi32){1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31})
#define NPOOL_INTERLEAVE_LOW_f32 ((npool_vi32){0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23})
#define NPOOL_INTERLEAVE_HIGH_f32 ((npool_vi32){8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31})
#define NPOOL_EVENS_f64 ((npool_vi64){0, 2, 4, 6, 8, 10, 12, 14})
#define NPOOL_ODDS_f64 ((npool_vi64){1, 3, 5, 7, 9, 11, 13, 15})
#define NPOOL_INTERLEAVE_LOW_f64 ((npool_vi64){0, 8, 1, 9, 2, 10, 3, 11})
#define NPOOL_INTERLEAVE_HIGH_f64 ((npool_vi64){4, 12, 5, 13, 6, 14, 7, 15})
#elif NPOOL_VECTOR_BYTES == 32
#define NPOOL_EVENS_f32 ((npool_vi32){0, 2, 4, 6, 8, 10, 12, 14})
#define NPOOL_ODDS_f32 ((npool_vi32){1, 3, 5, 7, 9, 11, 13, 15})
#define NPOOL_INTERLEAVE_LOW_f32 ((npool_vi32){0, 8, 1, 9, 2, 10, 3, 11})
#define NPOOL_INTERLEAVE_HIGH_f32 ((npool_vi32){4, 12, 5, 13, 6, 14, 7, 15})
#define NPOOL_EVENS_f64 ((npool_vi64){0, 2, 4, 6})
#define NPOOL_ODDS_f64 ((npool_vi64){1, 3, 5, 7})
#define NPOOL_INTERLEAVE_LOW_f64 ((npool_vi64){0, 4, 1, 5})
#define NPOOL_INTERLEAVE_HIGH_f64 ((npool_vi64){2, 6, 3, 7})
#elif NPOOL_VECTOR_BYTES == 16
#define NPOOL_EVENS_f32 ((npool_vi32){0, 2, 4, 6})
#define NPOOL_ODDS_f32 ((npool_vi32){1, 3, 5, 7})
#define NPOOL_INTERLEAVE_LOW_f32 ((npool_vi32){0, 4, 1, 5})
#define NPOOL_INTERLEAVE_HIGH_f32 ((npool_vi32){2, 6, 3, 7})
#define NPOOL_EVENS_f64 ((npool_vi64){0, 2})
#define NPOOL_ODDS_f64 ((npool_vi64){1, 3})
#define NPOOL_INTERLEAVE_LOW_f64 ((npool_vi64){0, 2})
#define NPOOL_INTERLEAVE_HIGH_f64 ((npool_vi64){1, 3})
#endif

/* Shuffle masks of (v, a): a with its even (or odd) lanes replaced by the first half of v
 * (LOW) or by its second half (HIGH): v written back into the even (odd) elements of a
 * stride-2 row held in two vectors. */
#if NPOOL_VECTOR_BYTES == 64
#define NPOOL_PUT_EVENS_LOW_f32 ((npool_vi32){0, 17, 1, 19, 2, 21, 3, 23, 4, 25, 5, 27, 6, 29, 7, 31})
#define NPOOL_PUT_EVENS_HIGH_f32 ((npool_vi32){8, 17, 9, 19, 10, 21, 11, 23, 12, 25, 13, 27, 14, 29, 15, 31})
#define NPOOL_PUT_ODDS_LOW_f32 ((npool_vi32){16, 0, 18, 1, 20, 2, 22, 3, 24, 4, 26, 5, 28, 6, 30, 7})
#define NPOOL_PUT_ODDS_HIGH_f32 ((npool_vi32){16, 8, 18, 9, 20, 10, 22, 11, 24, 12, 26, 13, 28, 14, 30, 15})
#define NPOOL_PUT_EVENS_LOW_f64 ((npool_vi64){0, 9, 1, 11, 2, 13, 3, 15})
#define NPOOL_PUT_EVENS_HIGH_f64 ((npool_vi64){4, 9, 5, 11, 6, 13, 7, 15})
#define NPOOL_PUT_ODDS_LOW_f64 ((npool_vi64){8, 0, 10, 1, 12, 2, 14, 3})
#define NPOOL_PUT_ODDS_HIGH_f64 ((npool_vi64){8, 4, 10, 5, 12, 6, 14, 7})
#elif NPOOL_VECTOR_BYTES == 32
#define NPOOL_PUT_EVENS_LOW_f32 ((npool_vi32){0, 9, 1, 11, 2, 13, 3, 15})
#define NPOOL_PUT_EVENS_HIGH_f32 ((npool_vi32){4, 9, 5, 11, 6, 13, 7, 15})
#define NPOOL_PUT_ODDS_LOW_f32 ((npool_vi32){8, 0, 10, 1, 12, 2, 14, 3})
#define NPOOL_PUT_ODDS_HIGH_f32 ((npool_vi32){8, 4, 10, 5, 12, 6, 14, 7})
#define NPOOL_PUT_EVENS_LOW_f64 ((npool_vi64){0, 5, 1, 7})
#define NPOOL_PUT_EVENS_HIGH_f64 ((npool_vi64){2, 5, 3, 7})
#define NPOOL_PUT_ODDS_LOW_f64 ((npool_vi64){4, 0, 6, 1})
#define NPOOL_PUT_ODDS_HIGH_f64 ((npool_vi64){4, 2, 6, 3})
#elif NPOOL_VECTOR_BYTES == 16
#define NPOOL_PUT_EVENS_LOW_f32 ((npool_vi32){0, 5, 1, 7})
#define NPOOL_PUT_EVENS_HIGH_f32 ((npool_vi32){2, 5, 3, 7})
#define NPOOL_PUT_ODDS_LOW_f32 ((npool_vi32){4, 0, 6, 1})
#define NPOOL_PUT_ODDS_HIGH_f32 ((npool_vi32){4, 2, 6, 3})
#define NPOOL_PUT_EVENS_LOW_f64 ((npool_vi64){0, 3})
#define NPOOL_PUT_EVENS_HIGH_f64 ((npool_vi64){1, 3})
#define NPOOL_PUT_ODDS_LOW_f64 ((npool_vi64){2, 0})
#define NPOOL_PUT_ODDS_HIGH_f64 ((npool_vi64){2, 1})
#endif

/* Shuffle masks of (v, zero): v moved up by 1 or 2 lanes, zeros shifted in. */
#if NPOOL_VECTOR_BYTES == 64
#define NPOOL_SHIFT1_f32 ((npool_vi32){16, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14})
#define NPOOL_SHIFT2_f32 ((npool_vi32){16, 16, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13})
#define NPOOL_SHIFT1_f64 ((npool_vi64){8, 0, 1, 2, 3, 4, 5, 6})
#define NPOOL_SHIFT2_f64 ((npool_vi64){8, 8, 0, 1, 2, 3, 4, 5})
#elif NPOOL_VECTOR_BYTES == 32
#define NPOOL_SHIFT1_f32 ((npool_vi32){8, 0, 1, 2, 3, 4, 5, 6})
#define NPOOL_SHIFT2_f32 ((npool_vi32){8, 8, 0, 1, 2, 3, 4, 5})
#define NPOOL_SHIFT1_f64 ((npool_vi64){4, 0, 1, 2})
#define NPOOL_SHIFT2_f64 ((npool_vi64){4, 4, 0, 1})
#elif NPOOL_VECTOR_BYTES == 16
#define NPOOL_SHIFT1_f32 ((npool_vi32){4, 0, 1, 2})
#define NPOOL_SHIFT2_f32 ((npool_vi32){4, 4, 0, 1})
#define NPOOL_SHIFT1_f64 ((npool_vi64){2, 0})
#define NPOOL_SHIFT2_f64 ((npool_vi64){2, 2})
#endif

/* 0, 1, 2, ...: each lane's index. */
#if NPOOL_VECTOR_BYTES == 64
#define NPOOL_LANE_INDEX_f32 ((npool_vi32){0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15})
#define NPOOL_LANE_INDEX_f64 ((npool_vi64){0, 1, 2, 3, 4, 5, 6, 7})
#elif NPOOL_VECTOR_BYTES == 32
#define NPOOL_LANE_INDEX_f32 ((npool_vi32){0, 1, 2, 3, 4, 5, 6, 7})
#define NPOOL_LANE_INDEX_f64 ((npool_vi64){0, 1, 2, 3})
#elif NPOOL_VECTOR_BYTES == 16
#define NPOOL_LANE_INDEX_f32 ((npool_vi32){0, 1, 2, 3})
#define NPOOL_LANE_INDEX_f64 ((npool_vi64){0, 1})
#endif

/* Lanes holding NaN or +-inf, by their exponent bits (whatever the floating-point flags). */
NPOOL_VECTOR_FN npool_vi32 npool_vnonfinite_f32(npool_vf32 z) {
    return ((npool_vi32)z & 0x7F800000) == 0x7F800000;
}
NPOOL_VECTOR_FN npool_vi64 npool_vnonfinite_f64(npool_vf64 z) {
    return ((npool_vi64)z & 0x7FF0000000000000LL) == 0x7FF0000000000000LL;
}

/* Whether any lane of a comparison's mask is set. */
NPOOL_VECTOR_FN int npool_vany_bits(npool_vi32 mask) {
#if NPOOL_VECTOR_BYTES == 64
    return _mm512_test_epi32_mask((__m512i)mask, (__m512i)mask) != 0;
#elif NPOOL_VECTOR_BYTES == 32
    return !_mm256_testz_si256((__m256i)mask, (__m256i)mask);
#elif defined(__SSE2__)
    return _mm_movemask_epi8((__m128i)mask) != 0;
#else
    int32_t any = 0;
    for (int l = 0; l < NPOOL_LANES_F32; l++) any |= mask[l];
    return any != 0;
#endif
}
NPOOL_VECTOR_FN int npool_vany_f32(npool_vi32 mask) { return npool_vany_bits(mask); }
NPOOL_VECTOR_FN int npool_vany_f64(npool_vi64 mask) { return npool_vany_bits((npool_vi32)mask); }
#else
#define NPOOL_SIMD 0
#endif

#endif
