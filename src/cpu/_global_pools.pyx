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

Selection (k-max, WELDON) is O(S) per map: the cells get 64-bit keys that order values (NaN
above +inf, -0 equal to +0), ties go to the lower flat index, a quickselect (median of three,
with a heapsort fallback past 2 log2 S levels) puts the k best first, and a heapsort orders
them. The mean is summed in that ranking order, in float64.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport INFINITY, NAN, exp
from libc.stdint cimport int64_t, uint32_t, uint64_t

from _fastexp cimport double_bits, exp_nonpositive_f32, exp_nonpositive_f64, float_bits

cdef enum:
    CHUNK = 2048   # cells per chunk of a contiguous map
    CL_CHUNK = 128  # positions per chunk of a channels-last sample
    CBLOCK = 64    # channels per block of a channels-last chunk
CHUNK_CELLS = CHUNK
CHANNELS_LAST_CHUNK = CL_CHUNK

cdef enum Reduction:
    MAX = 0
    SUM = 1
    LSE = 2


cdef inline floating _exp_nonpositive(floating z) noexcept nogil:
    if floating is float:
        return exp_nonpositive_f32(z)
    else:
        return exp_nonpositive_f64(z)


cdef inline bint _finite(double v) noexcept nogil:
    return v - v == 0  # false for NaN and +-inf


cdef inline double _weight(double z, double m) noexcept nogil:
    """exp(z - m) for z <= m; a cell at the maximum weighs 1 (also when both are infinite)."""
    return 1.0 if z == m else exp(z - m)


# ------------------------------------------------------------------ one run of cells
cdef inline void _max_run(const floating* x, Py_ssize_t step, Py_ssize_t n, double* value,
                          int64_t* index) noexcept nogil:
    """Maximum of n cells step apart and its first index; the first NaN wins."""
    cdef Py_ssize_t i
    cdef floating m = x[0], v
    cdef bint nan = False
    for i in range(n):
        v = x[i * step]
        nan = nan | (v != v)
        m = v if v > m else m
    for i in range(n):
        v = x[i * step]
        if (v != v) if nan else (v == m):
            value[0] = v
            index[0] = i
            return


cdef inline double _sum_run(const floating* x, Py_ssize_t n) noexcept nogil:
    """Sum of n contiguous cells in float64, over eight interleaved accumulators."""
    cdef double acc[8]
    cdef Py_ssize_t i, j
    for j in range(8):
        acc[j] = 0
    i = 0
    while i + 8 <= n:
        for j in range(8):
            acc[j] = acc[j] + x[i + j]
        i = i + 8
    for j in range(n - i):
        acc[j] = acc[j] + x[i + j]
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


cdef inline void _lse_run(const floating* x, Py_ssize_t n, floating beta, double* m_out,
                          double* s_out) noexcept nogil:
    """M = max beta x and S = sum exp(beta x - M) of n contiguous cells."""
    cdef Py_ssize_t i, j
    cdef floating m = -INFINITY, z
    cdef bint nan = False
    cdef double acc[8]
    for i in range(n):
        z = beta * x[i]
        nan = nan | (z != z)
        m = z if z > m else m
    if nan:
        m_out[0] = NAN
        s_out[0] = NAN
        return
    m_out[0] = m
    if not _finite(m):
        s_out[0] = 0
        for i in range(n):
            s_out[0] = s_out[0] + _weight(beta * x[i], m)
        return
    for j in range(8):
        acc[j] = 0
    i = 0
    while i + 8 <= n:
        for j in range(8):
            acc[j] = acc[j] + _exp_nonpositive(beta * x[i + j] - m)
        i = i + 8
    for j in range(n - i):
        acc[j] = acc[j] + _exp_nonpositive(beta * x[i + j] - m)
    s_out[0] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


