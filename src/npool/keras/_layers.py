"""Keras 3 layers of npool's pooling ops, written once for every Keras backend and named as
Keras names its own pooling layers. Each layer calls the op of the adapter of Keras' backend
(``_backends.op``): npool.tf on TensorFlow, npool.jax on JAX, npool.torch on PyTorch."""
from typing import Any, Dict, List, Optional, Tuple, Union

import keras

from .. import _checks, _op_table
from .._types import Count, OutputSize, Size
from ._backends import op, require_supported_backend

Tensor = Any  # a tensor of Keras' backend (tf.Tensor, jax.Array, torch.Tensor) or an array
Shape = Tuple[Optional[int], ...]  # a Keras shape, None for unknown sizes


def _pooled_shape(input_shape, nd, data_format, window_options):
    """A local pool's output shape (None where a size is not known yet)."""
    shape = list(input_shape)
    axes = range(1, 1 + nd) if data_format == "channels_last" else range(2, 2 + nd)
    out = _checks.core_window_arguments(nd, [shape[a] for a in axes], window_options)[3]
    for a, n in zip(axes, out):
        shape[a] = n
    return tuple(shape)


class _SoftPoolingND(keras.layers.Layer):
    """SoftPool with the arguments of Keras' pooling layers.

    ``padding`` is Keras' ``"valid"`` or ``"same"``, or explicit: ints on both sides (at most
    half the pool size) or ``(before, after)`` pairs per axis; padded cells are left out of
    the windows. ``ceil_mode`` is PyTorch's output-size rule. ``data_format`` defaults to
    ``keras.config.image_data_format()``.
    """

    _nd: int = 0  # the spatial axes, set by each subclass

    def __init__(self, pool_size: Size = 2, strides: Optional[Size] = None,
                 padding: Union[str, Size] = "valid", ceil_mode: bool = False,
                 data_format: Optional[str] = None, **kwargs: Any) -> None:
        require_supported_backend()
        super().__init__(**kwargs)
        self.pool_size = pool_size
        self.strides = strides
        self.padding = padding
        self.ceil_mode = ceil_mode
        self.data_format = data_format or keras.config.image_data_format()
        _checks.WindowArgs(self._nd, pool_size, strides, padding, ceil_mode)  # fail early

    def call(self, inputs: Tensor) -> Tensor:
        """Pool the inputs.

        Parameters
        ----------
        inputs : tensor
            ``(batch, *spatial, channels)`` (channels_last) or ``(batch, channels,
            *spatial)``, with the class's number of spatial axes.

        Returns
        -------
        tensor
            The pooled tensor, in the backend's tensor type and the inputs' dtype.
        """
        return op(f"soft_pool{self._nd}d")(inputs, self.pool_size, self.strides, self.padding,
                                           self.ceil_mode, self.data_format)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return _pooled_shape(input_shape, self._nd, self.data_format, dict(
            kernel_size=self.pool_size, stride=self.strides, padding=self.padding,
            ceil_mode=self.ceil_mode))

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "pool_size": self.pool_size, "strides": self.strides,
                "padding": self.padding, "ceil_mode": self.ceil_mode,
                "data_format": self.data_format}


