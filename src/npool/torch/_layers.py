"""``nn.Module`` forms of npool's ops."""
from typing import Any, Optional, Tuple, Union

import torch

from .. import _checks, _op_table
from .._types import Count, OutputSize, Size
from ._ops import (adaptive_soft_pool1d, adaptive_soft_pool2d, adaptive_soft_pool3d,
                   global_avg_pool, global_gem_pool, global_kmax_pool, global_lse_pool,
                   global_max_pool, maxent_pool2d, soft_pool1d, soft_pool2d, soft_pool3d,
                   weldon_pool)


class _SoftPoolNd(torch.nn.Module):
    """SoftPool with the constructor of ``torch.nn.MaxPool{1,2,3}d``.

    ``return_indices`` is accepted for drop-in compatibility but only at its default: SoftPool
    has no single selected index.
    """

    _function: Any = None  # the npool.torch function, set by each subclass
    _nd: int  # the number of spatial axes, set by each subclass

    def __init__(self, kernel_size: Size, stride: Optional[Size] = None, padding: Size = 0,
                 dilation: Size = 1, return_indices: bool = False,
                 ceil_mode: bool = False) -> None:
        super().__init__()
        if return_indices:
            raise ValueError("return_indices must be False: SoftPool weighs every cell of a "
                             "window, there is no index to return")
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.ceil_mode = ceil_mode
        _checks.WindowArgs(self._nd, kernel_size, stride, padding, ceil_mode,
                           dilation=dilation)  # fail early

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool x.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, C, *spatial)`` or unbatched ``(C, *spatial)`` with the class's number of
            spatial axes; float16, bfloat16, float32 or float64; CPU or CUDA; contiguous or
            channels-last.

        Returns
        -------
        torch.Tensor
            ``(N, C, *out)`` (or ``(C, *out)``) in x's memory layout.
        """
        return type(self)._function(x, self.kernel_size, self.stride, self.padding,
                                    self.ceil_mode, dilation=self.dilation)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


def _soft_pool_doc(nd):
    """The numpydoc docstring of SoftPool{nd}d."""
    axes, example, out = {1: ("L", "(1, 3, 8)", "[1, 3, 4]"),
                          2: ("H, W", "(1, 3, 8, 8)", "[1, 3, 4, 4]"),
                          3: ("D, H, W", "(1, 3, 4, 8, 8)", "[1, 3, 2, 4, 4]")}[nd]
    return """SoftPool over {nd} spatial {axis_word}, with ``nn.MaxPool{nd}d``'s constructor.

    Each output is the softmax-weighted mean of its window's real cells (Stergiou et al.,
    ICCV 2021)::

        y_o = sum_(i in window o) softmax(x over window o)_i * x_i

    Input ``(N, C, {axes})`` or ``(C, {axes})`` (float16, bfloat16, float32 or float64, CPU
    or CUDA, contiguous or channels-last); output ``(N, C, *out)`` or ``(C, *out)`` in the
    input's memory layout, each ``out = floor((L + 2 padding - kernel [+ stride - 1]) /
    stride) + 1`` as ``nn.MaxPool{nd}d``'s. The function is ``npool.torch.soft_pool{nd}d``.

    Parameters
    ----------
    kernel_size : int or tuple of {nd} ints
        The window.
    stride : int or tuple of {nd} ints, optional
        The step between windows; default ``kernel_size``.
    padding : int, tuple of {nd} ints or of {nd} (before, after) pairs, "same" or "valid", default 0
        Implicit padding: ints on both sides, at most half the kernel (``nn.MaxPool{nd}d``'s);
        ``(before, after)`` per axis; ``"same"`` or ``"valid"`` (``nn.Conv{nd}d``'s words,
        TensorFlow's rule). Padded cells are left out of the windows (they are not zeros).
    dilation : int or tuple of {nd} ints, default 1
        The step between a window's cells (``nn.MaxPool{nd}d``'s).
    return_indices : bool, default False
        Must be False: SoftPool weighs every cell of a window, it selects no single one.
    ceil_mode : bool, default False
        ``nn.MaxPool{nd}d``'s output-size rule with ceil instead of floor.

    Raises
    ------
    ValueError
        Bad window arguments or ``return_indices=True``.

    Examples
    --------
    >>> pool = nt.SoftPool{nd}d(2)
    >>> pool(torch.randn{example}).shape
    {out}
    >>> pool
    SoftPool{nd}d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
    """.format(
        nd=nd, axis_word="axis" if nd == 1 else "axes", axes=axes, example=example,
        out=f"torch.Size({out})")


class SoftPool1d(_SoftPoolNd):
    __doc__ = _soft_pool_doc(1)
    _nd = 1
    _function = staticmethod(soft_pool1d)


class SoftPool2d(_SoftPoolNd):
    __doc__ = _soft_pool_doc(2)
    _nd = 2
    _function = staticmethod(soft_pool2d)


class SoftPool3d(_SoftPoolNd):
    __doc__ = _soft_pool_doc(3)
    _nd = 3
    _function = staticmethod(soft_pool3d)


class _AdaptiveSoftPoolNd(torch.nn.Module):
    """Adaptive SoftPool with the constructor of ``torch.nn.AdaptiveAvgPool{1,2,3}d``."""

    _function: Any = None  # the npool.torch function, set by each subclass
    _nd: int  # the number of spatial axes, set by each subclass

    def __init__(self, output_size: OutputSize) -> None:
        super().__init__()
        _checks.adaptive_output_size(output_size, self._nd)  # fail early
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool x.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, C, *spatial)`` or unbatched ``(C, *spatial)`` with the class's number of
            spatial axes; float16, bfloat16, float32 or float64; CPU or CUDA; contiguous or
            channels-last.

        Returns
        -------
        torch.Tensor
            ``(N, C, *output_size)`` (or ``(C, *output_size)``) in x's memory layout.
        """
        return type(self)._function(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


def _adaptive_soft_pool_doc(nd):
    """The numpydoc docstring of AdaptiveSoftPool{nd}d."""
    axes, example, size, out = {1: ("L", "(1, 3, 10)", "4", "[1, 3, 4]"),
                                2: ("H, W", "(1, 3, 10, 9)", "(7, None)", "[1, 3, 7, 9]"),
                                3: ("D, H, W", "(1, 3, 5, 9, 9)", "3", "[1, 3, 3, 3, 3]")}[nd]
    return f"""Adaptive SoftPool over {nd} spatial {"axis" if nd == 1 else "axes"}, with ``nn.AdaptiveAvgPool{nd}d``'s constructor.

    SoftPool over ``nn.AdaptiveAvgPool{nd}d``'s windows - window o of n over L cells spans
    ``[floor(o L / n), ceil((o + 1) L / n))``::

        y_o = sum_(i in window o) softmax(x over window o)_i * x_i

    Input ``(N, C, {axes})`` or ``(C, {axes})`` (float16, bfloat16, float32 or float64, CPU
    or CUDA, contiguous or channels-last); output ``(N, C, *output_size)`` or ``(C,
    *output_size)`` in the input's memory layout. The function is
    ``npool.torch.adaptive_soft_pool{nd}d``.

    Parameters
    ----------
    output_size : int or tuple of {nd} ints or None
        The output's spatial size; None keeps the input's size on that axis.

    Raises
    ------
    TypeError, ValueError
        An output size that is not an int or None, below 1, or of the wrong length.

    Examples
    --------
    >>> pool = nt.AdaptiveSoftPool{nd}d({size})
    >>> pool(torch.randn{example}).shape
    torch.Size({out})
    >>> pool
    AdaptiveSoftPool{nd}d(output_size={size})
    """


class AdaptiveSoftPool1d(_AdaptiveSoftPoolNd):
    __doc__ = _adaptive_soft_pool_doc(1)
    _nd = 1
    _function = staticmethod(adaptive_soft_pool1d)


class AdaptiveSoftPool2d(_AdaptiveSoftPoolNd):
    __doc__ = _adaptive_soft_pool_doc(2)
    _nd = 2
    _function = staticmethod(adaptive_soft_pool2d)


class AdaptiveSoftPool3d(_AdaptiveSoftPoolNd):
    __doc__ = _adaptive_soft_pool_doc(3)
    _nd = 3
    _function = staticmethod(adaptive_soft_pool3d)


def _fixed_rank(cls, spatial_dims):
    """The spatial rank of a global pool: the class's (``…2d``) or ``spatial_dims``."""
    spatial_dims = _checks.check_spatial_dims(spatial_dims)
    if cls.spatial_dims is not None and spatial_dims not in (None, cls.spatial_dims):
        raise ValueError(f"{cls.__name__} pools over {cls.spatial_dims} spatial axes, "
                         f"spatial_dims={spatial_dims} contradicts it")
    return cls.spatial_dims if cls.spatial_dims is not None else spatial_dims


_KEEPDIMS = """    keepdims : bool, default False
        Keep the pooled axes with size 1: ``(N, C, 1, ...)`` instead of ``(N, C)``.
"""
_ROUNDING = """    rounding : {"floor", "round"}, default "floor"
        The count of a fraction: ``max(1, floor(k n + 1e-6))``, or WILDCAT's
        ``max(1, round(k n))`` (half to even).
"""
# name: (summary, formula, its parameters before keepdims, after keepdims, example, repr)
_GLOBAL_ARGS = {
    "GlobalMaxPool": ("Global max pooling", "``y = max x`` over the spatial cells of each "
                      "(sample, channel) map;\n    ties go to the lowest flat index.", "", "",
                      "GlobalMaxPool()", ""),
    "GlobalAvgPool": ("Global average pooling", "``y = mean x`` over the spatial cells of each "
                      "(sample, channel) map.", "", "", "GlobalAvgPool()", ""),
    "GlobalLSEPool": ("Global LogSumExp pooling", "``y = (1/beta) log(mean exp(beta x))`` over "
                      "the spatial cells of each map:\n    the mean at ``beta = 0``, the max as "
                      "``beta -> inf``.",
                      "    beta : float, default 1.0\n        The sharpness, any finite "
                      "number.\n", "", "GlobalLSEPool(2.0)", "beta=2.0, "),
    "GlobalGeMPool": ("Generalised-mean (GeM) pooling", "``y = (mean max(x, eps)^p)^(1/p)`` "
                      "over the spatial cells of each map, p learnt\n    by default: the mean "
                      "at ``p = 1``, the max as ``p -> inf``.",
                      "    p : float, default 3.0\n        The initial exponent, positive and "
                      "finite.\n    eps : float, default 1e-6\n        The clamp floor.\n"
                      "    num_channels : int, optional\n        Learn one p per channel (C = "
                      "num_channels); None (default) shares one p, ``(1,)``.\n"
                      "    learn_p : bool, default True\n        p an ``nn.Parameter``; False "
                      "keeps it a fixed buffer.\n", "", "GlobalGeMPool(3.0)",
                      "p=3.0, eps=1e-06, "),
    "GlobalKMaxPool": ("Global k-max pooling", "The mean of the k largest cells of each map; "
                       "ties go to the lower flat indices.",
                       "    k : int or float, default 1\n        A count (an int >= 1, clipped "
                       "to the map's n cells) or a fraction in (0, 1]\n        of the cells.\n",
                       _ROUNDING, "GlobalKMaxPool(3)", "k=3, "),
    "WeldonPool": ("WELDON pooling", "``y = mean(kmax largest) + alpha * mean(kmin smallest)`` "
                   "of each map\n    (WILDCAT's pooling is half of it).",
                   "    kmax : int or float, default 1\n        The count of largest cells: an "
                   "int >= 1 (clipped to the map) or a fraction\n        in (0, 1].\n"
                   "    kmin : int or float, optional\n        The count of smallest cells, as "
                   "kmax; None is kmax, 0 drops the second term.\n"
                   "    alpha : float, default 1.0\n        The weight of the smallest cells' "
                   "mean, any finite number.\n", _ROUNDING, "WeldonPool(3, 2)",
                   "kmax=3, kmin=2, alpha=1.0, "),
}


def _global_doc(name, nd=None):
    """The numpydoc docstring of a global pool module (``nd``: its fixed rank)."""
    summary, formula, before, after, example, shown = _GLOBAL_ARGS[name]
    cls = name if nd is None else f"{name}{nd}d"
    spatial = "*spatial" if nd is None else ", ".join(["L"] if nd == 1 else
                                                      ["H", "W"] if nd == 2 else ["D", "H", "W"])
    x = "(2, 3, 5, 4)" if nd in (None, 2) else "(2, 3, 5)" if nd == 1 else "(2, 3, 2, 5, 4)"
    rank = ("Input ``(N, C, *spatial)`` with any number of spatial axes (``spatial_dims`` fixes "
            "it, and then\n    an unbatched ``(C, *spatial)`` is taken too)" if nd is None else
            f"Input ``(N, C, {spatial})`` or unbatched ``(C, {spatial})``, as\n"
            f"    ``nn.AdaptiveMaxPool{nd}d(1)`` takes (other ranks are a ValueError)")
    rank_arg = ("None (default) reads any number of them (a batched input)" if nd is None else
                f"None (default) or {nd}, the class's")
    return f"""{summary}{"" if nd is None else f" over {nd} spatial axes"}: an ``nn.Module`` form of ``npool.torch.{_FUNCTIONS[name]}``.

    {formula}

    {rank};
    float16, bfloat16, float32 or float64, CPU or CUDA, contiguous or channels-last.
    Output ``(N, C)``, or ``(N, C, 1, ...)`` with ``keepdims`` (unbatched: ``(C,)``).

    Parameters
    ----------
{before}{_KEEPDIMS}{after}    spatial_dims : int, optional
        The number of spatial axes: {rank_arg}.

    Raises
    ------
    ValueError
        A bad option, or a spatial_dims the class contradicts.

    Examples
    --------
    >>> pool = nt.{cls}({example.split("(", 1)[1]}
    >>> pool(torch.randn{x}).shape
    torch.Size([2, 3])
    >>> pool
    {cls}({shown}keepdims=False)
    """


_FUNCTIONS = {op.layer: op.name for op in _op_table.ops_of("global")}  # layer -> function


def _ranked_doc(base, nd):
    return _global_doc(base.__name__, nd)


class _GlobalPool(torch.nn.Module):
    """A global pool over every spatial cell of each (sample, channel) map.

    ``spatial_dims=None`` reads the input as (N, C, *spatial) with any number of spatial axes;
    the ``…1d/2d/3d`` classes fix it, so they also take unbatched (C, *spatial) input as
    ``nn.AdaptiveMaxPool2d`` does (and refuse other ranks). Output (N, C), or (N, C, 1, …)
    with ``keepdims`` (unbatched: (C,) or (C, 1, …)).
    """

    spatial_dims: Optional[int] = None
    _options: Tuple[str, ...] = ()
    _function: Any = None  # the npool.torch function, set by each subclass

    def __init__(self, keepdims: bool = False, spatial_dims: Optional[int] = None) -> None:
        super().__init__()
        self.keepdims = _checks.flag(keepdims, "keepdims")
        self.spatial_dims = _fixed_rank(type(self), spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool every map of x.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, C, *spatial)``, or unbatched ``(C, *spatial)`` when the number of spatial
            axes is fixed; float16, bfloat16, float32 or float64; CPU or CUDA.

        Returns
        -------
        torch.Tensor
            ``(N, C)``, ``(N, C, 1, ...)`` with ``keepdims``, ``(C,)`` unbatched.
        """
        return type(self)._function(x, keepdims=self.keepdims, spatial_dims=self.spatial_dims,
                                    **{name: getattr(self, name) for name in self._options})

    def extra_repr(self) -> str:
        shown = [f"{name}={getattr(self, name)!r}" for name in self._options
                 if name != "rounding" or self.rounding != "floor"]  # new options: when set
        shown.append(f"keepdims={self.keepdims}")
        if type(self).spatial_dims is None and self.spatial_dims is not None:
            shown.append(f"spatial_dims={self.spatial_dims}")
        return ", ".join(shown)


class GlobalMaxPool(_GlobalPool):
    __doc__ = _global_doc('GlobalMaxPool')
    _function = staticmethod(global_max_pool)


class GlobalAvgPool(_GlobalPool):
    __doc__ = _global_doc('GlobalAvgPool')
    _function = staticmethod(global_avg_pool)


class GlobalLSEPool(_GlobalPool):
    __doc__ = _global_doc('GlobalLSEPool')
    _function = staticmethod(global_lse_pool)
    _options = ("beta",)

    def __init__(self, beta: float = 1.0, keepdims: bool = False,
                 spatial_dims: Optional[int] = None) -> None:
        super().__init__(keepdims, spatial_dims)
        self.beta = _checks.finite_real(beta, "beta")


class GlobalGeMPool(_GlobalPool):
    __doc__ = _global_doc('GlobalGeMPool')
    _function = staticmethod(global_gem_pool)

    def __init__(self, p: float = 3.0, eps: float = 1e-6, num_channels: Optional[int] = None,
                 learn_p: bool = True, keepdims: bool = False,
                 spatial_dims: Optional[int] = None) -> None:
        super().__init__(keepdims, spatial_dims)
        self.initial_p = _checks.finite_real(p, "p")
        if self.initial_p <= 0:
            raise ValueError(f"p must be positive, got {p!r}")
        self.eps = _checks.finite_real(eps, "eps")
        if num_channels is not None:
            num_channels = _checks.positive_int(num_channels, "num_channels")
        self.num_channels = num_channels
        self.learn_p = _checks.flag(learn_p, "learn_p")
        value = torch.full((num_channels or 1,), self.initial_p)
        if self.learn_p:
            self.p = torch.nn.Parameter(value)
        else:
            self.register_buffer("p", value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """GeM of every map of x with the module's p (see the class)."""
        return global_gem_pool(x, self.p, self.eps, self.keepdims, self.spatial_dims)

    def extra_repr(self) -> str:
        shown = [f"p={self.initial_p!r}", f"eps={self.eps!r}"]
        if self.num_channels is not None:
            shown.append(f"num_channels={self.num_channels}")
        if not self.learn_p:
            shown.append("learn_p=False")
        shown.append(f"keepdims={self.keepdims}")
        if type(self).spatial_dims is None and self.spatial_dims is not None:
            shown.append(f"spatial_dims={self.spatial_dims}")
        return ", ".join(shown)


class GlobalGeMPool1d(GlobalGeMPool):
    __doc__ = _ranked_doc(GlobalGeMPool, 1)
    spatial_dims = 1


class GlobalGeMPool2d(GlobalGeMPool):
    __doc__ = _ranked_doc(GlobalGeMPool, 2)
    spatial_dims = 2


class GlobalGeMPool3d(GlobalGeMPool):
    __doc__ = _ranked_doc(GlobalGeMPool, 3)
    spatial_dims = 3


class GlobalKMaxPool(_GlobalPool):
    __doc__ = _global_doc('GlobalKMaxPool')
    _function = staticmethod(global_kmax_pool)
    _options = ("k", "rounding")

    def __init__(self, k: Count = 1, keepdims: bool = False, rounding: str = "floor",
                 spatial_dims: Optional[int] = None) -> None:
        super().__init__(keepdims, spatial_dims)
        _checks.k_count(k, 1, "k", rounding=rounding)  # fail early on a bad k
        self.k, self.rounding = k, rounding


class WeldonPool(_GlobalPool):
    __doc__ = _global_doc('WeldonPool')
    _function = staticmethod(weldon_pool)
    _options = ("kmax", "kmin", "alpha", "rounding")

    def __init__(self, kmax: Count = 1, kmin: Optional[Count] = None, alpha: float = 1.0,
                 keepdims: bool = False, rounding: str = "floor",
                 spatial_dims: Optional[int] = None) -> None:
        super().__init__(keepdims, spatial_dims)
        _checks.weldon_counts(kmax, kmin, 1, rounding)  # fail early on bad counts
        self.kmax, self.kmin, self.rounding = kmax, kmin, rounding
        self.alpha = _checks.finite_real(alpha, "alpha")


class GlobalMaxPool1d(GlobalMaxPool):
    __doc__ = _ranked_doc(GlobalMaxPool, 1)
    spatial_dims = 1


class GlobalMaxPool2d(GlobalMaxPool):
    __doc__ = _ranked_doc(GlobalMaxPool, 2)
    spatial_dims = 2


class GlobalMaxPool3d(GlobalMaxPool):
    __doc__ = _ranked_doc(GlobalMaxPool, 3)
    spatial_dims = 3


class GlobalAvgPool1d(GlobalAvgPool):
    __doc__ = _ranked_doc(GlobalAvgPool, 1)
    spatial_dims = 1


class GlobalAvgPool2d(GlobalAvgPool):
    __doc__ = _ranked_doc(GlobalAvgPool, 2)
    spatial_dims = 2


class GlobalAvgPool3d(GlobalAvgPool):
    __doc__ = _ranked_doc(GlobalAvgPool, 3)
    spatial_dims = 3


class GlobalLSEPool1d(GlobalLSEPool):
    __doc__ = _ranked_doc(GlobalLSEPool, 1)
    spatial_dims = 1


class GlobalLSEPool2d(GlobalLSEPool):
    __doc__ = _ranked_doc(GlobalLSEPool, 2)
    spatial_dims = 2


class GlobalLSEPool3d(GlobalLSEPool):
    __doc__ = _ranked_doc(GlobalLSEPool, 3)
    spatial_dims = 3


class GlobalKMaxPool1d(GlobalKMaxPool):
    __doc__ = _ranked_doc(GlobalKMaxPool, 1)
    spatial_dims = 1


class GlobalKMaxPool2d(GlobalKMaxPool):
    __doc__ = _ranked_doc(GlobalKMaxPool, 2)
    spatial_dims = 2


class GlobalKMaxPool3d(GlobalKMaxPool):
    __doc__ = _ranked_doc(GlobalKMaxPool, 3)
    spatial_dims = 3


class WeldonPool1d(WeldonPool):
    __doc__ = _ranked_doc(WeldonPool, 1)
    spatial_dims = 1


class WeldonPool2d(WeldonPool):
    __doc__ = _ranked_doc(WeldonPool, 2)
    spatial_dims = 2


class WeldonPool3d(WeldonPool):
    __doc__ = _ranked_doc(WeldonPool, 3)
    spatial_dims = 3


class MaxEntPool2d(torch.nn.Module):
    r"""Max-Entropy pooling (Kobayashi, ICCV 2019) with a learnable or fixed temperature.

    SoftPool with a temperature lam, per sample and channel from the Global-Feature-Guided
    branch (GFGP) by default::

        y_o = sum_(i in window o) softmax(lam_o * x over window o)_i * x_i

    ``lam = 0`` is the average of the window's real cells, ``lam -> inf`` the max, ``lam < 0``
    a soft minimum. Input ``(N, C, H, W)`` (or ``(C, H, W)`` with a fixed or per-channel lam),
    float16, bfloat16, float32 or float64, CPU or CUDA; output ``(N, C, H_out, W_out)`` as
    ``nn.MaxPool2d``'s, in the input's memory layout. The gradient reaches x through the pool
    and through the branch. GFGP's original state_dicts (``ToParam.*``) load;
    ``npool.torch.compat.MaxEntPoolingCuda2d`` has GFGP's own constructor.

    Parameters
    ----------
    num_features : int
        The channels C.
    kernel_size : int or tuple of 2 ints
        The window.
    stride : int or tuple of 2 ints, optional
        The step between windows; default ``kernel_size``.
    padding : int, tuple of 2 ints or of 2 (before, after) pairs, "same" or "valid", default 0
        As ``npool.torch.maxent_pool2d``'s; padded cells are left out of the windows.
    ceil_mode : bool, default False
        ``nn.MaxPool2d``'s output-size rule with ceil instead of floor.
    lam : {"gfgp", "channel"} or float, default "gfgp"
        ``"gfgp"``: the branch GAP -> 1x1 conv (C -> hidden, bias) -> BatchNorm -> ReLU ->
        1x1 conv (-> C, bias) -> BatchNorm -> sigmoid or softplus, lam per sample and
        channel; ``"channel"``: a learnable temperature per channel starting at 1; a number: a
        fixed temperature.
    activation : {"sigmoid", "softplus"}, default "sigmoid"
        The GFGP branch's last step.
    hidden : int, optional
        The GFGP branch's width; default ``num_features // 2`` (at least 1).

    Raises
    ------
    ValueError
        Bad window arguments, an unknown lam mode or activation, or a lam number that is not
        finite.

    See Also
    --------
    maxent_pool2d : The function, with any lam tensor.

    Examples
    --------
    >>> pool = nt.MaxEntPool2d(16, kernel_size=3, stride=2, padding=1)
    >>> pool(torch.randn(4, 16, 32, 32)).shape
    torch.Size([4, 16, 16, 16])
    >>> nt.MaxEntPool2d(16, 2, lam=0.5)
    MaxEntPool2d(num_features=16, kernel_size=2, stride=None, padding=0,
                 ceil_mode=False, lam=0.5)
    """

    _branch_name = "branch"  # the name of the GFGP branch in state_dicts
    _other_branch_names = ("ToParam",)

    def __init__(self, num_features: int, kernel_size: Size, stride: Optional[Size] = None,
                 padding: Size = 0, ceil_mode: bool = False, lam: Union[str, float] = "gfgp",
                 activation: str = "sigmoid", hidden: Optional[int] = None) -> None:
        super().__init__()
        _checks.WindowArgs(2, kernel_size, stride, padding, ceil_mode)  # fail early
        if activation not in ("sigmoid", "softplus"):
            raise ValueError(f"activation must be 'sigmoid' or 'softplus', got {activation!r}")
        self.num_features = num_features
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode = ceil_mode
        self.mode = lam if isinstance(lam, str) else "fixed"
        self.activation, self.hidden = activation, hidden
        if lam == "gfgp":
            hidden = hidden or max(1, num_features // 2)
            setattr(self, self._branch_name, torch.nn.Sequential(
                torch.nn.AdaptiveAvgPool2d(1),
                torch.nn.Conv2d(num_features, hidden, 1), torch.nn.BatchNorm2d(hidden),
                torch.nn.ReLU(),
                torch.nn.Conv2d(hidden, num_features, 1), torch.nn.BatchNorm2d(num_features),
                torch.nn.Sigmoid() if activation == "sigmoid" else torch.nn.Softplus()))
            self.register_load_state_dict_pre_hook(_rename_branch)
        elif lam == "channel":
            self.lam = torch.nn.Parameter(torch.ones(num_features, 1, 1))
        elif isinstance(lam, str):
            raise ValueError(f"lam must be 'gfgp', 'channel' or a number, got {lam!r}")
        else:
            self.register_buffer("lam", torch.tensor(_checks.finite_real(lam, "lam")))

    def temperature(self, x: torch.Tensor) -> torch.Tensor:
        """The temperature lam for input x.

        Parameters
        ----------
        x : torch.Tensor
            The input, ``(N, C, H, W)``.

        Returns
        -------
        torch.Tensor
            ``(N, C, 1, 1)`` from the GFGP branch, ``(C, 1, 1)`` per channel, or a 0-d tensor.

        Raises
        ------
        ValueError
            The GFGP branch in training mode on a batch of one sample (its BatchNorm would
            have one value per channel to compute statistics from).
        """
        if self.mode != "gfgp":
            return self.lam
        if self.training and x.dim() == 4 and x.shape[0] == 1:
            raise ValueError(
                f"{type(self).__name__}(lam='gfgp') in training mode needs a batch of at least 2 "
                f"samples, got 1: the GFGP branch's BatchNorm computes its statistics over the "
                f"batch. Train with batches of 2 or more, call .eval() to use the running "
                f"statistics (inference on one sample), or use lam='channel' or a number")
        return getattr(self, self._branch_name)(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool x with the temperature ``self.temperature(x)``.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, C, H, W)``, or ``(C, H, W)`` with a fixed or per-channel lam.

        Returns
        -------
        torch.Tensor
            ``(N, C, H_out, W_out)`` (or ``(C, H_out, W_out)``) in x's memory layout.
        """
        return maxent_pool2d(x, self.temperature(x), self.kernel_size, self.stride,
                             self.padding, self.ceil_mode)

    def extra_repr(self) -> str:
        text = (f"num_features={self.num_features}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, ceil_mode={self.ceil_mode}, "
                f"lam={self.mode if self.mode != 'fixed' else float(self.lam)!r}")
        if self.mode == "gfgp":
            text += f", activation={self.activation!r}, hidden={self.hidden}"
        return text


def _rename_branch(module, state_dict, prefix, *_):
    """Load-state-dict pre-hook: the GFGP branch saved under another name (GFGP's ``ToParam``,
    npool's ``branch``) is loaded into this module's branch."""
    own = prefix + module._branch_name + "."
    for name in (MaxEntPool2d._branch_name,) + MaxEntPool2d._other_branch_names:
        other = prefix + name + "."
        if other == own:
            continue
        for key in [key for key in state_dict if key.startswith(other)]:
            if own + key[len(other):] not in state_dict:  # else strict loading reports it
                state_dict[own + key[len(other):]] = state_dict.pop(key)
