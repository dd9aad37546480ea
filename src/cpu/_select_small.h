/* The k-th largest of a small map's 32-bit keys on vectors of keys (AVX-512: 16 lanes;
 * AVX2 with BMI2, the x86-64-v3 build: 8): the selection kernel of k-max and WELDON for float32
 * maps whose keys fit the thread's buffer (_global_pools.pyx).
 *
 * npool_kth_key32(keys, n, k, scratch, &need) returns the k-th largest of the n keys
 * (1 <= k <= n) and how many keys equal to it are among the k largest, or sets need to -1
 * when it gives up (the caller then runs the radix select, which finds the same key). It is a
 * quickselect: a pivot from three samples (the largest of them while the k-th lies in the top
 * quarter of the candidates, the smallest in the bottom quarter, else the median), one pass
 * counting the keys above and at the pivot, one pass packing the side that holds the k-th into
 * scratch (AVX-512: vpcompressd into a register; AVX2: a permutation built from the mask with
 * pdep/pext; then a full-width store: scratch has room for n + 16 keys); the pivot is a
 * candidate, so each round drops at least one key. Once two vectors or fewer remain, each
 * key's rank among them gives the answer. On n = 196, k = 19 (a 14x14 map, 10 %) that is
 * about three rounds of 13, 4 and 2 vectors of 16 instead of a radix select's byte
 * histograms of up to 196 scalar increments (whose repeated digits wait on each other).
 *
 * npool_taken_indices32(keys, n, t, need, index) writes the flat indices of the k best cells
 * in ascending order: the keys above t, and the first ``need`` keys equal to t.
 * npool_keys32_block16 makes the keys of 16 channels-last maps at once, transposing tiles of
 * positions x channels in registers.
 *
 * Both are exact (the answer does not depend on the pivots), so the result is the radix
 * select's bit for bit. Elsewhere NPOOL_SELECT_SMALL is 0 and the functions are stubs.
 */
#ifndef NPOOL_SELECT_SMALL_H
#define NPOOL_SELECT_SMALL_H

#include <stddef.h>
#include <stdint.h>

#if (defined(__AVX512F__) || (defined(__AVX2__) && defined(__BMI2__))) && !defined(_MSC_VER)
#include <immintrin.h>
#define NPOOL_SELECT_SMALL 1

/* Quickselect rounds before giving up (adversarial orders make a pivot drop few keys); a
 * build may set fewer (-DNPOOL_SELECT_ROUNDS=1 sends most maps through the fallback). */
#ifndef NPOOL_SELECT_ROUNDS
#define NPOOL_SELECT_ROUNDS 24
#endif

/* The primitives, on vectors of NPOOL_KEY_LANES keys: a load of the first ``count`` keys at p
 * (the lanes past them are not read) with the bit mask of those lanes, comparisons with a
 * splatted key as bit masks (unsigned order), and the keys of a mask packed to the front of a
 * full-width store. */
