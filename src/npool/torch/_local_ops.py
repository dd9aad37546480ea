"""npool.torch's local pools (SoftPool, Max-Ent) registered with ``torch.library``: for each,
the forward and backward custom ops, their fakes, autograd, second order, autocast and vmap
rules, together, and the functional forms."""
from typing import Optional, Protocol, Union

import torch

from .. import _checks
from . import _standard_ops
from .._op_table import core_functions
from .._types import Size
from ._registration import (empty_in_layout, folded_into_batch, loop_over_mapped_axis,
                            onnx_export, register_family_autocast, second_order, window_lists)
from ._tensors import from_core, to_core


# ------------------------------------------------------------------ SoftPool


@torch.library.custom_op("npool::soft_pool", mutates_args=())
def _soft_pool(x: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
               ceil_mode: bool) -> torch.Tensor:
    forward, _ = core_functions(f"soft_pool{len(kernel_size)}d")
    y = _soft_pool_fake(x, kernel_size, stride, padding, ceil_mode)  # torch's allocator
    forward(to_core(x), kernel_size, stride, padding, ceil_mode, out=to_core(y))
    return y


@_soft_pool.register_fake
def _soft_pool_fake(x, kernel_size, stride, padding, ceil_mode):
    nd = len(kernel_size)
    args = _checks.WindowArgs(nd, tuple(kernel_size), tuple(stride), tuple(padding), ceil_mode)
    if x.dim() not in (nd + 1, nd + 2):
        raise ValueError(f"x must be {nd + 1}-D or {nd + 2}-D for a {nd}-d pool, got {x.dim()}-D")
    out = tuple(x.shape[:-nd]) + args.output_size(tuple(x.shape[-nd:]))
    return empty_in_layout(x, out, nd)


@torch.library.custom_op("npool::soft_pool_backward", mutates_args=())
def _soft_pool_backward(grad_out: torch.Tensor, x: torch.Tensor, kernel_size: list[int],
                        stride: list[int], padding: list[int], ceil_mode: bool) -> torch.Tensor:
    _, backward = core_functions(f"soft_pool{len(kernel_size)}d")
    grad_out = grad_out.to(x.dtype)
    grad_x = empty_in_layout(x, tuple(x.shape), len(kernel_size))
    backward(to_core(grad_out), to_core(x), kernel_size, stride, padding, ceil_mode,
             out=to_core(grad_x))
    return grad_x


@_soft_pool_backward.register_fake
def _(grad_out, x, kernel_size, stride, padding, ceil_mode):
    return empty_in_layout(x, tuple(x.shape), len(kernel_size))


def _soft_pool_setup_context(ctx, inputs, output):
    x, *window = inputs
    ctx.save_for_backward(x)
    ctx.window = window


def _soft_pool_autograd(ctx, grad_out):
    x, = ctx.saved_tensors
    return (_soft_pool_backward(grad_out, x, *ctx.window),) + (None,) * len(ctx.window)


_soft_pool.register_autograd(_soft_pool_autograd, setup_context=_soft_pool_setup_context)


class SoftPoolFunction(Protocol):
    """``npool.torch.soft_pool{1,2,3}d`` (what type checkers see of the functions made once per
    dimension)."""

    def __call__(self, x: torch.Tensor, kernel_size: Size, stride: Optional[Size] = None,
                 padding: Size = 0, ceil_mode: bool = False) -> torch.Tensor: ...


def _make_soft_pool(nd) -> SoftPoolFunction:
    def soft_pool(x: torch.Tensor, kernel_size: Size, stride: Optional[Size] = None,
                  padding: Size = 0, ceil_mode: bool = False) -> torch.Tensor:
        kernel, stride, padding = window_lists(nd, kernel_size, stride, padding)
        if not isinstance(ceil_mode, bool):
            raise TypeError(f"ceil_mode must be a bool, got {type(ceil_mode).__name__}")
        if onnx_export():
            return _standard_ops.windowed_softmax_pool(x, 1.0, kernel, stride, padding,
                                                         ceil_mode)
        return _soft_pool(x, kernel, stride, padding, ceil_mode)

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
    padding : int or tuple of {nd} ints, default 0
        Implicit padding on both sides, at most half the kernel; padded cells are left out of
        the windows (they are not zeros).
    ceil_mode : bool, default False
        ``max_pool{nd}d``'s output-size rule with ceil instead of floor.

    Returns
    -------
    torch.Tensor
        ``(N, C, *out)`` (or ``(C, *out)``) in x's dtype, device and memory layout, each
        ``out = floor((L + 2 padding - kernel [+ stride - 1]) / stride) + 1``.

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
                 padding: list[int], ceil_mode: bool) -> torch.Tensor:
    forward, _ = core_functions(f"maxent_pool{len(kernel_size)}d")
    y = _soft_pool_fake(x, kernel_size, stride, padding, ceil_mode)  # torch's allocator
    forward(to_core(x), to_core(lam.to(x.dtype)), kernel_size, stride, padding, ceil_mode,
            out=to_core(y))
    return y