def _soft_pool_doc(nd):
    """The numpydoc docstring of SoftPooling{nd}D."""
    axes = {1: "steps", 2: "rows, cols", 3: "dim1, dim2, dim3"}[nd]
    shape, out = {1: ("(2, 8, 3)", "(2, 4, 3)"), 2: ("(2, 8, 8, 3)", "(2, 4, 4, 3)"),
                  3: ("(2, 4, 8, 8, 3)", "(2, 2, 4, 4, 3)")}[nd]
    return f"""SoftPool over {nd} spatial {"axis" if nd == 1 else "axes"}, with ``keras.layers.MaxPooling{nd}D``'s arguments.

    Each output is the softmax-weighted mean of its window's real cells (Stergiou et al.,
    ICCV 2021)::

        y_o = sum_(i in window o) softmax(x over window o)_i * x_i

    Input ``(batch, {axes}, channels)`` (channels_last) or ``(batch, channels, {axes})``,
    float16, bfloat16, float32 or float64; output the same with each spatial size
    ``floor((L + 2 padding - pool_size [+ strides - 1]) / strides) + 1`` (PyTorch's rule;
    ``ceil_mode`` adds the bracket). Runs on Keras' TensorFlow, JAX and PyTorch backends
    through npool.tf, npool.jax and npool.torch (npool's kernels on the CPU; see each adapter
    for graphs that must stand alone, such as SavedModel, XLA or ``jax.export``).

    Parameters
    ----------
    pool_size : int or tuple of {nd} ints, default 2
        The window.
    strides : int or tuple of {nd} ints, optional
        The step between windows; default ``pool_size``.
    padding : "valid", "same", int, tuple of {nd} ints or of {nd} (before, after) pairs, default "valid"
        Keras' ``"valid"`` (none) and ``"same"`` (ceil(L / strides) outputs, the smaller half
        of the padding before: TensorFlow's rule), explicit padding on both sides (at most
        half the pool size: PyTorch's) or ``(before, after)`` per axis; padded cells are left
        out of the windows (not zeros).
    ceil_mode : bool, default False
        PyTorch's output-size rule with ceil instead of floor.
    data_format : {{"channels_last", "channels_first"}}, optional
        Where the channel axis is; default ``keras.config.image_data_format()``.
    **kwargs
        Keras' base layer arguments (``name``, ``dtype``, ``trainable``).

    Raises
    ------
    ValueError
        Bad window arguments.

    See Also
    --------
    npool.tf.soft_pool{nd}d : The function (TensorFlow).

    Examples
    --------
    >>> layer = npool.keras.SoftPooling{nd}D(pool_size=2)
    >>> tuple(layer(np.ones({shape}, "float32")).shape)
    {out}
    """


@keras.saving.register_keras_serializable(package="npool")
class SoftPooling1D(_SoftPoolingND):
    __doc__ = _soft_pool_doc(1)
    _nd = 1


@keras.saving.register_keras_serializable(package="npool")
class SoftPooling2D(_SoftPoolingND):
    __doc__ = _soft_pool_doc(2)
    _nd = 2


@keras.saving.register_keras_serializable(package="npool")
class SoftPooling3D(_SoftPoolingND):
    __doc__ = _soft_pool_doc(3)
    _nd = 3


class _AdaptiveSoftPoolingND(keras.layers.Layer):
    """Adaptive SoftPool: an output of ``output_size`` whatever the input's spatial size."""

    _nd: int = 0  # the spatial axes, set by each subclass

    def __init__(self, output_size: OutputSize, data_format: Optional[str] = None,
                 **kwargs: Any) -> None:
        require_supported_backend()
        super().__init__(**kwargs)
        _checks.adaptive_output_size(output_size, self._nd)  # fail early
        self.output_size = list(output_size) if isinstance(output_size, (tuple, list)) \
            else output_size
        self.data_format = data_format or keras.config.image_data_format()

    def call(self, inputs: Tensor) -> Tensor:
        """Pool the inputs.

        Parameters
        ----------
        inputs : tensor
            ``(batch, *spatial, channels)`` (channels_last) or ``(batch, channels,
            *spatial)``, with the class's number of spatial axes.

        Returns
        -------
        tensor
            ``output_size`` along the spatial axes, in the backend's tensor type.
        """
        size = self.output_size
        return op(f"adaptive_soft_pool{self._nd}d")(
            inputs, tuple(size) if isinstance(size, list) else size, self.data_format)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return _pooled_shape(input_shape, self._nd, self.data_format,
                             {"output_size": self.output_size})

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "output_size": self.output_size,
                "data_format": self.data_format}


