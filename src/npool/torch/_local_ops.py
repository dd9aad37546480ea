"""npool.torch's local pools (SoftPool, Max-Ent) registered with ``torch.library``: for each,
the forward and backward custom ops, their fakes, autograd, second order, autocast and vmap
rules, together, and the functional forms."""
import math
from typing import Optional, Protocol, Tuple, Union

import torch

from .. import _checks
from . import _standard_ops
from .._op_table import core_functions
from .._types import OutputSize, Size
from ._registration import (empty_in_layout, folded_into_batch, loop_over_mapped_axis,
                            onnx_export, register_family_autocast, second_order, window_lists)
from ._tensors import from_core, to_core


# ------------------------------------------------------------------ the window in the schemas
# Every local op, windowed or adaptive, is one of two custom ops (npool::soft_pool,
# npool::maxent_pool) whose schema carries the general window: kernel_size, stride and
# dilation (nd ints each), padding (2 nd ints: before and after each axis, "same" resolved for
# the input), ceil_mode, and output_size, empty for a windowed pool; an adaptive pool passes
# output_size and empty window lists.
def _pairs(padding):
    """The schemas' flat padding list as (before, after) pairs."""
    return tuple(zip(padding[0::2], padding[1::2]))


def _core(kind, kernel_size, stride, padding, ceil_mode, dilation, output_size):
    """(forward, backward, window arguments, window keywords) of the core functions a call of
    ``npool::<kind>_pool`` reaches."""
    if output_size:
        forward, backward = core_functions(f"adaptive_{kind}_pool{len(output_size)}d")
        return forward, backward, (output_size,), {}
    forward, backward = core_functions(f"{kind}_pool{len(kernel_size)}d")
    return (forward, backward, (kernel_size, stride, _pairs(padding), ceil_mode),
            {"dilation": dilation})


def _output_shape(x, kernel_size, stride, padding, ceil_mode, dilation, output_size):
    """The op's output shape for input x (symbolic sizes welcome: the fakes use it)."""
    nd = len(output_size or kernel_size)
    if x.dim() not in (nd + 1, nd + 2):
        raise ValueError(f"x must be {nd + 1}-D or {nd + 2}-D for a {nd}-d pool, got {x.dim()}-D")
    if output_size:
        return tuple(x.shape[:-nd]) + tuple(output_size)
    args = _checks.WindowArgs(nd, tuple(kernel_size), tuple(stride), _pairs(padding),
                              ceil_mode, dilation=tuple(dilation))
    return tuple(x.shape[:-nd]) + args.output_size(tuple(x.shape[-nd:]))


def _spatial_rank(kernel_size, output_size):
    return len(output_size or kernel_size)


# ------------------------------------------------------------------ SoftPool


@torch.library.custom_op("npool::soft_pool", mutates_args=())
def _soft_pool(x: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
               ceil_mode: bool, dilation: list[int], output_size: list[int]) -> torch.Tensor:
    window = (kernel_size, stride, padding, ceil_mode, dilation, output_size)
    forward, _, args, keywords = _core("soft", *window)
    y = _soft_pool_fake(x, *window)  # torch's allocator
    forward(to_core(x), *args, **keywords, out=to_core(y))
    return y


@_soft_pool.register_fake
def _soft_pool_fake(x, kernel_size, stride, padding, ceil_mode, dilation, output_size):
    window = (kernel_size, stride, padding, ceil_mode, dilation, output_size)
    return empty_in_layout(x, _output_shape(x, *window), _spatial_rank(kernel_size, output_size))


@torch.library.custom_op("npool::soft_pool_backward", mutates_args=())
def _soft_pool_backward(grad_out: torch.Tensor, x: torch.Tensor, kernel_size: list[int],
                        stride: list[int], padding: list[int], ceil_mode: bool,
                        dilation: list[int], output_size: list[int]) -> torch.Tensor:
    _, backward, args, keywords = _core("soft", kernel_size, stride, padding, ceil_mode,
                                        dilation, output_size)
    grad_out = grad_out.to(x.dtype)
    grad_x = empty_in_layout(x, tuple(x.shape), _spatial_rank(kernel_size, output_size))
    backward(to_core(grad_out), to_core(x), *args, **keywords, out=to_core(grad_x))
    return grad_x


@_soft_pool_backward.register_fake
def _(grad_out, x, kernel_size, stride, padding, ceil_mode, dilation, output_size):
    return empty_in_layout(x, tuple(x.shape), _spatial_rank(kernel_size, output_size))