#if defined(__AVX512F__)
#define NPOOL_KEY_LANES 16
typedef __m512i npool_keys_t;
static inline unsigned npool_lanes_below(ptrdiff_t count) {
    return count >= 16 ? 0xFFFFu : (1u << count) - 1u;
}
static inline npool_keys_t npool_load_keys(const uint32_t* p, unsigned valid) {
    return _mm512_maskz_loadu_epi32((__mmask16)valid, p);
}
static inline npool_keys_t npool_splat_key(uint32_t t) { return _mm512_set1_epi32((int)t); }
static inline unsigned npool_keys_gt(npool_keys_t v, npool_keys_t t, unsigned valid) {
    return _mm512_mask_cmpgt_epu32_mask((__mmask16)valid, v, t);
}
static inline unsigned npool_keys_ge(npool_keys_t v, npool_keys_t t, unsigned valid) {
    return _mm512_mask_cmpge_epu32_mask((__mmask16)valid, v, t);
}
static inline unsigned npool_keys_lt(npool_keys_t v, npool_keys_t t, unsigned valid) {
    return _mm512_mask_cmplt_epu32_mask((__mmask16)valid, v, t);
}
static inline unsigned npool_keys_eq(npool_keys_t v, npool_keys_t t, unsigned valid) {
    return _mm512_mask_cmpeq_epu32_mask((__mmask16)valid, v, t);
}
static inline void npool_store_packed(uint32_t* p, npool_keys_t v, unsigned mask) {
    /* vpcompressd into a register (into memory it is microcoded and slow on Zen 4) */
    _mm512_storeu_si512((void*)p, _mm512_maskz_compress_epi32((__mmask16)mask, v));
}
#else  /* AVX2 and BMI2 (x86-64-v3) */
#define NPOOL_KEY_LANES 8
typedef __m256i npool_keys_t;  /* keys with their top bit flipped: signed order = unsigned */
static inline unsigned npool_lanes_below(ptrdiff_t count) {
    return count >= 8 ? 0xFFu : (1u << count) - 1u;
}
static inline npool_keys_t npool_load_keys(const uint32_t* p, unsigned valid) {
    const __m256i lanes = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i read = _mm256_cmpeq_epi32(
        _mm256_and_si256(_mm256_set1_epi32((int)valid), lanes), lanes);
    return _mm256_xor_si256(_mm256_maskload_epi32((const int*)p, read),
                            _mm256_set1_epi32((int)0x80000000u));
}
static inline npool_keys_t npool_splat_key(uint32_t t) {
    return _mm256_set1_epi32((int)(t ^ 0x80000000u));
}
static inline unsigned npool_bits(__m256i m) {
    return (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(m));
}
static inline unsigned npool_keys_gt(npool_keys_t v, npool_keys_t t, unsigned valid) {
    return npool_bits(_mm256_cmpgt_epi32(v, t)) & valid;
}
static inline unsigned npool_keys_lt(npool_keys_t v, npool_keys_t t, unsigned valid) {
    return npool_bits(_mm256_cmpgt_epi32(t, v)) & valid;
}
static inline unsigned npool_keys_ge(npool_keys_t v, npool_keys_t t, unsigned valid) {
    return ~npool_keys_lt(v, t, valid) & valid;
}
static inline unsigned npool_keys_eq(npool_keys_t v, npool_keys_t t, unsigned valid) {
    return npool_bits(_mm256_cmpeq_epi32(v, t)) & valid;
}
static inline void npool_store_packed(uint32_t* p, npool_keys_t v, unsigned mask) {
    /* the lane numbers of the mask's bits packed into bytes (pdep spreads each bit over a
     * byte, pext keeps those bytes of 0x0706050403020100), widened to a permutation */
    const uint64_t spread = _pdep_u64(mask, 0x0101010101010101ULL) * 0xFFu;
    const uint64_t order = _pext_u64(0x0706050403020100ULL, spread);
    const __m256i permutation = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)order));
    _mm256_storeu_si256((__m256i*)p, _mm256_xor_si256(
        _mm256_permutevar8x32_epi32(v, permutation), _mm256_set1_epi32((int)0x80000000u)));
}
#endif

