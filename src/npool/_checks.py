"""Argument validation and normalisation shared by every npool op.

Each check raises ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong value or shape)
with a message that names the argument and says what was expected.
"""
import math
import numbers
import operator
import os

import numpy as np

from ._device_array import DeviceArray
# the dtypes npool computes in (npool._dtypes), also read through this module by the adapters
from ._dtypes import (DTYPE_NAMES, bfloat16, float_dtypes, is_bfloat16,  # noqa: F401
                      is_float_dtype, is_half_dtype)

def _describe(value):
    return f"{type(value).__name__} {value!r}" if np.ndim(value) == 0 else type(value).__name__


def _is_array(a):
    return isinstance(a, (np.ndarray, DeviceArray))  # a GPU array, as npool._cuda describes it


def float_array(a, name):
    """``a`` itself if it is an array (numpy, or a described GPU array) of a floating dtype
    npool computes in. A masked array is refused: npool would compute on the values under
    its mask, which is never what the mask means."""
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a plain numpy.ndarray, got a numpy.ma.MaskedArray: "
                        f"npool ignores masks (fill the masked cells, e.g. {name}.filled(...), "
                        f"or pass the mask= argument of the set pools)")
    if not _is_array(a):
        raise TypeError(f"{name} must be a numpy.ndarray (or a GPU array), got {type(a).__name__}")
    if not is_float_dtype(a.dtype):
        raise TypeError(f"{name} must have dtype {DTYPE_NAMES}, got {a.dtype}")
    return a


def compute_dtype(dtype):
    """The dtype the CPU kernels compute in: float16 and bfloat16 are computed in float32."""
    return np.dtype(np.float32) if is_half_dtype(np.dtype(dtype)) else np.dtype(dtype)


# The largest kernel_size, stride or padding: far beyond any array, small enough that the
# output-size arithmetic of every kernel stays inside 64-bit integers.
MAX_WINDOW_ARGUMENT = 2 ** 60


def int_tuple(value, name, length, minimum):
    """An int or a sequence of ``length`` ints, each in [minimum, 2**60], as a tuple of ints."""
    items = value if isinstance(value, (tuple, list)) else (value,) * length
    if isinstance(value, (tuple, list)) and len(items) != length:
        raise ValueError(f"{name} must be an int or a tuple of {length} ints, got {value!r} "
                         f"of length {len(items)}")
    out = []
    for item in items:
        if isinstance(item, (bool, np.bool_)):
            raise TypeError(f"{name} must be an int or a tuple of {length} ints, got bool")
        try:
            item = operator.index(item)
        except TypeError:
            raise TypeError(f"{name} must be an int or a tuple of {length} ints, "
                            f"got {_describe(item)}") from None
        if item < minimum:
            raise ValueError(f"{name} must be >= {minimum} on every axis, got {value!r}")
        if item > MAX_WINDOW_ARGUMENT:
            raise ValueError(f"{name} must be at most 2**60 on every axis, got {value!r}")
        out.append(item)
    return tuple(out)


PADDING_MODES = ("same", "valid")