def _soft_pool_setup_context(ctx, inputs, output):
    x, *window = inputs
    ctx.save_for_backward(x)
    ctx.window = window


def _soft_pool_autograd(ctx, grad_out):
    x, = ctx.saved_tensors
    return (_soft_pool_backward(grad_out, x, *ctx.window),) + (None,) * len(ctx.window)


_soft_pool.register_autograd(_soft_pool_autograd, setup_context=_soft_pool_setup_context)


def _windowed(nd, x, kernel_size, stride, padding, ceil_mode, dilation):
    """The schemas' window lists of a windowed pool's arguments for input x (and no
    output_size)."""
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"ceil_mode must be a bool, got {type(ceil_mode).__name__}")
    spatial = tuple(x.shape[-nd:]) if isinstance(x, torch.Tensor) and x.dim() > nd else None
    kernel, stride, padding, dilation = window_lists(nd, kernel_size, stride, padding,
                                                     dilation, spatial)
    return kernel, stride, padding, ceil_mode, dilation, []


def _adaptive(nd, x, output_size):
    """The schemas' window lists of an adaptive pool: its output sizes, None entries resolved
    to x's (symbolic sizes welcome)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (nd + 1, nd + 2):
        raise ValueError(f"x must be {nd + 1}-D or {nd + 2}-D for a {nd}-d pool, got {x.dim()}-D")
    sizes = _checks.adaptive_output_size(output_size, nd, tuple(x.shape[-nd:]))
    _checks.check_adaptive_memory(output_size, sizes, math.prod(x.shape[:-nd]))
    return [], [], [], False, [], list(sizes)


class SoftPoolFunction(Protocol):
    """``npool.torch.soft_pool{1,2,3}d`` (what type checkers see of the functions made once per
    dimension)."""

    def __call__(self, x: torch.Tensor, kernel_size: Size, stride: Optional[Size] = None,
                 padding: Size = 0, ceil_mode: bool = False, *,
                 dilation: Size = 1) -> torch.Tensor: ...


def _make_soft_pool(nd) -> SoftPoolFunction:
    def soft_pool(x: torch.Tensor, kernel_size: Size, stride: Optional[Size] = None,
                  padding: Size = 0, ceil_mode: bool = False, *,
                  dilation: Size = 1) -> torch.Tensor:
        window = _windowed(nd, x, kernel_size, stride, padding, ceil_mode, dilation)
        if onnx_export():
            return _standard_ops.windowed_softmax_pool(x, 1.0, *window)
        return _soft_pool(x, *window)

    soft_pool.__name__ = soft_pool.__qualname__ = f"soft_pool{nd}d"
    example = {1: ("(1, 3, 8)", "[1, 3, 4]"), 2: ("(1, 3, 8, 8)", "[1, 3, 4, 4]"),
               3: ("(1, 3, 4, 8, 8)", "[1, 3, 2, 4, 4]")}[nd]
    axes = {1: "L", 2: "H, W", 3: "D, H, W"}[nd]
    soft_pool.__doc__ = f"""SoftPool over {nd} spatial {"axis" if nd == 1 else "axes"}, differentiable (twice).

    Each output is the softmax-weighted mean of its window's real cells (Stergiou et al.,
    ICCV 2021), computed relative to the window's largest cell (exact for any finite x)::

        y_o = sum_(i in window o) softmax(x over window o)_i * x_i

    The kernel is ``npool.soft_pool{nd}d_forward``; the window arguments are
    ``torch.nn.functional.max_pool{nd}d``'s.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, {axes})`` or unbatched ``(C, {axes})``; float16, bfloat16, float32 or
        float64; on the CPU or a CUDA device; contiguous or channels-last (kept).
    kernel_size : int or tuple of {nd} ints
        The window.
    stride : int or tuple of {nd} ints, optional
        The step between windows; default ``kernel_size``.
    padding : int, tuple of {nd} ints or of {nd} (before, after) pairs, "same" or "valid", default 0
        Implicit padding: ints on both sides, at most half the kernel (``max_pool{nd}d``'s);
        ``(before, after)`` per axis; ``"same"`` (ceil(L / stride) outputs, TensorFlow's
        rule) or ``"valid"`` (none), as ``nn.Conv{nd}d`` takes them. Padded cells are left
        out of the windows (they are not zeros).
    ceil_mode : bool, default False
        ``max_pool{nd}d``'s output-size rule with ceil instead of floor.
    dilation : int or tuple of {nd} ints, default 1
        Keyword only: the step between a window's cells (``max_pool{nd}d``'s).

    Returns
    -------
    torch.Tensor
        ``(N, C, *out)`` (or ``(C, *out)``) in x's dtype, device and memory layout, each
        ``out = floor((L + 2 padding - dilation (kernel - 1) - 1 [+ stride - 1]) / stride) +
        1``.

    Raises
    ------
    TypeError
        A non-floating x, or a ceil_mode that is not a bool.
    ValueError
        x of another rank, or bad window arguments (kernel < 1, padding over half the
        kernel, a window that starts past the input).

    See Also
    --------
    SoftPool{nd}d : The ``nn.Module`` form.
    npool.soft_pool{nd}d_forward : The kernel, on NumPy and GPU arrays.

    Examples
    --------
    >>> nt.soft_pool{nd}d(torch.randn{example[0]}, kernel_size=2).shape
    torch.Size({example[1]})
    """
    return soft_pool


soft_pool1d = _make_soft_pool(1)
soft_pool2d = _make_soft_pool(2)
soft_pool3d = _make_soft_pool(3)




# ------------------------------------------------------------------ Max-Entropy pooling


@torch.library.custom_op("npool::maxent_pool", mutates_args=())
def _maxent_pool(x: torch.Tensor, lam: torch.Tensor, kernel_size: list[int], stride: list[int],
                 padding: list[int], ceil_mode: bool, dilation: list[int],
                 output_size: list[int]) -> torch.Tensor:
    window = (kernel_size, stride, padding, ceil_mode, dilation, output_size)
    forward, _, args, keywords = _core("maxent", *window)
    y = _soft_pool_fake(x, *window)  # torch's allocator
    forward(to_core(x), to_core(lam.to(x.dtype)), *args, **keywords, out=to_core(y))
    return y


@_maxent_pool.register_fake
def _(x, lam, *window):
    return _soft_pool_fake(x, *window)


@torch.library.custom_op("npool::maxent_pool_backward", mutates_args=())
def _maxent_pool_backward(grad_out: torch.Tensor, x: torch.Tensor, lam: torch.Tensor,
                          kernel_size: list[int], stride: list[int], padding: list[int],
                          ceil_mode: bool, dilation: list[int],
                          output_size: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    _, backward, args, keywords = _core("maxent", kernel_size, stride, padding, ceil_mode,
                                        dilation, output_size)
    grad_x = empty_in_layout(x, tuple(x.shape), _spatial_rank(kernel_size, output_size))
    _, grad_lam = backward(to_core(grad_out.to(x.dtype)), to_core(x), to_core(lam.to(x.dtype)),
                           *args, **keywords, out=(to_core(grad_x), None))
    return grad_x, from_core(grad_lam, x).to(lam.dtype).reshape(lam.shape)


@_maxent_pool_backward.register_fake
def _(grad_out, x, lam, kernel_size, stride, padding, ceil_mode, dilation, output_size):
    return (empty_in_layout(x, tuple(x.shape), _spatial_rank(kernel_size, output_size)),
            lam.new_empty(lam.shape))


def _maxent_setup_context(ctx, inputs, output):
    x, lam, *window = inputs
    ctx.save_for_backward(x, lam)
    ctx.window = window


def _maxent_autograd(ctx, grad_out):
    x, lam = ctx.saved_tensors
    grad_x, grad_lam = _maxent_pool_backward(grad_out, x, lam, *ctx.window)
    return (grad_x, grad_lam) + (None,) * len(ctx.window)


_maxent_pool.register_autograd(_maxent_autograd, setup_context=_maxent_setup_context)


class MaxEntPoolFunction(Protocol):
    """``npool.torch.maxent_pool{1,2,3}d``."""

    def __call__(self, x: torch.Tensor, lam: Union[float, torch.Tensor], kernel_size: Size,
                 stride: Optional[Size] = None, padding: Size = 0, ceil_mode: bool = False, *,
                 dilation: Size = 1) -> torch.Tensor: ...


def _maxent_call(x, lam, window):
    """Max-Ent pooling of x over the schemas' ``window`` lists."""
    if not isinstance(lam, torch.Tensor):
        lam = torch.tensor(_checks.finite_real(lam, "lam"), dtype=x.dtype, device=x.device)
    if onnx_export():
        return _standard_ops.windowed_softmax_pool(x, lam.to(x.dtype), *window)
    return _maxent_pool(x, lam, *window)


