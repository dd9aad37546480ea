"""npool's ops as ``tf.custom_gradient`` functions over the NumPy core, and as npool's portable
decomposition where a graph must stand alone (_standalone.py)."""
import math
from typing import Any, Optional, Protocol, Sequence, Union

import numpy as np
import tensorflow as tf

import npool

from .. import _checks, _decompositions, _op_table
from .._types import Count, OutputSize, Padding, Size
from ._devices import (PORTABLE, call_core, moveaxis, placement, with_leading_ones,
                       without_leading_ones)
from ._standalone import (TFOps, compute_in_float32, from_channels_first, graph_must_stand_alone,
                        to_channels_first, with_second_order)

_FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)  # bfloat16: ml_dtypes'

DATA_FORMATS = ("channels_last", "channels_first")
# what the functions take: a tf.Tensor or a value TensorFlow converts (a NumPy array, a list)
TensorLike = Union[tf.Tensor, tf.Variable, np.ndarray, Sequence[Any], float]
_OTHER_FRAMEWORKS = {"torch": "npool.torch", "jax": "npool.jax", "jaxlib": "npool.jax"}


def _tensor(value, name="x"):
    """``value`` as a TensorFlow tensor; another framework's tensor (torch, JAX) is refused
    rather than copied through the host into a TensorFlow result: its own adapter (or
    npool.keras' layers, which follow Keras' backend) is the one to call."""
    framework = type(value).__module__.split(".")[0]
    if framework in _OTHER_FRAMEWORKS:
        raise TypeError(f"{name} is a {type(value).__module__}.{type(value).__name__}: npool.tf "
                        f"takes TensorFlow tensors and NumPy arrays; use "
                        f"{_OTHER_FRAMEWORKS[framework]} (or npool.keras' layers, which follow "
                        f"Keras' backend)")
    return tf.convert_to_tensor(value)


class _Layout:
    """Between TensorFlow's axis order and npool's (N, C, *spatial), as views (no copies)."""

    def __init__(self, data_format, nd, ndim):
        if data_format not in DATA_FORMATS:
            raise ValueError(f"data_format must be 'channels_last' or 'channels_first', "
                             f"got {data_format!r}")
        if ndim not in (nd + 1, nd + 2):
            raise ValueError(f"x must be {nd + 1}-D or {nd + 2}-D for a {nd}-d pool, "
                             f"got {ndim}-D")
        self.last = data_format == "channels_last"
        self.channel_axis = 0 if ndim == nd + 1 else 1  # in npool's order
        self.nd = nd

    def to_npool(self, a):
        return moveaxis(a, -1, self.channel_axis) if self.last else a

    def from_npool(self, a):
        return moveaxis(a, self.channel_axis, -1) if self.last else a

    def spatial_axes(self, ndim):
        start = self.channel_axis + (0 if self.last else 1)
        return range(start, start + self.nd)


def _window(kernel_size, stride, padding, ceil_mode, dilation):
    return dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                dilation=dilation)


def _geometry(x, layout, nd, window_options):
    """(core name prefix, window arguments, keywords, y's static shape) of a local pool."""
    axes = list(layout.spatial_axes(x.shape.rank))
    lead = [n for a, n in enumerate(x.shape) if a not in axes]  # N (where batched) and C
    prefix, args, geometry, out = _checks.core_window_arguments(
        nd, [x.shape[a] for a in axes], window_options,
        maps=math.prod(lead) if None not in lead else None)
    out_shape = list(x.shape)
    for a, n in zip(axes, out):
        out_shape[a] = n
    return prefix, args, geometry, out_shape


def _soft_pool(x, nd, window_options, data_format):
    """SoftPool over windows (``window_options``: kernel_size, ..., dilation) or adaptive ones
    (``{"output_size": ...}``)."""
    x = _tensor(x)
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must have dtype float16, bfloat16, float32 or float64, got "
                        f"{x.dtype.name}")
    layout = _Layout(data_format, nd, x.shape.rank)
    prefix, args, geometry, out_shape = _geometry(x, layout, nd, window_options)
    forward, backward = _op_table.core_functions(f"{prefix}soft_pool{nd}d")
    batched = x.shape.rank == nd + 2

    def decomposed(x):
        def run(x):
            y = _decompositions.local_pool(TFOps, to_channels_first(x, layout.last, batched),
                                           1.0, nd, window_options)
            return from_channels_first(y, layout.last, batched)
        return compute_in_float32(run, x)

    where = PORTABLE if graph_must_stand_alone() else placement([x])
    if where == PORTABLE:
        return decomposed(x)

    def forward_numpy(xa):
        return layout.from_npool(forward(layout.to_npool(xa), *args, **geometry))

    def backward_numpy(ga, xa):
        return layout.from_npool(backward(layout.to_npool(ga), layout.to_npool(xa), *args,
                                          **geometry))

    @tf.custom_gradient
    def soft_pool(x):
        y = call_core(forward_numpy, [x], x.dtype, "npool_soft_pool", where)
        y.set_shape(out_shape)

        def grad(dy):
            dy = tf.cast(dy, x.dtype)
            gx = call_core(backward_numpy, [dy, x], x.dtype, "npool_soft_pool_backward", where)
            gx.set_shape(x.shape)
            return with_second_order(decomposed, [x], dy, [gx])[0]

        return y, grad

    return soft_pool(x)


class SoftPoolFunction(Protocol):
    """``npool.tf.soft_pool{1,2,3}d`` (what type checkers see of the functions made once per
    dimension)."""

    def __call__(self, x: TensorLike, kernel_size: Size, stride: Optional[Size] = None,
                 padding: Padding = 0, ceil_mode: bool = False,
                 data_format: str = "channels_last", dilation: Size = 1) -> tf.Tensor: ...