def _adaptive_soft_pool_doc(nd):
    """The numpydoc docstring of AdaptiveSoftPooling{nd}D."""
    axes = {1: "steps", 2: "rows, cols", 3: "dim1, dim2, dim3"}[nd]
    shape, size, out = {1: ("(2, 10, 3)", "4", "(2, 4, 3)"),
                        2: ("(2, 10, 9, 3)", "(4, None)", "(2, 4, 9, 3)"),
                        3: ("(2, 5, 9, 9, 3)", "3", "(2, 3, 3, 3, 3)")}[nd]
    return f"""Adaptive SoftPool over {nd} spatial {"axis" if nd == 1 else "axes"}: an output of ``output_size`` whatever the input's size.

    SoftPool over PyTorch's adaptive windows (``nn.AdaptiveAvgPool{nd}d``'s): window o of n
    over L cells spans ``[floor(o L / n), ceil((o + 1) L / n))``::

        y_o = sum_(i in window o) softmax(x over window o)_i * x_i

    Input ``(batch, {axes}, channels)`` (channels_last) or ``(batch, channels, {axes})``;
    output the same with ``output_size`` along the spatial axes. Runs on Keras' TensorFlow,
    JAX and PyTorch backends through npool.tf, npool.jax and npool.torch.

    Parameters
    ----------
    output_size : int or tuple of {nd} ints or None
        The output's spatial size; None keeps the input's size on that axis.
    data_format : {{"channels_last", "channels_first"}}, optional
        Where the channel axis is; default ``keras.config.image_data_format()``.
    **kwargs
        Keras' base layer arguments (``name``, ``dtype``, ``trainable``).

    Raises
    ------
    TypeError, ValueError
        An output size that is not an int or None, below 1, or of the wrong length.

    See Also
    --------
    npool.tf.adaptive_soft_pool{nd}d : The function (TensorFlow).

    Examples
    --------
    >>> layer = npool.keras.AdaptiveSoftPooling{nd}D({size})
    >>> tuple(layer(np.ones({shape}, "float32")).shape)
    {out}
    """


@keras.saving.register_keras_serializable(package="npool")
class AdaptiveSoftPooling1D(_AdaptiveSoftPoolingND):
    __doc__ = _adaptive_soft_pool_doc(1)
    _nd = 1


@keras.saving.register_keras_serializable(package="npool")
class AdaptiveSoftPooling2D(_AdaptiveSoftPoolingND):
    __doc__ = _adaptive_soft_pool_doc(2)
    _nd = 2


@keras.saving.register_keras_serializable(package="npool")
class AdaptiveSoftPooling3D(_AdaptiveSoftPoolingND):
    __doc__ = _adaptive_soft_pool_doc(3)
    _nd = 3


_ROUNDING = """    rounding : {"floor", "round"}, default "floor"
        The count of a fraction: ``max(1, floor(k n + 1e-6))``, or WILDCAT's
        ``max(1, round(k n))`` (half to even).
"""
# name: (summary, formula, its own parameters, the example's arguments)
_GLOBAL = {
    "GlobalMaxPool": ("Global max pooling", "``y = max x`` over the spatial cells of each map; "
                      "ties go to the lowest flat index.", "", ""),
    "GlobalAvgPool": ("Global average pooling", "``y = mean x`` over the spatial cells of each "
                      "map.", "", ""),
    "GlobalLSEPool": (
        "Global LogSumExp pooling", "``y = (1/beta) log(mean exp(beta x))`` over the spatial "
        "cells of each map: the max as\n    beta grows, the mean as it shrinks to 0.",
        "    beta : float, default 1.0\n        The sharpness, any finite number; 0 gives the "
        "mean.\n", "beta=2.0"),
    "GlobalGeMPool": (
        "Generalised-mean (GeM) pooling", "``y = (mean max(x, eps)^p)^(1/p)`` over the spatial "
        "cells of each map, p a weight\n    (learnt by default): the mean at ``p = 1``, the max "
        "as p grows.",
        "    p : float, default 3.0\n        The initial exponent, positive and finite.\n"
        "    eps : float, default 1e-6\n        The clamp floor.\n"
        "    per_channel : bool, default False\n        One p per channel (built from the input's "
        "channels); False shares one, ``(1,)``.\n"
        "    learn_p : bool, default True\n        p a trainable weight; False keeps it fixed.\n",
        "p=3.0"),
    "GlobalKMaxPool": (
        "Global k-max pooling", "The mean of the k largest cells of each map; ties go to the "
        "lower flat indices.",
        "    k : int or float, default 1\n        A count (an int >= 1, clipped to the number "
        "of cells n) or a fraction in (0, 1]\n        of the cells.\n" + _ROUNDING, "k=3"),
    "WeldonPool": (
        "WELDON pooling", "``y = mean(kmax largest) + alpha * mean(kmin smallest)`` over the "
        "spatial cells of each map\n    (WILDCAT's pooling is half of it).",
        "    kmax : int or float, default 1\n        The count of largest cells: an int >= 1 "
        "(clipped to the map) or a fraction in (0, 1].\n"
        "    kmin : int or float, optional\n        The count of smallest cells, as kmax; None "
        "is kmax, 0 drops the second term.\n"
        "    alpha : float, default 1.0\n        The weight of the smallest cells' mean, any "
        "finite number.\n" + _ROUNDING, "kmax=3, kmin=2, alpha=0.7"),
}
_FUNCTIONS = {op.layer: op.name for op in _op_table.ops_of("global")}  # layer -> function


