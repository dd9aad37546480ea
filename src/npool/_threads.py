"""How many threads the CPU kernels use.

By default, OpenMP's own answer (``omp_get_max_threads``), which honours ``OMP_NUM_THREADS`` and
``threadpoolctl.threadpool_limits``; ``set_num_threads(n)`` overrides it for npool alone. The
result never depends on the thread count: every kernel gives the same bits with any number.
"""
import operator

from ._cpu import _openmp_helpers

_num_threads = None


def set_num_threads(n):
    """Use ``n`` threads in npool's CPU kernels; ``None`` goes back to OpenMP's default."""
    global _num_threads
    if n is None:
        _num_threads = None
        return
    if isinstance(n, bool):
        raise TypeError("set_num_threads: n must be a positive int or None, got bool")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"set_num_threads: n must be a positive int or None, got {type(n).__name__}") from None
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _num_threads = n


def get_num_threads():
    """The number of threads the next CPU kernel call will use."""
    if _num_threads is not None:
        return _num_threads
    return max(1, _openmp_helpers.openmp_max_threads())
