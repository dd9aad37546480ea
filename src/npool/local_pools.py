"""Local soft pools: SoftPool and Max-Entropy pooling in 1, 2 and 3 dimensions, over windows
(kernel_size, stride, padding, ceil_mode, dilation) or adaptive (output_size).

All of them run the one windowed-softmax kernel (``src/cpu/_windowed_softmax.pyx`` on numpy
arrays, ``src/cuda/windowed_softmax.cu`` through ``npool._cuda`` on GPU arrays) with a
temperature ``lam``; SoftPool is ``lam = 1``. For each sample, channel and output ``o`` with the
real (unpadded) cells ``R(o)`` of its window::

    w_i = exp(lam x_i) / sum_{j in R(o)} exp(lam x_j)        y_o = sum_{i in R(o)} w_i x_i
    dL/dx_i = sum_{o : i in R(o)} g_o w_{o,i} (1 + lam (x_i - y_o))

Exponentials are taken after subtracting the window maximum, so any finite input is safe.
"""
import math
from typing import Optional, Tuple, Union

import numpy as np

from . import _checks
from ._types import (AdaptiveMaxEntPoolBackward, AdaptiveMaxEntPoolForward,
                     AdaptiveSoftPoolBackward, AdaptiveSoftPoolForward, Array, ArrayLike,
                     MaxEntPoolBackward, MaxEntPoolForward, Out, OutputSize, Padding, Size,
                     SoftPoolBackward, SoftPoolForward)
from ._cpu import kernel_module
from ._dispatch import backend_of
from ._threads import threads_for

# The number of values each half of a thread's buffer holds: a block of outputs' window cells.
_BUFFER_VALUES = 4096
# Per cell, the gather path of the backward costs about this many times the add path (measured:
# 5.2x); it pays only when the add path, parallel over planes, would leave most threads idle.
_GATHER_COST = 5


