"""How many threads the CPU kernels use.

By default, OpenMP's own answer (``omp_get_max_threads``), which honours ``OMP_NUM_THREADS`` and
``threadpoolctl.threadpool_limits``; ``set_num_threads(n)`` overrides it for npool alone. The
result never depends on the thread count: every kernel gives the same bits with any number.

A process forked (``os.fork``, ``multiprocessing``'s default "fork" start method on Linux,
PyTorch DataLoader workers) after npool ran OpenMP threads cannot start OpenMP threads again:
GNU OpenMP's thread pool does not survive ``fork`` and the child would hang. npool therefore
runs serially in such a child (the results are the same bits); ``set_num_threads`` there warns.
Children made by "spawn" or "forkserver" are fresh processes and use threads as usual.
"""
import operator
import os
import warnings
from typing import Optional

from ._cpu import _openmp_helpers

# More threads than any machine has; also keeps per-thread scratch of a call bounded.
MAX_THREADS = 4096

_num_threads = None
_threads_started = False  # whether this process may have started OpenMP worker threads
_forked_after_threads = False  # a child forked after its parent started them


def _after_fork_in_child():
    global _forked_after_threads
    if _threads_started:
        _forked_after_threads = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def set_num_threads(n: Optional[int]) -> None:
    """Set the number of threads of npool's CPU kernels.

    A call never runs more threads than it has independent pieces of work, and the results do
    not depend on the thread count. In a child forked after npool used threads, the kernels
    stay serial (GNU OpenMP cannot start threads again after fork) and a request for more than
    one thread warns.

    Parameters
    ----------
    n : int or None
        1 <= n <= 4096 threads; None goes back to OpenMP's default (``OMP_NUM_THREADS`` or the
        cores).

    Raises
    ------
    TypeError
        n is not an int (or is a bool).
    ValueError
        n is out of range.

    Examples
    --------
    >>> before = npool.get_num_threads()
    >>> npool.set_num_threads(1)
    >>> npool.get_num_threads()
    1
    >>> npool.set_num_threads(before)
    """
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
    if n > MAX_THREADS:
        raise ValueError(f"set_num_threads: n must be at most {MAX_THREADS}, got {n}")
    if n > 1 and _forked_after_threads:
        warnings.warn("npool runs serially in a process forked after it used OpenMP threads "
                      "(GNU OpenMP cannot start threads again after fork); use the 'spawn' or "
                      "'forkserver' start method for threaded kernels in child processes",
                      RuntimeWarning, stacklevel=2)
    _num_threads = n


def get_num_threads() -> int:
    """The number of threads the next CPU kernel call may use.

    Returns
    -------
    int
        ``set_num_threads``'s value, else OpenMP's default; 1 in a process forked after npool
        used threads.

    Examples
    --------
    >>> npool.get_num_threads() >= 1
    True
    """
    if _forked_after_threads:
        return 1
    if _num_threads is not None:
        return _num_threads
    return min(MAX_THREADS, max(1, _openmp_helpers.openmp_max_threads()))


def threads_for(work_items):
    """The threads a kernel call with ``work_items`` independent pieces of work runs (at least
    1, at most get_num_threads()); its per-thread scratch is sized by this number."""
    global _threads_started
    n = max(1, min(get_num_threads(), int(work_items)))
    if n > 1:
        _threads_started = True
    return n