def _global_doc(base, nd=None):
    """The numpydoc docstring of global pool ``base`` (fixed to ``nd`` spatial axes)."""
    summary, formula, options, example = _GLOBAL[base]
    name = base if nd is None else f"{_op_table.keras_name(base)}{nd}D"
    rank = ("any number of spatial axes" if nd is None else
            f"{nd} spatial {'axis' if nd == 1 else 'axes'} (rank-{nd + 2} inputs, as\n    "
            f"``keras.layers.GlobalMaxPooling{nd}D``)")
    spatial = ("None (default) takes any number of spatial axes, an int requires that many"
               if nd is None else f"None (default) or {nd}, the class's")
    shape = (2, 5, 6, 3) if nd is None else {1: (2, 6, 3), 2: (2, 5, 6, 3),
                                              3: (2, 4, 5, 6, 3)}[nd]
    over = "" if nd is None else f" over {nd} spatial {'axis' if nd == 1 else 'axes'}"
    return f"""{summary}{over}, a Keras layer.

    {formula}

    Input ``(batch, *spatial, channels)`` (channels_last) or ``(batch, channels, *spatial)``
    with {rank}; float16, bfloat16, float32 or float64. Output ``(batch, channels)``, or with
    ``keepdims`` the spatial axes kept as size 1.

    Parameters
    ----------
{options}    keepdims : bool, default False
        Keep the spatial axes with size 1, as Keras' global pooling layers.
    data_format : {{"channels_last", "channels_first"}}, optional
        Where the channel axis is; default ``keras.config.image_data_format()``.
    spatial_dims : int, optional
        The number of spatial axes: {spatial}.
    **kwargs
        Keras' base layer arguments (``name``, ``dtype``, ``trainable``).

    Raises
    ------
    ValueError
        A bad option, or a spatial_dims the class contradicts.

    See Also
    --------
    npool.tf.{_FUNCTIONS[base]} : The function (TensorFlow).

    Examples
    --------
    >>> layer = npool.keras.{name}({example})
    >>> tuple(layer(np.ones({shape}, "float32")).shape)
    (2, 3)
    """