@_maxent_pool.register_fake
def _(x, lam, kernel_size, stride, padding, ceil_mode):
    return _soft_pool_fake(x, kernel_size, stride, padding, ceil_mode)


@torch.library.custom_op("npool::maxent_pool_backward", mutates_args=())
def _maxent_pool_backward(grad_out: torch.Tensor, x: torch.Tensor, lam: torch.Tensor,
                          kernel_size: list[int], stride: list[int], padding: list[int],
                          ceil_mode: bool) -> tuple[torch.Tensor, torch.Tensor]:
    _, backward = core_functions(f"maxent_pool{len(kernel_size)}d")
    grad_x = empty_in_layout(x, tuple(x.shape), len(kernel_size))
    _, grad_lam = backward(to_core(grad_out.to(x.dtype)), to_core(x), to_core(lam.to(x.dtype)),
                           kernel_size, stride, padding, ceil_mode,
                           out=(to_core(grad_x), None))
    return grad_x, from_core(grad_lam, x).to(lam.dtype).reshape(lam.shape)


@_maxent_pool_backward.register_fake
def _(grad_out, x, lam, kernel_size, stride, padding, ceil_mode):
    return empty_in_layout(x, tuple(x.shape), len(kernel_size)), lam.new_empty(lam.shape)


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
                 stride: Optional[Size] = None, padding: Size = 0,
                 ceil_mode: bool = False) -> torch.Tensor: ...


def _make_maxent_pool(nd) -> MaxEntPoolFunction:
    def maxent_pool(x: torch.Tensor, lam: Union[float, torch.Tensor], kernel_size: Size,
                    stride: Optional[Size] = None, padding: Size = 0,
                    ceil_mode: bool = False) -> torch.Tensor:
        kernel, stride, padding = window_lists(nd, kernel_size, stride, padding)
        if not isinstance(ceil_mode, bool):
            raise TypeError(f"ceil_mode must be a bool, got {type(ceil_mode).__name__}")
        if not isinstance(lam, torch.Tensor):
            lam = torch.tensor(_checks.finite_real(lam, "lam"), dtype=x.dtype, device=x.device)
        if onnx_export():
            return _standard_ops.windowed_softmax_pool(x, lam.to(x.dtype), kernel, stride,
                                                         padding, ceil_mode)
        return _maxent_pool(x, lam, kernel, stride, padding, ceil_mode)

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
    padding : int or tuple of {nd} ints, default 0
        Implicit padding on both sides, at most half the kernel; padded cells are left out of
        the windows.
    ceil_mode : bool, default False
        ``max_pool{nd}d``'s output-size rule with ceil instead of floor.

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


# ------------------------------------------------------------------ second derivatives
# The backward ops differentiated through the op's decomposition (_standard_ops.py).
second_order(_soft_pool_backward, lambda a: lambda x: _standard_ops.windowed_softmax_pool(
    x, 1.0, *a[2:]), [1])
second_order(_maxent_pool_backward, lambda a: lambda x, lam:
              _standard_ops.windowed_softmax_pool(x, lam, *a[3:]), [1, 2])


# ------------------------------------------------------------------ autocast, vmap
register_family_autocast("local")


@torch.library.register_vmap("npool::soft_pool")
def _(info, in_dims, x, kernel_size, stride, padding, ceil_mode):
    return folded_into_batch(_soft_pool, x, in_dims[0], len(kernel_size) + 2,
                   (kernel_size, stride, padding, ceil_mode))


@torch.library.register_vmap("npool::maxent_pool")
def _(info, in_dims, x, lam, kernel_size, stride, padding, ceil_mode):
    def pool(x, lam):
        return _maxent_pool(x, lam, kernel_size, stride, padding, ceil_mode)
    return loop_over_mapped_axis(pool, info, in_dims[:2], (x, lam))
