# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Fused post- and pre-processing of the VLAD contraction V = x^T a (B, D, K), one batch element
per loop iteration (parallel over the batch), in place:

    forward:  V[d,k] -= c[d,k] a_sum[k];  n_k = max(|V[:,k]|, 1e-6);  V[:,k] /= n_k;
              n = max(|V|, 1e-6);  V /= n        (two passes over V)
    backward: dL/dy -> dL/dV through both normalisations   (three passes over g)

``norms`` (B, K + 1) keeps n_0 .. n_{K-1} and n: all the backward needs besides the output y. A
norm at its floor 1e-6 marks a normalisation whose input was (numerically) zero; the gradient then
passes through it divided by the floor (the derivative of v / 1e-6), as for TensorFlow's
l2_normalize. The loops run over rows of K contiguous values with per-column accumulators, so
they vectorise. No (B, M, K, D) array exists anywhere; the contractions are BLAS products.
"""
from _kernel_checks cimport require
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport fabs, sqrt
from libc.stdlib cimport free, malloc

cdef double EPS = 1e-12  # squared-norm floor, as TensorFlow's l2_normalize
cdef double FLOOR = sqrt(EPS)  # the norm of a (numerically) zero vector


cdef inline double _floored_norm(double squared) noexcept nogil:
    return sqrt(max(squared, EPS))


cdef inline bint _active(floating norm) noexcept nogil:
    return norm > <floating>FLOOR


cdef inline double _column_norm(double squared, const floating* v, Py_ssize_t D,
                                Py_ssize_t K) noexcept nogil:
    """The floored norm of a column from its sum of squares, or, when that overflowed in
    float64 (values beyond 1e154), from the column scaled before squaring."""
    cdef Py_ssize_t d
    cdef double top = 0, total = 0, r
    if squared - squared == 0:  # finite
        return _floored_norm(squared)
    for d in range(D):
        top = max(top, fabs(<double>v[d * K]))
    if top - top != 0:  # an infinity or a NaN in the column: its own limit
        return squared
    for d in range(D):
        r = v[d * K] / top
        total = total + r * r
    return top * sqrt(total)


cdef void _normalize_one(floating* v, const floating* c, const floating* a_sum,
                         floating* norms, double* squared, Py_ssize_t D, Py_ssize_t K,
                         bint with_centers) noexcept nogil:
    """One set: the column sums of squares are taken in float64 (``squared``, K values), so
    float32 values never overflow them; float64 columns beyond 1e154 are scaled first."""
    cdef Py_ssize_t d, k
    cdef floating* row
    cdef double total = 0, norm
    for k in range(K):
        squared[k] = 0
    for d in range(D):
        row = v + d * K
        if with_centers:
            for k in range(K):
                row[k] = row[k] - c[d * K + k] * a_sum[k]
        for k in range(K):
            squared[k] = squared[k] + <double>row[k] * row[k]
    for k in range(K):
        norm = _column_norm(squared[k], v + k, D, K)
        total = total + (1.0 if norm > FLOOR else squared[k] / EPS)
        norms[k] = <floating>norm
    norms[K] = <floating>_floored_norm(total)
    for d in range(D):
        row = v + d * K
        for k in range(K):
            row[k] = row[k] / (norms[k] * norms[K])


def vlad_normalize(floating[:, :, ::1] v, const floating[:, ::1] centers,
                   const floating[:, ::1] a_sum, floating[:, ::1] norms, bint with_centers,
                   int n_threads):
    """In place: residual correction (with_centers), intra-normalisation over d, global l2n;
    norms[b] = (column norms, global norm)."""
    cdef Py_ssize_t B = v.shape[0], D = v.shape[1], K = v.shape[2], b
    cdef double* squared
    require(not with_centers or (centers.shape[0] == D and centers.shape[1] == K),
            "centers must be (D, K)")
    require(a_sum.shape[0] == B and a_sum.shape[1] == K, "a_sum must be (B, K)")
    require(norms.shape[0] == B and norms.shape[1] == K + 1, "norms must be (B, K + 1)")
    require(n_threads >= 1, "n_threads must be >= 1")
    squared = <double*>malloc(max(B * K, 1) * sizeof(double))
    if squared == NULL:
        raise MemoryError()
    try:
        for b in prange(B, schedule='static', nogil=True, num_threads=n_threads):
            _normalize_one(&v[b, 0, 0], &centers[0, 0], &a_sum[b, 0], &norms[b, 0],
                           squared + b * K, D, K, with_centers)
    finally:
        free(squared)


cdef void _backward_one(floating* g, const floating* y, const floating* norms, floating* dots,
                        Py_ssize_t D, Py_ssize_t K) noexcept nogil:
    cdef Py_ssize_t d, k
    cdef floating* row
    cdef const floating* yrow
    cdef double dot = 0
    cdef floating fdot, n = norms[K]
    for d in range(D):
        row = g + d * K
        yrow = y + d * K
        for k in range(K):
            dot = dot + yrow[k] * row[k]
    fdot = <floating>dot if _active(n) else 0
    for k in range(K):
        dots[k] = 0
    for d in range(D):  # through the global l2n; keep sum_d (y n) g1 per column
        row = g + d * K
        yrow = y + d * K
        for k in range(K):
            row[k] = (row[k] - yrow[k] * fdot) / n
            dots[k] = dots[k] + yrow[k] * n * row[k]
    for k in range(K):
        dots[k] = dots[k] * n if _active(norms[k]) else 0
    for d in range(D):  # through the intra-normalisation of each column
        row = g + d * K
        yrow = y + d * K
        for k in range(K):
            row[k] = (row[k] - yrow[k] * dots[k]) / norms[k]


def vlad_normalize_backward(floating[:, :, ::1] g, const floating[:, :, ::1] y,
                            const floating[:, ::1] norms, floating[:, ::1] dots, int n_threads):
    """In place: g = dL/dy (B, D, K) becomes dL/dV, where y is the forward's output and norms
    its norms."""
    cdef Py_ssize_t B = g.shape[0], D = g.shape[1], K = g.shape[2], b
    require(y.shape[0] == B and y.shape[1] == D and y.shape[2] == K, "y must have g's shape")
    require(norms.shape[0] == B and norms.shape[1] == K + 1, "norms must be (B, K + 1)")
    require(dots.shape[0] == B and dots.shape[1] == K, "dots must be (B, K)")
    require(n_threads >= 1, "n_threads must be >= 1")
    for b in prange(B, schedule='static', nogil=True, num_threads=n_threads):
        _backward_one(&g[b, 0, 0], &y[b, 0, 0], &norms[b, 0], &dots[b, 0], D, K)
