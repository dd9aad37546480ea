/* The k-th largest of a small map's 32-bit keys, on AVX-512: the selection kernel of k-max and
 * WELDON for float32 maps whose keys fit the thread's buffer (_global_pools.pyx).
 *
 * npool_kth_key32(keys, n, k, scratch, &need) returns the k-th largest of the n keys
 * (1 <= k <= n) and how many keys equal to it are among the k largest, or sets need to -1
 * when it gives up (the caller then runs the radix select, which finds the same key). It is a
 * quickselect on vectors of 16 keys: a pivot from three samples (the largest of them while the
 * k-th lies in the top quarter of the candidates, the smallest in the bottom quarter, else the
 * median), one pass counting the keys above and at the pivot, one pass compressing the side
 * that holds the k-th into scratch (vpcompressd into a register, then a full store: scratch
 * has room for n + 16 keys); the pivot is a candidate, so each round drops at least one key.
 * Once 16 keys or fewer remain, each one's rank among them gives the answer. On n = 196,
 * k = 19 (a 14x14 map, 10 %) this is about 4 rounds of 13, 7, 4 and 2 vectors instead of a
 * radix select's four byte histograms of up to 196 scalar increments (whose repeated digits
 * wait on each other).
 *
 * npool_taken_indices32(keys, n, t, need, index) writes the flat indices of the k best cells
 * in ascending order: the keys above t, and the first ``need`` keys equal to t.
 *
 * Both are exact (the answer does not depend on the pivots), so the result is the radix
 * select's bit for bit. Without AVX-512 NPOOL_SELECT_SMALL is 0 and neither exists.
 */
#ifndef NPOOL_SELECT_SMALL_H
#define NPOOL_SELECT_SMALL_H

#include <stddef.h>
#include <stdint.h>

#if defined(__AVX512F__) && !defined(_MSC_VER)
#include <immintrin.h>
#define NPOOL_SELECT_SMALL 1

/* Quickselect rounds before giving up (adversarial orders make a pivot drop few keys); a
 * build may set fewer (-DNPOOL_SELECT_ROUNDS=1 sends most maps through the fallback). */
#ifndef NPOOL_SELECT_ROUNDS
#define NPOOL_SELECT_ROUNDS 24
#endif

static inline __mmask16 npool_lanes_below(ptrdiff_t count) {
    return count >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << count) - 1u);
}

static inline uint32_t npool_kth_key32(const uint32_t* keys, ptrdiff_t n, ptrdiff_t k,
                                       uint32_t* scratch, ptrdiff_t* need) {
    const uint32_t* cand = keys;
    ptrdiff_t count = n, rank = k;  /* the k-th largest key is the rank-th largest candidate */
    for (int round = 0; count > 16; round++) {
        if (round == NPOOL_SELECT_ROUNDS) {
            *need = -1;
            return 0;
        }
        uint32_t a = cand[count / 4], b = cand[count / 2], c = cand[count - 1 - count / 4], s;
        if (a > b) { s = a; a = b; b = s; }
        if (b > c) { s = b; b = c; c = s; }
        if (a > b) { s = a; a = b; b = s; }
        const uint32_t pivot = 4 * rank <= count ? c : 4 * rank >= 3 * count ? a : b;
        const __m512i p = _mm512_set1_epi32((int)pivot);
        ptrdiff_t above = 0, at_least = 0;
        for (ptrdiff_t i = 0; i < count; i += 16) {
            const __mmask16 valid = npool_lanes_below(count - i);
            const __m512i v = _mm512_maskz_loadu_epi32(valid, cand + i);
            above += __builtin_popcount(_mm512_mask_cmpgt_epu32_mask(valid, v, p));
            at_least += __builtin_popcount(_mm512_mask_cmpge_epu32_mask(valid, v, p));
        }
        if (rank > above && rank <= at_least) {
            *need = rank - above;
            return pivot;
        }
        const int keep_above = rank <= above;
        ptrdiff_t kept = 0;
        for (ptrdiff_t i = 0; i < count; i += 16) {
            const __mmask16 valid = npool_lanes_below(count - i);
            const __m512i v = _mm512_maskz_loadu_epi32(valid, cand + i);
            const __mmask16 keep = keep_above ? _mm512_mask_cmpgt_epu32_mask(valid, v, p)
                                              : _mm512_mask_cmplt_epu32_mask(valid, v, p);
            /* kept <= i: the store overlaps no candidate not yet loaded */
            _mm512_storeu_si512((void*)(scratch + kept), _mm512_maskz_compress_epi32(keep, v));
            kept += __builtin_popcount(keep);
        }
        if (!keep_above) rank -= at_least;
        count = kept;
        cand = scratch;
    }
    const __mmask16 valid = npool_lanes_below(count);
    const __m512i v = _mm512_maskz_loadu_epi32(valid, cand);
    for (ptrdiff_t j = 0; j < count; j++) {
        const __m512i t = _mm512_set1_epi32((int)cand[j]);
        const ptrdiff_t above = __builtin_popcount(_mm512_mask_cmpgt_epu32_mask(valid, v, t));
        const ptrdiff_t equal = __builtin_popcount(_mm512_mask_cmpeq_epu32_mask(valid, v, t));
        if (rank > above && rank <= above + equal) {
            *need = rank - above;
            return cand[j];
        }
    }
    *need = -1;  /* not reached: some candidate holds every rank in 1..count */
    return 0;
}