def padding_spec(padding, nd, kernel, extent=None):
    """``padding`` in one of its forms, checked against ``kernel``: "same" or "valid"
    (lower-case), or a tuple of ``nd`` ``(before, after)`` pairs. An int or per-axis ints mean p
    on both sides, at most half the kernel (PyTorch's rule); a pair's sides are each less than
    the window's ``extent`` (default the kernel; ``(k - 1) d + 1`` cells when dilated): a
    window wholly in the padding would have no cells."""
    extent = kernel if extent is None else extent
    if isinstance(padding, str):
        mode = padding.lower()
        if mode not in PADDING_MODES:
            raise ValueError(f"padding must be 'same', 'valid', an int, a tuple of {nd} ints or "
                             f"of {nd} (before, after) pairs, got {padding!r}")
        return mode
    if isinstance(padding, (tuple, list)) and any(isinstance(p, (tuple, list))
                                                   for p in padding):
        if len(padding) != nd or not all(isinstance(p, (tuple, list)) and len(p) == 2
                                         for p in padding):
            raise ValueError(f"padding as pairs must be {nd} (before, after) pairs, one per "
                             f"spatial axis, got {padding!r}")
        pairs = tuple(int_tuple(tuple(p), "padding", 2, 0) for p in padding)
        for axis, ((before, after), k) in enumerate(zip(pairs, extent)):
            if before >= k or after >= k:
                raise ValueError(f"padding must be less than kernel_size on each side of every "
                                 f"axis (less than the dilated window's extent {extent} when "
                                 f"dilated: a window wholly in the padding has no cells), got "
                                 f"padding={tuple(pairs)} for kernel_size={kernel} (axis "
                                 f"{axis})")
        return pairs
    symmetric = int_tuple(padding, "padding", nd, 0)
    for k, p in zip(kernel, symmetric):
        if 2 * p > k:
            raise ValueError(f"padding must be at most half of kernel_size on every axis, got "
                             f"padding={symmetric} for kernel_size={kernel} (pass (before, "
                             f"after) pairs for other padding)")
    return tuple((p, p) for p in symmetric)