def _make_soft_pool(nd) -> SoftPoolFunction:
    def soft_pool(x: TensorLike, kernel_size: Size, stride: Optional[Size] = None,
                  padding: Padding = 0, ceil_mode: bool = False,
                  data_format: str = "channels_last", dilation: Size = 1) -> tf.Tensor:
        return _soft_pool(x, nd, _window(kernel_size, stride, padding, ceil_mode, dilation),
                          data_format)

    soft_pool.__name__ = soft_pool.__qualname__ = f"soft_pool{nd}d"
    shape, out = {1: ("(2, 8, 3)", "(2, 4, 3)"), 2: ("(2, 8, 8, 3)", "(2, 4, 4, 3)"),
                  3: ("(2, 4, 8, 8, 3)", "(2, 2, 4, 4, 3)")}[nd]
    soft_pool.__doc__ = f"""SoftPool over {nd} spatial {"axis" if nd == 1 else "axes"}, differentiable (twice).

    Each output is the softmax-weighted mean of its window's real cells (Stergiou et al.,
    ICCV 2021), computed relative to the window's largest cell (exact for any finite x)::

        y_o = sum_(i in window o) softmax(x over window o)_i * x_i

    npool's kernel (``npool.soft_pool{nd}d_forward``) runs eagerly and inside ``tf.function``;
    graphs that must stand alone (SavedModel, XLA, TFLite, ``npool.tf.portable()``) get npool's
    decomposition into standard TensorFlow ops.

    Parameters
    ----------
    x : tf.Tensor or array_like
        ``(N, *spatial, C)`` (``data_format="channels_last"``) or ``(N, C, *spatial)``
        (``"channels_first"``), or either without N; float16, bfloat16, float32 or float64.
    kernel_size : int or tuple of {nd} ints
        The window.
    stride : int or tuple of {nd} ints, optional
        The step between windows; default ``kernel_size``.
    padding : "SAME", "VALID", int, tuple of {nd} ints or of {nd} (before, after) pairs, default 0
        TensorFlow's "SAME" (ceil(L / stride) outputs) and "VALID" (none; either case),
        explicit ``(before, after)`` per axis (each less than the kernel), or PyTorch's ints
        (both sides, at most half the kernel); padded cells are left out of the windows (they
        are not zeros).
    ceil_mode : bool, default False
        PyTorch's output-size rule with ceil instead of floor.
    data_format : {{"channels_last", "channels_first"}}, default "channels_last"
        Where x's channel axis is.
    dilation : int or tuple of {nd} ints, default 1
        The step between a window's cells (``tf.nn.pool``'s ``dilations``, PyTorch's
        ``dilation``); the window's extent ``(kernel - 1) dilation + 1`` takes the kernel's
        place in the output size and in "SAME".

    Returns
    -------
    tf.Tensor
        Of x's dtype and data format, each spatial size ``floor((L + 2 padding - kernel
        [+ stride - 1]) / stride) + 1``.

    Raises
    ------
    TypeError
        A non-float x, or another framework's tensor (torch, JAX).
    ValueError
        x of another rank, an unknown data_format, or bad window arguments.

    See Also
    --------
    SoftPooling{nd}D : The Keras layer.

    Examples
    --------
    >>> tuple(npool.tf.soft_pool{nd}d(tf.ones({shape}), kernel_size=2).shape)
    {out}
    """
    return soft_pool


soft_pool1d = _make_soft_pool(1)
soft_pool2d = _make_soft_pool(2)
soft_pool3d = _make_soft_pool(3)


# ------------------------------------------------------------------ global pools
# What a global pool's forward hands to its backward (the op table's ``saved``): the forward's
# flag, the backward's argument, the dtype.
_SAVED = {"indices": ("return_indices", "indices", tf.int64),
          "stats": ("return_stats", "stats", tf.float64)}


def _global_geometry(x, keepdims, data_format, spatial_dims):
    """A global pool's x checked (a float tensor of at least three axes, ``spatial_dims``
    spatial ones when given), whether it is channels-last, and the output's static shape."""
    x = _tensor(x)
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must have dtype float16, bfloat16, float32 or float64, got "
                        f"{x.dtype.name}")
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be 'channels_last' or 'channels_first', "
                         f"got {data_format!r}")
    rank = x.shape.rank
    if rank is None or rank < 3:
        raise ValueError(f"x must be (N, *spatial, C) or (N, C, *spatial) with at least one "
                         f"spatial axis, got shape {x.shape}")
    spatial_dims = _checks.check_spatial_dims(spatial_dims)
    if spatial_dims is not None and rank != spatial_dims + 2:
        raise ValueError(f"x must have {spatial_dims} spatial axes (rank {spatial_dims + 2}: "
                         f"batch, channels and {spatial_dims} spatial) for spatial_dims="
                         f"{spatial_dims}, got shape {x.shape}")
    last = data_format == "channels_last"
    shape = x.shape.as_list()
    if not keepdims:
        out_shape = [shape[0], shape[-1] if last else shape[1]]
    elif last:
        out_shape = [shape[0]] + [1] * (rank - 2) + [shape[-1]]
    else:
        out_shape = shape[:2] + [1] * (rank - 2)
    return x, last, out_shape


def _kept(y, keepdims, last, rank):
    """A decomposition's (N, C) y with the spatial axes kept as 1 when asked."""
    if not keepdims:
        return y
    return TFOps.reshape_tail(y, 1, (1,) * (rank - 2) + (-1,) if last else
                              (-1,) + (1,) * (rank - 2))


