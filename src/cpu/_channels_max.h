/* The running maximum of channels-last rows, vectorised across channels: the kernel of the
 * channels-last global max pool (_global_pools.pyx).
 *
 * For nch unit-stride channels over npos positions pos_step apart, each channel's maximum M
 * (a strict >, so the first of equal cells), the first position holding it, and the sum of
 * v - v over its cells (NaN exactly when a NaN or an infinity is present: the caller redoes
 * those channels one cell at a time). A last vector that overlaps the one before it covers
 * the channels left over: a cell compared again changes neither a maximum nor its first
 * position, and v - v adds 0 or NaN again. Positions are counted in the element type (exact
 * below 2**24, which the caller's chunks stay under).
 */
#ifndef NPOOL_CHANNELS_MAX_H
#define NPOOL_CHANNELS_MAX_H

#include <math.h>
#include <stddef.h>
#include "_simd.h"

#if NPOOL_SIMD
#define NPOOL_CHANNELS_MAX(SFX, R, V, LANES)                                                  \
NPOOL_VECTOR_FN void npool_channels_max_block_##SFX(                                          \
        const R* x, ptrdiff_t pos_step, ptrdiff_t npos, const int WIDTH, R* m, R* at,         \
        R* bad) {                                                                             \
    V best[4], where[4], sum[4], here = npool_splat_##SFX(0);                                 \
    for (int w = 0; w < WIDTH; w++) {                                                         \
        best[w] = npool_splat_##SFX(-INFINITY);                                               \
        where[w] = npool_splat_##SFX(0);                                                      \
        sum[w] = npool_splat_##SFX(0);                                                        \
    }                                                                                         \
    for (ptrdiff_t p = 0; p < npos; p++) {                                                    \
        const R* row = x + p * pos_step;                                                      \
        for (int w = 0; w < WIDTH; w++) {                                                     \
            V v = *(const V*)(row + w * LANES);                                               \
            where[w] = npool_vselect_##SFX(v > best[w], here, where[w]);                      \
            best[w] = npool_vmax_##SFX(v, best[w]);                                           \
            sum[w] = sum[w] + (v - v);                                                        \
        }                                                                                     \
        here = here + 1;                                                                      \
    }                                                                                         \
    for (int w = 0; w < WIDTH; w++) {                                                         \
        *(V*)(m + w * LANES) = best[w];                                                       \
        *(V*)(at + w * LANES) = where[w];                                                     \
        *(V*)(bad + w * LANES) = sum[w];                                                      \
    }                                                                                         \
}                                                                                             \
                                                                                              \
/* 1 when done (nch >= LANES), else 0: the caller's scalar loop does it. A position's row is  \
 * read whole, in order (rows far apart read a few vectors at a time defeat the prefetcher);  \
 * the running results stay in m, at and bad (L1). */                                         \
static int npool_channels_max_##SFX(const R* x, ptrdiff_t pos_step, ptrdiff_t npos,           \
                                    ptrdiff_t nch, R* m, R* at, R* bad) {                     \
    const ptrdiff_t last = nch - LANES;                                                       \
    ptrdiff_t c;                                                                              \
    if (nch < LANES)                                                                          \
        return 0;                                                                             \
    if (nch <= 4 * LANES) {  /* up to four vectors: in registers */                           \
        if (nch == 4 * LANES) {                                                               \
            npool_channels_max_block_##SFX(x, pos_step, npos, 4, m, at, bad);                 \
            return 1;                                                                         \
        }                                                                                     \
        for (c = 0; c + LANES <= nch; c += LANES)                                             \
            npool_channels_max_block_##SFX(x + c, pos_step, npos, 1, m + c, at + c, bad + c); \
        if (c < nch)                                                                          \
            npool_channels_max_block_##SFX(x + last, pos_step, npos, 1, m + last, at + last,  \
                                           bad + last);                                       \
        return 1;                                                                             \
    }                                                                                         \
    for (c = 0;; c += LANES) {                                                                \
        c = c < last ? c : last;                                                              \
        *(V*)(m + c) = npool_splat_##SFX(-INFINITY);                                          \
        *(V*)(at + c) = npool_splat_##SFX(0);                                                 \
        *(V*)(bad + c) = npool_splat_##SFX(0);                                                \
        if (c == last)                                                                        \
            break;                                                                            \
    }                                                                                         \
    for (ptrdiff_t p = 0; p < npos; p++) {                                                    \
        const R* row = x + p * pos_step;                                                      \
        const V here = npool_splat_##SFX((R)p);                                               \
        for (c = 0;; c += LANES) {                                                            \
            V v, best;                                                                        \
            c = c < last ? c : last;  /* the last vector again: max and first index unchanged */\
            v = *(const V*)(row + c);                                                         \
            best = *(const V*)(m + c);                                                        \
            *(V*)(at + c) = npool_vselect_##SFX(v > best, here, *(const V*)(at + c));         \
            *(V*)(m + c) = npool_vmax_##SFX(v, best);                                         \
            *(V*)(bad + c) = *(const V*)(bad + c) + (v - v);                                  \
            if (c == last)                                                                    \
                break;                                                                        \
        }                                                                                     \
    }                                                                                         \
    return 1;                                                                                 \
}
NPOOL_CHANNELS_MAX(f32, float, npool_vf32, NPOOL_LANES_F32)
NPOOL_CHANNELS_MAX(f64, double, npool_vf64, NPOOL_LANES_F64)
#undef NPOOL_CHANNELS_MAX
#else
static int npool_channels_max_f32(const float* x, ptrdiff_t pos_step, ptrdiff_t npos,
                                  ptrdiff_t nch, float* m, float* at, float* bad) { return 0; }
static int npool_channels_max_f64(const double* x, ptrdiff_t pos_step, ptrdiff_t npos,
                                  ptrdiff_t nch, double* m, double* at, double* bad) { return 0; }
#endif

#endif