def same_padding(length, kernel, stride):
    """TensorFlow's "same": ``(before, after)`` so that the output has ceil(L / s) cells -
    ``max((ceil(L / s) - 1) s + k - L, 0)`` cells in all, the smaller half before."""
    total = max((-(-length // stride) - 1) * stride + kernel - length, 0)
    return total // 2, total - total // 2


class WindowArgs:
    """Normalised kernel_size, stride, padding and ceil_mode of an ``nd``-d windowed pool.

    ``padding``: an int or ``nd`` ints (p cells on both sides, at most half the kernel:
    PyTorch's), ``nd`` ``(before, after)`` pairs (each less than the kernel: TensorFlow's and
    JAX's explicit padding), or ``"same"``/``"valid"`` (TensorFlow's rules: "same" gives
    ceil(L / s) outputs, see ``same_padding``; "valid" pads nothing). Window o along an axis
    spans cells ``[o s - before, o s - before + k)``; cells outside ``[0, L)`` are left out.

    ``dilation`` (PyTorch's): a window's cells are d apart, ``[o s - before, o s - before +
    (k - 1) d]`` in steps of d; its extent ``(k - 1) d + 1`` takes the kernel's place in the
    output length and in "same". Every window must hold a cell of the input (a dilated window
    may step over all of them: a ValueError). Dilated windows run the kernels' general path
    (``window_tables``).

    ``spatial``: the input's spatial size; "same" needs it to resolve ``padding`` and
    ``padding_after`` (None until then: ``output_size`` still works for any size).
    Attributes: ``kernel``, ``stride``, ``dilation``, ``extent``, ``padding`` (cells before each
    axis: what the kernels take), ``padding_after``, ``ceil_mode``, ``disjoint``, ``general``
    (dilated: the general path), and ``spec`` (the padding as "same", "valid" or pairs: what
    to pass on to another npool function).
    """

    def __init__(self, nd, kernel_size, stride, padding, ceil_mode, spatial=None, dilation=1):
        self.nd = nd
        self.kernel = int_tuple(kernel_size, "kernel_size", nd, 1)
        self.stride = self.kernel if stride is None else int_tuple(stride, "stride", nd, 1)
        self.dilation = int_tuple(dilation, "dilation", nd, 1)
        self.extent = tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilation))
        if any(e > MAX_WINDOW_ARGUMENT for e in self.extent):
            raise ValueError(f"kernel_size and dilation span more than 2**60 cells, got "
                             f"kernel_size={self.kernel}, dilation={self.dilation}")
        self.general = any(d > 1 for d in self.dilation)
        self.spec = padding_spec(padding, nd, self.kernel, self.extent)
        self.ceil_mode = flag(ceil_mode, "ceil_mode")
        self.disjoint = not self.general and all(s >= k for s, k in zip(self.stride,
                                                                          self.kernel))
        self.padding = self.padding_after = None
        if spatial is not None or self.spec != "same":
            pairs = self.pairs(None if spatial is None else tuple(spatial))
            self.padding = tuple(b for b, _ in pairs)
            self.padding_after = tuple(a for _, a in pairs)

    def pairs(self, spatial):
        """``(before, after)`` per axis for an input of spatial size ``spatial``."""
        if self.spec == "valid":
            return ((0, 0),) * self.nd
        if self.spec == "same":
            return tuple(same_padding(n, e, s) for n, e, s in zip(spatial, self.extent,
                                                                  self.stride))
        return self.spec

    def output_size(self, spatial):
        """PyTorch's rule over the padded length: floor((L + before + after - e [+ s - 1]) / s)
        + 1 (e: the window's extent, the kernel when not dilated), dropping a last ceil_mode
        window that would start in the right padding."""
        out = []
        for axis, (length, e, s, (before, after)) in enumerate(zip(
                spatial, self.extent, self.stride, self.pairs(tuple(spatial)))):
            if length + before + after < e:
                what = "kernel_size" if e == self.kernel[axis] else (
                    f"the dilated window (kernel_size={self.kernel[axis]}, "
                    f"dilation={self.dilation[axis]}: {e} cells)")
                raise ValueError(
                    f"input is smaller than {what} on spatial axis {axis}: size {length} "
                    f"with padding ({before}, {after}) is less than {e}")
            n = (length + before + after - e + (s - 1 if self.ceil_mode else 0)) // s + 1
            if self.ceil_mode and (n - 1) * s >= length + before:
                n -= 1
            out.append(n)
        if self.general and all(isinstance(n, numbers.Integral) for n in spatial):
            # every window holds a cell, or raise (symbolic sizes: checked when they are known)
            self.window_tables(spatial, tuple(out))
        return tuple(out)

    def window_tables(self, spatial, out):
        """The general path's windows: per axis an intp ``(2, out)`` array of each output's
        first real cell and count of real cells (``dilation`` apart), built once per input
        size. ValueError where a dilated window steps over every cell of the input."""
        key = (tuple(spatial), tuple(out))
        cache = self.__dict__.setdefault("_tables", {})
        if key not in cache:
            cache[key] = self._build_tables(*key)
        return cache[key]

    def _build_tables(self, spatial, out):
        tables = []
        for axis, (length, k, s, d, (before, _), n) in enumerate(zip(
                spatial, self.kernel, self.stride, self.dilation, self.pairs(tuple(spatial)),
                out)):
            start = np.arange(n, dtype=np.int64) * s - before
            skip = np.where(start < 0, (-start + d - 1) // d, 0)  # cells in the left padding
            stop = np.minimum(k, (length - start + d - 1) // d)   # cells before the input's end
            count = stop - skip
            if n and count.min() < 1:
                o = int(np.argmin(count))
                raise ValueError(f"dilation={self.dilation} steps over every cell of the input "
                                 f"in window {o} of spatial axis {axis} (size {length}, "
                                 f"padding {self.pairs(tuple(spatial))[axis]}): a window must "
                                 f"hold at least one cell")
            tables.append(np.stack([start + skip * d, count]).astype(np.intp))
        return tuple(tables)

    def general_3d(self, spatial, out):
        """(dilation, window tables or None) padded in front to 3 spatial axes for the
        kernels' general path (None: the regular windows)."""
        pad = 3 - self.nd
        if not self.general:
            return (1, 1, 1), None
        unit = np.array([[0], [1]], np.intp)  # a padded axis: one window of its one cell
        return ((1,) * pad + self.dilation,
                (unit,) * pad + self.window_tables(tuple(spatial), tuple(out)))

    def as_3d(self):
        """(kernel, stride, padding before) padded in front to 3 spatial axes for the kernels."""
        if self.padding is None:
            raise ValueError("npool internal: WindowArgs with padding='same' needs the input's "
                             "spatial size (spatial=) before the kernels are called")
        pad = 3 - self.nd
        return ((1,) * pad + self.kernel, (1,) * pad + self.stride, (0,) * pad + self.padding)


def adaptive_output_size(output_size, nd, spatial=None):
    """``output_size`` of an adaptive pool as a tuple of ``nd`` entries: an int (every axis) or
    ``nd`` ints or Nones (None: the input's size on that axis, as PyTorch's adaptive pools
    take it; kept None when ``spatial`` is None). Each size must be at least 1."""
    items = output_size if isinstance(output_size, (tuple, list)) else (output_size,) * nd
    if len(items) != nd:
        raise ValueError(f"output_size must be an int or a tuple of {nd} ints (or None), got "
                         f"{output_size!r} of length {len(items)}")
    sizes = []
    for axis, item in enumerate(items):
        if item is None:  # (a symbolic size of a traced framework kept as it is)
            sizes.append(None if spatial is None else spatial[axis])
            continue
        size, = int_tuple(item, "output_size", 1, 0)
        if size < 1:
            raise ValueError(f"output_size must be >= 1 on every axis (None: the input's size),"
                             f" got {output_size!r}")
        sizes.append(size)
    return tuple(sizes)


def adaptive_tables(length, n):
    """PyTorch's adaptive windows of ``n`` outputs over ``length`` cells: window o spans
    ``[floor(o L / n), ceil((o + 1) L / n))``; an intp ``(2, n)`` array of each window's first
    cell and count of cells."""
    o = np.arange(n, dtype=np.int64)
    first = o * length // n
    stop = -((-(o + 1) * length) // n)
    return np.stack([first, stop - first]).astype(np.intp)


class AdaptiveWindows(WindowArgs):
    """The windows of an adaptive pool (``nn.AdaptiveAvgPool2d``'s): ``output_size`` windows
    per axis over an input of spatial size ``spatial``, window o of n over L cells spanning
    ``[floor(o L / n), ceil((o + 1) L / n))`` (``adaptive_tables``): overlapping by a cell
    where n does not divide L, one cell repeated where n > L. The same interface as
    ``WindowArgs`` (the kernels' general path, the decomposition's cells), with the largest
    window as its kernel, unit stride and no padding. ``adaptive_windows`` gives regular
    ``WindowArgs`` where every n divides its L (the kernels' fast paths)."""

    def __init__(self, nd, output_size, spatial):
        self.out = adaptive_output_size(output_size, nd, spatial)
        self.spatial = tuple(int(n) for n in spatial)
        self.tables = tuple(adaptive_tables(n, o) for n, o in zip(self.spatial, self.out))
        kernel = tuple(int(t[1].max()) for t in self.tables)
        super().__init__(nd, kernel, 1, 0, False, spatial=self.spatial)
        self.general = True
        self.disjoint = False

    def output_size(self, spatial):
        self._same_input(spatial)
        return self.out

    def window_tables(self, spatial, out):
        self._same_input(spatial)
        return self.tables

    def _same_input(self, spatial):
        if tuple(spatial) != self.spatial:
            raise ValueError(f"npool internal: adaptive windows for spatial size "
                             f"{self.spatial} used on {tuple(spatial)}")


def check_adaptive_memory(output_size, out, maps=1):
    """A ValueError naming ``output_size`` where an adaptive pool's output of ``maps`` maps of
    ``out`` cells, with its window tables, would take more than half this machine's memory in
    float64 (sizes a traced framework does not know yet are not checked)."""
    if not all(isinstance(n, numbers.Integral) for n in (*out, maps)):
        return
    nbytes = 8 * max(maps, 1) * math.prod(out) + 64 * sum(out)  # the output, the tables
    if 2 * nbytes > physical_memory():
        raise ValueError(f"output_size={output_size!r} gives an output of {max(maps, 1)} maps "
                         f"of {math.prod(out)} cells ({nbytes / 2 ** 30:.1f} GiB in float64 "
                         f"with its window tables), more than half this machine's memory "
                         f"({physical_memory() / 2 ** 30:.1f} GiB)")


def _physical_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 2 ** 48


_PHYSICAL_MEMORY = _physical_memory()  # read once (and so traceable by torch.compile)


def physical_memory():
    """This machine's memory in bytes (2**48 where the OS does not say)."""
    return _PHYSICAL_MEMORY


def adaptive_windows(nd, output_size, spatial, maps=1):
    """The windows of an adaptive pool of ``output_size`` over ``spatial``: regular
    ``WindowArgs`` (kernel = stride = L / n) where every output size divides its input's,
    else ``AdaptiveWindows`` (the general path). ``maps``: the input's N * C. An adaptive
    output, unlike a window's, is not bounded by the input: one that with its window tables
    would take more than half this machine's memory (in float64) is a ValueError naming
    output_size, before anything is allocated."""
    out = adaptive_output_size(output_size, nd, spatial)
    check_adaptive_memory(output_size, out, maps)
    if all(n % o == 0 for n, o in zip(spatial, out)):
        step = tuple(n // o for n, o in zip(spatial, out))
        return WindowArgs(nd, step, step, 0, False, spatial=spatial)
    return AdaptiveWindows(nd, out, spatial)


def local_window(nd, spatial, kernel_size=None, stride=None, padding=0, ceil_mode=False,
                 dilation=1, output_size=None, maps=1):
    """The windows of a local pool over ``spatial`` from its keyword arguments: adaptive
    (``output_size``; ``maps``: the input's N * C) or the window arguments (``kernel_size``,
    ...)."""
    if output_size is not None:
        return adaptive_windows(nd, output_size, spatial, maps)
    return WindowArgs(nd, kernel_size, stride, padding, ceil_mode, spatial=spatial,
                      dilation=dilation)


def core_window_arguments(nd, spatial, window_options, maps=1):
    """What an adapter hands the core for a local pool given its keyword arguments
    (``local_window``'s): ``(prefix, args, keywords, out)`` - the core function's name prefix
    ("adaptive_" or ""), its window arguments after the arrays and keywords, and the output's
    spatial sizes for an input of ``spatial`` (entries None where a traced framework does not
    know them yet). Checks the arguments (``maps``: the input's N * C, None where unknown)."""
    spatial = tuple(spatial)
    known = all(n is not None for n in spatial)
    if "output_size" in window_options:
        output_size = window_options["output_size"]
        out = adaptive_output_size(output_size, nd, spatial)
        check_adaptive_memory(output_size, out, maps)
        return "adaptive_", (output_size,), {}, out
    o = window_options
    window = WindowArgs(nd, o["kernel_size"], o.get("stride"), o.get("padding", 0),
                        o.get("ceil_mode", False), dilation=o.get("dilation", 1))
    out = window.output_size(spatial) if known else (None,) * nd
    return ("", (window.kernel, window.stride, window.spec, window.ceil_mode),
            {"dilation": window.dilation}, out)


def pool_input(x, nd, name="x"):
    """Check a local-pool input of shape (N, C, *spatial) or unbatched (C, *spatial).

    Returns ``(x, batched)``. A zero-size batch is allowed; zero-size channel or spatial axes
    are not.
    """
    float_array(x, name)
    if x.ndim not in (nd + 1, nd + 2):
        axes = ", ".join("DHW"[3 - nd:])
        raise ValueError(f"{name} must be {nd + 1}-D (C, {axes}) or {nd + 2}-D (N, C, {axes}) "
                         f"for a {nd}-d pool, got {x.ndim}-D shape {x.shape}")
    batched = x.ndim == nd + 2
    feature_shape = x.shape[1:] if batched else x.shape
    if 0 in feature_shape:
        raise ValueError(f"{name} must have non-zero channel and spatial sizes, got shape {x.shape}")
    return x, batched


def grad_out_array(grad_out, expected_shape, x):
    """Check that grad_out is an array shaped like the forward's output, with x's dtype."""
    if not _is_array(grad_out):
        raise TypeError(f"grad_out must be a numpy.ndarray (or a GPU array), "
                        f"got {type(grad_out).__name__}")
    if grad_out.dtype != x.dtype:
        raise TypeError(f"grad_out must have the dtype of x ({x.dtype}), got {grad_out.dtype}")
    if grad_out.shape != tuple(expected_shape):
        raise ValueError(f"grad_out must have the forward output's shape {tuple(expected_shape)}, "
                         f"got {grad_out.shape}")
    return grad_out


def memory_layout(x):
    """"contiguous", "channels_last" or None: the layout of numpy array x (see
    ``layout_of_strides``)."""
    if any(s % x.itemsize for s in x.strides):
        return None
    return layout_of_strides(x.shape, tuple(s // x.itemsize for s in x.strides))


def working_array(x):
    """(x in the dtype the CPU kernels compute in, its layout, that dtype): x itself when it is
    C-contiguous or channels-last and not float16, else a copy (C-contiguous when x had
    neither layout)."""
    layout = memory_layout(x)
    if layout is None:
        x = np.ascontiguousarray(x)
        layout = "contiguous"
    work_dtype = compute_dtype(x.dtype)
    return x.astype(work_dtype, copy=False), layout, work_dtype


def empty_like_layout(shape, dtype, layout, zero=False):
    """A new (N, C, *spatial) array whose memory is in ``layout`` ("contiguous" or
    "channels_last")."""
    alloc = np.zeros if zero else np.empty
    if layout != "channels_last":
        return alloc(shape, dtype)
    ndim = len(shape)
    memory = alloc((shape[0], *shape[2:], shape[1]), dtype)
    return np.transpose(memory, (0, ndim - 1, *range(1, ndim - 1)))


def layout_of_strides(shape, strides):
    """The layout of an array of ``shape`` with element ``strides``: "contiguous" (C order),
    "channels_last" ((N, *spatial, C) memory seen as (N, C, *spatial)) or None for others.
    Axes of size 1 may have any stride, and empty arrays count as contiguous (as in NumPy)."""
    if 0 in shape:
        return "contiguous"
    def dense(order):
        step = 1
        for axis in reversed(order):
            if shape[axis] != 1 and strides[axis] != step:
                return False
            step *= shape[axis]
        return True

    if dense(range(len(shape))):
        return "contiguous"
    if len(shape) >= 3 and dense((0, *range(2, len(shape)), 1)):
        return "channels_last"
    return None


def dense_strides(shape, layout_name):
    """Element strides of a new dense array of ``shape`` in ``layout_name``."""
    ndim = len(shape)
    order = (0, *range(2, ndim), 1) if layout_name == "channels_last" else tuple(range(ndim))
    strides = [0] * ndim
    step = 1
    for axis in reversed(order):
        strides[axis] = step
        step *= max(shape[axis], 1)
    return tuple(strides)


def k_count(k, n, name, allow_zero=False, rounding="floor"):
    """The k rule (scikit-learn's counts vs fractions): an int is a count, at least 1 (0 too
    with ``allow_zero``), clipped to n; a float is a fraction in (0, 1] giving
    ``max(1, floor(k * n + 1e-6))`` cells (the epsilon makes 0.29 * 100 give 29), or with
    ``rounding="round"`` ``max(1, round(k * n))`` (Python's round, half to even: WILDCAT's
    rule). Anything else is a ValueError."""
    if rounding not in ("floor", "round"):
        raise ValueError(f"rounding must be 'floor' or 'round', got {rounding!r}")
    if isinstance(k, numbers.Integral) and not isinstance(k, (bool, np.bool_)):
        least = 0 if allow_zero else 1
        if k < least:
            raise ValueError(f"{name} must be an int >= {least} (a count) or a float in (0, 1] "
                             f"(a fraction), got {k!r}")
        return min(int(k), n)
    if isinstance(k, numbers.Real) and not isinstance(k, (bool, np.bool_)):
        k = float(k)
        if not 0 < k <= 1:  # NaN fails too
            raise ValueError(f"{name} as a float is a fraction and must be in (0, 1], got {k!r}"
                             f" (pass an int for a count)")
        return max(1, round(k * n) if rounding == "round" else math.floor(k * n + 1e-6))
    raise ValueError(f"{name} must be an int (a count) or a float in (0, 1] (a fraction), "
                     f"got {_describe(k)}")


def weldon_counts(kmax, kmin, n, rounding="floor"):
    """WELDON's (top, bottom) counts over n cells: the k rule for each, ``kmin=None`` meaning
    ``kmin = kmax`` (the code of both originals: Lua's ``nMin or nMax``, WILDCAT's
    ``kmin = kmax``), ``kmin = 0`` dropping the bottom term."""
    top = k_count(kmax, n, "kmax", rounding=rounding)
    bottom = top if kmin is None else k_count(kmin, n, "kmin", allow_zero=True,
                                              rounding=rounding)
    return top, bottom


def check_spatial_dims(spatial_dims):
    """None or an int >= 1 (a global pool's number of spatial axes)."""
    if spatial_dims is not None and (isinstance(spatial_dims, (bool, np.bool_)) or not isinstance(
            spatial_dims, numbers.Integral) or spatial_dims < 1):
        raise ValueError(f"spatial_dims must be None or an int >= 1, got {spatial_dims!r}")
    return None if spatial_dims is None else int(spatial_dims)


def spatial_rank(ndim, spatial_dims, name="x"):
    """For a global pool told its spatial rank: whether an input of ``ndim`` axes is unbatched
    ((C, *spatial), as ``nn.AdaptiveMaxPool2d`` takes) rather than (N, C, *spatial). With
    ``spatial_dims=None`` the input is (N, C, *spatial) with any number of spatial axes."""
    if check_spatial_dims(spatial_dims) is None:
        return False
    if ndim == spatial_dims + 2:
        return False
    if ndim == spatial_dims + 1:
        return True
    raise ValueError(f"{name} must be batched (N, C, {spatial_dims} spatial axes) or unbatched "
                     f"(C, {spatial_dims} spatial axes) for spatial_dims={spatial_dims}, got "
                     f"{ndim} axes")


def batch_norm_options(bn_epsilon, bn_momentum, meaning, allow_none=False):
    """A set layer's BatchNorm epsilon (> 0) and momentum (in [0, 1], or None with
    ``allow_none``, where the framework allows it: PyTorch's cumulative average); ``meaning``
    says which convention the message should name."""
    eps = finite_real(bn_epsilon, "bn_epsilon")
    if eps <= 0:
        raise ValueError(f"bn_epsilon must be > 0, got {bn_epsilon!r}")
    if bn_momentum is None and allow_none:
        return eps, None
    momentum = finite_real(bn_momentum, "bn_momentum")
    if not 0 <= momentum <= 1:
        raise ValueError(f"bn_momentum must be in [0, 1] ({meaning}), got {bn_momentum!r}")
    return eps, momentum


def flag(value, name):
    """A bool (Python's or NumPy's) as a Python bool; anything else is a TypeError (so that
    ``keepdims="no"`` is not taken for True)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {_describe(value)}")
    return bool(value)


def real_parameter(value, name, dtype):
    """A real number or real numpy array (a temperature, GeM's p) as a numpy array of ``dtype``
    (values beyond its range become +-inf, for the caller's finiteness check). TypeError for
    anything else, bools and masked arrays included."""
    if isinstance(value, (bool, np.bool_)) or not (
            isinstance(value, (int, float, np.integer, np.floating)) or
            (isinstance(value, np.ndarray) and (value.dtype.kind in "iuf"
                                                or is_half_dtype(value.dtype)))):
        raise TypeError(f"{name} must be a real number or a real numpy array, got "
                        f"{type(value).__name__}" + (f" of dtype {value.dtype}"
                                                     if isinstance(value, np.ndarray) else ""))
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a plain numpy.ndarray, got a numpy.ma.MaskedArray")
    try:
        with np.errstate(over="ignore"):
            return np.asarray(value, dtype=dtype)
    except OverflowError:  # an int beyond the dtype's range
        return np.asarray(np.inf, dtype=dtype)


def sum_to_shape(full, shape):
    """Sum a per-output array down to ``shape`` (the inverse of broadcasting), in the logical
    (C) order of its axes, so that both memory layouts give the same bits (the backward writes
    ``full`` in C order; any other array is summed from a C-ordered copy)."""
    extra = full.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        extra + i for i, (n, m) in enumerate(zip(shape, full.shape[extra:])) if n == 1 and m != 1)
    total = np.ascontiguousarray(full).sum(axis=axes) if axes else full
    return np.asarray(total).reshape(shape)


def finite_real(value, name):
    """A finite float from a real number; TypeError for other types, ValueError for NaN, inf
    and numbers beyond float64's range (an int like 10**400)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_describe(value)}")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{name} must be finite, got an int beyond float64's range") from None
    # comparisons rather than math.isfinite: under torch.compile(dynamic=True) a float argument
    # is a symbolic float, which comparisons trace and math.isfinite does not
    if value != value or abs(value) == math.inf:
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def positive_int(value, name):
    """A layer size: an int >= 1 (bools refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_describe(value)}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def set_layer_input(shape, feature_size, max_samples):
    """The (B, M, D) shape a LOUPE layer reads from an input of ``shape``: (B, M, D) itself, or
    LOUPE's (B * M, D) with M = max_samples."""
    if len(shape) == 3 and shape[2] == feature_size:
        return tuple(shape)
    if len(shape) == 2 and shape[1] == feature_size:
        if shape[0] is not None and shape[0] % max_samples:
            raise ValueError(f"a 2-D input (B * max_samples, feature_size) needs a first axis "
                             f"divisible by max_samples={max_samples}, got {shape[0]}")
        return (None if shape[0] is None else shape[0] // max_samples, max_samples, feature_size)
    raise ValueError(f"x must be (B, M, feature_size) or (B * max_samples, feature_size) with "
                     f"feature_size={feature_size}, got shape {tuple(shape)}")


# ------------------------------------------------------------------ out=
def out_entries(out, count, name="out"):
    """``out=`` of a function with ``count`` results as a list of ``count`` entries (each None
    or an array): None, a tuple or list of ``count`` entries (NumPy's ufunc rule), or, for a
    single result, the array itself."""
    if out is None:
        return [None] * count
    if isinstance(out, (tuple, list)):
        if len(out) != count:
            raise ValueError(f"{name} must have one entry per result ({count}), got {len(out)}")
        return list(out)
    if count != 1:
        raise TypeError(f"{name} must be a tuple of {count} arrays (or None entries), one per "
                        f"result, got {type(out).__name__}")
    return [out]


def out_array(out, shape, dtype, inputs, name="out"):
    """``out`` checked as the destination of a result of ``shape`` and ``dtype``: None, or a
    writeable numpy array of exactly that shape and dtype (no casting: a float32 result is not
    silently rounded into a float16 buffer) that shares no memory with any of ``inputs`` (name
    -> array; the kernels read them while writing ``out``)."""
    if out is None:
        return None
    if isinstance(out, np.ma.MaskedArray) or not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)} (the result's), got "
                        f"{out.dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have the result's shape {tuple(shape)}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    for input_name, a in inputs.items():
        if isinstance(a, np.ndarray) and np.may_share_memory(out, a):
            raise ValueError(f"{name} must not share memory with {input_name}")
    return out


def deliver(result, out):
    """``result`` written into ``out`` (the ``out=`` array, already checked) and ``out``
    returned; ``result`` itself when there is no ``out``. Results the kernels wrote into
    ``out`` directly are not copied."""
    if out is None:
        return result
    if not _same_memory(result, out):
        # out has the result's dtype; float64 intermediates round into it as astype would
        np.copyto(out, result, casting="unsafe")
    return out


def _same_memory(a, b):
    """Whether numpy arrays a and b are the same cells (one a view of the other's memory)."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and
            a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype)


def refuse_gpu_out(out, what):
    """``out=`` on GPU arrays where npool cannot write into the caller's memory yet."""
    if any(entry is not None for entry in out):
        raise ValueError(f"out= is not supported on GPU arrays for {what} (the CPU path takes "
                         f"it)")