# ------------------------------------------------------------------ one channels-last chunk
cdef inline void _reduce_channels(Reduction mode, const floating* x, Py_ssize_t pos_step,
                                  Py_ssize_t npos, Py_ssize_t nch, floating beta,
                                  double* a, double* b, int64_t* index,
                                  Py_ssize_t out_step) noexcept nogil:
    """The partials of nch (<= CBLOCK) unit-stride channels over npos positions pos_step apart;
    channel c's partials go to a[c * out_step], b[...], index[...]."""
    cdef floating m[CBLOCK]
    cdef double s[CBLOCK]
    cdef bint nan[CBLOCK]
    cdef bint any_bad = False
    cdef const floating* row
    cdef floating z
    cdef Py_ssize_t p, c
    if mode == MAX:  # per channel, scalar
        for c in range(nch):
            _max_run(x + c, pos_step, npos, &a[c * out_step], &index[c * out_step])
        return
    for c in range(nch):
        m[c] = -INFINITY
        s[c] = 0
        nan[c] = False
    if mode == SUM:
        for p in range(npos):
            row = x + p * pos_step
            for c in range(nch):
                s[c] = s[c] + row[c]
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
                s[c] = s[c] + _exp_nonpositive(beta * row[c] - m[c])
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
    CL_CHUNK positions); ``a``, ``b`` and ``index`` are (N * C, chunks).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t sN = x.strides[0] // x.itemsize, sC = x.strides[1] // x.itemsize
    cdef Py_ssize_t sS = x.strides[2] // x.itemsize
    cdef Py_ssize_t K = a.shape[1], blocks, t, map_, chunk, n, c0, start, length
    cdef const floating* base = &x[0, 0, 0]
    cdef floating fbeta = <floating>beta
    cdef Reduction red = <Reduction>mode
    if sS == 1 or S == 1:
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
            start = chunk * CL_CHUNK
            _channels_partial(red, base + n * sN + c0 * sC + start * sS, sS,
                              min(<Py_ssize_t>CL_CHUNK, S - start), min(<Py_ssize_t>CBLOCK, C - c0),
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
    cdef floating mm, cc
    if x.strides[2] == x.itemsize or S == 1:
        for t in prange(N * C, schedule='static', nogil=True, num_threads=n_threads):
            n = t // C
            c = t % C
            mm = <floating>m[t]
            cc = <floating>coef[t]
            if _finite(m[t]):
                for i in range(S):
                    grad_x[n, c, i] = cc * _exp_nonpositive(fbeta * x[n, c, i] - mm)
            else:
                for i in range(S):
                    grad_x[n, c, i] = <floating>(coef[t] * _weight(fbeta * x[n, c, i], m[t]))
    else:
        for t in prange(N * S, schedule='static', nogil=True, num_threads=n_threads):
            n = t // S
            p = t % S
            for c in range(C):
                if _finite(m[n * C + c]):
                    grad_x[n, c, p] = <floating>coef[n * C + c] * _exp_nonpositive(
                        fbeta * x[n, c, p] - <floating>m[n * C + c])
                else:
                    grad_x[n, c, p] = <floating>(coef[n * C + c] * _weight(
                        fbeta * x[n, c, p], m[n * C + c]))


# ------------------------------------------------------------------ selection
cdef struct Entry:
    uint64_t key
    int64_t index


cdef inline uint64_t _key(floating v) noexcept nogil:
    """An unsigned key in the order of the values: NaN above +inf, -0 equal to +0."""
    cdef float_bits fb
    cdef double_bits db
    cdef uint32_t u
    cdef uint64_t w
    if v != v:
        return 0xFFFFFFFFFFFFFFFFULL
    if v == 0:
        v = 0
    if floating is float:
        fb.f = v
        u = <uint32_t>fb.i
        return <uint64_t>((~u) if (u & 0x80000000U) else (u | 0x80000000U))
    else:
        db.f = v
        w = <uint64_t>db.i
        return (~w) if (w & 0x8000000000000000ULL) else (w | 0x8000000000000000ULL)


cdef inline bint _better(Entry a, Entry b) noexcept nogil:
    """a ranks before b: larger key, or the same key and a lower index."""
    return a.key > b.key or (a.key == b.key and a.index < b.index)


cdef inline void _swap(Entry* a, Py_ssize_t i, Py_ssize_t j) noexcept nogil:
    cdef Entry t = a[i]
    a[i] = a[j]
    a[j] = t


cdef void _heapsort(Entry* a, Py_ssize_t n) noexcept nogil:
    """Sort a[:n] best first, through a heap whose root is the worst entry."""
    cdef Py_ssize_t start, end, root, child
    start = n // 2
    end = n
    while end > 1:
        if start > 0:
            start = start - 1
        else:
            end = end - 1
            _swap(a, 0, end)
        root = start
        while 2 * root + 1 < end:
            child = 2 * root + 1
            if child + 1 < end and _better(a[child], a[child + 1]):
                child = child + 1  # the worse child
            if _better(a[child], a[root]):
                break
            _swap(a, root, child)
            root = child


cdef void _select(Entry* a, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """Rearrange a[:n] so that a[:k] holds the k best entries (keys are unique)."""
    cdef Py_ssize_t lo = 0, hi = n - 1, i, j, mid, depth = 0, size = n
    cdef Entry pivot
    while size > 1:
        size = size // 2
        depth = depth + 2
    while hi > lo:
        if depth == 0:
            _heapsort(a + lo, hi - lo + 1)
            return
        depth = depth - 1
        mid = lo + (hi - lo) // 2
        # Median of three as the pivot.
        if _better(a[mid], a[lo]):
            _swap(a, mid, lo)
        if _better(a[hi], a[lo]):
            _swap(a, hi, lo)
        if _better(a[hi], a[mid]):
            _swap(a, hi, mid)
        pivot = a[mid]
        i = lo
        j = hi
        while i <= j:
            while _better(a[i], pivot):
                i = i + 1
            while _better(pivot, a[j]):
                j = j - 1
            if i <= j:
                _swap(a, i, j)
                i = i + 1
                j = j - 1
        if k - 1 <= j:
            hi = j
        elif k - 1 >= i:
            lo = i
        else:
            return


cdef void _select_map(const floating* x, Py_ssize_t step, Py_ssize_t n, Py_ssize_t k,
                      bint bottom, Entry* buffer, double* total, int64_t* index) noexcept nogil:
    """The k best cells of one map (largest, or smallest if bottom), in ranking order: their
    flat indices and the float64 sum of their values in that order."""
    cdef Py_ssize_t i
    cdef uint64_t flip = 0
    cdef double t = 0
    if bottom:
        flip = 0xFFFFFFFFFFFFFFFFULL if floating is double else 0xFFFFFFFFULL
    for i in range(n):
        buffer[i].key = _key(x[i * step]) ^ flip
        buffer[i].index = i
    if bottom and floating is float:
        for i in range(n):  # NaN's key is all ones: keep it worst once flipped
            if buffer[i].key > 0xFFFFFFFFULL:
                buffer[i].key = 0
    _select(buffer, n, k)
    _heapsort(buffer, k)
    for i in range(k):
        index[i] = buffer[i].index
        t = t + x[buffer[i].index * step]
    total[0] = t


def select(const floating[:, :, :] x, Py_ssize_t k, bint bottom, double[:] total,
           int64_t[:, :] index, int64_t[:, :] buffers, int n_threads):
    """For every map of x (N, C, S): the k largest (or smallest) cells, ranked (``index``,
    (N * C, k)) and the sum of their values (``total``). ``buffers`` is (threads, 2 * S)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2]
    cdef Py_ssize_t sN = x.strides[0] // x.itemsize, sC = x.strides[1] // x.itemsize
    cdef Py_ssize_t sS = x.strides[2] // x.itemsize
    cdef Py_ssize_t t
    cdef const floating* base = &x[0, 0, 0]
    cdef Entry* buffer
    if k == 0 or N * C == 0:
        return
    with nogil, parallel(num_threads=n_threads):
        buffer = <Entry*>&buffers[threadid(), 0]
        for t in prange(N * C, schedule='static'):
            _select_map(base + (t // C) * sN + (t % C) * sC, sS, S, k, bottom, buffer,
                        &total[t], &index[t, 0])
