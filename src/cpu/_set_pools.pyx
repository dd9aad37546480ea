# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Fused post- and pre-processing of the VLAD contraction V = x^T a (B, D, K), one batch element
per loop iteration (parallel over the batch):

    forward:  V[d,k] -= c[d,k] a_sum[k];  V[:,k] /= max(|V[:,k]|, 1e-6);  V /= max(|V|, 1e-6)
              (norms floored at sqrt(1e-12)), in two passes over V, in place;
    backward: from dL/dy to dL/dV through both normalisations, in three passes, in place.

The loops run over rows of K contiguous values with per-column accumulators, so they vectorise.
No (B, M, K, D) array exists anywhere; the contractions themselves are BLAS products.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt

cdef double EPS = 1e-12  # squared-norm floor, as TensorFlow's l2_normalize


cdef void _normalize_one(floating* v, const floating* c, const floating* a_sum,
                         floating* norm, floating* squared, floating* flat,
                         Py_ssize_t D, Py_ssize_t K, bint with_centers) noexcept nogil:
    cdef Py_ssize_t d, k
    cdef floating* row
    cdef double total = 0
    for k in range(K):
        squared[k] = 0
    if with_centers:
        for d in range(D):
            row = v + d * K
            for k in range(K):
                row[k] = row[k] - c[d * K + k] * a_sum[k]
    for d in range(D):
        row = v + d * K
        for k in range(K):
            squared[k] = squared[k] + row[k] * row[k]
    for k in range(K):
        norm[k] = <floating>sqrt(max(<double>squared[k], EPS))
        total = total + squared[k] / (<double>norm[k] * norm[k])
    flat[0] = <floating>sqrt(max(total, EPS))
    for d in range(D):
        row = v + d * K
        for k in range(K):
            row[k] = row[k] / (norm[k] * flat[0])


def vlad_normalize(floating[:, :, ::1] v, const floating[:, ::1] centers,
                   const floating[:, ::1] a_sum, floating[:, ::1] intra_norm,
                   floating[:, ::1] intra_squared, floating[::1] flat_norm, bint with_centers,
                   int n_threads):
    """In place: residual correction (with_centers), intra-normalisation over d, global l2n.
    Keeps the norms (and the squared intra norms) for the backward."""
    cdef Py_ssize_t B = v.shape[0], D = v.shape[1], K = v.shape[2], b
    for b in prange(B, schedule='static', nogil=True, num_threads=n_threads):
        _normalize_one(&v[b, 0, 0], &centers[0, 0], &a_sum[b, 0], &intra_norm[b, 0],
                       &intra_squared[b, 0], &flat_norm[b], D, K, with_centers)


cdef void _backward_one(floating* g, const floating* y, const floating* norm,
                        const floating* squared, floating n, floating* dots, Py_ssize_t D,
                        Py_ssize_t K) noexcept nogil:
    cdef Py_ssize_t d, k
    cdef floating* row
    cdef const floating* yrow
    cdef double dot = 0, total = 0
    cdef floating fdot, vn
    for d in range(D):
        row = g + d * K
        yrow = y + d * K
        for k in range(K):
            dot = dot + yrow[k] * row[k]
    for k in range(K):
        total = total + squared[k] / (<double>norm[k] * norm[k])
    fdot = <floating>dot if total > EPS else 0  # an inactive global norm passes g through
    for k in range(K):
        dots[k] = 0
    for d in range(D):  # through the global l2n; keep sum_d vn * g1 per column
        row = g + d * K
        yrow = y + d * K
        for k in range(K):
            row[k] = (row[k] - yrow[k] * fdot) / n
            dots[k] = dots[k] + yrow[k] * n * row[k]
    for k in range(K):  # an inactive column norm passes its gradient through
        dots[k] = dots[k] if squared[k] > EPS else 0
    for d in range(D):  # through the intra-normalisation of each column
        row = g + d * K
        yrow = y + d * K
        for k in range(K):
            row[k] = (row[k] - yrow[k] * n * dots[k]) / norm[k]


def vlad_normalize_backward(floating[:, :, ::1] g, const floating[:, :, ::1] y,
                            const floating[:, ::1] intra_norm,
                            const floating[:, ::1] intra_squared, const floating[::1] flat_norm,
                            floating[:, ::1] dots, int n_threads):
    """In place: g = dL/dy (B, D, K) becomes dL/dV, through l2n of the flattened intra-normalised
    V (y its output) and the intra-normalisation of each column k."""
    cdef Py_ssize_t B = g.shape[0], D = g.shape[1], K = g.shape[2], b
    for b in prange(B, schedule='static', nogil=True, num_threads=n_threads):
        _backward_one(&g[b, 0, 0], &y[b, 0, 0], &intra_norm[b, 0], &intra_squared[b, 0],
                      flat_norm[b], &dots[b, 0], D, K)