def _global_pool(name, x, keepdims, data_format, spatial_dims=None, **kwargs):
    """Global pool ``name`` (a row of the op table) of npool's core as a tf.custom_gradient
    function; what the table says its backward takes from the forward (the selections'
    indices, LSE's statistics) goes from one to the other. ``spatial_dims`` (an int) requires
    that many spatial axes, as Keras' ``Global…Pooling2D`` layers do (batched input only)."""
    forward, backward = _op_table.core_functions(name)
    saved = _SAVED[_op_table.OPS[name].saved[0]] if _op_table.OPS[name].saved else None
    selects = saved is not None and saved[1] == "indices"
    x, last, out_shape = _global_geometry(x, keepdims, data_format, spatial_dims)

    def to_npool(a):
        return moveaxis(a, -1, 1) if last else a

    def from_npool(a, spatial=True):  # spatial: a has the spatial axes (kept or all)
        return moveaxis(a, 1, -1) if last and spatial else a

    def decomposed(x):
        return compute_in_float32(lambda x: _kept(
            _decompositions.forward(name, TFOps, to_channels_first(x, last), **kwargs),
            keepdims, last, x.shape.rank), x)

    where = PORTABLE if graph_must_stand_alone() else placement([x])
    if where == PORTABLE:
        return decomposed(x)

    @tf.custom_gradient
    def pool(x):
        if saved:
            def forward_numpy(xa):
                y, index = forward(to_npool(xa), keepdims=keepdims, **{saved[0]: True},
                                   **kwargs)
                if isinstance(index, np.ndarray) and selects:
                    index = index.astype(np.int64, copy=False)
                return from_npool(y, keepdims), index

            y, index = call_core(forward_numpy, [x], [x.dtype, saved[2]], "npool_global_pool",
                                 where)
        else:
            y = call_core(lambda xa: from_npool(forward(to_npool(xa), keepdims=keepdims,
                                                        **kwargs), keepdims),
                          [x], x.dtype, "npool_global_pool", where)
            index = None
        y.set_shape(out_shape)

        def grad(dy):
            def backward_numpy(ga, xa, *index_array):
                extra = {saved[1]: index_array[0]} if index_array else {}
                return from_npool(backward(to_npool(ga), to_npool(xa), keepdims=keepdims,
                                           **kwargs, **extra))

            dy = tf.cast(dy, x.dtype)
            inputs = [dy, x] + ([index] if index is not None else [])
            gx = call_core(backward_numpy, inputs, x.dtype, "npool_global_pool_backward", where)
            gx.set_shape(x.shape)
            return with_second_order(decomposed, [x], dy, [gx])[0]

        return y, grad

    return pool(x)


def _global_doc(summary, formula, options, after, call, result, layer, returns_note=""):
    """The numpydoc docstring of a global-pool function: its ``summary`` line and ``formula``
    paragraph, its own ``options`` (Parameters entries before keepdims, ``after`` it), and an
    example ``call`` with its ``result``."""
    return f"""{summary}

    {formula}

    npool's kernel runs eagerly and inside ``tf.function``; graphs that must stand alone get
    npool's decomposition into standard TensorFlow ops (``npool.tf.portable``).

    Parameters
    ----------
    x : tf.Tensor or array_like
        ``(N, *spatial, C)`` (``data_format="channels_last"``) or ``(N, C, *spatial)``, with
        at least one spatial axis; float16, bfloat16, float32 or float64.
{options}    keepdims : bool, default False
        Keep the spatial axes with size 1.
    data_format : {{"channels_last", "channels_first"}}, default "channels_last"
        Where x's channel axis is.
{after}    spatial_dims : int, optional
        The number of spatial axes x must have; None: any number.

    Returns
    -------
    tf.Tensor
        ``(N, C)``, or with ``keepdims`` x's shape with the spatial sizes 1; x's dtype.

    Raises
    ------
    TypeError
        A non-float x, or another framework's tensor (torch, JAX).
    ValueError
        Fewer than three axes (or not ``spatial_dims`` spatial ones), an unknown data_format
        or a bad option.

    See Also
    --------
    {layer} : The Keras layer.

    Examples
    --------
    >>> x = tf.reshape(tf.range(2 * 4 * 4 * 3, dtype=tf.float32), (2, 4, 4, 3))
    >>> npool.tf.{call}[:1].numpy().astype("float64").round(3).tolist()
    {result}
    """


_K = """    k : int or float, default 1
        A count (an int >= 1, clipped to the number of cells n) or a fraction in (0, 1] of
        the cells.
"""
_ROUNDING = """    rounding : {"floor", "round"}, default "floor"
        The count of a fraction: ``max(1, floor(k n + 1e-6))``, or WILDCAT's
        ``max(1, round(k n))`` (half to even).
"""


def global_max_pool(x: TensorLike, keepdims: bool = False, data_format: str = "channels_last",
                    spatial_dims: Optional[int] = None) -> tf.Tensor:
    return _global_pool("global_max_pool", x, keepdims, data_format, spatial_dims)


global_max_pool.__doc__ = _global_doc(
    "Global max pooling, differentiable (twice).",
    "``y = max x`` over the spatial cells of each map; ties go to the lowest flat index.",
    "", "", "global_max_pool(x)", "[[45.0, 46.0, 47.0]]", "GlobalMaxPool")


def global_avg_pool(x: TensorLike, keepdims: bool = False, data_format: str = "channels_last",
                    spatial_dims: Optional[int] = None) -> tf.Tensor:
    return _global_pool("global_avg_pool", x, keepdims, data_format, spatial_dims)


global_avg_pool.__doc__ = _global_doc(
    "Global average pooling, differentiable (twice).",
    "``y = mean x`` over the spatial cells of each map.",
    "", "", "global_avg_pool(x)", "[[22.5, 23.5, 24.5]]", "GlobalAvgPool")