class _Call:
    """One validated call: the input as a 5-D (N, C, D, H, W) view and what the kernel needs."""

    def __init__(self, x, nd, window):
        x, self.batched = _checks.pool_input(x, nd)
        self.args = _checks.local_window(nd, x.shape[-nd:], **window,
                                         maps=math.prod(x.shape[:-nd]))
        self.out_spatial = self.args.output_size(x.shape[-nd:])
        self.nd = nd
        self.dtype = x.dtype
        self.out_shape = x.shape[:-nd] + self.out_spatial  # the caller's view of y
        if not self.batched:
            x = x[np.newaxis]
        self.x, self.layout, self.work_dtype = _checks.working_array(x)

    def empty(self, shape, zero=False):
        return _checks.empty_like_layout(shape, self.work_dtype, self.layout, zero=zero)

    def to_5d(self, a):
        """View an (N, C, *spatial) array as (N, C, D, H, W) with size-1 leading spatial axes."""
        return np.expand_dims(a, tuple(range(2, 5 - self.nd)))

    def plane_count(self):
        """Independent planes of the backward's add path: (n, c), or (n, block of channels)."""
        n, c = self.x.shape[:2]
        block = kernel_module("_windowed_softmax").LINE_BLOCK
        return n * (-(-c // block) if self.layout == "channels_last" else c)

    def statistics_buffer(self, out_shape):
        """A (3, N, C, *out) array in the output's layout, viewed as (3, N, C, OD, OH, OW)."""
        ndim = len(out_shape)
        if self.layout == "channels_last":
            memory = np.empty((3, out_shape[0], *out_shape[2:], out_shape[1]), self.work_dtype)
            stacked = np.transpose(memory, (0, 1, ndim, *range(2, ndim)))
        else:
            stacked = np.empty((3, *out_shape), self.work_dtype)
        return np.expand_dims(stacked, tuple(range(3, 3 + 3 - self.nd)))

    def kernel_call_args(self):
        kernel, stride, padding = self.args.as_3d()
        # at most one thread per output row (or output position of a channels-last array)
        n_threads = threads_for(np.prod(self.x.shape[:2] + self.out_spatial[:-1]) *
                                (self.out_spatial[-1] if self.layout == "channels_last" else 1))
        cells = kernel[0] * kernel[1] * kernel[2]
        # Cell offsets per thread: a line's window, and an edge output's window.
        offsets = np.empty((n_threads, 2 * cells), dtype=np.intp)
        # Two halves per thread: window values and their weights.
        buffers = np.empty((n_threads, 2 * max(_BUFFER_VALUES, cells)), dtype=self.work_dtype)
        return kernel, stride, padding, offsets, buffers, n_threads

    def general_args(self):
        """The kernels' general-path arguments: (dilation, window tables or None)."""
        return self.args.general_3d(self.x.shape[2:], self.out_spatial)

    def result(self, a):
        """Back to the caller's dtype and batching."""
        a = a.astype(self.dtype, copy=False)
        return a if self.batched else a[0]

    def destination(self, out, shape, inputs):
        """The checked ``out=`` array for a result of the caller's ``shape`` and x's dtype, and
        the batched array the kernel may write into directly (None when it must write into a
        buffer of the work dtype first: float16 and bfloat16)."""
        out = _checks.out_array(out, shape, self.dtype, inputs)
        if out is None or self.dtype != self.work_dtype:
            return out, None
        return out, out if self.batched else out[np.newaxis]

    def zero_unwritten(self, grad5, gather):
        """Zero the cells of the 5-D gradient that the backward kernel does not write: all of
        them when it adds window terms into it (overlapping windows, not gathered) or when
        windows leave gaps between them (stride > kernel); otherwise (disjoint windows that
        tile the input, or the gather pass, which writes every cell) only the cells past the
        last window of each axis."""
        kernel, stride, padding = self.args.as_3d()
        if gather:
            return
        if not self.args.disjoint or any(s > k for s, k in zip(stride, kernel)):
            grad5[...] = 0
            return
        out_size = (1,) * (3 - self.nd) + self.out_spatial
        for axis in range(3):
            end = (out_size[axis] - 1) * stride[axis] - padding[axis] + kernel[axis]
            if end < grad5.shape[2 + axis]:
                cells = [slice(None)] * 5
                cells[2 + axis] = slice(end, None)
                grad5[tuple(cells)] = 0


def _temperature(problem, lam):
    """lam as a 5-D view broadcast to the batched output's shape (no copy of the broadcast),
    in the work dtype. TypeError for a non-real lam, ValueError for one that does not broadcast
    or is not finite in the work dtype (NaN, +-inf, or beyond float32's range for float32 and
    float16 input): the same rule as the framework modules."""
    lam = _checks.real_parameter(lam, "lam", problem.work_dtype)
    if not np.isfinite(lam).all():
        raise ValueError(f"lam must be finite (in {problem.work_dtype}, the dtype the pool "
                         f"computes in): NaN, +-inf and values beyond its range are refused")
    try:
        full = np.broadcast_to(lam, problem.out_shape)
    except ValueError:
        raise ValueError(f"lam of shape {lam.shape} does not broadcast to the output's shape "
                         f"{problem.out_shape} (N, C, *out): use a scalar, (C, 1, ...) per "
                         f"channel, (N, C, 1, ...) per sample and channel, or any shape that "
                         f"broadcasts") from None
    if not problem.batched:
        full = full[np.newaxis]
    return problem.to_5d(full)


def _softmax_pool_forward(x, nd, lam, window, out=None):
    """y; ``window``: the keyword arguments of ``_checks.local_window``."""
    out, = _checks.out_entries(out, 1)
    if backend_of(x=x) == "cuda":
        from ._cuda import windowed_softmax
        return windowed_softmax.forward(x, nd, lam, window, out=out)
    problem = _Call(x, nd, window)
    temperature = _temperature(problem, lam)  # checked before any work, empty batch or not
    out, y = problem.destination(out, problem.out_shape, {"x": x, "lam": lam})
    xb = problem.x
    if y is None:
        y = problem.empty(xb.shape[:2] + problem.out_spatial)
    if xb.shape[0] > 0:
        kernel, stride3, padding3, offsets, buffers, n_threads = problem.kernel_call_args()
        kernel_module("_windowed_softmax").forward(
            problem.to_5d(xb), problem.to_5d(y), kernel, stride3, padding3,
            temperature, problem.layout == "channels_last", offsets,
            buffers, n_threads, *problem.general_args())
    return _checks.deliver(problem.result(y), out)


def _softmax_pool_backward(grad_out, x, nd, lam, window, with_lam=False, out=None):
    """grad_x, and with ``with_lam`` also dL/dlam summed to lam's shape; ``out``: the
    destination of grad_x, or with ``with_lam`` of (grad_x, grad_lam), entries None or
    arrays."""
    out_x, out_lam = _checks.out_entries(out, 2) if with_lam else \
        _checks.out_entries(out, 1) + [None]
    if backend_of(grad_out=grad_out, x=x) == "cuda":
        from ._cuda import windowed_softmax
        return windowed_softmax.backward(grad_out, x, nd, lam, window, with_lam=with_lam,
                                         out=out_x, out_lam=out_lam)
    problem = _Call(x, nd, window)
    temperature = _temperature(problem, lam)
    _checks.grad_out_array(grad_out, problem.out_shape, x)
    inputs = {"x": x, "grad_out": grad_out, "lam": lam}
    out_x, grad_x = problem.destination(out_x, x.shape, inputs)
    if with_lam:
        out_lam = _checks.out_array(out_lam, np.shape(lam), problem.dtype, inputs,
                                    name="out[1]")
    g = grad_out.astype(problem.work_dtype, copy=False)
    if not problem.batched:
        g = g[np.newaxis]
    xb = problem.x
    if grad_x is not None and grad_x.strides != xb.strides:
        grad_x = None  # the kernel writes grad_x with x's strides: via a buffer
    if grad_x is None:
        grad_x = problem.empty(xb.shape)
    # dL/dlam per output, every one written; in C order whatever x's layout, so that its sum
    # down to lam's shape adds in the same order (the same bits) for both layouts.
    grad_lam = np.empty(g.shape, problem.work_dtype) if with_lam else None
    if xb.shape[0] > 0:
        kernel, stride3, padding3, offsets, buffers, n_threads = problem.kernel_call_args()
        # Overlapping windows add their terms plane by plane (parallel over planes), unless
        # gathering per-output M, g/S and y for every cell (parallel over everything) is faster
        # with this many planes and threads. Both give the same bits.
        stats = None
        if not problem.args.disjoint and not problem.args.general:
            planes = problem.plane_count()
            add_rounds = -(-planes // n_threads)  # planes per thread on the add path
            if _GATHER_COST * planes < n_threads * add_rounds:
                stats = problem.statistics_buffer(g.shape)
        problem.zero_unwritten(problem.to_5d(grad_x), stats is not None)
        kernel_module("_windowed_softmax").backward(
            problem.to_5d(g), problem.to_5d(xb), problem.to_5d(grad_x), stats,
            kernel, stride3, padding3, temperature,
            problem.to_5d(grad_lam) if with_lam else None,
            problem.layout == "channels_last", offsets, buffers, n_threads,
            *problem.general_args())
    grad_x = _checks.deliver(problem.result(grad_x), out_x)
    if not with_lam:
        return grad_x
    full = grad_lam if problem.batched else grad_lam[0]
    return grad_x, _checks.deliver(
        _checks.sum_to_shape(full, np.shape(lam)).astype(problem.dtype), out_lam)


def _window(kernel_size, stride, padding, ceil_mode, dilation):
    return dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                dilation=dilation)


def _axes_word(nd):
    return "axis" if nd == 1 else "axes"


_X_DOC = """    x : numpy.ndarray or GPU array
        Shape ``(N, C, {axes})`` or ``(C, {axes})``; float32, float64, float16 or bfloat16 (the
        16-bit ones computed in float32). C-contiguous or channels-last memory is used as it is.
        A GPU array (PyCUDA GPUArray, or anything with ``__cuda_array_interface__`` - a CUDA
        torch tensor, a CuPy array - or DLPack from GPU memory) runs on its GPU without a copy
        and gives a PyCUDA GPUArray (``torch.as_tensor(y, device="cuda")`` wraps it)."""
_WINDOW_DOC = """    kernel_size : int or tuple of {nd} ints
        The window.
    stride : int or tuple of {nd} ints, optional
        The step between windows; default ``kernel_size``.
    padding : int, tuple of {nd} ints, tuple of {nd} (before, after) pairs, "same" or "valid", default 0
        Implicit padding: an int or per-axis ints pad both sides (at most half the kernel:
        PyTorch's rule); ``(before, after)`` pairs pad each side (each less than the kernel);
        ``"same"`` gives ``ceil(L / stride)`` outputs (TensorFlow's rule: the smaller half of
        ``max((ceil(L / stride) - 1) stride + kernel - L, 0)`` cells before), ``"valid"`` none
        (either case). Padded cells are left out of the windows (they are not zeros).
    ceil_mode : bool, default False
        PyTorch's output-size rule with ceil instead of floor.
    dilation : int or tuple of {nd} ints, default 1
        Keyword only: the step between a window's cells (PyTorch's); the window's extent
        ``(kernel - 1) dilation + 1`` takes the kernel's place in the output size and in
        "same". Dilated windows run the kernels' general path (CPU and GPU)."""
_EXAMPLE_SHAPE = {1: "(2, 3, 8)", 2: "(2, 3, 8, 8)", 3: "(2, 3, 4, 8, 8)"}
_EXAMPLE_OUT = {1: "(2, 3, 4)", 2: "(2, 3, 4, 4)", 3: "(2, 3, 2, 4, 4)"}
_PAIR_SHAPE = {1: "1, 1, 2", 2: "1, 1, 1, 2", 3: "1, 1, 1, 1, 2"}
_PAIR_KERNEL = {1: "2", 2: "(1, 2)", 3: "(1, 1, 2)"}


def _make_pool(nd) -> Tuple[SoftPoolForward, SoftPoolBackward]:
    """The public forward and backward of SoftPool in ``nd`` spatial dimensions."""
    axes = ", ".join("DHW"[3 - nd:])

    def forward(x: ArrayLike, kernel_size: Size, stride: Optional[Size] = None,
                padding: Padding = 0, ceil_mode: bool = False, *, dilation: Size = 1,
                out: Out = None) -> Array:
        return _softmax_pool_forward(x, nd, 1.0, _window(kernel_size, stride, padding,
                                                         ceil_mode, dilation), out)

    def backward(grad_out: ArrayLike, x: ArrayLike, kernel_size: Size,
                 stride: Optional[Size] = None, padding: Padding = 0, ceil_mode: bool = False, *,
                 dilation: Size = 1, out: Out = None) -> Array:
        return _softmax_pool_backward(grad_out, x, nd, 1.0, _window(
            kernel_size, stride, padding, ceil_mode, dilation), out=out)

    forward.__name__ = forward.__qualname__ = f"soft_pool{nd}d_forward"
    backward.__name__ = backward.__qualname__ = f"soft_pool{nd}d_backward"
    forward.__doc__ = f"""SoftPool over {nd} spatial {_axes_word(nd)} (Stergiou et al., ICCV 2021).

    For each sample, channel and window of real (unpadded) cells R(o)::

        y_o = sum_(i in R(o)) softmax_R(o)(x)_i * x_i

    computed relative to the window's largest cell, so any finite input is exact (no overflow).

    Parameters
    ----------
{_X_DOC.format(axes=axes)}
{_WINDOW_DOC.format(nd=nd)}
    out : array, optional
        Keyword only: where to write y - an array of y's shape and x's dtype, any memory
        layout, sharing no memory with x (a GPU array for GPU input). Default: a new array.

    Returns
    -------
    y : numpy.ndarray or GPUArray
        Shape ``(N, C, *out)`` (or ``(C, *out)``), each ``out = floor((L + before + after -
        kernel [+ stride - 1]) / stride) + 1``; x's dtype and memory layout; ``out`` when given.

    Raises
    ------
    TypeError
        x is not a float array, or ``out`` has another dtype.
    ValueError
        Bad window arguments (kernel < 1, padding over half the kernel or a side of a pair
        as long as the kernel, a window starting past the input), a wrong shape, or an ``out`` that is read-only or overlaps x.

    Examples
    --------
    >>> npool.soft_pool{nd}d_forward(np.ones({_EXAMPLE_SHAPE[nd]}, np.float32), 2).shape
    {_EXAMPLE_OUT[nd]}
    """
    backward.__doc__ = f"""Gradient of ``soft_pool{nd}d_forward`` with respect to x.

    With w the window softmax and y the forward's output::

        dL/dx_i = sum_(o : i in R(o)) grad_out_o * w_(o,i) * (1 + x_i - y_o)

    Deterministic: the same bits for any thread count and either memory layout.

    Parameters
    ----------
    grad_out : numpy.ndarray or GPU array
        dL/dy: the forward output's shape, x's dtype.
    x : numpy.ndarray or GPU array
        The forward's input.
    kernel_size, stride, padding, ceil_mode, dilation
        The forward's window arguments.
    out : array, optional
        Keyword only: where to write grad_x (x's shape and dtype); written in place when it
        has x's memory layout, else through a buffer.

    Returns
    -------
    grad_x : numpy.ndarray or GPUArray
        x's shape, dtype and memory layout; ``out`` when given.

    Raises
    ------
    TypeError
        A non-float array, or grad_out or ``out`` of another dtype than x.
    ValueError
        grad_out not of the forward output's shape, bad window arguments, or an ``out`` that
        is read-only or overlaps an input.

    Examples
    --------
    >>> x = np.ones({_EXAMPLE_SHAPE[nd]}, np.float32)
    >>> y = npool.soft_pool{nd}d_forward(x, 2)
    >>> float(npool.soft_pool{nd}d_backward(np.ones_like(y), x, 2).sum()) == y.size
    True
    """
    return forward, backward


soft_pool1d_forward, soft_pool1d_backward = _make_pool(1)
soft_pool2d_forward, soft_pool2d_backward = _make_pool(2)
soft_pool3d_forward, soft_pool3d_backward = _make_pool(3)


def _make_maxent_pool(nd) -> Tuple[MaxEntPoolForward, MaxEntPoolBackward]:
    """The public forward and backward of Max-Entropy pooling in ``nd`` spatial dimensions."""
    axes = ", ".join("DHW"[3 - nd:])

    def forward(x: ArrayLike, lam: Union[float, ArrayLike], kernel_size: Size,
                stride: Optional[Size] = None, padding: Padding = 0, ceil_mode: bool = False, *,
                dilation: Size = 1, out: Out = None) -> Array:
        return _softmax_pool_forward(x, nd, lam, _window(kernel_size, stride, padding,
                                                         ceil_mode, dilation), out)

    def backward(grad_out: ArrayLike, x: ArrayLike, lam: Union[float, ArrayLike],
                 kernel_size: Size, stride: Optional[Size] = None, padding: Padding = 0,
                 ceil_mode: bool = False, *, dilation: Size = 1,
                 out: Out = None) -> Tuple[Array, Array]:
        return _softmax_pool_backward(grad_out, x, nd, lam, _window(
            kernel_size, stride, padding, ceil_mode, dilation), with_lam=True, out=out)

    forward.__name__ = forward.__qualname__ = f"maxent_pool{nd}d_forward"
    backward.__name__ = backward.__qualname__ = f"maxent_pool{nd}d_backward"
    forward.__doc__ = f"""Max-Entropy pooling over {nd} spatial {_axes_word(nd)} (Kobayashi, ICCV 2019).

    SoftPool with a temperature: for each window of real cells R(o)::

        w = softmax_R(o)(lam_o * x),   y_o = sum_i w_i x_i

    ``lam = 0`` is average pooling over the real cells, ``lam -> +inf`` max pooling, ``lam < 0``
    a soft minimum, ``lam = 1`` SoftPool (the same kernel, the same bits).

    Parameters
    ----------
{_X_DOC.format(axes=axes)}
    lam : float or array
        The temperature, broadcastable to the output ``(N, C, *out)``: a constant, per channel
        ``(C, 1, ...)``, per sample and channel ``(N, C, 1, ...)`` (as GFGP gives), per output
        position, or any other broadcast; finite.
{_WINDOW_DOC.format(nd=nd)}
    out : array, optional
        Keyword only: where to write y (y's shape, x's dtype).

    Returns
    -------
    y : numpy.ndarray or GPUArray
        As ``soft_pool{nd}d_forward``'s.

    Raises
    ------
    TypeError
        A non-float x, a non-real lam, or an ``out`` of another dtype.
    ValueError
        A lam that is not finite or does not broadcast, bad window arguments, or a bad
        ``out``.

    Examples
    --------
    >>> x = np.array([[[[1.0, 3.0]]]], np.float32)  # one window of two cells
    >>> pair = x.reshape({_PAIR_SHAPE[nd]})
    >>> [round(float(npool.maxent_pool{nd}d_forward(pair, lam, {_PAIR_KERNEL[nd]}).ravel()[0]), 3)
    ...  for lam in (0.0, 1.0, 50.0)]
    [2.0, 2.762, 3.0]
    """
    backward.__doc__ = f"""Gradients of ``maxent_pool{nd}d_forward``: ``(grad_x, grad_lam)``.

    ::

        dL/dx_i   = sum_o g_o w_(o,i) (1 + lam_o (x_i - y_o))
        dL/dlam_o = g_o sum_i w_(o,i) (x_i - y_o)^2       (summed down to lam's shape)

    Parameters
    ----------
    grad_out : numpy.ndarray or GPU array
        dL/dy: the forward output's shape, x's dtype.
    x : numpy.ndarray or GPU array
        The forward's input.
    lam : float or array
        The forward's temperature.
    kernel_size, stride, padding, ceil_mode, dilation
        The forward's window arguments.
    out : tuple, optional
        Keyword only: ``(grad_x, grad_lam)`` destinations, each None or an array of that
        result's shape and x's dtype (on GPU arrays, grad_lam's C-contiguous).

    Returns
    -------
    grad_x : numpy.ndarray or GPUArray
        x's shape, dtype and layout.
    grad_lam : numpy.ndarray or GPUArray
        lam's shape (0-d for a number), x's dtype.

    Raises
    ------
    TypeError, ValueError
        As ``maxent_pool{nd}d_forward`` and ``soft_pool{nd}d_backward``.

    Examples
    --------
    >>> x = np.ones({_EXAMPLE_SHAPE[nd]}, np.float32)
    >>> y = npool.maxent_pool{nd}d_forward(x, 0.5, 2)
    >>> grad_x, grad_lam = npool.maxent_pool{nd}d_backward(np.ones_like(y), x, 0.5, 2)
    >>> grad_x.shape == x.shape, float(grad_lam)  # a constant map: lam changes nothing
    (True, 0.0)
    """
    return forward, backward


maxent_pool1d_forward, maxent_pool1d_backward = _make_maxent_pool(1)
maxent_pool2d_forward, maxent_pool2d_backward = _make_maxent_pool(2)
maxent_pool3d_forward, maxent_pool3d_backward = _make_maxent_pool(3)


# ------------------------------------------------------------------ adaptive output sizes
_OUTPUT_SIZE_DOC = """    output_size : int or tuple of {nd} ints or None
        The output's spatial size (an int: every axis); None keeps the input's size on that
        axis (PyTorch's). Window o of n over L cells spans ``[floor(o L / n), ceil((o + 1) L /
        n))`` (``nn.AdaptiveAvgPool{nd}d``'s windows): they overlap by a cell where n does not
        divide L (the kernels' general path) and tile the input where it does (the fast
        path); n may exceed L (cells repeat)."""
_ADAPTIVE_SHAPE = {1: "(2, 3, 9)", 2: "(2, 3, 9, 9)", 3: "(2, 3, 5, 9, 9)"}
_ADAPTIVE_OUT = {1: "(2, 3, 4)", 2: "(2, 3, 4, 4)", 3: "(2, 3, 4, 4, 4)"}


def _make_adaptive_pools(nd):
    """The public forward and backward of adaptive SoftPool and adaptive Max-Ent pooling in
    ``nd`` spatial dimensions."""
    axes = ", ".join("DHW"[3 - nd:])

    def soft_forward(x: ArrayLike, output_size: OutputSize, *, out: Out = None) -> Array:
        return _softmax_pool_forward(x, nd, 1.0, {"output_size": output_size}, out)

    def soft_backward(grad_out: ArrayLike, x: ArrayLike, output_size: OutputSize, *,
                      out: Out = None) -> Array:
        return _softmax_pool_backward(grad_out, x, nd, 1.0, {"output_size": output_size},
                                      out=out)

    def maxent_forward(x: ArrayLike, lam: Union[float, ArrayLike], output_size: OutputSize, *,
                       out: Out = None) -> Array:
        return _softmax_pool_forward(x, nd, lam, {"output_size": output_size}, out)

    def maxent_backward(grad_out: ArrayLike, x: ArrayLike, lam: Union[float, ArrayLike],
                        output_size: OutputSize, *, out: Out = None) -> Tuple[Array, Array]:
        return _softmax_pool_backward(grad_out, x, nd, lam, {"output_size": output_size},
                                      with_lam=True, out=out)

    for function, name in ((soft_forward, "adaptive_soft_pool{}d_forward"),
                           (soft_backward, "adaptive_soft_pool{}d_backward"),
                           (maxent_forward, "adaptive_maxent_pool{}d_forward"),
                           (maxent_backward, "adaptive_maxent_pool{}d_backward")):
        function.__name__ = function.__qualname__ = name.format(nd)
    size_doc = _OUTPUT_SIZE_DOC.format(nd=nd)
    soft_forward.__doc__ = f"""Adaptive SoftPool over {nd} spatial {_axes_word(nd)}: an output of ``output_size``.

    SoftPool (``soft_pool{nd}d_forward``'s math) over the windows of PyTorch's adaptive pools:
    for each sample, channel and window R(o)::

        y_o = sum_(i in R(o)) softmax_R(o)(x)_i * x_i

    Parameters
    ----------
{_X_DOC.format(axes=axes)}
{size_doc}
    out : array, optional
        Keyword only: where to write y (y's shape, x's dtype).

    Returns
    -------
    y : numpy.ndarray or GPUArray
        Shape ``(N, C, *output_size)`` (or ``(C, *output_size)``); x's dtype and layout.

    Raises
    ------
    TypeError
        A non-float x, a non-int output size, or an ``out`` of another dtype.
    ValueError
        An output size below 1, a wrong number of sizes, a wrong shape, or a bad ``out``.

    Examples
    --------
    >>> npool.adaptive_soft_pool{nd}d_forward(np.ones({_ADAPTIVE_SHAPE[nd]}, np.float32), 4).shape
    {_ADAPTIVE_OUT[nd]}
    """
    soft_backward.__doc__ = f"""Gradient of ``adaptive_soft_pool{nd}d_forward`` with respect to x.

    ::

        dL/dx_i = sum_(o : i in R(o)) grad_out_o * w_(o,i) * (1 + x_i - y_o)

    Parameters
    ----------
    grad_out : numpy.ndarray or GPU array
        dL/dy: the forward output's shape, x's dtype.
    x : numpy.ndarray or GPU array
        The forward's input.
    output_size : int or tuple of {nd} ints or None
        The forward's.
    out : array, optional
        Keyword only: where to write grad_x (x's shape and dtype).

    Returns
    -------
    grad_x : numpy.ndarray or GPUArray
        x's shape, dtype and memory layout.

    Raises
    ------
    TypeError, ValueError
        As ``adaptive_soft_pool{nd}d_forward`` and ``soft_pool{nd}d_backward``.

    Examples
    --------
    >>> x = np.ones({_ADAPTIVE_SHAPE[nd]}, np.float32)
    >>> y = npool.adaptive_soft_pool{nd}d_forward(x, 4)
    >>> npool.adaptive_soft_pool{nd}d_backward(np.ones_like(y), x, 4).shape == x.shape
    True
    """
    maxent_forward.__doc__ = f"""Adaptive Max-Entropy pooling over {nd} spatial {_axes_word(nd)}: an output of ``output_size``.

    ``maxent_pool{nd}d_forward``'s math over the windows of PyTorch's adaptive pools::

        w = softmax_R(o)(lam_o * x),   y_o = sum_i w_i x_i

    ``lam = 0`` is ``adaptive_avg_pool{nd}d``, ``lam -> +inf`` ``adaptive_max_pool{nd}d``.

    Parameters
    ----------
{_X_DOC.format(axes=axes)}
    lam : float or array
        The temperature, broadcastable to the output ``(N, C, *output_size)``; finite.
{size_doc}
    out : array, optional
        Keyword only: where to write y (y's shape, x's dtype).

    Returns
    -------
    y : numpy.ndarray or GPUArray
        As ``adaptive_soft_pool{nd}d_forward``'s.

    Raises
    ------
    TypeError, ValueError
        As ``adaptive_soft_pool{nd}d_forward``, and for a lam that is not finite or does not
        broadcast.

    Examples
    --------
    >>> x = np.arange(5.0).reshape({_PAIR_SHAPE[nd].replace("2", "5")})
    >>> npool.adaptive_maxent_pool{nd}d_forward(x, 0.0, {_PAIR_KERNEL[nd]}).ravel()  # [0, 3), [2, 5)
    array([1., 3.])
    """
    maxent_backward.__doc__ = f"""Gradients of ``adaptive_maxent_pool{nd}d_forward``: ``(grad_x, grad_lam)``.

    ::

        dL/dx_i   = sum_o g_o w_(o,i) (1 + lam_o (x_i - y_o))
        dL/dlam_o = g_o sum_i w_(o,i) (x_i - y_o)^2       (summed down to lam's shape)

    Parameters
    ----------
    grad_out : numpy.ndarray or GPU array
        dL/dy: the forward output's shape, x's dtype.
    x : numpy.ndarray or GPU array
        The forward's input.
    lam : float or array
        The forward's temperature.
    output_size : int or tuple of {nd} ints or None
        The forward's.
    out : tuple, optional
        Keyword only: ``(grad_x, grad_lam)`` destinations, each None or an array.

    Returns
    -------
    grad_x : numpy.ndarray or GPUArray
        x's shape, dtype and layout.
    grad_lam : numpy.ndarray or GPUArray
        lam's shape (0-d for a number), x's dtype.

    Raises
    ------
    TypeError, ValueError
        As ``adaptive_maxent_pool{nd}d_forward``.

    Examples
    --------
    >>> x = np.ones({_ADAPTIVE_SHAPE[nd]}, np.float32)
    >>> y = npool.adaptive_maxent_pool{nd}d_forward(x, 0.5, 4)
    >>> grad_x, grad_lam = npool.adaptive_maxent_pool{nd}d_backward(np.ones_like(y), x, 0.5, 4)
    >>> grad_x.shape == x.shape, float(grad_lam)
    (True, 0.0)
    """
    return soft_forward, soft_backward, maxent_forward, maxent_backward


def _adaptive_typed(nd) -> Tuple[AdaptiveSoftPoolForward, AdaptiveSoftPoolBackward,
                                 AdaptiveMaxEntPoolForward, AdaptiveMaxEntPoolBackward]:
    return _make_adaptive_pools(nd)


(adaptive_soft_pool1d_forward, adaptive_soft_pool1d_backward, adaptive_maxent_pool1d_forward,
 adaptive_maxent_pool1d_backward) = _adaptive_typed(1)
(adaptive_soft_pool2d_forward, adaptive_soft_pool2d_backward, adaptive_maxent_pool2d_forward,
 adaptive_maxent_pool2d_backward) = _adaptive_typed(2)
(adaptive_soft_pool3d_forward, adaptive_soft_pool3d_backward, adaptive_maxent_pool3d_forward,
 adaptive_maxent_pool3d_backward) = _adaptive_typed(3)
