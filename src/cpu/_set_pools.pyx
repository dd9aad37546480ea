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
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt

cdef double EPS = 1e-12  # squared-norm floor, as TensorFlow's l2_normalize
cdef double FLOOR = sqrt(EPS)  # the norm of a (numerically) zero vector


cdef inline double _floored_norm(double squared) noexcept nogil:
    return sqrt(max(squared, EPS))


cdef inline bint _active(floating norm) noexcept nogil:
    return norm > <floating>FLOOR


cdef void _normalize_one(floating* v, const floating* c, const floating* a_sum,
                         floating* norms, Py_ssize_t D, Py_ssize_t K,
                         bint with_centers) noexcept nogil:
    cdef Py_ssize_t d, k
    cdef floating* row
    cdef floating* squared = norms  # the column sums are accumulated in place of the norms
    cdef double total = 0
    for k in range(K):
        squared[k] = 0
    for d in range(D):
        row = v + d * K
        if with_centers:
            for k in range(K):
                row[k] = row[k] - c[d * K + k] * a_sum[k]
        for k in range(K):
            squared[k] = squared[k] + row[k] * row[k]
    for k in range(K):
        total = total + squared[k] / max(<double>squared[k], EPS)
        norms[k] = <floating>_floored_norm(squared[k])
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
    for b in prange(B, schedule='static', nogil=True, num_threads=n_threads):
        _normalize_one(&v[b, 0, 0], &centers[0, 0], &a_sum[b, 0], &norms[b, 0], D, K,
                       with_centers)


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
    for b in prange(B, schedule='static', nogil=True, num_threads=n_threads):
        _backward_one(&g[b, 0, 0], &y[b, 0, 0], &norms[b, 0], &dots[b, 0], D, K)