def global_lse_pool(x: TensorLike, beta: float = 1.0, keepdims: bool = False,
                    data_format: str = "channels_last",
                    spatial_dims: Optional[int] = None) -> tf.Tensor:
    return _global_pool("global_lse_pool", x, keepdims, data_format, spatial_dims,
                        beta=_checks.finite_real(beta, "beta"))


global_lse_pool.__doc__ = _global_doc(
    "Global LogSumExp pooling, differentiable (twice).",
    "``y = (1/beta) log(mean exp(beta x))`` over the spatial cells of each map: the max as "
    "beta grows,\n    the mean as it shrinks to 0; exact for any finite x.",
    """    beta : float, default 1.0
        The sharpness, any finite number; 0 gives the mean.
""", "", "global_lse_pool(x, beta=0.5)", "[[39.96, 40.96, 41.96]]", "GlobalLSEPool")


def global_gem_pool(x: TensorLike, p: Union[float, TensorLike] = 3.0, eps: float = 1e-6,
                    keepdims: bool = False, data_format: str = "channels_last",
                    spatial_dims: Optional[int] = None) -> tf.Tensor:
    eps = _checks.finite_real(eps, "eps")
    x, last, out_shape = _global_geometry(x, keepdims, data_format, spatial_dims)
    rank = x.shape.rank
    p = _tensor(p, "p")
    if p.shape.rank is None or p.shape.rank > 2:
        raise ValueError(f"p of shape {p.shape} does not broadcast to the maps' shape (N, C)")
    p = tf.cast(p, tf.float32 if x.dtype in (tf.float16, tf.bfloat16) else x.dtype)

    def to_npool(a):
        return moveaxis(a, -1, 1) if last else a

    def decomposed(x, p):
        return compute_in_float32(lambda x, p: _kept(_decompositions.global_gem_pool(
            TFOps, to_channels_first(x, last), rank - 2, p, eps), keepdims, last, rank), x, p)

    where = PORTABLE if graph_must_stand_alone() else placement([x])
    if where == PORTABLE:
        return decomposed(x, p)

    def forward_numpy(xa, pa):
        y = npool.global_gem_pool_forward(to_npool(xa), pa, eps, keepdims)
        return moveaxis(y, 1, -1) if last and keepdims else y

    def backward_numpy(ga, xa, pa):
        gx, gp = npool.global_gem_pool_backward(moveaxis(ga, -1, 1) if last and keepdims else ga,
                                                to_npool(xa), pa, eps, keepdims)
        return moveaxis(gx, 1, -1) if last else gx, np.asarray(gp, pa.dtype).reshape(pa.shape)

    @tf.custom_gradient
    def gem(x, p):
        y = call_core(forward_numpy, [x, p], x.dtype, "npool_global_gem_pool", where)
        y.set_shape(out_shape)

        def grad(dy):
            dy = tf.cast(dy, x.dtype)
            gx, gp = call_core(backward_numpy, [dy, x, p], [x.dtype, p.dtype],
                               "npool_global_gem_pool_backward", where)
            gx.set_shape(x.shape)
            gp.set_shape(p.shape)
            return with_second_order(decomposed, [x, p], dy, [gx, gp])

        return y, grad

    return gem(x, p)


global_gem_pool.__doc__ = _global_doc(
    "Generalised-mean (GeM) pooling, differentiable (twice) in x and p.",
    "``y = (mean max(x, eps)^p)^(1/p)`` over the spatial cells of each map: the mean at "
    "``p = 1``,\n    the max as p grows; no power overflows for any p.",
    """    p : float or tf.Tensor, default 3.0
        The exponent, positive and finite: a number, or a tensor that broadcasts to (N, C)
        (``(C,)`` per channel, a learnt variable); its gradient has its shape.
    eps : float, default 1e-6
        The clamp floor.
""", "", "global_gem_pool(x, p=1.0)", "[[22.5, 23.5, 24.5]]", "GlobalGeMPool")


def global_kmax_pool(x: TensorLike, k: Count = 1, keepdims: bool = False,
                     data_format: str = "channels_last", rounding: str = "floor",
                     spatial_dims: Optional[int] = None) -> tf.Tensor:
    _checks.k_count(k, 1, "k", rounding=rounding)
    return _global_pool("global_kmax_pool", x, keepdims, data_format, spatial_dims, k=k,
                        rounding=rounding)


global_kmax_pool.__doc__ = _global_doc(
    "Global k-max pooling, differentiable (twice).",
    "The mean of the k largest cells of each map; ties go to the lower flat indices.",
    _K, _ROUNDING, "global_kmax_pool(x, k=3)", "[[42.0, 43.0, 44.0]]", "GlobalKMaxPool")


def weldon_pool(x: TensorLike, kmax: Count = 1, kmin: Optional[Count] = None,
                alpha: float = 1.0, keepdims: bool = False, data_format: str = "channels_last",
                rounding: str = "floor", spatial_dims: Optional[int] = None) -> tf.Tensor:
    _checks.weldon_counts(kmax, kmin, 1, rounding)
    return _global_pool("weldon_pool", x, keepdims, data_format, spatial_dims, kmax=kmax,
                        kmin=kmin, alpha=_checks.finite_real(alpha, "alpha"),
                        rounding=rounding)


weldon_pool.__doc__ = _global_doc(
    "WELDON pooling, differentiable (twice).",
    "``y = mean(kmax largest) + alpha * mean(kmin smallest)`` over the spatial cells of each "
    "map\n    (WILDCAT's pooling is half of it).",
    """    kmax : int or float, default 1
        The count of largest cells: an int >= 1 (clipped to the map) or a fraction in (0, 1].
    kmin : int or float, optional
        The count of smallest cells, as kmax; None is kmax, 0 drops the second term.
    alpha : float, default 1.0
        The weight of the smallest cells' mean, any finite number.
""", _ROUNDING, "weldon_pool(x, kmax=3, kmin=2, alpha=0.5)", "[[42.75, 44.25, 45.75]]",
    "WeldonPool")


