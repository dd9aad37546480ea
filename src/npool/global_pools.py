"""Global pools (spatial-pooling.torch; Durand et al., WELDON and WILDCAT): every (sample,
channel) map of ``n`` spatial cells pooled to one value, by ``src/cpu/_global_pools.pyx`` on
numpy arrays and ``src/cuda/global_pools.cu`` (through ``npool._cuda``) on GPU arrays.

    max     y = max x (ties: lowest flat index; a NaN wins)
    avg     y = mean x
    k-max   y = mean of the k largest
    LSE     y = (1/beta) log((1/n) sum exp(beta x))   (beta = 0: the mean)
    WELDON  y = mean of the kmax largest + alpha * mean of the kmin smallest
    GeM     y = ((1/n) sum max(x, eps)^p)^(1/p)   (p = 1: the mean; p -> inf: the max)

Inputs are ``(N, C, *spatial)`` with at least one spatial axis, C-contiguous or channels-last
(used in place); outputs ``(N, C)``, or ``(N, C, 1, ...)`` with ``keepdims=True``. Flat indices
count the spatial cells in C order, whatever the memory layout.
"""
import threading
from typing import Optional, Tuple, Union

import numpy as np

from . import _checks
from ._types import Array, ArrayLike, ArrayOrPair, Count, Out
from ._cpu import kernel_module
from ._dispatch import backend_of, is_gpu_array
from ._threads import threads_for

_MAX, _SUM, _LSE = 0, 1, 2
# Cells whose keys a selection keeps in memory per thread (16 MiB with their scratch); a map of
# more cells takes up to 7 (float64) or 3 (float32) extra passes over its cells, and needs no
# more memory.
_SELECT_CAPACITY = 1 << 20


# The reductions' partial results are written into arrays reused call after call (per Python
# thread, up to this many bytes): a fresh array of a few hundred KB costs more to fault in than
# the kernel takes to fill it ((64, 512, 14, 14) channels-last max: a 0.95 ms kernel and 0.33 ms
# of page faults for its three (32768, 1) partial arrays). Nothing of them reaches a caller.
_REUSED_BYTES = 1 << 24
_reused = threading.local()


def _partial_arrays(maps, chunks):
    """(a, b, index), each (maps, chunks), valid until the next call on this thread."""
    shape = (maps, chunks)
    if 3 * 8 * maps * chunks > _REUSED_BYTES:
        return np.empty(shape), np.empty(shape), np.empty(shape, np.int64)
    cached = getattr(_reused, "arrays", None)
    if cached is None or cached[0].shape != shape:
        cached = np.empty(shape), np.empty(shape), np.empty(shape, np.int64)
        _reused.arrays = cached
    return cached


def _flags(keepdims, return_indices=False):
    return _checks.flag(keepdims, "keepdims"), _checks.flag(return_indices, "return_indices")


def _forward_outs(out, return_indices):
    """``out=`` of a forward as [y's destination, the indices' destination]: an array (or a
    1-tuple) for y alone, a pair (y, indices) with ``return_indices``; entries may be None."""
    if return_indices:
        return _checks.out_entries(out, 2)
    return _checks.out_entries(out, 1) + [None]


def _gpu_forward_outs(out, return_indices):
    out_y, out_index = _forward_outs(out, return_indices)
    _checks.refuse_gpu_out([out_index], "the indices (pass None for them)")
    return out_y


def _backward_out(out):
    return _checks.out_entries(out, 1)[0]


def _kernels():
    return kernel_module("_global_pools")


def _gpu(**arrays):
    """npool._cuda.global_pools when the arrays are GPU arrays (a mix is a TypeError), else
    None."""
    if backend_of(**arrays) != "cuda":
        return None
    from ._cuda import global_pools
    return global_pools


def _cells(x):
    """The number of spatial cells of each map of x (numpy or GPU array); 1 for anything else,
    which the checks that follow refuse."""
    if isinstance(x, np.ndarray):
        shape = x.shape
    elif is_gpu_array(x):
        from ._cuda._arrays import describe
        shape = describe(x, "x").shape
    else:
        return 1
    return int(np.prod(shape[2:])) if len(shape) >= 3 else 1