def _make_maxent_pool(nd) -> MaxEntPoolFunction:
    def maxent_pool(x: torch.Tensor, lam: Union[float, torch.Tensor], kernel_size: Size,
                    stride: Optional[Size] = None, padding: Size = 0, ceil_mode: bool = False,
                    *, dilation: Size = 1) -> torch.Tensor:
        return _maxent_call(x, lam, _windowed(nd, x, kernel_size, stride, padding, ceil_mode,
                                              dilation))

    maxent_pool.__name__ = maxent_pool.__qualname__ = f"maxent_pool{nd}d"
    example = {1: ("(1, 3, 8)", "[1, 3, 4]"), 2: ("(1, 3, 8, 8)", "[1, 3, 4, 4]"),
               3: ("(1, 3, 4, 8, 8)", "[1, 3, 2, 4, 4]")}[nd]
    axes = {1: "L", 2: "H, W", 3: "D, H, W"}[nd]
    maxent_pool.__doc__ = f"""Max-Entropy pooling over {nd} spatial {"axis" if nd == 1 else "axes"}, differentiable (twice) in x and lam.

    SoftPool with a temperature (Kobayashi, ICCV 2019)::

        y_o = sum_(i in window o) softmax(lam_o * x over window o)_i * x_i

    ``lam = 0`` is the average of the window's real cells, ``lam -> inf`` the max,
    ``lam < 0`` a soft minimum. The kernel is ``npool.maxent_pool{nd}d_forward``.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, {axes})`` or unbatched ``(C, {axes})``; float16, bfloat16, float32 or
        float64; on the CPU or a CUDA device; contiguous or channels-last (kept).
    lam : float or torch.Tensor
        The temperature: a number, or a tensor broadcastable to the output - a scalar,
        ``(C, 1, ...)`` per channel, ``(N, C, 1, ...)`` per sample and channel (what a GFGP
        branch gives) or per output cell. Its gradient is summed to its own shape.
    kernel_size : int or tuple of {nd} ints
        The window.
    stride : int or tuple of {nd} ints, optional
        The step between windows; default ``kernel_size``.
    padding : int, tuple of {nd} ints or of {nd} (before, after) pairs, "same" or "valid", default 0
        As ``soft_pool{nd}d``'s; padded cells are left out of the windows.
    ceil_mode : bool, default False
        ``max_pool{nd}d``'s output-size rule with ceil instead of floor.
    dilation : int or tuple of {nd} ints, default 1
        Keyword only: the step between a window's cells (``max_pool{nd}d``'s).

    Returns
    -------
    torch.Tensor
        ``(N, C, *out)`` (or ``(C, *out)``), ``max_pool{nd}d``'s sizes, in x's dtype, device
        and memory layout.

    Raises
    ------
    TypeError
        A non-floating x, or a ceil_mode that is not a bool.
    ValueError
        x of another rank, a lam that does not broadcast to the output, a lam number that is
        not finite, or
        bad window arguments.

    See Also
    --------
    MaxEntPool2d : The ``nn.Module`` form, with the Global-Feature-Guided temperature.
    npool.maxent_pool{nd}d_forward : The kernel, on NumPy and GPU arrays.

    Examples
    --------
    >>> nt.maxent_pool{nd}d(torch.randn{example[0]}, 0.5, kernel_size=2).shape
    torch.Size({example[1]})
    """
    return maxent_pool