# ------------------------------------------------------------------ Max-Entropy pooling


def _maxent_pool(x, lam, nd, window_options, data_format):
    """Max-Ent pooling over windows or adaptive ones (as ``_soft_pool``)."""
    x = _tensor(x)
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must have dtype float16, bfloat16, float32 or float64, got "
                        f"{x.dtype.name}")
    # a Python number straight to x's dtype (through float32, a float64 x would get lam rounded)
    lam = tf.constant(lam, x.dtype) if isinstance(lam, (int, float)) and \
        not isinstance(lam, bool) else tf.cast(_tensor(lam, "lam"), x.dtype)
    layout = _Layout(data_format, nd, x.shape.rank)
    if lam.shape.rank is None or lam.shape.rank > x.shape.rank:
        raise ValueError(f"lam of shape {lam.shape} does not broadcast to the output of x "
                         f"{x.shape}")
    prefix, args, geometry, out_shape = _geometry(x, layout, nd, window_options)
    forward, backward = _op_table.core_functions(f"{prefix}maxent_pool{nd}d")
    rank = x.shape.rank
    batched = rank == nd + 2

    def decomposed(x, lam):
        def run(x, lam):
            while lam.shape.rank < rank:
                lam = tf.expand_dims(lam, 0)
            y = _decompositions.local_pool(
                TFOps, to_channels_first(x, layout.last, batched),
                to_channels_first(lam, layout.last, batched), nd, window_options)
            return from_channels_first(y, layout.last, batched)
        return compute_in_float32(run, x, lam)

    where = PORTABLE if graph_must_stand_alone() else placement([x])
    if where == PORTABLE:
        return decomposed(x, lam)
    if lam.shape.rank == 0:  # as (1,): tf.numpy_function cannot hand over a 0-d bfloat16
        lam = tf.reshape(lam, [1])

    def lam_to_npool(la):
        return layout.to_npool(with_leading_ones(la, rank))

    def forward_numpy(xa, la):
        return layout.from_npool(forward(layout.to_npool(xa), lam_to_npool(la), *args,
                                         **geometry))

    def backward_numpy(ga, xa, la):
        gx, gl = backward(layout.to_npool(ga), layout.to_npool(xa), lam_to_npool(la), *args,
                          **geometry)
        return layout.from_npool(gx), without_leading_ones(layout.from_npool(gl), la.ndim)

    @tf.custom_gradient
    def maxent(x, lam):
        y = call_core(forward_numpy, [x, lam], x.dtype, "npool_maxent_pool", where)
        y.set_shape(out_shape)

        def grad(dy):
            dy = tf.cast(dy, x.dtype)
            gx, gl = call_core(backward_numpy, [dy, x, lam], [x.dtype, x.dtype],
                               "npool_maxent_pool_backward", where)
            gx.set_shape(x.shape)
            gl.set_shape(lam.shape)
            return with_second_order(decomposed, [x, lam], dy, [gx, gl])

        return y, grad

    return maxent(x, lam)


class MaxEntPoolFunction(Protocol):
    """``npool.tf.maxent_pool{1,2,3}d``."""

    def __call__(self, x: TensorLike, lam: Union[float, TensorLike], kernel_size: Size,
                 stride: Optional[Size] = None, padding: Padding = 0, ceil_mode: bool = False,
                 data_format: str = "channels_last", dilation: Size = 1) -> tf.Tensor: ...


def _make_maxent_pool(nd) -> MaxEntPoolFunction:
    def maxent_pool(x: TensorLike, lam: Union[float, TensorLike], kernel_size: Size,
                    stride: Optional[Size] = None, padding: Padding = 0, ceil_mode: bool = False,
                    data_format: str = "channels_last", dilation: Size = 1) -> tf.Tensor:
        return _maxent_pool(x, lam, nd, _window(kernel_size, stride, padding, ceil_mode,
                                                dilation), data_format)

    maxent_pool.__name__ = maxent_pool.__qualname__ = f"maxent_pool{nd}d"
    shape, out, lam = {1: ("(2, 8, 3)", "(2, 4, 3)", "(1, 1, 3)"),
                       2: ("(2, 8, 8, 3)", "(2, 4, 4, 3)", "(1, 1, 1, 3)"),
                       3: ("(2, 4, 8, 8, 3)", "(2, 2, 4, 4, 3)", "(1, 1, 1, 1, 3)")}[nd]
    maxent_pool.__doc__ = f"""Max-Entropy pooling over {nd} spatial {"axis" if nd == 1 else "axes"}, differentiable (twice) in x and lam.

    SoftPool with a temperature (Kobayashi, ICCV 2019)::

        y_o = sum_(i in window o) softmax(lam_o * x over window o)_i * x_i

    The window's mean at ``lam = 0``, SoftPool at 1, its max as lam grows, a soft minimum for
    ``lam < 0``. Runs as ``soft_pool{nd}d`` does (kernels, or the decomposition where a graph
    must stand alone).

    Parameters
    ----------
    x : tf.Tensor or array_like
        ``(N, *spatial, C)`` (``data_format="channels_last"``) or ``(N, C, *spatial)``
        (``"channels_first"``), or either without N; float16, bfloat16, float32 or float64.
    lam : float or tf.Tensor
        The temperature: a number or a tensor that broadcasts to the output in x's data
        format (``{lam}`` per channel, ``(N, 1, ..., 1, C)`` per sample and channel).
    kernel_size : int or tuple of {nd} ints
        The window.
    stride : int or tuple of {nd} ints, optional
        The step between windows; default ``kernel_size``.
    padding : "SAME", "VALID", int, tuple of {nd} ints or of {nd} (before, after) pairs, default 0
        TensorFlow's "SAME" (ceil(L / stride) outputs) and "VALID" (none; either case),
        explicit ``(before, after)`` per axis (each less than the kernel), or PyTorch's ints
        (both sides, at most half the kernel); padded cells are left out of the windows (they
        are not zeros).
    ceil_mode : bool, default False
        PyTorch's output-size rule with ceil instead of floor.
    data_format : {{"channels_last", "channels_first"}}, default "channels_last"
        Where x's channel axis is.
    dilation : int or tuple of {nd} ints, default 1
        The step between a window's cells (``tf.nn.pool``'s ``dilations``, PyTorch's
        ``dilation``); the window's extent ``(kernel - 1) dilation + 1`` takes the kernel's
        place in the output size and in "SAME".

    Returns
    -------
    tf.Tensor
        As ``soft_pool{nd}d``'s: x's dtype and data format.

    Raises
    ------
    TypeError
        A non-float x, or another framework's tensor (torch, JAX).
    ValueError
        x of another rank, a lam that does not broadcast to the output, an unknown
        data_format, or bad window arguments.

    See Also
    --------
    MaxEntPooling2D : The Keras layer, with the Global-Feature-Guided temperature.

    Examples
    --------
    >>> tuple(npool.tf.maxent_pool{nd}d(tf.ones({shape}), tf.ones({lam}), 2).shape)
    {out}
    """
    return maxent_pool