class _Call:
    """One validated call: x seen as (N, C, S) maps, S the flattened spatial cells."""

    def __init__(self, x, float64=False):
        """``float64``: compute in float64 whatever x's dtype (a temperature beyond float32's
        range)."""
        _checks.float_array(x, "x")
        if x.ndim < 3:
            raise ValueError(f"x must be (N, C, *spatial) with at least one spatial axis, got "
                             f"{x.ndim}-D shape {x.shape}")
        if 0 in x.shape[1:]:
            raise ValueError(f"x must have non-zero channel and spatial sizes, got shape "
                             f"{x.shape}")
        self.original = x
        self.shape = x.shape
        self.dtype = x.dtype
        self.x, self.layout, self.work_dtype = _checks.working_array(x)
        if float64 and self.work_dtype != np.float64:
            self.work_dtype = np.dtype(np.float64)
            self.x = self.x.astype(np.float64)  # keeps the layout
        self.n = int(np.prod(x.shape[2:]))
        self.maps = x.shape[0] * x.shape[1]
        self.x3 = self.view3(self.x)
        self.threads = threads_for(self.maps)  # the threads of the per-map kernels
        self.out = None  # the backward's out= (see expect_out)

    def output_shape(self, keepdims):
        return self.shape[:2] + ((1,) * (len(self.shape) - 2) if keepdims else ())

    def expect_out(self, out, inputs):
        """Check a backward's ``out=`` (x's shape and dtype); the gradient goes there."""
        self.out = _checks.out_array(out, self.shape, self.dtype, inputs)

    def new_gradient(self):
        """An uninitialised gradient in x's layout and the work dtype: the ``out=`` array itself
        when it has them (the kernels write every cell), else a new one."""
        out = self.out
        if out is not None and out.dtype == self.work_dtype and \
                _checks.memory_layout(out) == self.layout:
            return out
        return _checks.empty_like_layout(self.shape, self.work_dtype, self.layout)

    def view3(self, a):
        """An (N, C, *spatial) array in x's layout as an (N, C, S) view."""
        N, C = a.shape[:2]
        if self.layout == "channels_last":
            return np.moveaxis(a, 1, -1).reshape(N, self.n, C).transpose(0, 2, 1)
        return a.reshape(N, C, self.n)

    def empty(self):
        return self.maps == 0

    def partials(self, mode, beta=1.0):
        """Per-(map, chunk) partial results of a reduction (see _global_pools.reduce)."""
        k = _kernels()
        if self.layout == "contiguous" or self.n == 1:
            chunk = k.CHUNK_CELLS
        else:
            chunk = k.CHANNELS_LAST_MAX_CHUNK if mode == _MAX else k.CHANNELS_LAST_CHUNK
        chunks = -(-self.n // chunk)
        # index: written by the maximum, else unused; all three reused (see _partial_arrays):
        # what the callers return is computed from them, never a view of them
        a, b, index = _partial_arrays(self.maps, chunks)
        k.reduce(mode, self.x3, beta, a, b, index, threads_for(a.size))
        return a, b, index

    def finite_rows(self, selected):
        """Of the maps where ``selected`` (maps,) is true, those whose cells are all finite:
        their numbers and their cells as a float64 (rows, S) array in flat spatial order."""
        rows = np.flatnonzero(selected)
        if rows.size == 0:
            return rows, np.zeros((0, self.n))
        C = self.shape[1]
        cells = self.x3[rows // C, rows % C].astype(np.float64)
        finite = np.isfinite(cells).all(axis=1)
        return rows[finite], cells[finite]

    def rescue_overflow(self, values, recompute):
        """``values`` (maps,) of a reduction whose float sums can overflow although the result
        is finite (cells near the float maximum): maps with a non-finite value and only finite
        cells get ``recompute(cells)`` (float64 rows -> (rows,)) of their cells scaled by a
        power of two, scaled back. Rare, so done in NumPy."""
        bad, cells = self.finite_rows(~np.isfinite(values))
        if bad.size:
            shift = int(np.ceil(np.log2(self.n))) + 1  # sums of the scaled cells stay finite
            values = values.copy()
            with np.errstate(over="ignore"):
                values[bad] = np.ldexp(recompute(np.ldexp(cells, -shift)), shift)
        return values

    def buffers(self, key_blocks=False):
        """Per-thread scratch of the selection kernels: the keys of a map (with ``key_blocks``,
        of 16 channels-last maps: select's) and a scratch for maps of up to _SELECT_CAPACITY
        cells (see _global_pools.select_buffer_length); a larger map gets a buffer of that size
        and takes extra passes over its cells instead."""
        length = _kernels().select_buffer_length(
            min(self.n, _SELECT_CAPACITY), key_blocks and self.layout == "channels_last")
        return np.empty((self.threads, length), np.uint64)

    def select(self, count, bottom, want_index=False):
        """The ``count`` largest (or smallest) cells of every map: their sums and, if wanted,
        their flat indices in ascending order (else an empty (maps, 0) array)."""
        total = np.zeros(self.maps)
        index = np.zeros((self.maps, count if want_index else 0), np.int64)
        if count and not self.empty():
            _kernels().select(self.x3, count, bottom, total, index,
                              self.buffers(key_blocks=True), self.threads)
        return total, index

    def selection_gradient(self, k_top, top_share, k_bottom, bottom_share):
        """top_share on the k_top largest cells of each map plus bottom_share on the k_bottom
        smallest, 0 elsewhere, in x's layout."""
        grad = self.new_gradient()
        if not self.empty():
            _kernels().selection_gradient(self.x3, self.view3(grad), k_top, top_share,
                                          k_bottom, bottom_share, self.buffers(),
                                          self.threads)
        return self.gradient(grad)

    def result(self, values, keepdims, out=None):
        """(maps,) float64 values as the caller's (N, C[, 1, ...]) array of x's dtype (written
        into ``out`` when given)."""
        if out is not None:
            return _checks.deliver(values.reshape(out.shape), out)
        y = values.reshape(self.shape[:2]).astype(self.dtype)
        return y.reshape(self.output_shape(keepdims)) if keepdims else y

    def check_out(self, out, keepdims, inputs):
        """A forward's ``out=`` for y, checked."""
        return _checks.out_array(out, self.output_shape(keepdims), self.dtype, inputs)

    def grad_out(self, grad_out, keepdims):
        """grad_out checked against the forward's output shape, as (maps,) float64."""
        expected = self.shape[:2] + ((1,) * (len(self.shape) - 2) if keepdims else ())
        backend_of(grad_out=grad_out)
        _checks.grad_out_array(grad_out, expected, self.original)
        return grad_out.reshape(self.maps).astype(np.float64)

    def gradient(self, g):
        """The finished gradient in x's dtype, delivered into ``out=`` when one was given."""
        return _checks.deliver(g.astype(self.dtype, copy=False), self.out)

    def check_indices(self, indices, count, expected=None, name="indices"):
        """Indices a forward returned (shape ``expected``, by default (N, C, count)): ints in
        [0, n), as (maps, count) int64."""
        if not isinstance(indices, np.ndarray) or indices.dtype.kind not in "iu":
            raise TypeError(f"{name} must be the integer array the forward returned, got "
                            f"{type(indices).__name__}")
        expected = self.shape[:2] + (count,) if expected is None else expected
        if indices.shape != expected:
            raise ValueError(f"{name} must have shape {expected}, got {indices.shape}")
        if indices.size and (indices.min() < 0 or indices.max() >= self.n):
            raise ValueError(f"{name} must lie in [0, {self.n}), the flat spatial indices")
        return indices.reshape(self.maps, count).astype(np.int64, copy=False)


def _scatter(maps, parts):
    """A gradient that is zero but for ``parts``: (indices (maps, k), values (maps,)) pairs,
    added in order (a cell in two parts gets both)."""
    grad = maps.new_gradient()
    grad.fill(0)  # one dense block of memory (a memset, in either layout); the kernel adds
    grad3 = maps.view3(grad)
    for index, values in parts:
        if not maps.empty():
            _kernels().scatter_gradient(grad3, index, values, maps.threads)
    return maps.gradient(grad)


# ------------------------------------------------------------------ max
def _max(maps):
    """The maximum of every map and its first flat index: the first largest chunk (a NaN counts
    as largest, the first NaN wins), chunk by chunk (np.argmax over a short axis costs more)."""
    a, _, index = maps.partials(_MAX)
    best, where = a[:, 0], index[:, 0]
    for chunk in range(1, a.shape[1]):
        column = a[:, chunk]
        take = (column > best) | (np.isnan(column) & ~np.isnan(best))
        best = np.where(take, column, best)
        where = np.where(take, index[:, chunk], where)
    return best, where


def _with_indices(maps, y, index, shape, out_index):
    """(y, the int64 indices reshaped to ``shape``, delivered into ``out_index`` if given)."""
    if out_index is not None:
        out_index = _checks.out_array(out_index, shape, np.int64, {"x": maps.original},
                                      name="out[1]")
    return y, _checks.deliver(index.reshape(shape), out_index)


def global_max_pool_forward(x: ArrayLike, keepdims: bool = False, return_indices: bool = False, *,
                            out: Out = None) -> ArrayOrPair:
    """Global max pooling: the largest cell of each (sample, channel) map.

    ``y = max x`` over the spatial cells; ties go to the lowest flat index and a NaN wins.

    Parameters
    ----------
    x : numpy.ndarray or GPU array
        ``(N, C, *spatial)`` with at least one spatial axis; float16, bfloat16, float32 or
        float64; C-contiguous or channels-last memory used in place (GPU arrays as in
        ``soft_pool2d_forward``).
    keepdims : bool, default False
        Keep the spatial axes with size 1: ``(N, C, 1, ...)`` instead of ``(N, C)``.
    return_indices : bool, default False
        Also return the flat (C-order) spatial indices the forward selected.
    out : array or tuple, optional
        Keyword only: where to write y (y's shape, x's dtype); with ``return_indices`` a pair
        ``(y's, the indices')`` of destinations, each None or an array.

    Returns
    -------
    y : numpy.ndarray or GPUArray
        ``(N, C)`` (or ``(N, C, 1, ...)``), x's dtype; ``out`` when given.
    indices : numpy.ndarray of int64
        With ``return_indices``: each maximum's flat spatial index, y's shape.

    Raises
    ------
    TypeError
        A non-float x, or grad_out / ``out`` of another dtype.
    ValueError
        Fewer than three axes, an empty channel or spatial axis, a bad count or option, or an
        ``out`` of another shape, read-only or overlapping an input.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 2, 2, 4)
    >>> npool.global_max_pool_forward(x).tolist()
    [[7.0, 15.0]]
    """
    keepdims, return_indices = _flags(keepdims, return_indices)
    gpu = _gpu(x=x)
    if gpu:
        return gpu.forward("max", x, keepdims, return_indices,
                           out=_gpu_forward_outs(out, return_indices))
    out_y, out_index = _forward_outs(out, return_indices)
    maps = _Call(x)
    out_y = maps.check_out(out_y, keepdims, {"x": x})
    values, index = _max(maps) if not maps.empty() else (np.zeros(0), np.zeros(0, np.int64))
    y = maps.result(values, keepdims, out_y)  # a new array (or out_y)
    if not return_indices:
        return y
    return _with_indices(maps, y, np.array(index), y.shape, out_index)  # index: reused memory


def global_max_pool_backward(grad_out: ArrayLike, x: ArrayLike, keepdims: bool = False,
                             return_indices: bool = False, indices: Optional[ArrayLike] = None, *,
                             out: Out = None) -> Array:
    """Gradient of ``global_max_pool_forward``.

    ``grad_out`` at each map's maximum (the forward's cell), 0 elsewhere.

    Parameters
    ----------
    grad_out : numpy.ndarray or GPU array
        dL/dy: the forward output's shape (``keepdims`` included), x's dtype.
    x : numpy.ndarray or GPU array
        ``(N, C, *spatial)`` with at least one spatial axis; float16, bfloat16, float32 or
        float64; C-contiguous or channels-last memory used in place (GPU arrays as in
        ``soft_pool2d_forward``).
    keepdims : bool, default False
        Keep the spatial axes with size 1: ``(N, C, 1, ...)`` instead of ``(N, C)``.
    return_indices : bool, default False
        Accepted for symmetry with the forward; ignored.
    indices : array of int, optional
        The forward's indices (``return_indices=True``): the backward scatters into them
        instead of selecting again.
    out : array, optional
        Keyword only: where to write grad_x (x's shape and dtype).

    Returns
    -------
    grad_x : numpy.ndarray or GPUArray
        x's shape, dtype and memory layout; ``out`` when given.

    Raises
    ------
    TypeError
        A non-float x, or grad_out / ``out`` of another dtype.
    ValueError
        Fewer than three axes, an empty channel or spatial axis, a bad count or option, or an
        ``out`` of another shape, read-only or overlapping an input.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 2, 2, 4)
    >>> npool.global_max_pool_backward(np.ones((1, 2), np.float32), x)[0, 0].tolist()
    [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    """
    keepdims, return_indices = _flags(keepdims, return_indices)
    gpu = _gpu(grad_out=grad_out, x=x)
    if gpu:
        return gpu.backward("max", grad_out, x, keepdims, indices, out=_backward_out(out))
    maps = _Call(x)
    g = maps.grad_out(grad_out, keepdims)
    maps.expect_out(_backward_out(out), {"x": x, "grad_out": grad_out, "indices": indices})
    index = None if indices is None else maps.check_indices(indices, 1,
                                                             maps.output_shape(keepdims))
    if maps.empty():
        return maps.gradient(maps.new_gradient())
    if index is None:
        index = _max(maps)[1][:, None]
    return _scatter(maps, [(index, g)])


# ------------------------------------------------------------------ avg
def _column_sum(a):
    """The sum of each row of a short (rows, chunks) array, column after column, in chunk
    order (numpy's reduction over a short last axis costs more than the kernels' work)."""
    total = a[:, 0]
    for chunk in range(1, a.shape[1]):
        total = total + a[:, chunk]
    return total


def _sum(maps):
    return _column_sum(maps.partials(_SUM)[0])


def global_avg_pool_forward(x: ArrayLike, keepdims: bool = False, *, out: Out = None) -> Array:
    """Global average pooling: the mean of each (sample, channel) map.

    ``y = mean x`` over the spatial cells. The CPU kernels add each cell into one of 32 lanes
    (8 for maps of fewer than 256 cells) in x's precision (32 cells per lane at most), the lanes
    and runs in float64; a map whose sum overflows although its cells are finite (near the
    float maximum) is summed again in float64 with its cells scaled by a power of two, so the
    mean is finite whenever the cells are.

    Parameters
    ----------
    x : numpy.ndarray or GPU array
        ``(N, C, *spatial)`` with at least one spatial axis; float16, bfloat16, float32 or
        float64; C-contiguous or channels-last memory used in place (GPU arrays as in
        ``soft_pool2d_forward``).
    keepdims : bool, default False
        Keep the spatial axes with size 1: ``(N, C, 1, ...)`` instead of ``(N, C)``.
    out : array, optional
        Keyword only: where to write y (y's shape, x's dtype).

    Returns
    -------
    y : numpy.ndarray or GPUArray
        ``(N, C)`` (or ``(N, C, 1, ...)``), x's dtype; ``out`` when given.

    Raises
    ------
    TypeError
        A non-float x, or grad_out / ``out`` of another dtype.
    ValueError
        Fewer than three axes, an empty channel or spatial axis, a bad count or option, or an
        ``out`` of another shape, read-only or overlapping an input.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 2, 2, 4)
    >>> npool.global_avg_pool_forward(x).tolist()
    [[3.5, 11.5]]
    """
    keepdims, _ = _flags(keepdims)
    out, = _checks.out_entries(out, 1)
    gpu = _gpu(x=x)
    if gpu:
        return gpu.forward("avg", x, keepdims, False, out=out)
    maps = _Call(x)
    out = maps.check_out(out, keepdims, {"x": x})
    if maps.empty():
        return maps.result(np.zeros(0), keepdims, out)
    values = maps.rescue_overflow(_sum(maps) / maps.n, lambda cells: cells.mean(axis=1))
    return maps.result(values, keepdims, out)


def global_avg_pool_backward(grad_out: ArrayLike, x: ArrayLike, keepdims: bool = False, *,
                             out: Out = None) -> Array:
    """Gradient of ``global_avg_pool_forward``.

    ``grad_out / n`` on every cell (n the cells of a map).

    Parameters
    ----------
    grad_out : numpy.ndarray or GPU array
        dL/dy: the forward output's shape (``keepdims`` included), x's dtype.
    x : numpy.ndarray or GPU array
        ``(N, C, *spatial)`` with at least one spatial axis; float16, bfloat16, float32 or
        float64; C-contiguous or channels-last memory used in place (GPU arrays as in
        ``soft_pool2d_forward``).
    keepdims : bool, default False
        Keep the spatial axes with size 1: ``(N, C, 1, ...)`` instead of ``(N, C)``.
    out : array, optional
        Keyword only: where to write grad_x (x's shape and dtype).

    Returns
    -------
    grad_x : numpy.ndarray or GPUArray
        x's shape, dtype and memory layout; ``out`` when given.

    Raises
    ------
    TypeError
        A non-float x, or grad_out / ``out`` of another dtype.
    ValueError
        Fewer than three axes, an empty channel or spatial axis, a bad count or option, or an
        ``out`` of another shape, read-only or overlapping an input.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 2, 2, 4)
    >>> float(npool.global_avg_pool_backward(np.ones((1, 2), np.float32), x)[0, 0, 0, 0])
    0.125
    """
    keepdims, _ = _flags(keepdims)
    gpu = _gpu(grad_out=grad_out, x=x)
    if gpu:
        return gpu.backward("avg", grad_out, x, keepdims, out=_backward_out(out))
    maps = _Call(x)
    g = maps.grad_out(grad_out, keepdims)
    maps.expect_out(_backward_out(out), {"x": x, "grad_out": grad_out})
    grad = maps.new_gradient()
    maps.view3(grad)[...] = (g / maps.n).reshape(maps.shape[:2] + (1,)).astype(maps.work_dtype)
    return maps.gradient(grad)


# ------------------------------------------------------------------ LogSumExp
_FLOAT32 = np.finfo(np.float32)


def _lse_maps(x, beta):
    """The maps of an LSE call: computed in float64 when beta has no normal float32 value
    (the float32 kernels would take it as 0 or inf)."""
    narrow = isinstance(x, np.ndarray) and x.dtype != np.float64
    in_range = float(_FLOAT32.tiny) <= abs(beta) <= float(_FLOAT32.max)
    return _Call(x, float64=narrow and not in_range)


def _lse_stats(maps, beta):
    """Per map: M = max beta x and S = sum exp(beta x - M) (float64)."""
    a, b, _ = maps.partials(_LSE, beta)
    if a.shape[1] == 1:
        return a[:, 0], b[:, 0]
    m = a[:, 0]
    for chunk in range(1, a.shape[1]):
        m = np.maximum(m, a[:, chunk])  # NaN propagates
    with np.errstate(invalid="ignore", over="ignore"):
        weights = np.where(a == m[:, None], 1.0, np.exp(a - m[:, None]))
    return m, _column_sum(b * weights)


def _lse_shifted(cells, beta):
    """For rows of finite float64 cells: x* (the max for beta > 0, the min for beta < 0) and
    u = beta (x - x*) <= 0, without overflow (halved where x - x* would overflow)."""
    star = cells.max(axis=1) if beta > 0 else cells.min(axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        d = cells - star[:, None]
        u = np.where(np.isfinite(d), beta * d, 2 * (beta * (0.5 * cells - 0.5 * star[:, None])))
    return star, u


def _lse_exact(cells, beta):
    """``(1/beta) log(mean exp(beta x))`` of rows of finite float64 cells, accurate for every
    finite beta: ``x* + log1p(mean(expm1(u))) / beta`` (see ``_lse_shifted``), so that terms
    near 1 lose nothing to cancellation; rows where abs(beta) times the range is below 1e-8 take
    the limit's series ``mean + beta var / 2`` (the next term is below float64 rounding)."""
    star, u = _lse_shifted(cells, beta)
    with np.errstate(over="ignore"):
        values = star + np.log1p(np.mean(np.expm1(u), axis=1)) / beta
        half_range = 0.5 * cells.max(axis=1) - 0.5 * cells.min(axis=1)
    tiny = np.abs(beta) * half_range < 5e-9
    if tiny.any():
        rows = cells[tiny]
        mean = np.mean(0.5 * rows, axis=1) * 2
        variance = np.mean((rows - mean[:, None]) ** 2, axis=1)
        values[tiny] = mean + beta * variance / 2
    return values


def _lse_redo(maps, m, s, beta):
    """The maps whose kernel result is not to be trusted although their cells are finite, and
    those cells: beta x overflowed (M infinite), or the result is a small correction to a small
    shift (|M| + |log(S/n)| < 1/4: the float sum of exponentials near 1 would cost digits
    to cancellation once divided by a small beta)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        suspect = ~np.isfinite(m) | (np.abs(m) + np.abs(np.log(s / maps.n)) < 0.25)
    return maps.finite_rows(suspect)


def global_lse_pool_forward(x: ArrayLike, beta: float = 1.0, keepdims: bool = False, *,
                            return_stats: bool = False, out: Out = None) -> ArrayOrPair:
    """LogSumExp pooling: a soft maximum of each map.

    ``y = (1/beta) log((1/n) sum_i exp(beta x_i))``: the mean at ``beta = 0``, the max as
    ``beta -> +inf``, the min as ``beta -> -inf``. Accurate for any finite input and any finite
    beta: exponentials relative to the map's extreme; maps where that is not enough (beta x
    overflowing, or ``abs(beta)`` so small that the sum of exponentials is all cancellation)
    are computed again with ``log1p``/``expm1`` in float64.

    Parameters
    ----------
    x : numpy.ndarray or GPU array
        ``(N, C, *spatial)`` with at least one spatial axis; float16, bfloat16, float32 or
        float64; C-contiguous or channels-last memory used in place (GPU arrays as in
        ``soft_pool2d_forward``).
    beta : float, default 1.0
        The sharpness, finite: 0 gives the mean, large positive values the max, large negative
        values the min.
    keepdims : bool, default False
        Keep the spatial axes with size 1: ``(N, C, 1, ...)`` instead of ``(N, C)``.
    return_stats : bool, default False
        Keyword only: also return the per-map statistics the forward computed, for
        ``global_lse_pool_backward(..., stats=)``, which then does not compute them again (its
        cost halves on the CPU).
    out : array or tuple, optional
        Keyword only: where to write y (y's shape, x's dtype); with ``return_stats`` a pair
        ``(y's, the statistics')`` of destinations, each None or an array.

    Returns
    -------
    y : numpy.ndarray or GPUArray
        ``(N, C)`` (or ``(N, C, 1, ...)``), x's dtype; ``out`` when given.
    stats : numpy.ndarray or GPUArray
        With ``return_stats`` only: float64 ``(N, C, 2)``, on x's device; per map a reference
        ``r`` and ``S = sum_i exp(beta (x_i - r))``, so that the softmax weights are
        ``exp(beta (x_i - r)) / S`` (the CPU keeps ``beta r`` = the largest ``beta x_i`` as
        its kernels round it, the GPU ``r`` = the extreme cell). Opaque to callers: pass it to
        the backward of the same x and beta, on the same device.

    Raises
    ------
    TypeError
        A non-float x, or ``out`` of another dtype.
    ValueError
        Fewer than three axes, an empty channel or spatial axis, a bad option, or an ``out`` of
        another shape, read-only or overlapping an input.

    Examples
    --------
    >>> x = np.array([[[0.0, 0.0, 0.0, 1000.0]]], np.float32)
    >>> round(float(npool.global_lse_pool_forward(x, beta=1.0)[0, 0]), 2)  # no overflow
    998.61
    """
    keepdims, _ = _flags(keepdims)
    return_stats = _checks.flag(return_stats, "return_stats")
    beta = _checks.finite_real(beta, "beta")
    out, out_stats = _forward_outs(out, return_stats)
    gpu = _gpu(x=x)
    if gpu:
        _checks.refuse_gpu_out([out_stats], "the statistics (pass None for them)")
        if beta == 0 and not return_stats:
            return gpu.forward("avg", x, keepdims, False, out=out)
        return gpu.forward("lse", x, keepdims, False, beta=beta, out=out,
                           return_stats=return_stats)
    if beta == 0:  # the mean; its statistics (M = 0, S = n) are the limit's
        y = global_avg_pool_forward(x, keepdims, out=out)
        if not return_stats:
            return y
        maps = _Call(x)
        return y, _deliver_stats(maps, np.zeros(maps.maps), np.full(maps.maps, maps.n, float),
                                 out_stats)
    maps = _lse_maps(x, beta)
    out = maps.check_out(out, keepdims, {"x": x})
    if maps.empty():
        y = maps.result(np.zeros(0), keepdims, out)
        return (y, _deliver_stats(maps, np.zeros(0), np.zeros(0), out_stats)) if return_stats \
            else y
    m, s = _lse_stats(maps, beta)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(np.isfinite(m), m + np.log(s / maps.n), m) / beta
    rows, cells = _lse_redo(maps, m, s, beta)
    if rows.size:
        values[rows] = _lse_exact(cells, beta)
    y = maps.result(values, keepdims, out)
    return (y, _deliver_stats(maps, m, s, out_stats)) if return_stats else y


def _deliver_stats(maps, m, s, out):
    """LSE's statistics (M, S) per map as the float64 (N, C, 2) array the backward takes."""
    shape = maps.shape[:2] + (2,)
    out = _checks.out_array(out, shape, np.float64, {"x": maps.original}, name="out[1]")
    return _checks.deliver(np.stack([m, s], axis=-1).reshape(shape), out)


def _received_stats(maps, stats):
    """``stats=`` of the LSE backward checked: (M, S), each (maps,) float64."""
    if isinstance(stats, np.ma.MaskedArray) or not isinstance(stats, np.ndarray) or \
            stats.dtype != np.float64:
        raise TypeError(f"stats must be the float64 numpy array global_lse_pool_forward("
                        f"..., return_stats=True) returned, got "
                        f"{getattr(stats, 'dtype', type(stats).__name__)}")
    shape = maps.shape[:2] + (2,)
    if stats.shape != shape:
        raise ValueError(f"stats must have shape {shape} (N, C, 2), got {stats.shape}")
    pairs = stats.reshape(maps.maps, 2)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def global_lse_pool_backward(grad_out: ArrayLike, x: ArrayLike, beta: float = 1.0,
                             keepdims: bool = False, *, stats: Optional[ArrayLike] = None,
                             out: Out = None) -> Array:
    """Gradient of ``global_lse_pool_forward``.

    ``dL/dx_i = grad_out * softmax(beta x)_i`` (``1/n`` at ``beta = 0``), with no
    thresholding.

    Parameters
    ----------
    grad_out : numpy.ndarray or GPU array
        dL/dy: the forward output's shape (``keepdims`` included), x's dtype.
    x : numpy.ndarray or GPU array
        ``(N, C, *spatial)`` with at least one spatial axis; float16, bfloat16, float32 or
        float64; C-contiguous or channels-last memory used in place (GPU arrays as in
        ``soft_pool2d_forward``).
    beta : float, default 1.0
        The sharpness, finite: 0 gives the mean, large positive values the max, large negative
        values the min.
    keepdims : bool, default False
        Keep the spatial axes with size 1: ``(N, C, 1, ...)`` instead of ``(N, C)``.
    stats : numpy.ndarray or GPU array, optional
        Keyword only: the statistics ``global_lse_pool_forward(x, beta, return_stats=True)``
        returned for this x and beta; the backward then reads them instead of making a pass of
        exponentials over x to compute them again. The gradient is the same, bit for bit.
    out : array, optional
        Keyword only: where to write grad_x (x's shape and dtype).

    Returns
    -------
    grad_x : numpy.ndarray or GPUArray
        x's shape, dtype and memory layout; ``out`` when given.

    Raises
    ------
    TypeError
        A non-float x, grad_out / ``out`` of another dtype, or ``stats`` not a float64 array
        (of x's device).
    ValueError
        Fewer than three axes, an empty channel or spatial axis, a bad option, ``stats`` of
        another shape than ``(N, C, 2)``, or an ``out`` of another shape, read-only or
        overlapping an input.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 2, 2, 4)
    >>> y, stats = npool.global_lse_pool_forward(x, beta=2.0, return_stats=True)
    >>> g = npool.global_lse_pool_backward(np.ones((1, 2), np.float32), x, beta=2.0,
    ...                                    stats=stats)
    >>> g.sum(axis=(2, 3)).round(6).tolist()  # a softmax per map
    [[1.0, 1.0]]
    """
    keepdims, _ = _flags(keepdims)
    beta = _checks.finite_real(beta, "beta")
    gpu = _gpu(grad_out=grad_out, x=x, **({} if stats is None else {"stats": stats}))
    if gpu:
        return gpu.backward("avg" if beta == 0 else "lse", grad_out, x, keepdims, beta=beta,
                            stats=stats, out=_backward_out(out))
    if beta == 0:
        if stats is not None:
            _received_stats(_Call(x), stats)
        return global_avg_pool_backward(grad_out, x, keepdims, out=out)
    maps = _lse_maps(x, beta)
    received = None if stats is None else _received_stats(maps, stats)
    if maps.empty():
        return global_avg_pool_backward(grad_out, x, keepdims, out=out)
    g = maps.grad_out(grad_out, keepdims)
    maps.expect_out(_backward_out(out), {"x": x, "grad_out": grad_out})
    m, s = _lse_stats(maps, beta) if received is None else received
    grad = maps.new_gradient()
    grad3 = maps.view3(grad)
    _kernels().lse_gradient(maps.x3, grad3, m, g / s, beta, maps.threads)
    rows, cells = maps.finite_rows(~np.isfinite(m))  # beta x overflowed: weights in float64
    if rows.size:
        weights = np.exp(_lse_shifted(cells, beta)[1])
        C = maps.shape[1]
        grad3[rows // C, rows % C] = g[rows, None] * weights / weights.sum(axis=1, keepdims=True)
    return maps.gradient(grad)


# ------------------------------------------------------------------ GeM
def _gem_call(x, p, eps):
    """One GeM call checked: its maps (in float64 for float32 or half x when some p < 1, where
    float rounding of the sum of weights would grow by 1/p), p per map as float64 (maps,), eps,
    and p's own shape."""
    maps = _Call(x)
    values = _checks.real_parameter(p, "p", np.float64)
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise ValueError("p must be positive and finite (GeM's exponent; p = 1 is the mean, "
                         "large p tends to the max)")
    try:
        per_map = np.broadcast_to(values, maps.shape[:2])
    except ValueError:
        raise ValueError(f"p of shape {values.shape} does not broadcast to the maps' shape "
                         f"{maps.shape[:2]} (N, C): use a number, (C,) per channel or "
                         f"(N, C)") from None
    eps = _checks.finite_real(eps, "eps")
    info = np.finfo(maps.work_dtype)
    if not float(info.tiny) <= eps <= float(info.max):
        raise ValueError(f"eps must be a normal positive number of {maps.work_dtype} (the dtype "
                         f"the pool computes in): at least {float(info.tiny):.4g}, got {eps!r}")
    eps = float(maps.work_dtype.type(eps))  # rounded as the clamp compares x with it
    if maps.dtype != np.float64 and per_map.size and per_map.min() < 1:
        maps = _Call(x, float64=True)
    return maps, np.ascontiguousarray(per_map, dtype=np.float64).reshape(-1), eps, values.shape


_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10  # fdlibm's split


def _log_ratio(z, m):
    """log(z / m) of positive normal float64 arrays, exact to about 1e-16 absolute whatever
    their magnitudes (z / m may underflow; log(z) - log(m) loses ulp(log z)): from their
    mantissas in [sqrt(1/2), sqrt(2)) and exponents, as _fastexp.h's npool_log_ratio_f64."""
    def parts(a):
        mantissa, exponent = np.frexp(a)
        low = mantissa < np.sqrt(0.5)
        return np.where(low, 2 * mantissa, mantissa), exponent - low
    mz, ez = parts(z)
    mm, em = parts(m)
    k = (ez - em).astype(np.float64)
    return k * _LN2_HI + ((np.log(mz) - np.log(mm)) + k * _LN2_LO)


def _log1p_excess(e):
    """``(1 + e) log1p(e) - e`` (>= 0, about e^2 / 2) without cancellation: its series
    ``sum_k (-1)^k e^k / (k (k - 1))`` where ``|e| < 1/2`` (40 terms: below float64 rounding),
    the formula elsewhere, and its limit 1 where ``1 + e`` rounds to 0 (a weight ``q_i`` far
    below the others': ``(1 + e) log1p(e) -> 0``, not ``0 * -inf``)."""
    small = np.abs(e) < 0.5
    es = np.where(small, e, 0.0)
    total = np.zeros_like(e)
    power = es * es
    for k in range(2, 42):
        total += (1 if k % 2 == 0 else -1) * power / (k * (k - 1))
        power = power * es
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(small, total, np.where(1 + e > 0, (1 + e) * np.log1p(e), 0.0) - e)


def _gem_exact(cells, p, eps):
    """GeM of rows of finite float64 cells whose weights are all near 1 (p times the spread of
    the logs small), where the sum of weights would be all cancellation:
    ``y = M exp(log1p(mean(expm1(p u))) / p)``, exact down to the geometric mean (p -> 0); and
    ``D = (dy/dp) p / y``, the KL divergence of ``q = softmax(p u)`` from the uniform weights
    over p, as ``KL = mean_i((1 + e_i) log1p(e_i) - e_i)`` with ``e_i = n q_i - 1`` (terms all
    >= 0, so nothing cancels; e_i from expm1 of the centred ``p u``). Returns y, L and D."""
    z = np.maximum(cells, eps)
    m = z.max(axis=1)
    u = _log_ratio(z, m[:, None])
    a = p[:, None] * u
    log_mean = np.log1p(np.mean(np.expm1(a), axis=1))
    grown = np.expm1(a - a.mean(axis=1, keepdims=True))
    mean_grown = grown.mean(axis=1, keepdims=True)
    excess = (grown - mean_grown) / (1 + mean_grown)  # n q_i - 1
    kl = np.mean(_log1p_excess(excess), axis=1)
    return m * np.exp(log_mean / p), log_mean, kl / p


def _gem_stats(maps, p, eps):
    """Per map (float64): M and S (see _global_pools.gem_stats), y, L = log(S / n) and
    D = T / S - L / p (dy/dp = y D / p), the maps whose terms are all near 1 taken again exactly
    (_gem_exact)."""
    m, s, t = np.empty(maps.maps), np.empty(maps.maps), np.empty(maps.maps)
    if maps.empty():
        return m, s, m.copy(), m.copy(), m.copy()
    _kernels().gem_stats(maps.x3, p, eps, m, s, t, maps.threads)
    with np.errstate(invalid="ignore", divide="ignore"):
        log_mean = np.log(s / maps.n)
        values = np.where(np.isfinite(m), m * np.exp(log_mean / p), m)  # NaN, +inf: as is
        slope = t / s - log_mean / p
    rows, cells = maps.finite_rows(np.isfinite(m) & (np.abs(log_mean) < 0.25))
    if rows.size:
        values[rows], log_mean[rows], slope[rows] = _gem_exact(cells, p[rows], eps)
    return m, s, values, log_mean, slope


def global_gem_pool_forward(x: ArrayLike, p: Union[float, ArrayLike] = 3.0, eps: float = 1e-6,
                            keepdims: bool = False, *, out: Out = None) -> Array:
    """Generalised-mean (GeM) pooling, the global descriptor of image retrieval.

    ``y = ((1/n) sum_i max(x_i, eps)^p)^(1/p)`` per map: the mean of the clamped cells at
    ``p = 1``, their max as ``p -> inf``, their geometric mean as ``p -> 0``. Computed as
    ``M (S / n)^(1/p)`` with ``M`` the map's largest clamped cell and ``S = sum (z_i / M)^p``
    (each term at most 1, the largest exactly 1), so no power overflows or vanishes whatever
    p and x; maps whose terms are all near 1 (p times the spread of ``log z`` small) take
    ``log1p``/``expm1`` in float64, exact down to the geometric-mean limit.

    Parameters
    ----------
    x : numpy.ndarray or GPU array
        ``(N, C, *spatial)`` with at least one spatial axis; float16, bfloat16, float32 or
        float64; C-contiguous or channels-last memory used in place (GPU arrays as in
        ``soft_pool2d_forward``).
    p : float or numpy.ndarray, default 3.0
        The exponent, positive and finite: a number, or an array that broadcasts to
        ``(N, C)`` (``(C,)`` per channel, as a learnt per-channel GeM has).
    eps : float, default 1e-6
        The clamp floor, a normal positive number of the dtype the pool computes in (float32
        for float16 and bfloat16 x), rounded to that dtype (as PyTorch's ``clamp`` compares a
        float32 tensor with a Python float).
    keepdims : bool, default False
        Keep the spatial axes with size 1: ``(N, C, 1, ...)`` instead of ``(N, C)``.
    out : array, optional
        Keyword only: where to write y (y's shape, x's dtype).

    Returns
    -------
    y : numpy.ndarray or GPUArray
        ``(N, C)`` (or ``(N, C, 1, ...)``), x's dtype; ``out`` when given. A map holding a NaN
        gives NaN, one holding +inf (and no NaN) +inf.

    Raises
    ------
    TypeError
        A non-float x, a non-real p, or ``out`` of another dtype.
    ValueError
        Fewer than three axes, an empty channel or spatial axis, a p that is not positive and
        finite or does not broadcast to ``(N, C)``, an eps that is not a normal positive
        number, a bad option, or an ``out`` of another shape, read-only or overlapping an input.

    Examples
    --------
    >>> x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    >>> float(npool.global_gem_pool_forward(x, p=1.0)[0, 0])   # the mean
    2.5
    >>> round(float(npool.global_gem_pool_forward(x, p=500.0)[0, 0]), 3)  # near the max
    3.989
    """
    keepdims, _ = _flags(keepdims)
    out, = _checks.out_entries(out, 1)
    gpu = _gpu(x=x, **({"p": p} if is_gpu_array(p) else {}))
    if gpu:
        return gpu.gem_forward(x, p, eps, keepdims, out=out)
    maps, p_maps, eps, _ = _gem_call(x, p, eps)
    out = maps.check_out(out, keepdims, {"x": x})
    values = _gem_stats(maps, p_maps, eps)[2]
    return maps.result(values, keepdims, out)


def global_gem_pool_backward(grad_out: ArrayLike, x: ArrayLike, p: Union[float, ArrayLike] = 3.0,
                             eps: float = 1e-6, keepdims: bool = False, *,
                             out: Out = None) -> Tuple[Array, Array]:
    """Gradients of ``global_gem_pool_forward``: ``(grad_x, grad_p)``.

    With ``z_i = max(x_i, eps)``, ``w_i = (z_i / M)^p`` and ``S = sum_i w_i`` per map::

        dL/dx_i = g y w_i / (S z_i)   where x_i >= eps, else 0   (= g (z_i / y)^(p-1) / n)
        dL/dp   = g (y / p) (sum_i w_i log(z_i / M) / S - log(S / n) / p)
                                                           (summed down to p's shape)

    The gradient passes at ``x_i = eps`` (as PyTorch's ``clamp`` lets it). A map holding a NaN
    or +inf gets NaN gradients.

    Parameters
    ----------
    grad_out : numpy.ndarray or GPU array
        dL/dy: the forward output's shape (``keepdims`` included), x's dtype.
    x, p, eps, keepdims
        As for ``global_gem_pool_forward``.
    out : array or tuple, optional
        Keyword only: where to write the gradients: a pair ``(grad_x's, grad_p's)`` of
        destinations, each None or an array (x's shape and dtype; p's shape and x's dtype).

    Returns
    -------
    grad_x : numpy.ndarray or GPUArray
        x's shape, dtype and memory layout.
    grad_p : numpy.ndarray or GPUArray
        p's shape (``()`` for a number), x's dtype.

    Raises
    ------
    TypeError, ValueError
        As for ``global_gem_pool_forward``; grad_out of another shape or dtype.

    Examples
    --------
    >>> x = np.array([[[1.0, 2.0, 3.0, 4.0]]])
    >>> grad_x, grad_p = npool.global_gem_pool_backward(np.ones((1, 1)), x, p=1.0)
    >>> grad_x.tolist()   # the mean's gradient at p = 1
    [[[0.25, 0.25, 0.25, 0.25]]]
    """
    keepdims, _ = _flags(keepdims)
    out_x, out_p = _checks.out_entries(out, 2)
    gpu = _gpu(grad_out=grad_out, x=x, **({"p": p} if is_gpu_array(p) else {}))
    if gpu:
        _checks.refuse_gpu_out([out_p], "grad_p (GeM's second result)")
        return gpu.gem_backward(grad_out, x, p, eps, keepdims, out=out_x)
    maps, p_maps, eps, p_shape = _gem_call(x, p, eps)
    g = maps.grad_out(grad_out, keepdims)
    inputs = {"x": x, "grad_out": grad_out, "p": p}
    maps.expect_out(out_x, inputs)
    out_p = _checks.out_array(out_p, p_shape, maps.dtype, inputs, name="out[1]")
    m, s, y, log_mean, slope = _gem_stats(maps, p_maps, eps)
    grad = maps.new_gradient()
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if not maps.empty():
            _kernels().gem_gradient(maps.x3, maps.view3(grad), p_maps, eps, m, g * y / s,
                                    maps.threads)
        grad_p = np.where(np.isfinite(m), g * (y / p_maps) * slope, np.nan)
    grad_p = _checks.sum_to_shape(grad_p.reshape(maps.shape[:2]), p_shape)
    return maps.gradient(grad), _checks.deliver(grad_p.astype(maps.dtype), out_p)


# ------------------------------------------------------------------ k-max
def global_kmax_pool_forward(x: ArrayLike, k: Count = 1, keepdims: bool = False,
                             return_indices: bool = False, *, rounding: str = "floor",
                             out: Out = None) -> ArrayOrPair:
    """k-max pooling: the mean of the k largest cells of each map.

    ``y = mean of the k largest cells``; ties go to the lower flat indices.

    Parameters
    ----------
    x : numpy.ndarray or GPU array
        ``(N, C, *spatial)`` with at least one spatial axis; float16, bfloat16, float32 or
        float64; C-contiguous or channels-last memory used in place (GPU arrays as in
        ``soft_pool2d_forward``).
    k : int or float, default 1
        A count (an int >= 1, clipped to the cells n) or a fraction in (0, 1] of the cells:
        ``max(1, floor(k n + 1e-6))`` (``rounding="round"``: ``max(1, round(k n))``, WILDCAT's).
    rounding : {"floor", "round"}, default "floor"
        Keyword only: the rule for fractional counts.
    keepdims : bool, default False
        Keep the spatial axes with size 1: ``(N, C, 1, ...)`` instead of ``(N, C)``.
    return_indices : bool, default False
        Also return the flat (C-order) spatial indices the forward selected.
    out : array or tuple, optional
        Keyword only: where to write y (y's shape, x's dtype); with ``return_indices`` a pair
        ``(y's, the indices')`` of destinations, each None or an array.

    Returns
    -------
    y : numpy.ndarray or GPUArray
        ``(N, C)`` (or ``(N, C, 1, ...)``), x's dtype; ``out`` when given.
    indices : numpy.ndarray of int64
        With ``return_indices``: the selected flat indices, ascending, ``(N, C, k)``.

    Raises
    ------
    TypeError
        A non-float x, or grad_out / ``out`` of another dtype.
    ValueError
        Fewer than three axes, an empty channel or spatial axis, a bad count or option, or an
        ``out`` of another shape, read-only or overlapping an input.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 2, 2, 4)
    >>> npool.global_kmax_pool_forward(x, k=2).tolist()
    [[6.5, 14.5]]
    """
    keepdims, return_indices = _flags(keepdims, return_indices)
    count = _checks.k_count(k, _cells(x), "k", rounding=rounding)
    gpu = _gpu(x=x)
    if gpu:
        return gpu.forward("select", x, keepdims, return_indices, k=count, alpha=0.0,
                           out=_gpu_forward_outs(out, return_indices))
    out_y, out_index = _forward_outs(out, return_indices)
    maps = _Call(x)
    out_y = maps.check_out(out_y, keepdims, {"x": x})
    total, index = maps.select(count, False, return_indices)
    values = maps.rescue_overflow(
        total / count, lambda cells: np.sort(cells, axis=1)[:, cells.shape[1] - count:].mean(1))
    y = maps.result(values, keepdims, out_y)
    if not return_indices:
        return y
    return _with_indices(maps, y, index, maps.shape[:2] + (count,), out_index)


def global_kmax_pool_backward(grad_out: ArrayLike, x: ArrayLike, k: Count = 1,
                              keepdims: bool = False, return_indices: bool = False,
                              indices: Optional[ArrayLike] = None, *, rounding: str = "floor",
                              out: Out = None) -> Array:
    """Gradient of ``global_kmax_pool_forward``.

    ``grad_out / k`` on each selected cell, 0 elsewhere.

    Parameters
    ----------
    grad_out : numpy.ndarray or GPU array
        dL/dy: the forward output's shape (``keepdims`` included), x's dtype.
    x : numpy.ndarray or GPU array
        ``(N, C, *spatial)`` with at least one spatial axis; float16, bfloat16, float32 or
        float64; C-contiguous or channels-last memory used in place (GPU arrays as in
        ``soft_pool2d_forward``).
    k : int or float, default 1
        A count (an int >= 1, clipped to the cells n) or a fraction in (0, 1] of the cells:
        ``max(1, floor(k n + 1e-6))`` (``rounding="round"``: ``max(1, round(k n))``, WILDCAT's).
    rounding : {"floor", "round"}, default "floor"
        Keyword only: the rule for fractional counts.
    keepdims : bool, default False
        Keep the spatial axes with size 1: ``(N, C, 1, ...)`` instead of ``(N, C)``.
    return_indices : bool, default False
        Accepted for symmetry with the forward; ignored.
    indices : array of int, optional
        The forward's indices (``return_indices=True``): the backward scatters into them
        instead of selecting again.
    out : array, optional
        Keyword only: where to write grad_x (x's shape and dtype).

    Returns
    -------
    grad_x : numpy.ndarray or GPUArray
        x's shape, dtype and memory layout; ``out`` when given.

    Raises
    ------
    TypeError
        A non-float x, or grad_out / ``out`` of another dtype.
    ValueError
        Fewer than three axes, an empty channel or spatial axis, a bad count or option, or an
        ``out`` of another shape, read-only or overlapping an input.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 2, 2, 4)
    >>> npool.global_kmax_pool_backward(np.ones((1, 2), np.float32), x, k=2)[0, 0].tolist()
    [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]
    """
    keepdims, return_indices = _flags(keepdims, return_indices)
    count = _checks.k_count(k, _cells(x), "k", rounding=rounding)
    gpu = _gpu(grad_out=grad_out, x=x)
    if gpu:
        return gpu.backward("select", grad_out, x, keepdims, indices, k=count, alpha=0.0,
                            out=_backward_out(out))
    maps = _Call(x)
    g = maps.grad_out(grad_out, keepdims)
    maps.expect_out(_backward_out(out), {"x": x, "grad_out": grad_out, "indices": indices})
    if indices is None:
        return maps.selection_gradient(count, g / count, 0, g)
    return _scatter(maps, [(maps.check_indices(indices, count), g / count)])


# ------------------------------------------------------------------ WELDON
def _weldon_counts(x, kmax, kmin, alpha, rounding):
    top, bottom = _checks.weldon_counts(kmax, kmin, _cells(x), rounding)
    return top, bottom, _checks.finite_real(alpha, "alpha")


def weldon_pool_forward(x: ArrayLike, kmax: Count = 1, kmin: Optional[Count] = None,
                        alpha: float = 1.0, keepdims: bool = False, return_indices: bool = False,
                        *, rounding: str = "floor", out: Out = None) -> ArrayOrPair:
    """WELDON pooling (Durand et al., CVPR 2016): top and bottom cells of each map.

    ``y = mean(kmax largest) + alpha * mean(kmin smallest)``. When the two sets overlap
    (``kmax + kmin > n``) a cell counts in both. WILDCAT's pooling is
    ``0.5 * weldon_pool_forward(x, kmax, kmin, alpha)``.

    Parameters
    ----------
    x : numpy.ndarray or GPU array
        ``(N, C, *spatial)`` with at least one spatial axis; float16, bfloat16, float32 or
        float64; C-contiguous or channels-last memory used in place (GPU arrays as in
        ``soft_pool2d_forward``).
    kmax : int or float, default 1
        The top count or fraction (as ``global_kmax_pool_forward``'s k).
    kmin : int or float, optional
        The bottom count or fraction; None: kmin = kmax; 0: no bottom term.
    alpha : float, default 1.0
        The weight of the bottom term, finite.
    rounding : {"floor", "round"}, default "floor"
        Keyword only: the rule for fractional counts.
    keepdims : bool, default False
        Keep the spatial axes with size 1: ``(N, C, 1, ...)`` instead of ``(N, C)``.
    return_indices : bool, default False
        Also return the flat (C-order) spatial indices the forward selected.
    out : array or tuple, optional
        Keyword only: where to write y (y's shape, x's dtype); with ``return_indices`` a pair
        ``(y's, the indices')`` of destinations, each None or an array.

    Returns
    -------
    y : numpy.ndarray or GPUArray
        ``(N, C)`` (or ``(N, C, 1, ...)``), x's dtype; ``out`` when given.
    indices : numpy.ndarray of int64
        With ``return_indices``: those of the kmax largest, then those of the kmin smallest,
        each ascending, ``(N, C, kmax + kmin)``.

    Raises
    ------
    TypeError
        A non-float x, or grad_out / ``out`` of another dtype.
    ValueError
        Fewer than three axes, an empty channel or spatial axis, a bad count or option, or an
        ``out`` of another shape, read-only or overlapping an input.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 2, 2, 4)
    >>> npool.weldon_pool_forward(x, kmax=1, kmin=1, alpha=0.5).tolist()
    [[7.0, 19.0]]
    """
    keepdims, return_indices = _flags(keepdims, return_indices)
    top, bottom, alpha = _weldon_counts(x, kmax, kmin, alpha, rounding)
    gpu = _gpu(x=x)
    if gpu:
        return gpu.forward("select", x, keepdims, return_indices, k=top, k_bottom=bottom,
                           alpha=alpha, out=_gpu_forward_outs(out, return_indices))
    out_y, out_index = _forward_outs(out, return_indices)
    maps = _Call(x)
    out_y = maps.check_out(out_y, keepdims, {"x": x})
    total_top, index_top = maps.select(top, False, return_indices)
    total_bottom, index_bottom = maps.select(bottom, True, return_indices)
    with np.errstate(over="ignore", invalid="ignore"):
        values = total_top / top + (alpha * total_bottom / bottom if bottom else 0.0)

    def weldon(cells):
        ordered = np.sort(cells, axis=1)
        means = ordered[:, cells.shape[1] - top:].mean(axis=1)
        return means + (alpha * ordered[:, :bottom].mean(axis=1) if bottom else 0.0)

    y = maps.result(maps.rescue_overflow(values, weldon), keepdims, out_y)
    if not return_indices:
        return y
    return _with_indices(maps, y, np.concatenate([index_top, index_bottom], axis=1),
                         maps.shape[:2] + (top + bottom,), out_index)


def weldon_pool_backward(grad_out: ArrayLike, x: ArrayLike, kmax: Count = 1,
                         kmin: Optional[Count] = None, alpha: float = 1.0, keepdims: bool = False,
                         return_indices: bool = False, indices: Optional[ArrayLike] = None, *,
                         rounding: str = "floor", out: Out = None) -> Array:
    """Gradient of ``weldon_pool_forward``.

    ``grad_out / kmax`` on the top cells plus ``alpha * grad_out / kmin`` on the bottom cells
    (both for a cell in both sets).

    Parameters
    ----------
    grad_out : numpy.ndarray or GPU array
        dL/dy: the forward output's shape (``keepdims`` included), x's dtype.
    x : numpy.ndarray or GPU array
        ``(N, C, *spatial)`` with at least one spatial axis; float16, bfloat16, float32 or
        float64; C-contiguous or channels-last memory used in place (GPU arrays as in
        ``soft_pool2d_forward``).
    kmax : int or float, default 1
        The top count or fraction (as ``global_kmax_pool_forward``'s k).
    kmin : int or float, optional
        The bottom count or fraction; None: kmin = kmax; 0: no bottom term.
    alpha : float, default 1.0
        The weight of the bottom term, finite.
    rounding : {"floor", "round"}, default "floor"
        Keyword only: the rule for fractional counts.
    keepdims : bool, default False
        Keep the spatial axes with size 1: ``(N, C, 1, ...)`` instead of ``(N, C)``.
    return_indices : bool, default False
        Accepted for symmetry with the forward; ignored.
    indices : array of int, optional
        The forward's indices (``return_indices=True``): the backward scatters into them
        instead of selecting again.
    out : array, optional
        Keyword only: where to write grad_x (x's shape and dtype).

    Returns
    -------
    grad_x : numpy.ndarray or GPUArray
        x's shape, dtype and memory layout; ``out`` when given.

    Raises
    ------
    TypeError
        A non-float x, or grad_out / ``out`` of another dtype.
    ValueError
        Fewer than three axes, an empty channel or spatial axis, a bad count or option, or an
        ``out`` of another shape, read-only or overlapping an input.

    Examples
    --------
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 2, 2, 4)
    >>> g = npool.weldon_pool_backward(np.ones((1, 2), np.float32), x, kmax=1, kmin=1)
    >>> g[0, 0].tolist()
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    """
    keepdims, return_indices = _flags(keepdims, return_indices)
    top, bottom, alpha = _weldon_counts(x, kmax, kmin, alpha, rounding)
    gpu = _gpu(grad_out=grad_out, x=x)
    if gpu:
        return gpu.backward("select", grad_out, x, keepdims, indices, k=top, k_bottom=bottom,
                            alpha=alpha, out=_backward_out(out))
    maps = _Call(x)
    g = maps.grad_out(grad_out, keepdims)
    maps.expect_out(_backward_out(out), {"x": x, "grad_out": grad_out, "indices": indices})
    if indices is None:
        return maps.selection_gradient(top, g / top, bottom, alpha * g / max(bottom, 1))
    index = maps.check_indices(indices, top + bottom)
    index_top, index_bottom = index[:, :top], index[:, top:]
    parts = [(index_top, g / top)] + ([(index_bottom, alpha * g / bottom)] if bottom else [])
    return _scatter(maps, parts)