maxent_pool1d = _make_maxent_pool(1)
maxent_pool2d = _make_maxent_pool(2)
maxent_pool3d = _make_maxent_pool(3)


# ------------------------------------------------------------------ adaptive output sizes
class AdaptiveSoftPoolFunction(Protocol):
    """``npool.torch.adaptive_soft_pool{1,2,3}d``."""

    def __call__(self, x: torch.Tensor, output_size: OutputSize) -> torch.Tensor: ...


class AdaptiveMaxEntPoolFunction(Protocol):
    """``npool.torch.adaptive_maxent_pool{1,2,3}d``."""

    def __call__(self, x: torch.Tensor, lam: Union[float, torch.Tensor],
                 output_size: OutputSize) -> torch.Tensor: ...


_ADAPTIVE_DOC = """Adaptive {what} over {nd} spatial {axis_word}: an output of ``output_size``, differentiable (twice){wrt}.

    ``adaptive_avg_pool{nd}d``'s windows - window o of n over L cells spans ``[floor(o L / n),
    ceil((o + 1) L / n))`` - each pooled as ``{plain}`` pools its windows::

        y_o = sum_(i in window o) softmax({z} over window o)_i * x_i
{lam_line}
    The kernel is ``npool.adaptive_{name}{nd}d_forward``.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, {axes})`` or unbatched ``(C, {axes})``; float16, bfloat16, float32 or
        float64; on the CPU or a CUDA device; contiguous or channels-last (kept).{lam_doc}
    output_size : int or tuple of {nd} ints or None
        The output's spatial size; None keeps the input's on that axis (as
        ``adaptive_avg_pool{nd}d`` takes it).

    Returns
    -------
    torch.Tensor
        ``(N, C, *output_size)`` (or ``(C, *output_size)``) in x's dtype, device and layout.

    Raises
    ------
    TypeError
        A non-floating x or a non-int output size.
    ValueError
        x of another rank, an output size below 1 or of the wrong length{lam_error}.

    Examples
    --------
    >>> nt.adaptive_{name}{nd}d(torch.randn{shape}, {lam_example}{size}).shape
    torch.Size({out})
    """