static inline ptrdiff_t npool_taken_indices32(const uint32_t* keys, ptrdiff_t n, uint32_t t,
                                              ptrdiff_t need, int64_t* index) {
    const __m512i threshold = _mm512_set1_epi32((int)t);
    ptrdiff_t j = 0;
    for (ptrdiff_t i = 0; i < n; i += 16) {
        const __mmask16 valid = npool_lanes_below(n - i);
        const __m512i v = _mm512_maskz_loadu_epi32(valid, keys + i);
        unsigned taken = _mm512_mask_cmpgt_epu32_mask(valid, v, threshold);
        unsigned equal = need > 0 ? _mm512_mask_cmpeq_epu32_mask(valid, v, threshold) : 0u;
        while (equal && need > 0) {  /* the first equal keys, in flat order */
            taken |= equal & (0u - equal);
            equal &= equal - 1u;
            need--;
        }
        while (taken) {
            index[j++] = i + __builtin_ctz(taken);
            taken &= taken - 1u;
        }
    }
    return j;
}

/* The 32-bit keys of 16 float32 cells (_global_pools.pyx's _key: -0 as +0, NaN above +inf),
 * complemented by flip. */
static inline __m512i npool_keys16(__m512 v, __m512i flip) {
    const __mmask16 zero = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_EQ_OQ);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    __m512i u = _mm512_maskz_mov_epi32((__mmask16)~zero, _mm512_castps_si512(v));
    u = _mm512_xor_si512(u, _mm512_or_si512(_mm512_srai_epi32(u, 31),
                                             _mm512_set1_epi32((int)0x80000000u)));
    u = _mm512_mask_mov_epi32(u, nan, _mm512_set1_epi32(-1));
    return _mm512_xor_si512(u, flip);
}

/* The keys of 16 adjacent channels of a channels-last map of n cells, pos_step apart: channel
 * c's at keys + c n. Tiles of 16 positions x 16 channels are loaded as 16 rows, turned into
 * keys and transposed in registers (16 x 16 32-bit: unpacks of 32 and 64 bits, then two rounds
 * of 128-bit lane shuffles); positions past the last whole tile go one row at a time. */
static inline void npool_keys32_block16(const float* x, ptrdiff_t pos_step, ptrdiff_t n,
                                        uint32_t flip, uint32_t* keys) {
    const __m512i f = _mm512_set1_epi32((int)flip);
    ptrdiff_t p = 0;
    for (; p + 16 <= n; p += 16) {
        __m512i r[16], t[16];
        for (int i = 0; i < 16; i++)
            r[i] = npool_keys16(_mm512_loadu_ps(x + (p + i) * pos_step), f);
        for (int i = 0; i < 16; i += 2) {
            t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
            t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
        }
        for (int i = 0; i < 16; i += 4) {
            r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
            r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
            r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
            r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
        }
        /* r[4 g + j] holds, in its 128-bit lane L, channel 4 L + j of rows 4 g .. 4 g + 3 */
        for (int j = 0; j < 4; j++) {
            const __m512i a = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x88);       /* L0, L2 */
            const __m512i b = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xDD);       /* L1, L3 */
            const __m512i c = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x88);
            const __m512i d = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xDD);
            _mm512_storeu_si512((void*)(keys + (size_t)(j) * n + p),
                                _mm512_shuffle_i32x4(a, c, 0x88));
            _mm512_storeu_si512((void*)(keys + (size_t)(8 + j) * n + p),
                                _mm512_shuffle_i32x4(a, c, 0xDD));
            _mm512_storeu_si512((void*)(keys + (size_t)(4 + j) * n + p),
                                _mm512_shuffle_i32x4(b, d, 0x88));
            _mm512_storeu_si512((void*)(keys + (size_t)(12 + j) * n + p),
                                _mm512_shuffle_i32x4(b, d, 0xDD));
        }
    }
    for (; p < n; p++) {
        uint32_t row[16];
        _mm512_storeu_si512((void*)row, npool_keys16(_mm512_loadu_ps(x + p * pos_step), f));
        for (int c = 0; c < 16; c++) keys[(size_t)c * n + p] = row[c];
    }
}

#else
#define NPOOL_SELECT_SMALL 0
static inline uint32_t npool_kth_key32(const uint32_t* keys, ptrdiff_t n, ptrdiff_t k,
                                       uint32_t* scratch, ptrdiff_t* need) {
    (void)keys; (void)n; (void)k; (void)scratch;
    *need = -1;
    return 0;
}
static inline ptrdiff_t npool_taken_indices32(const uint32_t* keys, ptrdiff_t n, uint32_t t,
                                              ptrdiff_t need, int64_t* index) {
    (void)keys; (void)n; (void)t; (void)need; (void)index;
    return 0;
}
static inline void npool_keys32_block16(const float* x, ptrdiff_t pos_step, ptrdiff_t n,
                                        uint32_t flip, uint32_t* keys) {
    (void)x; (void)pos_step; (void)n; (void)flip; (void)keys;
}
#endif

#endif