static inline uint32_t npool_kth_key32(const uint32_t* keys, ptrdiff_t n, ptrdiff_t k,
                                       uint32_t* scratch, ptrdiff_t* need) {
    const ptrdiff_t L = NPOOL_KEY_LANES;
    const uint32_t* cand = keys;
    ptrdiff_t count = n, rank = k;  /* the k-th largest key is the rank-th largest candidate */
    for (int round = 0; count > 2 * L; round++) {
        if (round == NPOOL_SELECT_ROUNDS) {
            *need = -1;
            return 0;
        }
        uint32_t a = cand[count / 4], b = cand[count / 2], c = cand[count - 1 - count / 4], s;
        if (a > b) { s = a; a = b; b = s; }
        if (b > c) { s = b; b = c; c = s; }
        if (a > b) { s = a; a = b; b = s; }
        const uint32_t pivot = 4 * rank <= count ? c : 4 * rank >= 3 * count ? a : b;
        const npool_keys_t p = npool_splat_key(pivot);
        ptrdiff_t above = 0, at_least = 0;
        for (ptrdiff_t i = 0; i < count; i += L) {
            const unsigned valid = npool_lanes_below(count - i);
            const npool_keys_t v = npool_load_keys(cand + i, valid);
            above += __builtin_popcount(npool_keys_gt(v, p, valid));
            at_least += __builtin_popcount(npool_keys_ge(v, p, valid));
        }
        if (rank > above && rank <= at_least) {
            *need = rank - above;
            return pivot;
        }
        const int keep_above = rank <= above;
        ptrdiff_t kept = 0;
        for (ptrdiff_t i = 0; i < count; i += L) {
            const unsigned valid = npool_lanes_below(count - i);
            const npool_keys_t v = npool_load_keys(cand + i, valid);
            const unsigned keep = keep_above ? npool_keys_gt(v, p, valid)
                                             : npool_keys_lt(v, p, valid);
            npool_store_packed(scratch + kept, v, keep);  /* kept <= i: nothing unread */
            kept += __builtin_popcount(keep);
        }
        if (!keep_above) rank -= at_least;
        count = kept;
        cand = scratch;
    }
    for (ptrdiff_t j = 0; j < count; j++) {  /* at most 2 L left: each one's rank */
        const npool_keys_t t = npool_splat_key(cand[j]);
        ptrdiff_t above = 0, equal = 0;
        for (ptrdiff_t i = 0; i < count; i += L) {
            const unsigned valid = npool_lanes_below(count - i);
            const npool_keys_t v = npool_load_keys(cand + i, valid);
            above += __builtin_popcount(npool_keys_gt(v, t, valid));
            equal += __builtin_popcount(npool_keys_eq(v, t, valid));
        }
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
    const npool_keys_t threshold = npool_splat_key(t);
    ptrdiff_t j = 0;
    for (ptrdiff_t i = 0; i < n; i += NPOOL_KEY_LANES) {
        const unsigned valid = npool_lanes_below(n - i);
        const npool_keys_t v = npool_load_keys(keys + i, valid);
        unsigned taken = npool_keys_gt(v, threshold, valid);
        unsigned equal = need > 0 ? npool_keys_eq(v, threshold, valid) : 0u;
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

#if defined(__AVX512F__)
#define NPOOL_KEYS_BLOCK16 1

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

#else  /* AVX2: tiles of 8 positions x 16 channels, two 8 x 8 transposes */
#define NPOOL_KEYS_BLOCK16 1

/* The 32-bit keys of 8 float32 cells, as npool_keys16. */
static inline __m256i npool_keys8(__m256 v, __m256i flip) {
    const __m256 zero = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_EQ_OQ);
    const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    __m256i u = _mm256_castps_si256(_mm256_andnot_ps(zero, v));
    u = _mm256_xor_si256(u, _mm256_or_si256(_mm256_srai_epi32(u, 31),
                                             _mm256_set1_epi32((int)0x80000000u)));
    u = _mm256_or_si256(u, _mm256_castps_si256(nan));
    return _mm256_xor_si256(u, flip);
}

/* r[i] = row i of an 8 x 8 tile of keys; stores column c at out + c * n. */
static inline void npool_store_transposed8(__m256i* r, uint32_t* out, ptrdiff_t n) {
    __m256i t[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    /* r[4 g + j] holds, in its 128-bit lane L, column 4 L + j of rows 4 g .. 4 g + 3 */
    for (int j = 0; j < 4; j++) {
        _mm256_storeu_si256((__m256i*)(out + (size_t)j * n),
                            _mm256_permute2x128_si256(r[j], r[4 + j], 0x20));
        _mm256_storeu_si256((__m256i*)(out + (size_t)(4 + j) * n),
                            _mm256_permute2x128_si256(r[j], r[4 + j], 0x31));
    }
}

static inline void npool_keys32_block16(const float* x, ptrdiff_t pos_step, ptrdiff_t n,
                                        uint32_t flip, uint32_t* keys) {
    const __m256i f = _mm256_set1_epi32((int)flip);
    ptrdiff_t p = 0;
    for (; p + 8 <= n; p += 8) {
        for (int half = 0; half < 2; half++) {
            __m256i r[8];
            for (int i = 0; i < 8; i++)
                r[i] = npool_keys8(_mm256_loadu_ps(x + (p + i) * pos_step + 8 * half), f);
            npool_store_transposed8(r, keys + (size_t)(8 * half) * n + p, n);
        }
    }
    for (; p < n; p++) {
        uint32_t row[16];
        _mm256_storeu_si256((__m256i*)row, npool_keys8(_mm256_loadu_ps(x + p * pos_step), f));
        _mm256_storeu_si256((__m256i*)(row + 8),
                            npool_keys8(_mm256_loadu_ps(x + p * pos_step + 8), f));
        for (int c = 0; c < 16; c++) keys[(size_t)c * n + p] = row[c];
    }
}
#endif

#else
#define NPOOL_SELECT_SMALL 0
#define NPOOL_KEYS_BLOCK16 0
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