def _make_adaptive_pools(nd):
    def adaptive_soft_pool(x: torch.Tensor, output_size: OutputSize) -> torch.Tensor:
        window = _adaptive(nd, x, output_size)
        if onnx_export():
            return _standard_ops.windowed_softmax_pool(x, 1.0, *window)
        return _soft_pool(x, *window)

    def adaptive_maxent_pool(x: torch.Tensor, lam: Union[float, torch.Tensor],
                             output_size: OutputSize) -> torch.Tensor:
        return _maxent_call(x, lam, _adaptive(nd, x, output_size))

    shape, size, out = {1: ("(1, 3, 10)", "4", "[1, 3, 4]"),
                        2: ("(1, 3, 10, 9)", "(4, None)", "[1, 3, 4, 9]"),
                        3: ("(1, 3, 5, 10, 10)", "(None, 4, 4)", "[1, 3, 5, 4, 4]")}[nd]
    common = dict(nd=nd, axis_word="axis" if nd == 1 else "axes", shape=shape, size=size,
                  out=out, axes={1: "L", 2: "H, W", 3: "D, H, W"}[nd])
    adaptive_soft_pool.__doc__ = _ADAPTIVE_DOC.format(
        what="SoftPool", wrt="", plain=f"soft_pool{nd}d", z="x", lam_line="", lam_doc="",
        lam_error="", name="soft_pool", lam_example="", **common)
    adaptive_maxent_pool.__doc__ = _ADAPTIVE_DOC.format(
        what="Max-Entropy pooling", wrt=" in x and lam", plain=f"maxent_pool{nd}d",
        z="lam_o * x", name="maxent_pool", lam_example="0.5, ",
        lam_line=f"\n    ``lam = 0`` is ``adaptive_avg_pool{nd}d``, ``lam -> inf`` "
                 f"``adaptive_max_pool{nd}d``.\n",
        lam_doc="\n    lam : float or torch.Tensor\n        The temperature: a number or a "
                "tensor broadcastable to the output.",
        lam_error=", a lam that does not broadcast or is not finite", **common)
    for function, name in ((adaptive_soft_pool, "adaptive_soft_pool"),
                           (adaptive_maxent_pool, "adaptive_maxent_pool")):
        function.__name__ = function.__qualname__ = f"{name}{nd}d"
    return adaptive_soft_pool, adaptive_maxent_pool


def _adaptive_typed(nd) -> Tuple[AdaptiveSoftPoolFunction, AdaptiveMaxEntPoolFunction]:
    return _make_adaptive_pools(nd)


adaptive_soft_pool1d, adaptive_maxent_pool1d = _adaptive_typed(1)
adaptive_soft_pool2d, adaptive_maxent_pool2d = _adaptive_typed(2)
adaptive_soft_pool3d, adaptive_maxent_pool3d = _adaptive_typed(3)


# ------------------------------------------------------------------ second derivatives
# The backward ops differentiated through the op's decomposition (_standard_ops.py).
second_order(_soft_pool_backward, lambda a: lambda x: _standard_ops.windowed_softmax_pool(
    x, 1.0, *a[2:]), [1])
second_order(_maxent_pool_backward, lambda a: lambda x, lam:
              _standard_ops.windowed_softmax_pool(x, lam, *a[3:]), [1, 2])


# ------------------------------------------------------------------ autocast, vmap
register_family_autocast("local")


@torch.library.register_vmap("npool::soft_pool")
def _(info, in_dims, x, *window):
    return folded_into_batch(_soft_pool, x, in_dims[0],
                             _spatial_rank(window[0], window[-1]) + 2, window)


@torch.library.register_vmap("npool::maxent_pool")
def _(info, in_dims, x, lam, *window):
    def pool(x, lam):
        return _maxent_pool(x, lam, *window)
    return loop_over_mapped_axis(pool, info, in_dims[:2], (x, lam))