maxent_pool1d = _make_maxent_pool(1)
maxent_pool2d = _make_maxent_pool(2)
maxent_pool3d = _make_maxent_pool(3)


# ------------------------------------------------------------------ adaptive output sizes
class AdaptiveSoftPoolFunction(Protocol):
    """``npool.tf.adaptive_soft_pool{1,2,3}d``."""

    def __call__(self, x: TensorLike, output_size: OutputSize,
                 data_format: str = "channels_last") -> tf.Tensor: ...


class AdaptiveMaxEntPoolFunction(Protocol):
    """``npool.tf.adaptive_maxent_pool{1,2,3}d``."""

    def __call__(self, x: TensorLike, lam: Union[float, TensorLike], output_size: OutputSize,
                 data_format: str = "channels_last") -> tf.Tensor: ...


_ADAPTIVE_DOC = """Adaptive {what} over {nd} spatial {axis_word}: an output of ``output_size``, differentiable (twice){wrt}.

    PyTorch's adaptive windows (``nn.AdaptiveAvgPool{nd}d``'s: window o of n over L cells
    spans ``[floor(o L / n), ceil((o + 1) L / n))``), each pooled as ``{plain}`` pools its
    windows. Runs as ``soft_pool{nd}d`` does (kernels, or the decomposition where a graph must
    stand alone: that needs the spatial size when the graph is built).

    Parameters
    ----------
    x : tf.Tensor or array_like
        As ``soft_pool{nd}d``.{lam_doc}
    output_size : int or tuple of {nd} ints or None
        The output's spatial size; None keeps the input's size on that axis.
    data_format : {{"channels_last", "channels_first"}}, default "channels_last"
        Where x's channel axis is.

    Returns
    -------
    tf.Tensor
        Of x's dtype and data format.

    Raises
    ------
    TypeError
        A non-float x or a non-int output size.
    ValueError
        x of another rank, an output size below 1 or of the wrong length.

    Examples
    --------
    >>> tuple(npool.tf.adaptive_{name}{nd}d(tf.ones({shape}), {lam_example}{size}).shape)
    {out}
    """


def _make_adaptive_pools(nd):
    def adaptive_soft_pool(x: TensorLike, output_size: OutputSize,
                           data_format: str = "channels_last") -> tf.Tensor:
        return _soft_pool(x, nd, {"output_size": output_size}, data_format)

    def adaptive_maxent_pool(x: TensorLike, lam: Union[float, TensorLike],
                             output_size: OutputSize,
                             data_format: str = "channels_last") -> tf.Tensor:
        return _maxent_pool(x, lam, nd, {"output_size": output_size}, data_format)

    shape, size, out = {1: ("(2, 10, 3)", "4", "(2, 4, 3)"),
                        2: ("(2, 10, 9, 3)", "(4, None)", "(2, 4, 9, 3)"),
                        3: ("(2, 5, 9, 9, 3)", "3", "(2, 3, 3, 3, 3)")}[nd]
    common = dict(nd=nd, axis_word="axis" if nd == 1 else "axes", shape=shape, size=size,
                  out=out)
    adaptive_soft_pool.__doc__ = _ADAPTIVE_DOC.format(
        what="SoftPool", wrt="", plain=f"soft_pool{nd}d", lam_doc="", name="soft_pool",
        lam_example="", **common)
    adaptive_maxent_pool.__doc__ = _ADAPTIVE_DOC.format(
        what="Max-Entropy pooling", wrt=" in x and lam", plain=f"maxent_pool{nd}d",
        lam_doc=f"\n    lam : float or tf.Tensor\n        As ``maxent_pool{nd}d``: 0 gives "
                f"adaptive average pooling, large values adaptive max pooling.",
        name="maxent_pool", lam_example="0.5, ", **common)
    for function, name in ((adaptive_soft_pool, "adaptive_soft_pool"),
                           (adaptive_maxent_pool, "adaptive_maxent_pool")):
        function.__name__ = function.__qualname__ = f"{name}{nd}d"
    return adaptive_soft_pool, adaptive_maxent_pool