class _GlobalPooling(keras.layers.Layer):
    """A global pool over all spatial cells of each map, with Keras' ``keepdims`` and
    ``data_format`` (default ``keras.config.image_data_format()``). ``spatial_dims=None``
    takes any number of spatial axes; the ``…1D/2D/3D`` classes require theirs, as Keras'
    ``GlobalMaxPooling2D`` does."""

    spatial_dims: Optional[int] = None
    _options: Tuple[str, ...] = ()
    _op: str = ""  # the adapters' function name, set by each subclass

    def __init__(self, keepdims: bool = False, data_format: Optional[str] = None,
                 spatial_dims: Optional[int] = None, **kwargs: Any) -> None:
        require_supported_backend()
        super().__init__(**kwargs)
        self.keepdims = _checks.flag(keepdims, "keepdims")
        self.data_format = data_format or keras.config.image_data_format()
        cls = type(self)
        spatial_dims = _checks.check_spatial_dims(spatial_dims)
        if cls.spatial_dims is not None and spatial_dims not in (None, cls.spatial_dims):
            raise ValueError(f"{cls.__name__} pools over {cls.spatial_dims} spatial axes, "
                             f"spatial_dims={spatial_dims} contradicts it")
        self.spatial_dims = cls.spatial_dims or spatial_dims

    def _arguments(self):
        return {name: getattr(self, name) for name in self._options}

    def call(self, inputs: Tensor) -> Tensor:
        """Pool every map of the inputs.

        Parameters
        ----------
        inputs : tensor
            ``(batch, *spatial, channels)`` (channels_last) or ``(batch, channels,
            *spatial)``.

        Returns
        -------
        tensor
            ``(batch, channels)``, or with ``keepdims`` the spatial axes kept as size 1.
        """
        rank = len(inputs.shape)
        if rank < 3 or (self.spatial_dims is not None and rank != self.spatial_dims + 2):
            wanted = "at least one" if self.spatial_dims is None else str(self.spatial_dims)
            raise ValueError(f"{type(self).__name__} needs (batch, *spatial, channels) inputs "
                             f"with {wanted} spatial axes, got shape {tuple(inputs.shape)}")
        return op(type(self)._op)(inputs, keepdims=self.keepdims, data_format=self.data_format,
                                  **self._arguments())

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        shape = list(input_shape)
        last = self.data_format == "channels_last"
        if not self.keepdims:
            return (shape[0], shape[-1] if last else shape[1])
        ones: List[Optional[int]] = [1] * (len(shape) - 2)
        return tuple([shape[0]] + ones + [shape[-1]] if last else shape[:2] + ones)

    def get_config(self) -> Dict[str, Any]:
        config = {**super().get_config(), "keepdims": self.keepdims,
                  "data_format": self.data_format, **self._arguments()}
        if type(self).spatial_dims is None:
            config["spatial_dims"] = self.spatial_dims
        return config


@keras.saving.register_keras_serializable(package="npool")
class GlobalMaxPool(_GlobalPooling):
    __doc__ = _global_doc("GlobalMaxPool")
    _op = "global_max_pool"


@keras.saving.register_keras_serializable(package="npool")
class GlobalAvgPool(_GlobalPooling):
    __doc__ = _global_doc("GlobalAvgPool")
    _op = "global_avg_pool"


@keras.saving.register_keras_serializable(package="npool")
class GlobalLSEPool(_GlobalPooling):
    __doc__ = _global_doc("GlobalLSEPool")
    _op = "global_lse_pool"
    _options = ("beta",)

    def __init__(self, beta: float = 1.0, keepdims: bool = False,
                 data_format: Optional[str] = None, spatial_dims: Optional[int] = None,
                 **kwargs: Any) -> None:
        super().__init__(keepdims, data_format, spatial_dims, **kwargs)
        self.beta = _checks.finite_real(beta, "beta")


@keras.saving.register_keras_serializable(package="npool")
class GlobalGeMPool(_GlobalPooling):
    __doc__ = _global_doc("GlobalGeMPool")
    _op = "global_gem_pool"

    def __init__(self, p: float = 3.0, eps: float = 1e-6, per_channel: bool = False,
                 learn_p: bool = True, keepdims: bool = False,
                 data_format: Optional[str] = None, spatial_dims: Optional[int] = None,
                 **kwargs: Any) -> None:
        super().__init__(keepdims, data_format, spatial_dims, **kwargs)
        self.initial_p = _checks.finite_real(p, "p")
        if self.initial_p <= 0:
            raise ValueError(f"p must be positive, got {p!r}")
        self.eps = _checks.finite_real(eps, "eps")
        self.per_channel = _checks.flag(per_channel, "per_channel")
        self.learn_p = _checks.flag(learn_p, "learn_p")

    def build(self, input_shape: Shape) -> None:
        channels = input_shape[-1] if self.data_format == "channels_last" else input_shape[1]
        if self.per_channel and channels is None:
            raise ValueError("GlobalGeMPool(per_channel=True) needs the number of channels "
                             "when it is built")
        self.p = self.add_weight(name="p", shape=(channels if self.per_channel else 1,),
                                 initializer=keras.initializers.Constant(self.initial_p),
                                 trainable=self.learn_p)

    def _arguments(self):
        return {"p": keras.ops.convert_to_tensor(self.p), "eps": self.eps}

    def get_config(self) -> Dict[str, Any]:
        config = {**keras.layers.Layer.get_config(self), "p": self.initial_p, "eps": self.eps,
                  "per_channel": self.per_channel, "learn_p": self.learn_p,
                  "keepdims": self.keepdims, "data_format": self.data_format}
        if type(self).spatial_dims is None:
            config["spatial_dims"] = self.spatial_dims
        return config


