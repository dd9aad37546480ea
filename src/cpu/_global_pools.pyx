# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Global pools: every (sample, channel) map of S spatial cells pooled to one value.

Arrays are seen as 3-D ``(N, C, S)`` with element strides: a C-contiguous input has unit stride
along S, a channels-last one along C (its spatial axes are flattened in C order in both cases,
so a cell's *flat index* is the same in both layouts).

Reductions (max with its index, sum, LogSumExp) cut each map into chunks of ``CHUNK`` cells
that do not depend on the thread count; the parallel loop runs over (map, chunk) pairs (over
(sample, chunk, block of channels) for channels-last input), so small batches of large maps still
use every thread, and ``combine_*`` merges the chunks of a map in chunk order. Every value is
computed by one thread in a fixed order: results do not depend on the thread count.

    max: y = max x, at the lowest flat index among ties; a NaN wins (the first NaN).
    LSE: z = beta x, M = max z, S = sum exp(z - M), y = (M + log(S / n)) / beta
         (beta = 0 is the mean, taken by the caller); dy/dx_i = exp(z_i - M) / S.
    GeM: z = max(x, eps), M = max z, u = log(z / M), S = sum exp(p u), T = sum exp(p u) u,
         y = M (S / n)^(1/p) (taken by the caller), dy/dx_i = y exp(p u_i) / (S z_i);
         one thread per map, any strides.

Selection (k-max, WELDON) is O(S) per map: the cells get unsigned keys that order their values
(NaN above +inf, -0 equal to +0; complemented for the smallest values); a radix select finds
the k-th key T, in memory when the thread's buffer holds the map's keys and a scratch, and for
larger maps with the keys computed on the fly, a pass over the cells per key byte until the
candidates fit the buffer (so the scratch is bounded whatever the map's size). The k best are
the cells above T plus the first cells equal to T in flat order (ties go to the lower flat
index). Sums run in flat order, in float64;
gradients are written map by map, with no scatter. On the x86-64-v3 and v4 builds, float32
maps whose keys fit the buffer take the vector select of _select_small.h instead (32-bit keys,
a quickselect on vectors of 8 or 16, the taken cells from bit masks; channels-last maps get the
keys of 16 channels at once, on AVX-512 transposed in registers): it finds the same T, so the
same cells and sums, bit for bit.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport INFINITY, NAN, exp
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memset

from _fastexp cimport (double_bits, exp_nonpositive, float_bits, npool_log_exponent_f32,
                       npool_log_exponent_f64, npool_log_ratio_f32, npool_log_ratio_f64)
from _kernel_checks cimport dims, require, same_strides

cdef enum:
    CHUNK = 2048   # cells per chunk of a contiguous map
    MAX_LANES = 32  # independent lanes of a vectorised maximum (four AVX2 vectors of float)
    SEARCH_BLOCK = 64  # cells compared at a time when looking for the maximum's first index
    SUM_BLOCK = 1024  # cells per float64 partial of a sum (32 per lane)
    SHORT_SUM = 256  # maps of fewer cells are summed in one vector of 8 lanes (< 32 per lane)
    CL_CHUNK = 128  # positions per chunk of a channels-last sample (sums)
    CL_MAX_CHUNK = 1024  # positions per chunk of a channels-last maximum
    CBLOCK = 512   # channels per block of a channels-last chunk
    INTERLEAVE_FROM = 1024  # candidates from which a radix select counts in four histograms
CHUNK_CELLS = CHUNK
CHANNELS_LAST_CHUNK = CL_CHUNK
CHANNELS_LAST_MAX_CHUNK = CL_MAX_CHUNK

cdef extern from "_channels_max.h" nogil:
    int npool_channels_max_f32(const float* x, Py_ssize_t pos_step, Py_ssize_t npos,
                               Py_ssize_t nch, float* m, float* at, float* bad)
    int npool_channels_max_f64(const double* x, Py_ssize_t pos_step, Py_ssize_t npos,
                               Py_ssize_t nch, double* m, double* at, double* bad)


cdef extern from "_select_small.h" nogil:
    bint NPOOL_SELECT_SMALL
    bint NPOOL_KEYS_BLOCK16
    uint32_t npool_kth_key32(const uint32_t* keys, Py_ssize_t n, Py_ssize_t k,
                             uint32_t* scratch, Py_ssize_t* need)
    Py_ssize_t npool_taken_indices32(const uint32_t* keys, Py_ssize_t n, uint32_t t,
                                     Py_ssize_t need, int64_t* index)
    void npool_keys32_block16(const float* x, Py_ssize_t pos_step, Py_ssize_t n, uint32_t flip,
                              uint32_t* keys)


cdef enum Reduction:
    MAX = 0
    SUM = 1
    LSE = 2


cdef inline bint _finite(double v) noexcept nogil:
    return v - v == 0  # false for NaN and +-inf


cdef inline double _weight(double z, double m) noexcept nogil:
    """exp(z - m) for z <= m; a cell at the maximum weighs 1 (also when both are infinite)."""
    return 1.0 if z == m else exp(z - m)


# ------------------------------------------------------------------ one run of cells
cdef inline floating _scaled_max(const floating* x, Py_ssize_t n, floating beta,
                                 floating* bad_out) noexcept nogil:
    """max of beta * x over n contiguous cells, in MAX_LANES independent lanes (so it
    vectorises without -ffast-math, several vectors deep so that the lanes' dependency chains
    overlap), and in bad_out the sum of z - z: NaN exactly when a NaN or an infinity is present
    (the maximum is then not to be trusted)."""
    cdef floating m[MAX_LANES]
    cdef floating bad[MAX_LANES]
    cdef floating z, best, total_bad = 0
    cdef Py_ssize_t i, j
    for j in range(MAX_LANES):
        m[j] = -INFINITY
        bad[j] = 0
    i = 0
    while i + MAX_LANES <= n:
        for j in range(MAX_LANES):
            z = beta * x[i + j]
            bad[j] = bad[j] + (z - z)
            m[j] = z if z > m[j] else m[j]
        i = i + MAX_LANES
    for j in range(n - i):
        z = beta * x[i + j]
        bad[j] = bad[j] + (z - z)
        m[j] = z if z > m[j] else m[j]
    # The lanes' maxima as a tree (fixed widths: vectorised, five steps deep instead of a
    # chain of 32 dependent comparisons). Which of +0 and -0 wins does not matter: callers
    # take the maximum's own cell, or use it as a shift.
    for j in range(16):
        m[j] = m[j + 16] if m[j + 16] > m[j] else m[j]
        bad[j] = bad[j] + bad[j + 16]
    for j in range(8):
        m[j] = m[j + 8] if m[j + 8] > m[j] else m[j]
        bad[j] = bad[j] + bad[j + 8]
    best = m[0]
    for j in range(8):
        best = m[j] if m[j] > best else best
        total_bad = total_bad + bad[j]
    bad_out[0] = total_bad
    return best


cdef inline void _max_run(const floating* x, Py_ssize_t step, Py_ssize_t n, double* value,
                          int64_t* index) noexcept nogil:
    """Maximum of n cells step apart and its first index; the first NaN wins.

    The vectorised pass takes the maximum and sums v - v, which is NaN exactly when a NaN or an
    infinity is present; only then are the cells checked one by one for a NaN."""
    cdef Py_ssize_t i, j
    cdef floating m = x[0], v, bad = 0
    cdef int hit
    if step == 1:
        m = _scaled_max(x, n, 1, &bad)
    else:
        for i in range(n):
            v = x[i * step]
            bad = bad + (v - v)
            m = v if v > m else m
    if bad != 0:
        for i in range(n):
            v = x[i * step]
            if v != v:
                value[0] = v
                index[0] = i
                return
    i = 0
    while True:  # the first cell equal to m, a block of cells at a time
        hit = 0
        if step == 1 and i + SEARCH_BLOCK <= n:  # a fixed trip count: vectorised
            for j in range(SEARCH_BLOCK):
                hit = hit | (x[i + j] == m)
        else:
            for j in range(min(<Py_ssize_t>SEARCH_BLOCK, n - i)):
                hit = hit | (x[(i + j) * step] == m)
        if hit:
            for j in range(SEARCH_BLOCK):
                if x[(i + j) * step] == m:
                    value[0] = x[(i + j) * step]  # the cell's own zero sign, whatever the lanes
                    index[0] = i + j
                    return
        i = i + SEARCH_BLOCK


cdef inline double _short_sum(const floating* x, Py_ssize_t n) noexcept nogil:
    """Sum of n < SHORT_SUM contiguous cells (a small map): eight lanes of x's precision (one
    AVX2 vector of float; at most 31 cells per lane), added pairwise in float64. One vector
    to set up and reduce instead of four: a small map costs a third as much."""
    cdef floating lane[8]
    cdef Py_ssize_t i = 0, j
    for j in range(8):
        lane[j] = 0
    while i + 8 <= n:
        for j in range(8):
            lane[j] = lane[j] + x[i + j]
        i = i + 8
    for j in range(n - i):
        lane[j] = lane[j] + x[i + j]
    return (((<double>lane[0] + lane[4]) + (<double>lane[2] + lane[6])) +
            ((<double>lane[1] + lane[5]) + (<double>lane[3] + lane[7])))


cdef inline double _sum_run(const floating* x, Py_ssize_t n) noexcept nogil:
    """Sum of n contiguous cells: MAX_LANES lanes of x's precision (several vectors, so that
    the additions' dependency chains overlap) over blocks of SUM_BLOCK cells (32 cells per
    lane), the lanes of a block added pairwise in float64 and the blocks in float64. Maps of
    fewer than SHORT_SUM cells take ``_short_sum``."""
    cdef floating lane[MAX_LANES]
    cdef double part[MAX_LANES]
    cdef double total = 0
    cdef Py_ssize_t i, j, b = 0, stop, width
    if n < SHORT_SUM:
        return _short_sum(x, n)
    while b < n:
        stop = min(b + SUM_BLOCK, n)
        for j in range(MAX_LANES):
            lane[j] = 0
        i = b
        while i + MAX_LANES <= stop:
            for j in range(MAX_LANES):
                lane[j] = lane[j] + x[i + j]
            i = i + MAX_LANES
        for j in range(stop - i):
            lane[j] = lane[j] + x[i + j]
        for j in range(MAX_LANES):
            part[j] = lane[j]
        # Pairwise in float64, with fixed widths (vectorised; the loop over a variable width
        # cost more than the sum of a small map itself).
        for j in range(16):
            part[j] = part[j] + part[j + 16]
        for j in range(8):
            part[j] = part[j] + part[j + 8]
        for j in range(4):
            part[j] = part[j] + part[j + 4]
        for j in range(2):
            part[j] = part[j] + part[j + 2]
        total = total + (part[0] + part[1])
        b = stop
    return total


cdef inline void _lse_run(const floating* x, Py_ssize_t n, floating beta, double* m_out,
                          double* s_out) noexcept nogil:
    """M = max beta x and S = sum exp(beta x - M) of n contiguous cells. The exponentials are
    added in eight lanes of x's precision over blocks of 256 cells, the blocks in float64."""
    cdef Py_ssize_t i, j, b, stop
    cdef floating m, z, bad = 0
    cdef floating lane[8]
    cdef double total = 0
    m = _scaled_max(x, n, beta, &bad)
    if bad != 0:  # a NaN or an infinity somewhere: exact limits, one cell at a time
        m = -INFINITY
        for i in range(n):
            z = beta * x[i]
            if z != z:
                m_out[0] = NAN
                s_out[0] = NAN
                return
            m = z if z > m else m
        m_out[0] = m
        s_out[0] = 0
        for i in range(n):
            s_out[0] = s_out[0] + _weight(beta * x[i], m)
        return
    m_out[0] = m
    b = 0
    while b < n:
        stop = min(b + 256, n)
        for j in range(8):
            lane[j] = 0
        i = b
        while i + 8 <= stop:
            for j in range(8):
                lane[j] = lane[j] + exp_nonpositive(beta * x[i + j] - m)
            i = i + 8
        for j in range(stop - i):
            lane[j] = lane[j] + exp_nonpositive(beta * x[i + j] - m)
        total = total + (((<double>lane[0] + lane[1]) + (<double>lane[2] + lane[3])) +
                         ((<double>lane[4] + lane[5]) + (<double>lane[6] + lane[7])))
        b = stop
    s_out[0] = total


# ------------------------------------------------------------------ one channels-last chunk
cdef inline void _reduce_channels(Reduction mode, const floating* x, Py_ssize_t pos_step,
                                  Py_ssize_t npos, Py_ssize_t nch, floating beta,
                                  double* a, double* b, int64_t* index,
                                  Py_ssize_t out_step) noexcept nogil:
    """The partials of nch (<= CBLOCK) unit-stride channels over npos positions pos_step apart;
    channel c's partials go to a[c * out_step], b[...], index[...]. Every loop runs over the
    channels of a position (contiguous memory), so it vectorises."""
    cdef floating m[CBLOCK]
    cdef floating lane[CBLOCK]
    cdef floating bad[CBLOCK]
    cdef floating at[CBLOCK]  # positions (< CL_MAX_CHUNK: exact), in x's type so that the
    # selects of the maximum's loop are one vector type
    cdef double s[CBLOCK]
    cdef bint nan[CBLOCK]
    cdef bint any_bad = False
    cdef const floating* row
    cdef floating z, v, best, where, here
    cdef bint take, done
    cdef Py_ssize_t p, c, p0, stop
    if mode == MAX:
        # The maximum of each channel and the first position holding it (a strict > keeps the
        # first of equal cells, whose own value, zero sign included, is reported); v - v sums
        # to NaN where a NaN or an infinity is present: only those channels are searched again
        # one cell at a time (the first NaN wins). Vectors of channels in registers
        # (_channels_max.h), or this loop for fewer channels than a vector has lanes.
        if floating is float:
            done = npool_channels_max_f32(x, pos_step, npos, nch, m, at, bad)
        else:
            done = npool_channels_max_f64(x, pos_step, npos, nch, m, at, bad)
        for c in range(nch if not done else 0):
            m[c] = -INFINITY
            at[c] = 0
            bad[c] = 0
        for p in range(npos if not done else 0):  # fewer channels than a vector has lanes
            row = x + p * pos_step
            here = <floating>p
            for c in range(nch):
                # Selects into locals, then plain stores: a conditional store would become a
                # masked vector store, which is slow on some x86 cores.
                v = row[c]
                best = m[c]
                where = at[c]
                take = v > best
                where = here if take else where
                best = v if take else best
                bad[c] = bad[c] + (v - v)
                at[c] = where
                m[c] = best
        for c in range(nch):
            if bad[c] != 0 or m[c] == -INFINITY:
                _max_run(x + c, pos_step, npos, &a[c * out_step], &index[c * out_step])
            else:
                a[c * out_step] = m[c]
                index[c * out_step] = <int64_t>at[c]
        return
    for c in range(nch):
        m[c] = -INFINITY
        s[c] = 0
        nan[c] = False
    if mode == SUM:
        # 32 positions at a time in x's precision per channel (the rounding depth of the
        # contiguous sums), each block added in float64.
        p0 = 0
        while p0 < npos:
            stop = min(p0 + 32, npos)
            for c in range(nch):
                lane[c] = 0
            for p in range(p0, stop):
                row = x + p * pos_step
                for c in range(nch):
                    lane[c] = lane[c] + row[c]
            for c in range(nch):
                s[c] = s[c] + lane[c]
            p0 = stop
        for c in range(nch):
            a[c * out_step] = s[c]
        return
    for p in range(npos):
        row = x + p * pos_step
        for c in range(nch):
            z = beta * row[c]
            nan[c] = nan[c] | (z != z)
            m[c] = z if z > m[c] else m[c]
    for c in range(nch):
        any_bad = any_bad | nan[c] | (not _finite(m[c]))
    if not any_bad:
        for p in range(npos):
            row = x + p * pos_step
            for c in range(nch):
                s[c] = s[c] + exp_nonpositive(beta * row[c] - m[c])
    else:
        for c in range(nch):
            if nan[c]:
                s[c] = NAN
            else:
                for p in range(npos):
                    s[c] = s[c] + _weight(beta * x[p * pos_step + c], m[c])
    for c in range(nch):
        a[c * out_step] = NAN if nan[c] else m[c]
        b[c * out_step] = s[c]


def reduce(int mode, const floating[:, :, :] x, double beta, double[:, :] a, double[:, :] b,
           int64_t[:, :] index, int n_threads):
    """Partials of every (map, chunk): max and its index (mode 0), sum (1) or LSE's M and S (2).

    ``x`` is (N, C, S) with unit stride along S (chunks of CHUNK cells) or along C (chunks of
    CL_CHUNK positions, CL_MAX_CHUNK for the maximum); ``a``, ``b`` and ``index`` are
    (N * C, chunks).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t sN = x.strides[0] // x.itemsize, sC = x.strides[1] // x.itemsize
    cdef Py_ssize_t sS = x.strides[2] // x.itemsize
    cdef Py_ssize_t K = a.shape[1], blocks, t, map_, chunk, n, c0, start, length
    cdef Py_ssize_t cl_chunk = CL_MAX_CHUNK if mode == MAX else CL_CHUNK
    cdef const floating* base
    cdef floating fbeta = <floating>beta
    cdef Reduction red = <Reduction>mode
    require(0 <= mode <= 2, "mode must be 0, 1 or 2")
    require(N * C * S > 0, "x must not be empty")
    require(sS == 1 or S == 1 or sC == 1, "x needs unit stride along S or C")
    require(K == (S + CHUNK - 1) // CHUNK if (sS == 1 or S == 1) else
            K == (S + cl_chunk - 1) // cl_chunk, "a must have one column per chunk")
    for arr_rows, arr_cols in ((a.shape[0], a.shape[1]), (b.shape[0], b.shape[1]),
                               (index.shape[0], index.shape[1])):
        require(arr_rows == N * C and arr_cols == K, "a, b and index must be (N * C, chunks)")
    require(n_threads >= 1, "n_threads must be >= 1")
    base = &x[0, 0, 0]
    if (sS == 1 or S == 1) and K == 1 and sN == C * sC:
        # One chunk per map and the maps evenly spaced (C-contiguous input): map t starts at
        # t * sC, without the divisions of the general loop (they cost as much as summing a
        # small map).
        for t in prange(N * C, schedule='static', nogil=True, num_threads=n_threads):
            _contiguous_partial(red, base + t * sC, S, fbeta, &a[t, 0], &b[t, 0], &index[t, 0],
                                0)
    elif sS == 1 or S == 1:
        for t in prange(N * C * K, schedule='static', nogil=True, num_threads=n_threads):
            map_ = t // K
            chunk = t % K
            start = chunk * CHUNK
            length = min(<Py_ssize_t>CHUNK, S - start)
            _contiguous_partial(red, base + (map_ // C) * sN + (map_ % C) * sC + start * sS,
                                length, fbeta, &a[map_, chunk], &b[map_, chunk],
                                &index[map_, chunk], start)
    else:
        blocks = (C + CBLOCK - 1) // CBLOCK
        for t in prange(N * K * blocks, schedule='static', nogil=True, num_threads=n_threads):
            n = t // (K * blocks)
            chunk = (t // blocks) % K
            c0 = (t % blocks) * CBLOCK
            start = chunk * cl_chunk
            _channels_partial(red, base + n * sN + c0 * sC + start * sS, sS,
                              min(cl_chunk, S - start), min(<Py_ssize_t>CBLOCK, C - c0),
                              fbeta, &a[n * C + c0, chunk], &b[n * C + c0, chunk],
                              &index[n * C + c0, chunk], K, start)


cdef inline void _contiguous_partial(Reduction mode, const floating* x, Py_ssize_t n,
                                     floating beta, double* a, double* b, int64_t* index,
                                     Py_ssize_t start) noexcept nogil:
    if mode == MAX:
        _max_run(x, 1, n, a, index)
        index[0] = index[0] + start
    elif mode == SUM:
        a[0] = _sum_run(x, n)
    else:
        _lse_run(x, n, beta, a, b)


cdef inline void _channels_partial(Reduction mode, const floating* x, Py_ssize_t pos_step,
                                   Py_ssize_t npos, Py_ssize_t nch, floating beta, double* a,
                                   double* b, int64_t* index, Py_ssize_t out_step,
                                   Py_ssize_t start) noexcept nogil:
    cdef Py_ssize_t c
    _reduce_channels(mode, x, pos_step, npos, nch, beta, a, b, index, out_step)
    if mode == MAX:
        for c in range(nch):
            index[c * out_step] = index[c * out_step] + start


# ------------------------------------------------------------------ LSE gradient
def lse_gradient(const floating[:, :, :] x, floating[:, :, :] grad_x, const double[:] m,
                 const double[:] coef, double beta, int n_threads):
    """grad_x = coef * exp(beta x - M) per map (coef = g / S), with the limits of _weight."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t t, i, n, c, p
    cdef floating fbeta = <floating>beta
    cdef const floating* xbase
    cdef floating* gbase
    cdef Py_ssize_t sxN = x.strides[0] // x.itemsize, sxC = x.strides[1] // x.itemsize
    cdef Py_ssize_t sxS = x.strides[2] // x.itemsize
    cdef Py_ssize_t sgN = grad_x.strides[0] // grad_x.itemsize
    cdef Py_ssize_t sgC = grad_x.strides[1] // grad_x.itemsize
    cdef Py_ssize_t sgS = grad_x.strides[2] // grad_x.itemsize
    require(dims(grad_x.shape, 3) == dims(x.shape, 3), "grad_x must have x's shape")
    require(m.shape[0] == N * C and coef.shape[0] == N * C, "m and coef must have N * C values")
    require(n_threads >= 1, "n_threads must be >= 1")
    if N * C * S == 0:
        return
    xbase = &x[0, 0, 0]
    gbase = &grad_x[0, 0, 0]
    if x.strides[2] == x.itemsize or S == 1:
        for t in prange(N * C, schedule='static', nogil=True, num_threads=n_threads):
            n = t // C
            c = t % C
            _lse_gradient_map(xbase + n * sxN + c * sxC, gbase + n * sgN + c * sgC, sgS, S,
                              m[t], coef[t], fbeta)
    else:
        for t in prange(N * S, schedule='static', nogil=True, num_threads=n_threads):
            n = t // S
            p = t % S
            _lse_gradient_position(xbase + n * sxN + p * sxS, gbase + n * sgN + p * sgS, sxC,
                                   sgC, C, &m[n * C], &coef[n * C], fbeta)


cdef inline void _lse_gradient_map(const floating* x, floating* gx, Py_ssize_t gstep,
                                   Py_ssize_t S, double m, double coef,
                                   floating beta) noexcept nogil:
    """The S contiguous cells of one map: gx_i = coef exp(beta x_i - M); a branch-free,
    vectorised loop when M is finite and gx is contiguous too."""
    cdef Py_ssize_t i
    cdef floating mm = <floating>m, cc = <floating>coef
    if not _finite(m):
        for i in range(S):
            gx[i * gstep] = <floating>(coef * _weight(beta * x[i], m))
    elif gstep == 1:
        for i in range(S):
            gx[i] = cc * exp_nonpositive(beta * x[i] - mm)
    else:
        for i in range(S):
            gx[i * gstep] = cc * exp_nonpositive(beta * x[i] - mm)


cdef inline void _lse_gradient_position(const floating* x, floating* gx, Py_ssize_t step,
                                        Py_ssize_t gstep, Py_ssize_t C, const double* m,
                                        const double* coef, floating beta) noexcept nogil:
    """The C channels of one position of a channels-last map: gx_c = coef_c exp(beta x_c -
    M_c); a branch-free, vectorised loop when the channels are contiguous and every M finite."""
    cdef Py_ssize_t c
    cdef bint finite = True
    for c in range(C):
        finite = finite & _finite(m[c])
    if finite and step == 1 and gstep == 1:
        for c in range(C):
            gx[c] = <floating>coef[c] * exp_nonpositive(beta * x[c] - <floating>m[c])
        return
    for c in range(C):
        if _finite(m[c]):
            gx[c * gstep] = <floating>coef[c] * exp_nonpositive(beta * x[c * step] -
                                                                <floating>m[c])
        else:
            gx[c * gstep] = <floating>(coef[c] * _weight(beta * x[c * step], m[c]))


# ------------------------------------------------------------------ GeM
cdef inline floating _log_ratio(floating z, floating km, floating lm) noexcept nogil:
    """u = log(z / m) for normal 0 < z <= m, m's exponent km and log-mantissa lm given: the log
    of a ratio of _fastexp.h (a vectorisable polynomial for float, libm's log for double)."""
    if floating is float:
        return npool_log_ratio_f32(z, km, lm)
    else:
        return npool_log_ratio_f64(z, km, lm)


cdef inline void _log_parts(floating m, floating* km, floating* lm) noexcept nogil:
    """m's exponent and log-mantissa, for _log_ratio."""
    if floating is float:
        km[0] = npool_log_exponent_f32(m)
        lm[0] = npool_log_ratio_f32(m, km[0], 0)
    else:
        km[0] = npool_log_exponent_f64(m)
        lm[0] = npool_log_ratio_f64(m, km[0], 0)


cdef inline void _gem_map_stats(const floating* x, Py_ssize_t step, Py_ssize_t n, floating eps,
                                floating p, double* m_out, double* s_out,
                                double* t_out) noexcept nogil:
    """One map of n cells ``step`` apart, z = max(x, eps): M = max z, S = sum w_i and
    T = sum w_i u_i with u_i = log(z_i / M) <= 0 and w_i = exp(p u_i) <= 1 (the largest cell
    weighs 1, so nothing overflows for any p). The weights are added in eight lanes of x's
    precision over blocks of 256 cells, the blocks in float64. A NaN in the map gives M = NaN,
    a +inf M = +inf, each with S = T = 0 (the caller takes those limits); -inf is a cell below
    eps like any other."""
    cdef Py_ssize_t i, j, b, stop
    cdef floating m = eps, bad = 0, v, z, u, w, km = 0, lm = 0
    cdef floating lane_s[8]
    cdef floating lane_t[8]
    cdef double total_s = 0, total_t = 0
    if step == 1:
        m = _scaled_max(x, n, 1, &bad)
        m = m if m > eps else eps
    else:
        for i in range(n):
            v = x[i * step]
            bad = bad + (v - v)
            m = v if v > m else m
    m_out[0] = m
    s_out[0] = 0
    t_out[0] = 0
    if bad != 0:  # a NaN or an infinity: NaN wins, then +inf; -inf alone changes nothing
        m = eps
        for i in range(n):
            v = x[i * step]
            if v != v:
                m_out[0] = NAN
                return
            m = v if v > m else m
        m_out[0] = m
        if m == INFINITY:
            return
    _log_parts(m, &km, &lm)
    b = 0
    while b < n:
        stop = min(b + 256, n)
        for j in range(8):
            lane_s[j] = 0
            lane_t[j] = 0
        i = b
        if step == 1:  # the same loop with a unit stride GCC can vectorise
            while i + 8 <= stop:
                for j in range(8):
                    v = x[i + j]
                    z = v if v > eps else eps
                    u = _log_ratio(z, km, lm)
                    w = exp_nonpositive(p * u if p * u < 0 else 0)
                    lane_s[j] = lane_s[j] + w
                    lane_t[j] = lane_t[j] + w * u
                i = i + 8
        while i + 8 <= stop:
            for j in range(8):
                v = x[(i + j) * step]
                z = v if v > eps else eps
                u = _log_ratio(z, km, lm)
                w = exp_nonpositive(p * u if p * u < 0 else 0)
                lane_s[j] = lane_s[j] + w
                lane_t[j] = lane_t[j] + w * u
            i = i + 8
        for j in range(stop - i):
            v = x[(i + j) * step]
            z = v if v > eps else eps
            u = _log_ratio(z, km, lm)
            w = exp_nonpositive(p * u if p * u < 0 else 0)
            lane_s[j] = lane_s[j] + w
            lane_t[j] = lane_t[j] + w * u
        total_s = total_s + (((<double>lane_s[0] + lane_s[1]) + (<double>lane_s[2] + lane_s[3])) +
                             ((<double>lane_s[4] + lane_s[5]) + (<double>lane_s[6] + lane_s[7])))
        total_t = total_t + (((<double>lane_t[0] + lane_t[1]) + (<double>lane_t[2] + lane_t[3])) +
                             ((<double>lane_t[4] + lane_t[5]) + (<double>lane_t[6] + lane_t[7])))
        b = stop
    s_out[0] = total_s
    t_out[0] = total_t


def gem_stats(const floating[:, :, :] x, const double[:] p, double eps, double[:] m,
              double[:] s, double[:] t, int n_threads):
    """GeM's statistics of every map t = n * C + c of x (N, C, S) with p[t]: m, s and t as
    _gem_map_stats computes them (x's precision; p and eps rounded to it)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2], i
    cdef Py_ssize_t sN = x.strides[0] // x.itemsize, sC = x.strides[1] // x.itemsize
    cdef Py_ssize_t sS = x.strides[2] // x.itemsize
    cdef const floating* base
    require(N * C * S > 0, "x must not be empty")
    require(p.shape[0] == N * C and m.shape[0] == N * C and s.shape[0] == N * C and
            t.shape[0] == N * C, "p, m, s and t must have one entry per map")
    require(eps > 0, "eps must be positive")
    require(n_threads >= 1, "n_threads must be >= 1")
    base = &x[0, 0, 0]
    for i in prange(N * C, schedule='static', nogil=True, num_threads=n_threads):
        _gem_map_stats(base + (i // C) * sN + (i % C) * sC, sS if S > 1 else 1, S,
                       <floating>eps, <floating>p[i], &m[i], &s[i], &t[i])


cdef inline void _gem_gradient_map(const floating* x, Py_ssize_t step, floating* gx,
                                   Py_ssize_t gstep, Py_ssize_t n, floating eps, floating p,
                                   double m, double coef) noexcept nogil:
    """gx_i = coef w_i / z_i where x_i >= eps (the clamp passes the gradient at eps, as
    PyTorch's clamp does), else 0; w_i and z_i as _gem_map_stats computes them. A map whose M
    is not finite gets coef (NaN) everywhere."""
    cdef Py_ssize_t i
    cdef floating mm = <floating>m, cc = <floating>coef, km = 0, lm = 0, v, z, u, w
    if not _finite(m):
        for i in range(n):
            gx[i * gstep] = <floating>NAN
        return
    _log_parts(mm, &km, &lm)
    if step == 1 and gstep == 1:  # unit strides: a loop GCC can vectorise
        for i in range(n):
            v = x[i]
            z = v if v > eps else eps
            u = _log_ratio(z, km, lm)
            w = exp_nonpositive(p * u if p * u < 0 else 0)
            gx[i] = cc * w / z if v >= eps else 0
        return
    for i in range(n):
        v = x[i * step]
        z = v if v > eps else eps
        u = _log_ratio(z, km, lm)
        w = exp_nonpositive(p * u if p * u < 0 else 0)
        gx[i * gstep] = cc * w / z if v >= eps else 0


def gem_gradient(const floating[:, :, :] x, floating[:, :, :] grad_x, const double[:] p,
                 double eps, const double[:] m, const double[:] coef, int n_threads):
    """grad_x of GeM for every map t (see _gem_gradient_map), coef[t] = g y / S."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2], i
    cdef Py_ssize_t sxN = x.strides[0] // x.itemsize, sxC = x.strides[1] // x.itemsize
    cdef Py_ssize_t sxS = x.strides[2] // x.itemsize
    cdef Py_ssize_t sgN = grad_x.strides[0] // grad_x.itemsize
    cdef Py_ssize_t sgC = grad_x.strides[1] // grad_x.itemsize
    cdef Py_ssize_t sgS = grad_x.strides[2] // grad_x.itemsize
    cdef const floating* xbase
    cdef floating* gbase
    require(N * C * S > 0, "x must not be empty")
    require(grad_x.shape[0] == N and grad_x.shape[1] == C and grad_x.shape[2] == S,
            "grad_x must have x's shape")
    require(p.shape[0] == N * C and m.shape[0] == N * C and coef.shape[0] == N * C,
            "p, m and coef must have one entry per map")
    require(n_threads >= 1, "n_threads must be >= 1")
    xbase = &x[0, 0, 0]
    gbase = &grad_x[0, 0, 0]
    for i in prange(N * C, schedule='static', nogil=True, num_threads=n_threads):
        _gem_gradient_map(xbase + (i // C) * sxN + (i % C) * sxC, sxS if S > 1 else 1,
                          gbase + (i // C) * sgN + (i % C) * sgC, sgS if S > 1 else 1, S,
                          <floating>eps, <floating>p[i], m[i], coef[i])


# ------------------------------------------------------------------ selection
cdef inline uint64_t _key(floating v) noexcept nogil:
    """An unsigned key in the order of the values: NaN above +inf, -0 equal to +0 (branch-free,
    so key loops vectorise)."""
    cdef float_bits fb
    cdef double_bits db
    cdef uint32_t u
    cdef uint64_t w
    if floating is float:
        fb.f = v
        u = <uint32_t>fb.i if v != 0 else 0U
        u = u ^ ((0U - (u >> 31)) | 0x80000000U)
        return <uint64_t>(u if v == v else 0xFFFFFFFFU)
    else:
        db.f = v
        w = <uint64_t>db.i if v != 0 else 0ULL
        w = w ^ ((0ULL - (w >> 63)) | 0x8000000000000000ULL)
        return w if v == v else 0xFFFFFFFFFFFFFFFFULL


cdef inline uint64_t _cell_key(const floating* x, Py_ssize_t i, Py_ssize_t step,
                               uint64_t flip) noexcept nogil:
    """The key of cell i (complemented by ``flip`` when the smallest values are wanted)."""
    return _key(x[i * step]) ^ flip


cdef inline uint64_t _key_at(const uint64_t* keys, const floating* x, Py_ssize_t i,
                             Py_ssize_t step, uint64_t flip) noexcept nogil:
    """The key of cell i: from ``keys`` when the map's keys are in memory, else computed."""
    return keys[i] if keys != NULL else _cell_key(x, i, step, flip)


cdef uint64_t _kth_key(const floating* x, Py_ssize_t step, Py_ssize_t n, Py_ssize_t k,
                       uint64_t flip, uint64_t* keys, uint64_t* scratch, Py_ssize_t capacity,
                       Py_ssize_t* need) noexcept nogil:
    """The k-th largest key of the n cells of x (1 <= k <= n): a radix select, one byte at a
    time from the top, keeping the candidates that share the chosen prefix. With ``keys`` (room
    for n keys; then capacity >= n), the map's keys are computed once into it and the search
    runs in memory. Without (a map larger than the scratch), while more than ``capacity``
    cells share the prefix, each byte is found by a pass over x with the keys computed on the
    fly; then the candidates are compacted into ``scratch`` (capacity + 1 keys) and the search
    goes on there until the k-th is found.
    Four interleaved histograms keep repeated digits of many candidates from waiting on each
    other; fewer than INTERLEAVE_FROM candidates count into one (clearing four cost more than
    counting a small map). The scan for the digit starts at the largest one present. ``need``
    receives how many keys equal to the k-th are among the k largest."""
    cdef uint32_t hist[4][256]
    cdef const uint64_t* candidates = scratch
    cdef Py_ssize_t count = n, remaining = k, i, c, b, in_bin = 0
    cdef int width = 64 if floating is double else 32
    cdef int shift = width - 8
    cdef bint streaming = True
    cdef Py_ssize_t lanes  # histograms in use: 4 or 1 (a mask of the cell number)
    cdef uint64_t prefix = 0, key, low, digit, top, high
    if keys != NULL:
        for i in range(n):
            keys[i] = _cell_key(x, i, step, flip)
        candidates = keys
        streaming = False
    while True:
        lanes = 3 if (count if not streaming else n) >= INTERLEAVE_FROM else 0
        memset(hist, 0, sizeof(hist[0]) * (lanes + 1))
        top = 0
        if not streaming:
            for i in range(count):
                digit = (candidates[i] >> shift) & 255
                hist[i & lanes][digit] += 1
                top = digit if digit > top else top
        elif shift == width - 8:  # the first byte: every cell is a candidate
            for i in range(n):
                digit = (_cell_key(x, i, step, flip) >> shift) & 255
                hist[i & lanes][digit] += 1
                top = digit if digit > top else top
        else:  # a later byte of a map too large for the scratch: the cells with the prefix
            for i in range(n):
                key = _cell_key(x, i, step, flip)
                if (key >> (shift + 8)) == high:
                    digit = (key >> shift) & 255
                    hist[i & lanes][digit] += 1
                    top = digit if digit > top else top
        b = <Py_ssize_t>top
        while True:
            in_bin = hist[0][b]
            if lanes:
                in_bin = in_bin + hist[1][b] + hist[2][b] + hist[3][b]
            if remaining <= in_bin:
                break
            remaining = remaining - in_bin
            b = b - 1
        prefix = prefix | (<uint64_t>b << shift)
        if shift == 0:
            need[0] = remaining
            return prefix
        high = prefix >> shift  # the chosen bytes, as the candidates' keys start
        if streaming and in_bin > capacity:
            shift = shift - 8
            continue
        c = 0  # compact the candidates (in place once they are in scratch): branch-free
        if streaming:
            for i in range(n):
                key = _cell_key(x, i, step, flip)
                scratch[c] = key
                c = c + ((key >> shift) == high)
            streaming = False
        else:
            for i in range(count):
                key = candidates[i]
                scratch[c] = key
                c = c + ((key >> shift) == high)
        count = c
        candidates = scratch
        shift = shift - 8
        if remaining == count:  # every candidate is taken: the k-th is the smallest of them
            low = candidates[0]
            for i in range(count):
                low = candidates[i] if candidates[i] < low else low
            c = 0
            for i in range(count):
                c = c + (candidates[i] == low)
            need[0] = c
            return low


cdef inline uint64_t _flip(bint bottom, const floating* x) noexcept nogil:
    """The key complement that orders the smallest values first (x only picks the width)."""
    if not bottom:
        return 0
    return 0xFFFFFFFFFFFFFFFFULL if floating is double else 0xFFFFFFFFULL


cdef inline uint64_t* _split(uint64_t* buffer, Py_ssize_t length, Py_ssize_t n,
                             uint64_t** scratch, Py_ssize_t* capacity) noexcept nogil:
    """A thread's buffer of ``length`` keys for a map of n cells: the map's keys (returned) and
    the scratch after them when both fit (length >= 2 n + 1), else no keys (NULL) and the
    whole buffer as scratch."""
    if length >= 2 * n + 1:
        scratch[0] = buffer + n
        capacity[0] = length - n - 1
        return buffer
    scratch[0] = buffer
    capacity[0] = length - 1
    return NULL


cdef enum:
    KEY_BLOCK = 16  # channels of a channels-last map block whose keys are made together
    KEY_BLOCK_MAX_CELLS = 16384  # maps up to this size only (the block's keys: 1 MiB)


cdef inline Py_ssize_t _small_words(Py_ssize_t n) noexcept nogil:
    """8-byte words _select_keys32 needs after a map's keys: a scratch of n + 16 32-bit keys
    and n indices."""
    return (n + 17) // 2 + n


def select_buffer_length(Py_ssize_t n, bint channels_last):
    """The length (8-byte words) of a thread's buffer with which every selection path for maps
    of n cells keeps the keys in memory: the radix select's 2 n + 1, the vector select's
    (_select_small.h) keys and scratch, and for channels-last maps the keys of KEY_BLOCK
    channels at once (for maps of up to KEY_BLOCK_MAX_CELLS cells)."""
    cdef Py_ssize_t block = KEY_BLOCK if channels_last and n <= KEY_BLOCK_MAX_CELLS else 1
    return max(2 * n + 1, (block * n + 1) // 2 + _small_words(n))


cdef inline bint _vector_select(const floating* x, Py_ssize_t n, Py_ssize_t keys_words,
                                Py_ssize_t length) noexcept nogil:
    """Whether the vector select runs: float32 keys, a build that has it, and room in the
    buffer after ``keys_words`` words of keys."""
    if floating is double:
        return False
    else:
        return NPOOL_SELECT_SMALL and keys_words + _small_words(n) <= length


cdef inline void _keys32(const float* x, Py_ssize_t step, Py_ssize_t n, uint32_t flip,
                         uint32_t* keys) noexcept nogil:
    """The n cells' 32-bit keys (complemented by flip)."""
    cdef Py_ssize_t i
    if step == 1:
        for i in range(n):
            keys[i] = <uint32_t>_key(x[i]) ^ flip
    else:
        for i in range(n):
            keys[i] = <uint32_t>_key(x[i * step]) ^ flip


cdef inline void _keys32_block(const float* x, Py_ssize_t pos_step, Py_ssize_t n,
                               Py_ssize_t width, uint32_t flip, uint32_t* keys) noexcept nogil:
    """The keys of ``width`` (<= KEY_BLOCK) adjacent channels of a channels-last map, channel c
    at keys + c n: each position's row of channels is read once (a map alone would read its
    cells 4 bytes out of every pos_step, and with pos_step a multiple of 2 KB every cell
    evicts another from the same cache set)."""
    cdef Py_ssize_t p, c
    cdef uint32_t row[KEY_BLOCK]
    for p in range(n):
        for c in range(width):
            row[c] = <uint32_t>_key(x[p * pos_step + c]) ^ flip
        for c in range(width):
            keys[c * n + p] = row[c]


cdef void _select_keys32(const floating* x, Py_ssize_t step, Py_ssize_t n, Py_ssize_t k,
                         bint bottom, const uint32_t* keys, uint64_t* work, double* total,
                         int64_t* index, bint want_index) noexcept nogil:
    """_select_map from the map's 32-bit keys, on vectors (_select_small.h: a quickselect over
    vectors of keys, the taken cells' indices from bit masks, the sum over those k cells
    alone): the same cells and the same float64 sum, added in the same order (per accumulator
    i % 4, in flat order). ``work``: _small_words(n) words. Where the quickselect gives up,
    the radix select runs on the cells with ``work`` as its scratch."""
    cdef uint32_t t
    cdef uint32_t* scratch = <uint32_t*>work
    cdef int64_t* taken = index if want_index else <int64_t*>(work + (n + 17) // 2)
    cdef Py_ssize_t need, i, j, count
    cdef double acc[4]
    cdef double at_t = 0
    cdef bint found = False
    t = npool_kth_key32(keys, n, k, scratch, &need)
    if need < 0:
        _select_map(x, step, n, k, bottom, work, _small_words(n), total, index, want_index)
        return
    count = npool_taken_indices32(keys, n, t, need, taken)
    for j in range(4):
        acc[j] = 0
    for j in range(count):  # ascending: each accumulator adds its cells in flat order
        i = taken[j]
        if keys[i] > t:
            acc[i & 3] = acc[i & 3] + <double>x[i * step]
        elif not found:  # the first cell equal to t: the value the need cells share
            at_t = x[i * step]
            found = True
    total[0] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + (need * at_t if need else 0.0)


cdef void _select_map(const floating* x, Py_ssize_t step, Py_ssize_t n, Py_ssize_t k,
                      bint bottom, uint64_t* buffer, Py_ssize_t length, double* total,
                      int64_t* index, bint want_index) noexcept nogil:
    """The float64 sum of the k best cells of one map (in flat order) and, if wanted, their
    flat indices in ascending order. The k best are the cells whose key exceeds the k-th key
    T, then the first ``need`` cells (by flat index) whose key equals T."""
    cdef uint64_t t, flip = _flip(bottom, x), key
    cdef Py_ssize_t i, need, j = 0, capacity
    cdef bint equal, taken
    cdef double acc[4]
    cdef double at_t = 0
    cdef uint64_t* scratch
    cdef uint64_t* keys
    if _vector_select(x, n, (n + 1) // 2, length):
        _keys32(<const float*>x, step, n, <uint32_t>flip, <uint32_t*>buffer)
        _select_keys32(x, step, n, k, bottom, <uint32_t*>buffer, buffer + (n + 1) // 2, total,
                       index, want_index)
        return
    keys = _split(buffer, length, n, &scratch, &capacity)
    t = _kth_key(x, step, n, k, flip, keys, scratch, capacity, &need)
    for i in range(4):
        acc[i] = 0
    i = 0
    # Branch-free: a select, not a multiply (an unselected NaN adds 0). Two copies of the
    # loop, so that the one over stored keys vectorises.
    if keys != NULL:
        while i + 4 <= n:
            for j in range(4):
                acc[j] = acc[j] + (<double>x[(i + j) * step] if keys[i + j] > t else 0.0)
            i = i + 4
    else:
        while i + 4 <= n:
            for j in range(4):
                acc[j] = acc[j] + (<double>x[(i + j) * step]
                                   if _cell_key(x, i + j, step, flip) > t else 0.0)
            i = i + 4
    for j in range(n - i):
        acc[j] = acc[j] + (<double>x[(i + j) * step]
                           if _key_at(keys, x, i + j, step, flip) > t else 0.0)
    if need:
        for i in range(n):
            if _key_at(keys, x, i, step, flip) == t:
                at_t = x[i * step]
                break
    total[0] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + (need * at_t if need else 0.0)
    j = 0
    if want_index:  # branch-free: each cell is written at j, which moves on if it is taken
        i = 0
        while j < k:
            key = _key_at(keys, x, i, step, flip)
            equal = key == t
            taken = (key > t) | (equal & (need > 0))
            need = need - (equal & (need > 0))
            index[j] = i
            j = j + taken
            i = i + 1


def select(const floating[:, :, :] x, Py_ssize_t k, bint bottom, double[:] total,
           int64_t[:, :] index, uint64_t[:, :] buffers, int n_threads):
    """For every map of x (N, C, S): the sum of its k largest (or smallest) cells in ``total``
    and, when ``index`` has k columns, their flat indices in ascending order. ``buffers`` is
    (threads, length >= 2): with length >= 2 S + 1 the keys of a map stay in memory, shorter
    buffers make larger maps take more passes over their cells instead (see ``_kth_key``)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t sN = x.strides[0] // x.itemsize, sC = x.strides[1] // x.itemsize
    cdef Py_ssize_t sS = x.strides[2] // x.itemsize
    cdef Py_ssize_t t, length = buffers.shape[1]
    cdef bint want_index = index.shape[1] == k
    cdef const floating* base
    cdef uint64_t* buffer
    require(0 <= k <= S, "k must be in [0, S]")
    require(total.shape[0] == N * C and index.shape[0] == N * C and
            (index.shape[1] == k or index.shape[1] == 0), "total (N * C,), index (N * C, k or 0)")
    require(1 <= n_threads <= buffers.shape[0] and length >= 2 and buffers.strides[1] == 8,
            "buffers must be (>= n_threads, >= 2) with unit stride, n_threads >= 1")
    if k == 0 or N * C == 0:
        return
    base = &x[0, 0, 0]
    if sC == 1 and 1 < S <= KEY_BLOCK_MAX_CELLS and \
            _vector_select(base, S, (KEY_BLOCK * S + 1) // 2, length):
        _select_channels_last(base, N, C, S, sN, sS, k, bottom, total, index, want_index,
                              buffers, n_threads)
        return
    with nogil, parallel(num_threads=n_threads):
        buffer = &buffers[threadid(), 0]
        for t in prange(N * C, schedule='static'):
            _select_map(base + (t // C) * sN + (t % C) * sC, sS, S, k, bottom, buffer, length,
                        &total[t], &index[t, 0] if want_index else NULL, want_index)


cdef void _select_channels_last(const floating* base, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                                Py_ssize_t sN, Py_ssize_t sS, Py_ssize_t k, bint bottom,
                                double[:] total, int64_t[:, :] index, bint want_index,
                                uint64_t[:, :] buffers, int n_threads) noexcept:
    """select() on channels-last float32 maps with the vector select: units of (sample, block
    of KEY_BLOCK channels) whose keys are made together (_keys32_block), then each map's
    selection from its keys."""
    cdef Py_ssize_t blocks = (C + KEY_BLOCK - 1) // KEY_BLOCK, u, c0, width, c, t
    cdef Py_ssize_t block_words = (KEY_BLOCK * S + 1) // 2
    cdef uint64_t* buffer
    cdef uint32_t* keys
    cdef const floating* row
    cdef uint32_t flip = <uint32_t>_flip(bottom, base)
    if floating is float:
        with nogil, parallel(num_threads=n_threads):
            buffer = &buffers[threadid(), 0]
            keys = <uint32_t*>buffer
            for u in prange(N * blocks, schedule='static'):
                c0 = (u % blocks) * KEY_BLOCK
                width = min(KEY_BLOCK, C - c0)
                row = base + (u // blocks) * sN + c0
                if width == KEY_BLOCK and NPOOL_KEYS_BLOCK16:  # tiles transposed in registers
                    npool_keys32_block16(row, sS, S, flip, keys)
                else:
                    _keys32_block(row, sS, S, width, flip, keys)
                for c in range(width):
                    t = (u // blocks) * C + c0 + c
                    _select_keys32(row + c, sS, S, k, bottom, keys + c * S, buffer + block_words,
                                   &total[t], &index[t, 0] if want_index else NULL, want_index)


cdef void _add_share(const floating* x, floating* gx, Py_ssize_t step, Py_ssize_t n,
                     Py_ssize_t k, bint bottom, floating share, bint accumulate,
                     uint64_t* buffer, Py_ssize_t length) noexcept nogil:
    """gx (= or +=) share on the k largest (smallest when bottom) cells, 0 elsewhere."""
    cdef uint64_t t, flip = _flip(bottom, x)
    cdef Py_ssize_t i, need, capacity
    cdef uint64_t* scratch
    cdef uint64_t* keys
    cdef uint32_t* keys32 = <uint32_t*>buffer
    cdef uint32_t t32
    if _vector_select(x, n, (n + 1) // 2, length):  # _select_small.h on the 32-bit keys
        _keys32(<const float*>x, step, n, <uint32_t>flip, keys32)
        t32 = npool_kth_key32(keys32, n, k, <uint32_t*>(buffer + (n + 1) // 2), &need)
        if need >= 0:  # as below, on the 32-bit keys
            if accumulate:
                for i in range(n):
                    gx[i * step] = gx[i * step] + (share if keys32[i] > t32 else 0)
            else:
                for i in range(n):
                    gx[i * step] = share if keys32[i] > t32 else 0
            for i in range(n):
                if need and keys32[i] == t32:
                    gx[i * step] = gx[i * step] + share if accumulate else share
                    need = need - 1
            return
    keys = _split(buffer, length, n, &scratch, &capacity)
    t = _kth_key(x, step, n, k, flip, keys, scratch, capacity, &need)
    if keys != NULL and accumulate:  # four copies, so that the loops over stored keys vectorise
        for i in range(n):
            gx[i * step] = gx[i * step] + (share if keys[i] > t else 0)
    elif keys != NULL:
        for i in range(n):
            gx[i * step] = share if keys[i] > t else 0
    elif accumulate:
        for i in range(n):
            gx[i * step] = gx[i * step] + (share if _cell_key(x, i, step, flip) > t else 0)
    else:
        for i in range(n):
            gx[i * step] = share if _cell_key(x, i, step, flip) > t else 0
    if need:
        for i in range(n):
            if _key_at(keys, x, i, step, flip) == t:
                gx[i * step] = gx[i * step] + share if accumulate else share
                need = need - 1
                if need == 0:
                    break


cdef void _selection_gradient_map(const floating* x, floating* gx, Py_ssize_t step,
                                  Py_ssize_t n, Py_ssize_t k_top, double top_share,
                                  Py_ssize_t k_bottom, double bottom_share,
                                  uint64_t* buffer, Py_ssize_t length) noexcept nogil:
    """gx = top_share on the k_top largest cells + bottom_share on the k_bottom smallest."""
    cdef Py_ssize_t i
    if k_top:
        _add_share(x, gx, step, n, k_top, False, <floating>top_share, False, buffer, length)
    else:
        for i in range(n):
            gx[i * step] = 0
    if k_bottom:
        _add_share(x, gx, step, n, k_bottom, True, <floating>bottom_share, True, buffer,
                   length)


def selection_gradient(const floating[:, :, :] x, floating[:, :, :] grad_x, Py_ssize_t k_top,
                       const double[:] top_share, Py_ssize_t k_bottom,
                       const double[:] bottom_share, uint64_t[:, :] buffers, int n_threads):
    """grad_x of k-max / WELDON: per map, top_share on the k_top largest cells plus
    bottom_share on the k_bottom smallest (a cell in both gets both); 0 elsewhere. grad_x has
    x's strides; ``buffers`` as for ``select``."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t sN = x.strides[0] // x.itemsize, sC = x.strides[1] // x.itemsize
    cdef Py_ssize_t sS = x.strides[2] // x.itemsize
    cdef Py_ssize_t t, offset, length = buffers.shape[1]
    cdef const floating* base
    cdef floating* gbase
    cdef uint64_t* buffer
    require(dims(grad_x.shape, 3) == dims(x.shape, 3) and
            same_strides(dims(x.shape, 3), dims(grad_x.strides, 3), dims(x.strides, 3)),
            "grad_x must have x's shape and strides")
    require(0 <= k_top <= S and 0 <= k_bottom <= S, "k_top and k_bottom must be in [0, S]")
    require(top_share.shape[0] == N * C and (k_bottom == 0 or bottom_share.shape[0] == N * C),
            "top_share and bottom_share must have N * C values")
    require(1 <= n_threads <= buffers.shape[0] and length >= 2 and buffers.strides[1] == 8,
            "buffers must be (>= n_threads, >= 2) with unit stride, n_threads >= 1")
    if N * C == 0:
        return
    base = &x[0, 0, 0]
    gbase = &grad_x[0, 0, 0]
    with nogil, parallel(num_threads=n_threads):
        buffer = &buffers[threadid(), 0]
        for t in prange(N * C, schedule='static'):
            offset = (t // C) * sN + (t % C) * sC
            _selection_gradient_map(base + offset, gbase + offset, sS, S, k_top, top_share[t],
                                    k_bottom, bottom_share[t] if k_bottom else 0.0, buffer,
                                    length)


def scatter_gradient(floating[:, :, :] grad_x, const int64_t[:, :] index, const double[:] share,
                     int n_threads):
    """grad_x[map, index[map, j]] += share[map] for every j: the gradient of selections whose
    indices the forward returned, added into ``grad_x`` (the caller zeroes it, as one block of
    memory, and may scatter several index sets into it)."""
    cdef Py_ssize_t N = grad_x.shape[0], C = grad_x.shape[1], S = grad_x.shape[2]
    cdef Py_ssize_t K = index.shape[1], t, i, n, c
    cdef floating value
    cdef bint in_range = True
    require(index.shape[0] == N * C and share.shape[0] == N * C,
            "index and share must have N * C rows")
    require(n_threads >= 1, "n_threads must be >= 1")
    with nogil:
        for t in range(N * C):
            for i in range(K):
                in_range = in_range & (0 <= index[t, i] < S)
    require(in_range, "index must lie in [0, S)")
    for t in prange(N * C, schedule='static', nogil=True, num_threads=n_threads):
        n = t // C
        c = t % C
        value = <floating>share[t]
        for i in range(K):
            grad_x[n, c, index[t, i]] = grad_x[n, c, index[t, i]] + value