def _adaptive_typed(nd) -> "tuple[AdaptiveSoftPoolFunction, AdaptiveMaxEntPoolFunction]":
    return _make_adaptive_pools(nd)


adaptive_soft_pool1d, adaptive_maxent_pool1d = _adaptive_typed(1)
adaptive_soft_pool2d, adaptive_maxent_pool2d = _adaptive_typed(2)
adaptive_soft_pool3d, adaptive_maxent_pool3d = _adaptive_typed(3)


# ------------------------------------------------------------------ set pools (LOUPE)
def _set_op(name, forward, backward, tensors, mask, out_shape, portable, state=0):
    """A set op of npool's core as a tf.custom_gradient function of ``tensors`` (one gradient
    each). ``mask`` None or (B, M) bools, not differentiated; ``mask=False`` for ops without
    one. The forward's ``state`` extra outputs (NetVLAD's norms) go to the backward.
    ``portable(ops, *tensors, mask)`` is the op's decomposition (npool/_decompositions.py)."""
    tensors = [_tensor(t, "input") for t in tensors]
    dtype = tensors[0].dtype
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must have dtype float16, bfloat16, float32 or float64, got "
                        f"{dtype.name}")
    extra = [] if mask is None or mask is False else [tf.cast(mask, tf.bool)]
    n = len(tensors)

    def decomposed(*ts):
        masks = [] if mask is False else [extra[0] if extra else None]
        return compute_in_float32(lambda *us: portable(TFOps, *us, *masks), *ts)

    where = PORTABLE if graph_must_stand_alone() else placement(tensors)
    if where == PORTABLE:
        return decomposed(*tensors)

    def core_kwargs(arrays):
        if mask is False:
            return {}
        return {"mask": arrays[n] if extra else None}

    def forward_numpy(*arrays):
        result = forward(*arrays[:n], **core_kwargs(arrays),
                         **({"return_norms": True} if state else {}))
        return list(result) if state else result

    def backward_numpy(g, *arrays):
        saved = dict(zip(("output", "norms"), arrays[n + len(extra):])) if state else {}
        grads = backward(g, *arrays[:n], **core_kwargs(arrays), **saved)
        return list(grads) if isinstance(grads, tuple) else [grads]

    @tf.custom_gradient
    def op(*ts):
        outs = call_core(forward_numpy, list(ts) + extra,
                         [dtype] * (1 + state) if state else dtype, f"npool_{name}", where)
        outs = list(outs) if state else [outs]
        outs[0].set_shape(out_shape)

        def grad(dy):
            dy = tf.cast(dy, dtype)
            grads = call_core(backward_numpy, [dy, *ts, *extra, *outs], [dtype] * n,
                              f"npool_{name}_backward", where)
            grads = list(grads) if isinstance(grads, (list, tuple)) else [grads]
            for g, t in zip(grads, ts):
                g.set_shape(t.shape)
            return with_second_order(decomposed, ts, dy, grads)

        return outs[0], grad

    return op(*tensors)


def _set_shapes(x, assign):
    shape = x.shape if x is not None else assign.shape
    b = shape[0]
    d = x.shape[-1] if x is not None else None
    k = assign.shape[-1]
    return b, d, k


def netvlad_pool(x: TensorLike, assign: TensorLike, centers: TensorLike,
                 mask: Optional[TensorLike] = None) -> tf.Tensor:
    """NetVLAD pooling (Arandjelovic et al.; LOUPE), differentiable (twice).

    ``V_dk = sum_m a_mk (x_md - c_dk)``, each column l2-normalised over d, flattened D-major
    and l2-normalised.

    Parameters
    ----------
    x : tf.Tensor or array_like
        ``(B, M, D)``: B sets of M samples with D features; float16, bfloat16, float32 or
        float64.
    assign : tf.Tensor or array_like
        ``(B, M, K)``: each sample's soft assignment to the K clusters (a softmax over K).
    centers : tf.Tensor or array_like
        ``(D, K)``: the cluster centres.
    mask : tf.Tensor or array_like of bool, optional
        ``(B, M)``: True for the real samples of each set (None: all); not differentiated.

    Returns
    -------
    tf.Tensor
        ``(B, D * K)``; differentiable in x, assign and centers.

    Raises
    ------
    TypeError
        A non-float x, or another framework's tensor (torch, JAX).
    ValueError
        Shapes that do not match.

    See Also
    --------
    NetVLAD : LOUPE's layer around it.

    Examples
    --------
    >>> x, a = tf.ones((2, 5, 4)), tf.fill((2, 5, 3), 1 / 3)
    >>> tuple(npool.tf.netvlad_pool(x, a, tf.zeros((4, 3))).shape)
    (2, 12)
    """
    b, d, k = _set_shapes(x, assign)
    return _set_op("netvlad_pool", npool.netvlad_pool_forward, npool.netvlad_pool_backward,
                   [x, assign, centers], mask, [b, None if None in (d, k) else d * k],
                   _decompositions.vlad_pool, state=1)


def netrvlad_pool(x: TensorLike, assign: TensorLike,
                  mask: Optional[TensorLike] = None) -> tf.Tensor:
    """NetRVLAD pooling (LOUPE), differentiable (twice): NetVLAD without centres.

    ``V_dk = sum_m a_mk x_md``, normalised as NetVLAD's.

    Parameters
    ----------
    x : tf.Tensor or array_like
        ``(B, M, D)``: B sets of M samples with D features; float16, bfloat16, float32 or
        float64.
    assign : tf.Tensor or array_like
        ``(B, M, K)``: each sample's soft assignment to the K clusters (a softmax over K).
    mask : tf.Tensor or array_like of bool, optional
        ``(B, M)``: True for the real samples of each set (None: all); not differentiated.

    Returns
    -------
    tf.Tensor
        ``(B, D * K)``; differentiable in x and assign.

    Raises
    ------
    TypeError
        A non-float x, or another framework's tensor (torch, JAX).
    ValueError
        Shapes that do not match.

    See Also
    --------
    NetRVLAD : LOUPE's layer around it.

    Examples
    --------
    >>> tuple(npool.tf.netrvlad_pool(tf.ones((2, 5, 4)), tf.fill((2, 5, 3), 1 / 3)).shape)
    (2, 12)
    """
    b, d, k = _set_shapes(x, assign)
    return _set_op("netrvlad_pool", npool.netrvlad_pool_forward, npool.netrvlad_pool_backward,
                   [x, assign], mask, [b, None if None in (d, k) else d * k],
                   lambda ops, x, a, m: _decompositions.vlad_pool(ops, x, a, None, m), state=1)