@keras.saving.register_keras_serializable(package="npool")
class GlobalKMaxPool(_GlobalPooling):
    __doc__ = _global_doc("GlobalKMaxPool")
    _op = "global_kmax_pool"
    _options = ("k", "rounding")

    def __init__(self, k: Count = 1, rounding: str = "floor", keepdims: bool = False,
                 data_format: Optional[str] = None, spatial_dims: Optional[int] = None,
                 **kwargs: Any) -> None:
        super().__init__(keepdims, data_format, spatial_dims, **kwargs)
        _checks.k_count(k, 1, "k", rounding=rounding)
        self.k, self.rounding = k, rounding


@keras.saving.register_keras_serializable(package="npool")
class WeldonPool(_GlobalPooling):
    __doc__ = _global_doc("WeldonPool")
    _op = "weldon_pool"
    _options = ("kmax", "kmin", "alpha", "rounding")

    def __init__(self, kmax: Count = 1, kmin: Optional[Count] = None, alpha: float = 1.0,
                 rounding: str = "floor", keepdims: bool = False,
                 data_format: Optional[str] = None, spatial_dims: Optional[int] = None,
                 **kwargs: Any) -> None:
        super().__init__(keepdims, data_format, spatial_dims, **kwargs)
        _checks.weldon_counts(kmax, kmin, 1, rounding)
        self.kmax, self.kmin, self.rounding = kmax, kmin, rounding
        self.alpha = _checks.finite_real(alpha, "alpha")


@keras.saving.register_keras_serializable(package="npool")
class GlobalMaxPooling1D(GlobalMaxPool):
    __doc__ = _global_doc("GlobalMaxPool", 1)
    spatial_dims = 1


@keras.saving.register_keras_serializable(package="npool")
class GlobalMaxPooling2D(GlobalMaxPool):
    __doc__ = _global_doc("GlobalMaxPool", 2)
    spatial_dims = 2


@keras.saving.register_keras_serializable(package="npool")
class GlobalMaxPooling3D(GlobalMaxPool):
    __doc__ = _global_doc("GlobalMaxPool", 3)
    spatial_dims = 3


@keras.saving.register_keras_serializable(package="npool")
class GlobalAveragePooling1D(GlobalAvgPool):
    __doc__ = _global_doc("GlobalAvgPool", 1)
    spatial_dims = 1


@keras.saving.register_keras_serializable(package="npool")
class GlobalAveragePooling2D(GlobalAvgPool):
    __doc__ = _global_doc("GlobalAvgPool", 2)
    spatial_dims = 2


@keras.saving.register_keras_serializable(package="npool")
class GlobalAveragePooling3D(GlobalAvgPool):
    __doc__ = _global_doc("GlobalAvgPool", 3)
    spatial_dims = 3


@keras.saving.register_keras_serializable(package="npool")
class GlobalLSEPooling1D(GlobalLSEPool):
    __doc__ = _global_doc("GlobalLSEPool", 1)
    spatial_dims = 1


@keras.saving.register_keras_serializable(package="npool")
class GlobalLSEPooling2D(GlobalLSEPool):
    __doc__ = _global_doc("GlobalLSEPool", 2)
    spatial_dims = 2


@keras.saving.register_keras_serializable(package="npool")
class GlobalLSEPooling3D(GlobalLSEPool):
    __doc__ = _global_doc("GlobalLSEPool", 3)
    spatial_dims = 3


@keras.saving.register_keras_serializable(package="npool")
class GlobalGeMPooling1D(GlobalGeMPool):
    __doc__ = _global_doc("GlobalGeMPool", 1)
    spatial_dims = 1


@keras.saving.register_keras_serializable(package="npool")
class GlobalGeMPooling2D(GlobalGeMPool):
    __doc__ = _global_doc("GlobalGeMPool", 2)
    spatial_dims = 2


@keras.saving.register_keras_serializable(package="npool")
class GlobalGeMPooling3D(GlobalGeMPool):
    __doc__ = _global_doc("GlobalGeMPool", 3)
    spatial_dims = 3


@keras.saving.register_keras_serializable(package="npool")
class GlobalKMaxPooling1D(GlobalKMaxPool):
    __doc__ = _global_doc("GlobalKMaxPool", 1)
    spatial_dims = 1


@keras.saving.register_keras_serializable(package="npool")
class GlobalKMaxPooling2D(GlobalKMaxPool):
    __doc__ = _global_doc("GlobalKMaxPool", 2)
    spatial_dims = 2


@keras.saving.register_keras_serializable(package="npool")
class GlobalKMaxPooling3D(GlobalKMaxPool):
    __doc__ = _global_doc("GlobalKMaxPool", 3)
    spatial_dims = 3


@keras.saving.register_keras_serializable(package="npool")
class WeldonPooling1D(WeldonPool):
    __doc__ = _global_doc("WeldonPool", 1)
    spatial_dims = 1


@keras.saving.register_keras_serializable(package="npool")
class WeldonPooling2D(WeldonPool):
    __doc__ = _global_doc("WeldonPool", 2)
    spatial_dims = 2


@keras.saving.register_keras_serializable(package="npool")
class WeldonPooling3D(WeldonPool):
    __doc__ = _global_doc("WeldonPool", 3)
    spatial_dims = 3