def netfv_pool(x: TensorLike, assign: TensorLike, mu: TensorLike, covar_weights: TensorLike,
               mask: Optional[TensorLike] = None) -> tf.Tensor:
    """NetFV pooling (LOUPE's Fisher vector), differentiable (twice).

    With ``sigma = covar_weights^2 + 1e-6`` and ``A_k = sum_m a_mk``:
    ``F1 = (sum_m a x - A mu) / sigma``, ``F2 = sum_m a (x - mu)^2 / sigma^2 - A``, and the
    result ``concat(l2n(flatten(l2n_d(F1))), l2n(flatten(F2)))``.

    Parameters
    ----------
    x : tf.Tensor or array_like
        ``(B, M, D)``: B sets of M samples with D features; float16, bfloat16, float32 or
        float64.
    assign : tf.Tensor or array_like
        ``(B, M, K)``: each sample's soft assignment to the K clusters (a softmax over K).
    mu : tf.Tensor or array_like
        ``(D, K)``: the cluster means.
    covar_weights : tf.Tensor or array_like
        ``(D, K)``: the square roots of the cluster variances (before the 1e-6).
    mask : tf.Tensor or array_like of bool, optional
        ``(B, M)``: True for the real samples of each set (None: all); not differentiated.

    Returns
    -------
    tf.Tensor
        ``(B, 2 * D * K)``; differentiable in x, assign, mu and covar_weights.

    Raises
    ------
    TypeError
        A non-float x, or another framework's tensor (torch, JAX).
    ValueError
        Shapes that do not match.

    See Also
    --------
    NetFV : LOUPE's layer around it.

    Examples
    --------
    >>> x, a = tf.ones((2, 5, 4)), tf.fill((2, 5, 3), 1 / 3)
    >>> tuple(npool.tf.netfv_pool(x, a, tf.zeros((4, 3)), tf.ones((4, 3))).shape)
    (2, 24)
    """
    b, d, k = _set_shapes(x, assign)
    return _set_op("netfv_pool", npool.netfv_pool_forward, npool.netfv_pool_backward,
                   [x, assign, mu, covar_weights], mask,
                   [b, None if None in (d, k) else 2 * d * k], _decompositions.fv_pool)


def soft_dbow_pool(assign: TensorLike, mask: Optional[TensorLike] = None) -> tf.Tensor:
    """Soft-DBoW pooling (LOUPE), differentiable (twice): ``y = l2n(sum_m a_m)``.

    The l2-normalised sum of each set's soft assignments.

    Parameters
    ----------
    assign : tf.Tensor or array_like
        ``(B, M, K)``: each sample's soft assignment; float16, bfloat16, float32 or float64.
    mask : tf.Tensor or array_like of bool, optional
        ``(B, M)``: True for the real samples of each set (None: all); not differentiated.

    Returns
    -------
    tf.Tensor
        ``(B, K)``; differentiable in assign.

    Raises
    ------
    TypeError
        A non-float x, or another framework's tensor (torch, JAX).
    ValueError
        Shapes that do not match.

    See Also
    --------
    SoftDBoW : LOUPE's layer around it.

    Examples
    --------
    >>> npool.tf.soft_dbow_pool(tf.fill((1, 5, 4), 0.25)).numpy().astype("float64").round(3).tolist()
    [[0.5, 0.5, 0.5, 0.5]]
    """
    b, _, k = _set_shapes(None, assign)
    return _set_op("soft_dbow_pool", npool.soft_dbow_pool_forward,
                   npool.soft_dbow_pool_backward, [assign], mask, [b, k],
                   _decompositions.dbow_pool)


def context_gating(x: TensorLike, weights: TensorLike, biases: TensorLike) -> tf.Tensor:
    """Context Gating (Miech et al.; LOUPE), differentiable (twice): ``y = x * sigmoid(x W + b)``.

    The gate is computed over x's last axis.

    Parameters
    ----------
    x : tf.Tensor or array_like
        ``(..., n)``; float16, bfloat16, float32 or float64.
    weights : tf.Tensor or array_like
        ``(n, n)``: W.
    biases : tf.Tensor or array_like
        ``(n,)``: b.

    Returns
    -------
    tf.Tensor
        Of x's shape; differentiable in x, weights and biases.

    Raises
    ------
    TypeError
        A non-float x, or another framework's tensor (torch, JAX).
    ValueError
        Shapes that do not match.

    See Also
    --------
    ContextGating : The layer (with LOUPE's BatchNorm variant).

    Examples
    --------
    >>> npool.tf.context_gating(tf.ones((1, 2)), tf.zeros((2, 2)), tf.zeros(2)).numpy().tolist()
    [[0.5, 0.5]]
    """
    x_tensor = _tensor(x)
    return _set_op("context_gating", npool.context_gating_forward,
                   npool.context_gating_backward, [x_tensor, weights, biases], False,
                   x_tensor.shape,
                   _decompositions.context_gating)