@keras.saving.register_keras_serializable(package="npool")
class MaxEntPooling2D(keras.layers.Layer):
    """Max-Entropy pooling over 2 spatial axes with a learnable or fixed temperature, a Keras layer.

    SoftPool with a temperature lam (Kobayashi, ICCV 2019)::

        y_o = sum_(i in window o) softmax(lam_o * x over window o)_i * x_i

    The window's mean at ``lam = 0``, SoftPool at 1, its max as lam grows (its min as it
    falls). Input ``(batch, rows, cols, channels)`` (channels_last) or ``(batch, channels,
    rows, cols)``; output as ``SoftPooling2D``'s.

    Parameters
    ----------
    pool_size : int or tuple of 2 ints, default 2
        The window.
    strides : int or tuple of 2 ints, optional
        The step between windows; default ``pool_size``.
    padding : "valid", "same", int, tuple of 2 ints or of 2 (before, after) pairs, default "valid"
        As ``SoftPooling2D``'s; padded cells are left out of the windows.
    ceil_mode : bool, default False
        PyTorch's output-size rule with ceil instead of floor.
    lam : {"gfgp", "channel"} or float, default "gfgp"
        ``"gfgp"``: the Global-Feature-Guided branch computes a temperature per sample and
        channel from the input (global average pooling -> 1x1 conv -> BatchNorm -> ReLU -> 1x1
        conv -> BatchNorm -> ``activation``); ``"channel"``: a learnable temperature per
        channel, starting at 1; a number: a fixed temperature.
    activation : {"sigmoid", "softplus"}, default "sigmoid"
        The GFGP branch's last step.
    hidden : int, optional
        The GFGP branch's hidden width; default ``channels // 2`` (at least 1).
    data_format : {"channels_last", "channels_first"}, optional
        Where the channel axis is; default ``keras.config.image_data_format()``.
    **kwargs
        Keras' base layer arguments (``name``, ``dtype``, ``trainable``).

    Raises
    ------
    ValueError
        Bad window arguments, an unknown lam mode or activation, or a lam number that is not
        finite.

    See Also
    --------
    npool.tf.maxent_pool2d : The function (TensorFlow), with any lam tensor.

    Examples
    --------
    >>> layer = npool.keras.MaxEntPooling2D(pool_size=2, lam="channel")
    >>> tuple(layer(np.ones((2, 8, 8, 3), "float32")).shape)
    (2, 4, 4, 3)
    """

    def __init__(self, pool_size: Size = 2, strides: Optional[Size] = None,
                 padding: Union[str, Size] = "valid", ceil_mode: bool = False,
                 lam: Union[str, float] = "gfgp", activation: str = "sigmoid",
                 hidden: Optional[int] = None, data_format: Optional[str] = None,
                 **kwargs: Any) -> None:
        require_supported_backend()
        super().__init__(**kwargs)
        if activation not in ("sigmoid", "softplus"):
            raise ValueError(f"activation must be 'sigmoid' or 'softplus', got {activation!r}")
        if isinstance(lam, str) and lam not in ("gfgp", "channel"):
            raise ValueError(f"lam must be 'gfgp', 'channel' or a number, got {lam!r}")
        if not isinstance(lam, str):
            lam = _checks.finite_real(lam, "lam")
        _checks.WindowArgs(2, pool_size, strides, padding, ceil_mode)  # fail early
        self.pool_size, self.strides, self.padding = pool_size, strides, padding
        self.ceil_mode, self.lam, self.activation, self.hidden = ceil_mode, lam, activation, hidden
        self.data_format = data_format or keras.config.image_data_format()

    def build(self, input_shape: Shape) -> None:
        last = self.data_format == "channels_last"
        channels = input_shape[-1] if last else input_shape[1]
        if self.lam not in ("gfgp", "channel"):
            return  # a fixed temperature: no weights
        if channels is None:
            raise ValueError(f"MaxEntPooling2D(lam={self.lam!r}) needs the number of channels, "
                             f"got input shape {tuple(input_shape)}")
        axis = -1 if last else 1
        if self.lam == "gfgp":
            hidden = self.hidden or max(1, channels // 2)
            policy = {"dtype": self.dtype_policy}  # a layer's own policy reaches its branch
            self.branch = [
                keras.layers.GlobalAveragePooling2D(data_format=self.data_format, keepdims=True,
                                                    **policy),
                keras.layers.Conv2D(hidden, 1, data_format=self.data_format, **policy),
                keras.layers.BatchNormalization(axis=axis, **policy), keras.layers.ReLU(**policy),
                keras.layers.Conv2D(channels, 1, data_format=self.data_format, **policy),
                keras.layers.BatchNormalization(axis=axis, **policy),
                keras.layers.Activation(self.activation, **policy)]
            shape = input_shape
            for layer in self.branch:
                layer.build(shape)
                shape = layer.compute_output_shape(shape)
        elif self.lam == "channel":
            self.temperature = self.add_weight(
                shape=(channels,) if last else (channels, 1, 1), initializer="ones",
                name="temperature")

    def call(self, inputs: Tensor, training: Optional[bool] = None) -> Tensor:
        """Pool the inputs with their temperature.

        Parameters
        ----------
        inputs : tensor
            ``(batch, rows, cols, channels)`` (channels_last) or ``(batch, channels, rows,
            cols)``.
        training : bool, optional
            Keras' training flag, for the GFGP branch's BatchNormalization layers.

        Returns
        -------
        tensor
            As ``SoftPooling2D``'s output.
        """
        if self.lam == "gfgp":
            lam = inputs
            for layer in self.branch:
                lam = layer(lam, training=training) if isinstance(
                    layer, keras.layers.BatchNormalization) else layer(lam)
        elif self.lam == "channel":
            lam = keras.ops.convert_to_tensor(self.temperature)  # the backend's own tensor
        else:
            lam = self.lam
        return op("maxent_pool2d")(inputs, lam, self.pool_size, self.strides, self.padding,
                                   self.ceil_mode, self.data_format)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return SoftPooling2D(self.pool_size, self.strides, self.padding, self.ceil_mode,
                             self.data_format).compute_output_shape(input_shape)

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "pool_size": self.pool_size, "strides": self.strides,
                "padding": self.padding, "ceil_mode": self.ceil_mode, "lam": self.lam,
                "activation": self.activation, "hidden": self.hidden,
                "data_format": self.data_format}
