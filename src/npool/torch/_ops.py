"""npool's ops registered with ``torch.library``: one forward and one backward custom op per op
family, their fake kernels, autograd and autocast, and the functional forms."""
from typing import Any, Optional, Protocol, Union

import torch
import torch._functorch.config

import npool

from .. import _checks, _op_table
from . import _decompositions
from .._types import Count, Size
from ._tensors import from_core, to_core, torch_matmul

# PyTorch's Inductor (2.13 and 2.14) cannot compile a graph whose partitioner saves a view with
# dynamic strides for the backward ("TypeError: cannot determine truth value of Relational"
# under torch.compile(dynamic=True)): npool's backward ops take their input, and an input made
# by a view inside the compiled function (NHWC permuted to NCHW, Keras' torch backend, a GFGP
# branch) would be saved as such a view - PyTorch's own conv2d fails the same way. Views cost
# nothing to recompute (PyTorch's note on this flag: "generally a good idea"), so npool.torch
# has the partitioner recompute them; docs/frameworks/pytorch.md says so.
torch._functorch.config.recompute_views = True

# what a global pool with return_indices returns: y, or (y, indices) - typed loosely, as the
# core's ArrayOrPair, so that callers of the common form (a tensor) need no narrowing
TensorOrPair = Any

def _cast_for_autocast(value, device_type, dtype):
    """``value`` with its float32 (and other non-float64 floating) tensors on ``device_type``
    cast to ``dtype``: autocast's rule for ops that run in lower precision."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and value.device.type == device_type \
                and value.dtype != torch.float64:
            return value.to(dtype)
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_for_autocast(v, device_type, dtype) for v in value)
    return value


def _register_autocast(qualname):
    """Run op ``qualname`` under ``torch.autocast`` in the region's lower-precision dtype (on
    CUDA float16 or bfloat16, on the CPU bfloat16 or float16, as ``autocast(dtype=...)``
    chose): its floating tensors are cast to it, float64 ones are left alone, and the op runs
    with autocast off. (``torch.library.register_autocast`` fixes one dtype per device.)"""
    op = getattr(torch.ops.npool, qualname.split("::")[1]).default
    for device_type in ("cpu", "cuda"):
        def autocast_kernel(*args, _device_type=device_type):
            dtype = torch.get_autocast_dtype(_device_type)
            with torch.autocast(_device_type, enabled=False):
                return op(*_cast_for_autocast(args, _device_type, dtype))
        torch.library.impl(qualname, "Autocast" + device_type.upper(), autocast_kernel)


# ------------------------------------------------------------------ SoftPool
_SOFT_POOL = {1: (npool.soft_pool1d_forward, npool.soft_pool1d_backward),
              2: (npool.soft_pool2d_forward, npool.soft_pool2d_backward),
              3: (npool.soft_pool3d_forward, npool.soft_pool3d_backward)}


def _layout_of(x):
    """The memory layout npool gives outputs of x (batched): its own when it is C-contiguous or
    channels-last, else C order (as the NumPy and GPU cores do)."""
    return _checks.layout_of_strides(tuple(x.shape), x.stride()) or "contiguous"


def _empty_in_layout(x, shape, nd):
    """A new tensor of ``shape`` with the strides npool's cores give for input x of an
    ``nd``-d pool (batched or not)."""
    batched = x.dim() == nd + 2
    layout = _layout_of(x if batched else x.unsqueeze(0))
    full = shape if batched else (1, *shape)
    strides = _checks.dense_strides(full, layout)
    return x.new_empty_strided(shape, strides if batched else strides[1:])


@torch.library.custom_op("npool::soft_pool", mutates_args=())
def _soft_pool(x: torch.Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
               ceil_mode: bool) -> torch.Tensor:
    forward, _ = _SOFT_POOL[len(kernel_size)]
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
    return _empty_in_layout(x, out, nd)


@torch.library.custom_op("npool::soft_pool_backward", mutates_args=())
def _soft_pool_backward(grad_out: torch.Tensor, x: torch.Tensor, kernel_size: list[int],
                        stride: list[int], padding: list[int], ceil_mode: bool) -> torch.Tensor:
    _, backward = _SOFT_POOL[len(kernel_size)]
    grad_out = grad_out.to(x.dtype)
    grad_x = _empty_in_layout(x, tuple(x.shape), len(kernel_size))
    backward(to_core(grad_out), to_core(x), kernel_size, stride, padding, ceil_mode,
             out=to_core(grad_x))
    return grad_x


@_soft_pool_backward.register_fake
def _(grad_out, x, kernel_size, stride, padding, ceil_mode):
    return _empty_in_layout(x, tuple(x.shape), len(kernel_size))


def _soft_pool_setup_context(ctx, inputs, output):
    x, *window = inputs
    ctx.save_for_backward(x)
    ctx.window = window


def _soft_pool_autograd(ctx, grad_out):
    x, = ctx.saved_tensors
    return (_soft_pool_backward(grad_out, x, *ctx.window),) + (None,) * len(ctx.window)


_soft_pool.register_autograd(_soft_pool_autograd, setup_context=_soft_pool_setup_context)


def _window_lists(nd, kernel_size, stride, padding):
    """kernel_size, stride and padding as lists of nd ints (stride None: the kernel)."""
    kernel = list(_checks.int_tuple(kernel_size, "kernel_size", nd, 1))
    stride = kernel if stride is None else list(_checks.int_tuple(stride, "stride", nd, 1))
    return kernel, stride, list(_checks.int_tuple(padding, "padding", nd, 0))


def _onnx_export():
    """Whether torch.onnx.export is tracing: the ops then record their decomposition into
    standard PyTorch ops (_decompositions.py), which ONNX has, instead of npool's custom ops."""
    return torch.onnx.is_in_onnx_export()


class SoftPoolFunction(Protocol):
    """``npool.torch.soft_pool{1,2,3}d`` (what type checkers see of the functions made once per
    dimension)."""

    def __call__(self, x: torch.Tensor, kernel_size: Size, stride: Optional[Size] = None,
                 padding: Size = 0, ceil_mode: bool = False) -> torch.Tensor: ...


def _make_soft_pool(nd) -> SoftPoolFunction:
    def soft_pool(x: torch.Tensor, kernel_size: Size, stride: Optional[Size] = None,
                  padding: Size = 0, ceil_mode: bool = False) -> torch.Tensor:
        kernel, stride, padding = _window_lists(nd, kernel_size, stride, padding)
        if not isinstance(ceil_mode, bool):
            raise TypeError(f"ceil_mode must be a bool, got {type(ceil_mode).__name__}")
        if _onnx_export():
            return _decompositions.windowed_softmax_pool(x, 1.0, kernel, stride, padding,
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


# ------------------------------------------------------------------ global pools
def _pooled_shape(x, keepdims):
    return tuple(x.shape[:2]) + ((1,) * (x.dim() - 2) if keepdims else ())


def _grad_like(x):
    """A new tensor with the strides npool's cores give a gradient of (batched) x."""
    return x.new_empty_strided(tuple(x.shape),
                               _checks.dense_strides(tuple(x.shape), _layout_of(x)))


@torch.library.custom_op("npool::global_max_pool", mutates_args=())
def _global_max_pool(x: torch.Tensor, keepdims: bool) -> tuple[torch.Tensor, torch.Tensor]:
    y = x.new_empty(_pooled_shape(x, keepdims))
    _, index = npool.global_max_pool_forward(to_core(x), keepdims, return_indices=True,
                                             out=(to_core(y), None))
    return y, from_core(index, x)


@_global_max_pool.register_fake
def _(x, keepdims):
    shape = _pooled_shape(x, keepdims)
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.int64)


@torch.library.custom_op("npool::global_max_pool_backward", mutates_args=())
def _global_max_pool_backward(grad_out: torch.Tensor, x: torch.Tensor, indices: torch.Tensor,
                              keepdims: bool) -> torch.Tensor:
    grad_x = _grad_like(x)
    npool.global_max_pool_backward(to_core(grad_out.to(x.dtype)), to_core(x), keepdims,
                                   indices=to_core(indices), out=to_core(grad_x))
    return grad_x


@torch.library.custom_op("npool::global_avg_pool", mutates_args=())
def _global_avg_pool(x: torch.Tensor, keepdims: bool) -> torch.Tensor:
    y = x.new_empty(_pooled_shape(x, keepdims))
    npool.global_avg_pool_forward(to_core(x), keepdims, out=to_core(y))
    return y


@_global_avg_pool.register_fake
def _(x, keepdims):
    return x.new_empty(_pooled_shape(x, keepdims))


@torch.library.custom_op("npool::global_avg_pool_backward", mutates_args=())
def _global_avg_pool_backward(grad_out: torch.Tensor, x: torch.Tensor,
                              keepdims: bool) -> torch.Tensor:
    grad_x = _grad_like(x)
    npool.global_avg_pool_backward(to_core(grad_out.to(x.dtype)), to_core(x), keepdims,
                                   out=to_core(grad_x))
    return grad_x


@torch.library.custom_op("npool::global_lse_pool", mutates_args=())
def _global_lse_pool(x: torch.Tensor, beta: float,
                     keepdims: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """y and the statistics (float64 (N, C, 2)) the backward reuses."""
    y = x.new_empty(_pooled_shape(x, keepdims))
    _, stats = npool.global_lse_pool_forward(to_core(x), beta, keepdims, return_stats=True,
                                             out=(to_core(y), None))
    return y, from_core(stats, x)


@_global_lse_pool.register_fake
def _(x, beta, keepdims):
    return (x.new_empty(_pooled_shape(x, keepdims)),
            x.new_empty(tuple(x.shape[:2]) + (2,), dtype=torch.float64))


@torch.library.custom_op("npool::global_lse_pool_backward", mutates_args=())
def _global_lse_pool_backward(grad_out: torch.Tensor, x: torch.Tensor, stats: torch.Tensor,
                              beta: float, keepdims: bool) -> torch.Tensor:
    grad_x = _grad_like(x)
    npool.global_lse_pool_backward(to_core(grad_out.to(x.dtype)), to_core(x), beta, keepdims,
                                   stats=to_core(stats), out=to_core(grad_x))
    return grad_x


@torch.library.custom_op("npool::global_gem_pool", mutates_args=())
def _global_gem_pool(x: torch.Tensor, p: torch.Tensor, eps: float,
                     keepdims: bool) -> torch.Tensor:
    y = x.new_empty(_pooled_shape(x, keepdims))
    npool.global_gem_pool_forward(to_core(x), to_core(_exponent(p)), eps, keepdims,
                                  out=to_core(y))
    return y


def _exponent(p):
    """GeM's p as the kernels read it: float32 or float64 (a half p in float32)."""
    return p if p.dtype in (torch.float32, torch.float64) else p.float()


@_global_gem_pool.register_fake
def _(x, p, eps, keepdims):
    return x.new_empty(_pooled_shape(x, keepdims))


@torch.library.custom_op("npool::global_gem_pool_backward", mutates_args=())
def _global_gem_pool_backward(grad_out: torch.Tensor, x: torch.Tensor, p: torch.Tensor,
                              eps: float, keepdims: bool) -> tuple[torch.Tensor, torch.Tensor]:
    grad_x = _grad_like(x)
    _, grad_p = npool.global_gem_pool_backward(to_core(grad_out.to(x.dtype)), to_core(x),
                                               to_core(_exponent(p)), eps, keepdims,
                                               out=(to_core(grad_x), None))
    return grad_x, from_core(grad_p, x).to(p.dtype).reshape(p.shape)


@_global_gem_pool_backward.register_fake
def _(grad_out, x, p, eps, keepdims):
    return _grad_like(x), p.new_empty(p.shape)


def _gem_setup_context(ctx, inputs, output):
    x, p, eps, keepdims = inputs
    ctx.save_for_backward(x, p)
    ctx.arguments = (eps, keepdims)


def _gem_autograd(ctx, grad_out):
    x, p = ctx.saved_tensors
    grad_x, grad_p = _global_gem_pool_backward(grad_out, x, p, *ctx.arguments)
    return grad_x, grad_p, None, None


_global_gem_pool.register_autograd(_gem_autograd, setup_context=_gem_setup_context)


@torch.library.custom_op("npool::weldon_pool", mutates_args=())
def _weldon_pool(x: torch.Tensor, kmax: int, kmin: int, alpha: float,
                 keepdims: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """WELDON with counts; k-max is kmin = 0."""
    y = x.new_empty(_pooled_shape(x, keepdims))
    _, index = npool.weldon_pool_forward(to_core(x), kmax, kmin, alpha, keepdims,
                                         return_indices=True, out=(to_core(y), None))
    return y, from_core(index, x)


@_weldon_pool.register_fake
def _(x, kmax, kmin, alpha, keepdims):
    return (x.new_empty(_pooled_shape(x, keepdims)),
            x.new_empty(tuple(x.shape[:2]) + (kmax + kmin,), dtype=torch.int64))


@torch.library.custom_op("npool::weldon_pool_backward", mutates_args=())
def _weldon_pool_backward(grad_out: torch.Tensor, x: torch.Tensor, indices: torch.Tensor,
                          kmax: int, kmin: int, alpha: float, keepdims: bool) -> torch.Tensor:
    grad_x = _grad_like(x)
    npool.weldon_pool_backward(to_core(grad_out.to(x.dtype)), to_core(x), kmax, kmin, alpha,
                               keepdims, indices=to_core(indices), out=to_core(grad_x))
    return grad_x


for _op in (_global_max_pool_backward, _global_avg_pool_backward, _global_lse_pool_backward,
            _weldon_pool_backward):
    _op.register_fake(lambda grad_out, x, *rest: _grad_like(x))


def _save_x(ctx, inputs, output):
    x, *arguments = inputs
    ctx.arguments = arguments
    if isinstance(output, tuple):  # the backward reuses the forward's indices (selections)
        ctx.mark_non_differentiable(output[1])  # or statistics (LSE)
        ctx.save_for_backward(x, output[1])
    else:
        ctx.save_for_backward(x)


def _max_autograd(ctx, grad_out, _grad_indices):
    x, indices = ctx.saved_tensors
    return _global_max_pool_backward(grad_out, x, indices, *ctx.arguments), None


def _avg_autograd(ctx, grad_out):
    x, = ctx.saved_tensors
    return _global_avg_pool_backward(grad_out, x, *ctx.arguments), None


def _lse_autograd(ctx, grad_out, _grad_stats):
    x, stats = ctx.saved_tensors
    return _global_lse_pool_backward(grad_out, x, stats, *ctx.arguments), None, None


def _weldon_autograd(ctx, grad_out, _grad_indices):
    x, indices = ctx.saved_tensors
    return (_weldon_pool_backward(grad_out, x, indices, *ctx.arguments),) + (None,) * 4


for _op, _backward in ((_global_max_pool, _max_autograd), (_global_avg_pool, _avg_autograd),
                       (_global_lse_pool, _lse_autograd), (_weldon_pool, _weldon_autograd)):
    _op.register_autograd(_backward, setup_context=_save_x)


def _spatial_cells(x):
    if x.dim() < 3:
        raise ValueError(f"x must be (N, C, *spatial) with at least one spatial axis, got "
                         f"{x.dim()}-D shape {tuple(x.shape)}")
    n = 1
    for size in x.shape[2:]:
        n *= size
    return n


def _global(x, spatial_dims, pool):
    """``pool`` on x read as (N, C, *spatial), or on an unbatched (C, *spatial) x when
    ``spatial_dims`` says so (the batch axis added, then removed from every output)."""
    if not _checks.spatial_rank(x.dim(), spatial_dims):
        return pool(x)
    out = pool(x.unsqueeze(0))
    return tuple(o.squeeze(0) for o in out) if isinstance(out, tuple) else out.squeeze(0)


def global_max_pool(x: torch.Tensor, keepdims: bool = False, return_indices: bool = False,
                    spatial_dims: Optional[int] = None) -> TensorOrPair:
    """Global max pooling, differentiable: ``y = max x`` over the spatial cells of each map.

    Ties go to the lowest flat index, which also gets the whole gradient; NaN maps give NaN.
    The kernel is ``npool.global_max_pool_forward``.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, *spatial)`` with at least one spatial axis (with ``spatial_dims``: exactly that
        many, batched or unbatched ``(C, *spatial)``, as ``nn.AdaptiveMaxPool2d`` takes);
        float16, bfloat16, float32 or float64; CPU or CUDA; contiguous or channels-last.
    keepdims : bool, default False
        Keep the pooled axes with size 1: ``(N, C, 1, ...)`` instead of ``(N, C)``.
    return_indices : bool, default False
        Also return the flat (C-order) spatial index of each maximum.
    spatial_dims : int, optional
        The number of spatial axes; None reads any number of them (a batched input).

    Returns
    -------
    y : torch.Tensor
        ``(N, C)``, ``(N, C, 1, ...)`` with ``keepdims``, ``(C,)`` unbatched; x's dtype.
    indices : torch.Tensor of int64
        With ``return_indices``: y's shape.

    Raises
    ------
    TypeError
        A non-floating x.
    ValueError
        Fewer than three axes (or another rank than ``spatial_dims`` allows), an empty map, or
        a bad option.

    See Also
    --------
    GlobalMaxPool : The ``nn.Module`` form.

    Examples
    --------
    >>> nt.global_max_pool(torch.randn(2, 3, 5, 4)).shape
    torch.Size([2, 3])
    >>> nt.global_max_pool(torch.randn(3, 5, 4), spatial_dims=2).shape
    torch.Size([3])
    """
    def pool(x):
        if _onnx_export():
            y, indices = _decompositions.select_pool(x, 1, 0, 0.0, keepdims)
            indices = indices.reshape(y.shape)
        else:
            y, indices = _global_max_pool(x, keepdims)
        return (y, indices) if return_indices else y
    return _global(x, spatial_dims, pool)


def global_avg_pool(x: torch.Tensor, keepdims: bool = False,
                    spatial_dims: Optional[int] = None) -> torch.Tensor:
    """Global average pooling, differentiable: ``y = mean x`` over the spatial cells of each map.

    The kernel is ``npool.global_avg_pool_forward`` (float32 accumulation for 16-bit x).

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, *spatial)`` with at least one spatial axis (with ``spatial_dims``: exactly that
        many, batched or unbatched ``(C, *spatial)``, as ``nn.AdaptiveMaxPool2d`` takes);
        float16, bfloat16, float32 or float64; CPU or CUDA; contiguous or channels-last.
    keepdims : bool, default False
        Keep the pooled axes with size 1: ``(N, C, 1, ...)`` instead of ``(N, C)``.
    spatial_dims : int, optional
        The number of spatial axes; None reads any number of them (a batched input).

    Returns
    -------
    torch.Tensor
        ``(N, C)``, ``(N, C, 1, ...)`` with ``keepdims``, ``(C,)`` unbatched; x's dtype.

    Raises
    ------
    TypeError
        A non-floating x.
    ValueError
        Fewer than three axes (or another rank than ``spatial_dims`` allows), an empty map, or
        a bad option.

    See Also
    --------
    GlobalAvgPool : The ``nn.Module`` form.

    Examples
    --------
    >>> nt.global_avg_pool(torch.randn(2, 3, 5, 4), keepdims=True).shape
    torch.Size([2, 3, 1, 1])
    """
    if _onnx_export():
        return _global(x, spatial_dims, lambda x: _decompositions.avg_pool(x, keepdims))
    return _global(x, spatial_dims, lambda x: _global_avg_pool(x, keepdims))


def global_lse_pool(x: torch.Tensor, beta: float = 1.0, keepdims: bool = False,
                    spatial_dims: Optional[int] = None) -> torch.Tensor:
    """Global LogSumExp pooling, differentiable: ``y = (1/beta) log(mean exp(beta x))`` per map.

    The mean at ``beta = 0``, the max as ``beta -> inf``, a soft minimum for ``beta < 0``;
    computed relative to the map's extreme cell, so any finite x is exact. The kernel is
    ``npool.global_lse_pool_forward``.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, *spatial)`` with at least one spatial axis (with ``spatial_dims``: exactly that
        many, batched or unbatched ``(C, *spatial)``, as ``nn.AdaptiveMaxPool2d`` takes);
        float16, bfloat16, float32 or float64; CPU or CUDA; contiguous or channels-last.
    beta : float, default 1.0
        The sharpness, any finite number.
    keepdims : bool, default False
        Keep the pooled axes with size 1: ``(N, C, 1, ...)`` instead of ``(N, C)``.
    spatial_dims : int, optional
        The number of spatial axes; None reads any number of them (a batched input).

    Returns
    -------
    torch.Tensor
        ``(N, C)``, ``(N, C, 1, ...)`` with ``keepdims``, ``(C,)`` unbatched; x's dtype.

    Raises
    ------
    TypeError
        A non-floating x.
    ValueError
        Fewer than three axes (or another rank than ``spatial_dims`` allows), an empty map, or
        a bad option.

    See Also
    --------
    GlobalLSEPool : The ``nn.Module`` form.

    Examples
    --------
    >>> nt.global_lse_pool(torch.randn(2, 3, 5, 4), beta=2.0).shape
    torch.Size([2, 3])
    """
    beta = _checks.finite_real(beta, "beta")
    if _onnx_export():
        return _global(x, spatial_dims, lambda x: _decompositions.lse_pool(x, beta, keepdims))
    return _global(x, spatial_dims, lambda x: _global_lse_pool(x, beta, keepdims)[0])


def global_gem_pool(x: torch.Tensor, p: Union[float, torch.Tensor] = 3.0, eps: float = 1e-6,
                    keepdims: bool = False, spatial_dims: Optional[int] = None) -> torch.Tensor:
    """Generalised-mean (GeM) pooling, differentiable (twice) in x and p.

    ``y = (mean max(x, eps)^p)^(1/p)`` per map (Radenovic et al., the global descriptor of
    image retrieval): the mean of the clamped cells at ``p = 1``, their max as ``p -> inf``.
    Computed relative to the map's largest clamped cell, so no power overflows for any p. The
    kernel is ``npool.global_gem_pool_forward``.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, *spatial)`` with at least one spatial axis (with ``spatial_dims``: exactly that
        many, batched or unbatched ``(C, *spatial)``); float16, bfloat16, float32 or float64;
        CPU or CUDA; contiguous or channels-last.
    p : float or torch.Tensor, default 3.0
        The exponent, positive and finite: a number, or a tensor (a learnt ``nn.Parameter``)
        that broadcasts to ``(N, C)``: ``()`` or ``(1,)`` shared, ``(C,)`` per channel. Its
        gradient is summed to its own shape.
    eps : float, default 1e-6
        The clamp floor (rounded to the dtype the pool computes in, float32 for half x).
    keepdims : bool, default False
        Keep the pooled axes with size 1: ``(N, C, 1, ...)`` instead of ``(N, C)``.
    spatial_dims : int, optional
        The number of spatial axes; None reads any number of them (a batched input).

    Returns
    -------
    torch.Tensor
        ``(N, C)``, ``(N, C, 1, ...)`` with ``keepdims``, ``(C,)`` unbatched; x's dtype.

    Raises
    ------
    TypeError
        A non-floating x or a p that is neither a number nor a tensor.
    ValueError
        Fewer than three axes (or another rank than ``spatial_dims`` allows), an empty map, a p
        that is not positive and finite or does not broadcast to ``(N, C)``, a bad eps.

    See Also
    --------
    GlobalGeMPool : The ``nn.Module`` form, with a learnt p.

    Examples
    --------
    >>> nt.global_gem_pool(torch.rand(2, 3, 5, 4), p=3.0).shape
    torch.Size([2, 3])
    """
    if not isinstance(p, torch.Tensor):
        p = torch.tensor(_checks.finite_real(p, "p"), dtype=torch.float64, device=x.device)
    eps = _checks.finite_real(eps, "eps")
    if _onnx_export():
        return _global(x, spatial_dims,
                       lambda x: _decompositions.gem_pool(x, p.to(x.dtype), eps, keepdims))
    return _global(x, spatial_dims, lambda x: _global_gem_pool(x, p, eps, keepdims))


def global_kmax_pool(x: torch.Tensor, k: Count = 1, keepdims: bool = False,
                     return_indices: bool = False, rounding: str = "floor",
                     spatial_dims: Optional[int] = None) -> TensorOrPair:
    """Global k-max pooling, differentiable: the mean of the k largest cells of each map.

    Ties go to the lower flat indices. The kernel is ``npool.global_kmax_pool_forward``.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, *spatial)`` with at least one spatial axis (with ``spatial_dims``: exactly that
        many, batched or unbatched ``(C, *spatial)``, as ``nn.AdaptiveMaxPool2d`` takes);
        float16, bfloat16, float32 or float64; CPU or CUDA; contiguous or channels-last.
    k : int or float, default 1
        A count (an int >= 1, clipped to the map's n cells) or a fraction in (0, 1] of the
        cells.
    keepdims : bool, default False
        Keep the pooled axes with size 1: ``(N, C, 1, ...)`` instead of ``(N, C)``.
    return_indices : bool, default False
        Also return the selected flat indices.
    rounding : {"floor", "round"}, default "floor"
        The count of a fraction: ``max(1, floor(k n + 1e-6))``, or WILDCAT's
        ``max(1, round(k n))`` (half to even).
    spatial_dims : int, optional
        The number of spatial axes; None reads any number of them (a batched input).

    Returns
    -------
    y : torch.Tensor
        ``(N, C)``, ``(N, C, 1, ...)`` with ``keepdims``, ``(C,)`` unbatched; x's dtype.
    indices : torch.Tensor of int64
        With ``return_indices``: ``(N, C, k)``, ascending.

    Raises
    ------
    TypeError
        A non-floating x.
    ValueError
        Fewer than three axes (or another rank than ``spatial_dims`` allows), an empty map, or
        a bad option.

    See Also
    --------
    GlobalKMaxPool : The ``nn.Module`` form.

    Examples
    --------
    >>> nt.global_kmax_pool(torch.randn(2, 3, 7, 7), k=0.1).shape
    torch.Size([2, 3])
    """
    def pool(x):
        count = _checks.k_count(k, _spatial_cells(x), "k", rounding=rounding)
        select = _decompositions.select_pool if _onnx_export() else _weldon_pool
        y, indices = select(x, count, 0, 0.0, keepdims)
        return (y, indices) if return_indices else y
    return _global(x, spatial_dims, pool)


def weldon_pool(x: torch.Tensor, kmax: Count = 1, kmin: Optional[Count] = None,
                alpha: float = 1.0, keepdims: bool = False, return_indices: bool = False,
                rounding: str = "floor", spatial_dims: Optional[int] = None) -> TensorOrPair:
    """WELDON pooling, differentiable: ``mean(kmax largest) + alpha * mean(kmin smallest)`` per map.

    WILDCAT's pooling is ``0.5 * weldon_pool(...)`` (``npool.torch.compat.WildcatPool2d`` has its
    exact conventions). The kernel is ``npool.weldon_pool_forward``.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, *spatial)`` with at least one spatial axis (with ``spatial_dims``: exactly that
        many, batched or unbatched ``(C, *spatial)``, as ``nn.AdaptiveMaxPool2d`` takes);
        float16, bfloat16, float32 or float64; CPU or CUDA; contiguous or channels-last.
    kmax : int or float, default 1
        The count of largest cells: an int >= 1 (clipped to the map) or a fraction in (0, 1].
    kmin : int or float, optional
        The count of smallest cells, as kmax; None is kmax, 0 drops the second term.
    alpha : float, default 1.0
        The weight of the smallest cells' mean, any finite number.
    keepdims : bool, default False
        Keep the pooled axes with size 1: ``(N, C, 1, ...)`` instead of ``(N, C)``.
    return_indices : bool, default False
        Also return the selected flat indices (the top set, then the bottom set).
    rounding : {"floor", "round"}, default "floor"
        The count of a fraction: ``max(1, floor(k n + 1e-6))``, or WILDCAT's
        ``max(1, round(k n))`` (half to even).
    spatial_dims : int, optional
        The number of spatial axes; None reads any number of them (a batched input).

    Returns
    -------
    y : torch.Tensor
        ``(N, C)``, ``(N, C, 1, ...)`` with ``keepdims``, ``(C,)`` unbatched; x's dtype.
    indices : torch.Tensor of int64
        With ``return_indices``: ``(N, C, kmax + kmin)``.

    Raises
    ------
    TypeError
        A non-floating x.
    ValueError
        Fewer than three axes (or another rank than ``spatial_dims`` allows), an empty map, or
        a bad option.

    See Also
    --------
    WeldonPool : The ``nn.Module`` form.

    Examples
    --------
    >>> nt.weldon_pool(torch.randn(2, 3, 7, 7), kmax=3, kmin=3, alpha=0.7).shape
    torch.Size([2, 3])
    """
    alpha = _checks.finite_real(alpha, "alpha")

    def pool(x):
        top, bottom = _checks.weldon_counts(kmax, kmin, _spatial_cells(x), rounding)
        select = _decompositions.select_pool if _onnx_export() else _weldon_pool
        y, indices = select(x, top, bottom, alpha, keepdims)
        return (y, indices) if return_indices else y
    return _global(x, spatial_dims, pool)


# ------------------------------------------------------------------ Max-Entropy pooling
_MAXENT = {1: (npool.maxent_pool1d_forward, npool.maxent_pool1d_backward),
           2: (npool.maxent_pool2d_forward, npool.maxent_pool2d_backward),
           3: (npool.maxent_pool3d_forward, npool.maxent_pool3d_backward)}


@torch.library.custom_op("npool::maxent_pool", mutates_args=())
def _maxent_pool(x: torch.Tensor, lam: torch.Tensor, kernel_size: list[int], stride: list[int],
                 padding: list[int], ceil_mode: bool) -> torch.Tensor:
    forward, _ = _MAXENT[len(kernel_size)]
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
    _, backward = _MAXENT[len(kernel_size)]
    grad_x = _empty_in_layout(x, tuple(x.shape), len(kernel_size))
    _, grad_lam = backward(to_core(grad_out.to(x.dtype)), to_core(x), to_core(lam.to(x.dtype)),
                           kernel_size, stride, padding, ceil_mode,
                           out=(to_core(grad_x), None))
    return grad_x, from_core(grad_lam, x).to(lam.dtype).reshape(lam.shape)


@_maxent_pool_backward.register_fake
def _(grad_out, x, lam, kernel_size, stride, padding, ceil_mode):
    return _empty_in_layout(x, tuple(x.shape), len(kernel_size)), lam.new_empty(lam.shape)


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
        kernel, stride, padding = _window_lists(nd, kernel_size, stride, padding)
        if not isinstance(ceil_mode, bool):
            raise TypeError(f"ceil_mode must be a bool, got {type(ceil_mode).__name__}")
        if not isinstance(lam, torch.Tensor):
            lam = torch.tensor(_checks.finite_real(lam, "lam"), dtype=x.dtype, device=x.device)
        if _onnx_export():
            return _decompositions.windowed_softmax_pool(x, lam.to(x.dtype), kernel, stride,
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


# ------------------------------------------------------------------ Set pools (LOUPE)
def _core_or_none(t):
    return None if t is None else to_core(t)


def _c_order_like(t):
    """A new tensor of t's shape in C order: what the set pools' kernels return whatever the
    strides of their inputs (``torch.empty_like`` would keep a permuted input's strides)."""
    return t.new_empty(t.shape)


def _matmul_for(t):
    """The set pools' matmul= for tensors on t's device: torch's BLAS on the CPU; None (npool's
    own GPU kernels) on CUDA."""
    return torch_matmul if t.device.type == "cpu" else None


@torch.library.custom_op("npool::netvlad_pool", mutates_args=())
def _netvlad_pool(x: torch.Tensor, assign: torch.Tensor, centers: torch.Tensor | None,
                  mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    options = dict(mask=_core_or_none(mask), return_norms=True, matmul=_matmul_for(x))
    if centers is not None:
        out, norms = npool.netvlad_pool_forward(to_core(x), to_core(assign), to_core(centers),
                                                **options)
    else:
        out, norms = npool.netrvlad_pool_forward(to_core(x), to_core(assign), **options)
    return from_core(out, x), from_core(norms, x)


@_netvlad_pool.register_fake
def _(x, assign, centers, mask):
    b, k = x.shape[0], assign.shape[-1]
    return x.new_empty((b, x.shape[-1] * k)), x.new_empty((b, k + 1))


@torch.library.custom_op("npool::netvlad_pool_backward", mutates_args=())
def _netvlad_pool_backward(grad_out: torch.Tensor, x: torch.Tensor, assign: torch.Tensor,
                           centers: torch.Tensor | None, mask: torch.Tensor | None,
                           output: torch.Tensor, norms: torch.Tensor) -> list[torch.Tensor]:
    state = dict(mask=_core_or_none(mask), output=to_core(output), norms=to_core(norms),
                 matmul=_matmul_for(x))
    g, xs, a = to_core(grad_out.to(x.dtype)), to_core(x), to_core(assign)
    if centers is None:
        grads = list(npool.netrvlad_pool_backward(g, xs, a, **state))
    else:
        grads = list(npool.netvlad_pool_backward(g, xs, a, to_core(centers), **state))
    return [from_core(gr, x) for gr in grads]


@_netvlad_pool_backward.register_fake
def _(grad_out, x, assign, centers, mask, output, norms):
    return [_c_order_like(t) for t in (x, assign, centers) if t is not None]


def _netvlad_setup_context(ctx, inputs, output):
    x, assign, centers, mask = inputs
    ctx.save_for_backward(x, assign, centers, mask, *output)


def _netvlad_autograd(ctx, grad_out, _grad_norms):
    x, assign, centers, mask, output, norms = ctx.saved_tensors
    grads = _netvlad_pool_backward(grad_out, x, assign, centers, mask, output, norms)
    return grads[0], grads[1], grads[2] if centers is not None else None, None


_netvlad_pool.register_autograd(_netvlad_autograd, setup_context=_netvlad_setup_context)


@torch.library.custom_op("npool::netfv_pool", mutates_args=())
def _netfv_pool(x: torch.Tensor, assign: torch.Tensor, mu: torch.Tensor,
                covar_weights: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return from_core(npool.netfv_pool_forward(to_core(x), to_core(assign), to_core(mu),
                                              to_core(covar_weights), _core_or_none(mask),
                                              matmul=_matmul_for(x)), x)


@_netfv_pool.register_fake
def _(x, assign, mu, covar_weights, mask):
    return x.new_empty((x.shape[0], 2 * x.shape[-1] * assign.shape[-1]))


@torch.library.custom_op("npool::netfv_pool_backward", mutates_args=())
def _netfv_pool_backward(grad_out: torch.Tensor, x: torch.Tensor, assign: torch.Tensor,
                         mu: torch.Tensor, covar_weights: torch.Tensor,
                         mask: torch.Tensor | None) -> list[torch.Tensor]:
    grads = npool.netfv_pool_backward(to_core(grad_out.to(x.dtype)), to_core(x), to_core(assign),
                                      to_core(mu), to_core(covar_weights), _core_or_none(mask),
                                      matmul=_matmul_for(x))
    return [from_core(gr, x) for gr in grads]


@_netfv_pool_backward.register_fake
def _(grad_out, x, assign, mu, covar_weights, mask):
    return [_c_order_like(t) for t in (x, assign, mu, covar_weights)]


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _netfv_autograd(ctx, grad_out):
    return (*_netfv_pool_backward(grad_out, *ctx.saved_tensors), None)


_netfv_pool.register_autograd(_netfv_autograd, setup_context=_save_inputs)


@torch.library.custom_op("npool::soft_dbow_pool", mutates_args=())
def _soft_dbow_pool(assign: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return from_core(npool.soft_dbow_pool_forward(to_core(assign), _core_or_none(mask)), assign)


@_soft_dbow_pool.register_fake
def _(assign, mask):
    return assign.new_empty((assign.shape[0], assign.shape[-1]))


@torch.library.custom_op("npool::soft_dbow_pool_backward", mutates_args=())
def _soft_dbow_pool_backward(grad_out: torch.Tensor, assign: torch.Tensor,
                             mask: torch.Tensor | None) -> torch.Tensor:
    return from_core(npool.soft_dbow_pool_backward(to_core(grad_out.to(assign.dtype)),
                                                   to_core(assign), _core_or_none(mask)), assign)


_soft_dbow_pool_backward.register_fake(lambda grad_out, assign, mask: _c_order_like(assign))
_soft_dbow_pool.register_autograd(
    lambda ctx, grad_out: (_soft_dbow_pool_backward(grad_out, *ctx.saved_tensors), None),
    setup_context=_save_inputs)


@torch.library.custom_op("npool::context_gating", mutates_args=())
def _context_gating(x: torch.Tensor, weights: torch.Tensor,
                    biases: torch.Tensor) -> torch.Tensor:
    return from_core(npool.context_gating_forward(to_core(x), to_core(weights), to_core(biases),
                                                  matmul=_matmul_for(x)), x)


_context_gating.register_fake(lambda x, weights, biases: _c_order_like(x))


@torch.library.custom_op("npool::context_gating_backward", mutates_args=())
def _context_gating_backward(grad_out: torch.Tensor, x: torch.Tensor, weights: torch.Tensor,
                             biases: torch.Tensor) -> list[torch.Tensor]:
    grads = npool.context_gating_backward(to_core(grad_out.to(x.dtype)), to_core(x),
                                          to_core(weights), to_core(biases),
                                          matmul=_matmul_for(x))
    return [from_core(gr, x) for gr in grads]


@_context_gating_backward.register_fake
def _(grad_out, x, weights, biases):
    return [_c_order_like(t) for t in (x, weights, biases)]


_context_gating.register_autograd(
    lambda ctx, grad_out: tuple(_context_gating_backward(grad_out, *ctx.saved_tensors)),
    setup_context=_save_inputs)


def _set_mask(mask, x):
    """mask as a bool tensor (B, M) on x's device, or None."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (B, M), got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}")
    return mask.to(x.device)


def netvlad_pool(x: torch.Tensor, assign: torch.Tensor, centers: torch.Tensor,
                 mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """NetVLAD pooling, differentiable (twice) in x, assign and centers.

    ``V[d, k] = sum_m a[m, k] (x[m, d] - c[d, k])``, l2-normalised over d for each k, flattened
    D-major and l2-normalised again (LOUPE's NetVLAD). The kernel is
    ``npool.netvlad_pool_forward``.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, M, D)``: B sets of M samples with D features; float16, bfloat16, float32 or
        float64; CPU or CUDA.
    assign : torch.Tensor
        ``(B, M, K)``: each sample's soft assignment to the K clusters, x's dtype.
    centers : torch.Tensor
        ``(D, K)``: the cluster centres.
    mask : torch.Tensor of bool, optional
        ``(B, M)``: True for real samples; the others change nothing. None: every sample is
        real.

    Returns
    -------
    torch.Tensor
        ``(B, D * K)``, x's dtype.

    Raises
    ------
    TypeError
        Tensors of different or non-floating dtypes, or a mask that is not a bool tensor.
    ValueError
        Shapes that do not match.

    See Also
    --------
    NetVLAD : LOUPE's layer around it.

    Examples
    --------
    >>> x, a = torch.randn(2, 5, 4), torch.softmax(torch.randn(2, 5, 3), -1)
    >>> nt.netvlad_pool(x, a, torch.randn(4, 3)).shape
    torch.Size([2, 12])
    """
    if _onnx_export():
        return _decompositions.vlad_pool(x, assign, centers, _set_mask(mask, x))
    return _netvlad_pool(x, assign, centers, _set_mask(mask, x))[0]


def netrvlad_pool(x: torch.Tensor, assign: torch.Tensor,
                  mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """NetRVLAD pooling, differentiable (twice): NetVLAD without centres.

    ``V[d, k] = sum_m a[m, k] x[m, d]``, normalised as NetVLAD's. The kernel is
    ``npool.netrvlad_pool_forward``.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, M, D)``: B sets of M samples with D features; float16, bfloat16, float32 or
        float64; CPU or CUDA.
    assign : torch.Tensor
        ``(B, M, K)``: each sample's soft assignment to the K clusters, x's dtype.
    mask : torch.Tensor of bool, optional
        ``(B, M)``: True for real samples; the others change nothing. None: every sample is
        real.

    Returns
    -------
    torch.Tensor
        ``(B, D * K)``, x's dtype.

    Raises
    ------
    TypeError
        Tensors of different or non-floating dtypes, or a mask that is not a bool tensor.
    ValueError
        Shapes that do not match.

    See Also
    --------
    NetRVLAD : LOUPE's layer around it.

    Examples
    --------
    >>> x, a = torch.randn(2, 5, 4), torch.softmax(torch.randn(2, 5, 3), -1)
    >>> nt.netrvlad_pool(x, a).shape
    torch.Size([2, 12])
    """
    if _onnx_export():
        return _decompositions.vlad_pool(x, assign, None, _set_mask(mask, x))
    return _netvlad_pool(x, assign, None, _set_mask(mask, x))[0]


def netfv_pool(x: torch.Tensor, assign: torch.Tensor, mu: torch.Tensor,
               covar_weights: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """NetFV pooling, differentiable (twice): first- and second-order Fisher-vector statistics.

    With ``sigma = covar_weights^2 + 1e-6``: ``F1[d, k] = sum_m a (x - mu) / sigma`` and
    ``F2[d, k] = sum_m a ((x - mu)^2 / sigma^2 - 1)`` (LOUPE's), each l2-normalised over d,
    flattened, concatenated and l2-normalised. The kernel is ``npool.netfv_pool_forward``.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, M, D)``: B sets of M samples with D features; float16, bfloat16, float32 or
        float64; CPU or CUDA.
    assign : torch.Tensor
        ``(B, M, K)``: each sample's soft assignment to the K clusters, x's dtype.
    mu : torch.Tensor
        ``(D, K)``: the cluster means.
    covar_weights : torch.Tensor
        ``(D, K)``: the square roots of the cluster variances (before the 1e-6).
    mask : torch.Tensor of bool, optional
        ``(B, M)``: True for real samples; the others change nothing. None: every sample is
        real.

    Returns
    -------
    torch.Tensor
        ``(B, 2 * D * K)``, x's dtype.

    Raises
    ------
    TypeError
        Tensors of different or non-floating dtypes, or a mask that is not a bool tensor.
    ValueError
        Shapes that do not match.

    See Also
    --------
    NetFV : LOUPE's layer around it.

    Examples
    --------
    >>> x, a = torch.randn(2, 5, 4), torch.softmax(torch.randn(2, 5, 3), -1)
    >>> nt.netfv_pool(x, a, torch.randn(4, 3), torch.ones(4, 3)).shape
    torch.Size([2, 24])
    """
    if _onnx_export():
        return _decompositions.fv_pool(x, assign, mu, covar_weights, _set_mask(mask, x))
    return _netfv_pool(x, assign, mu, covar_weights, _set_mask(mask, x))


def soft_dbow_pool(assign: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Soft-DBoW pooling, differentiable (twice): ``l2n(sum_m assign[m])``.

    The kernel is ``npool.soft_dbow_pool_forward``.

    Parameters
    ----------
    assign : torch.Tensor
        ``(B, M, K)``: each sample's soft assignment to the K clusters; floating, CPU or CUDA.
    mask : torch.Tensor of bool, optional
        ``(B, M)``: True for real samples; the others change nothing. None: every sample is
        real.

    Returns
    -------
    torch.Tensor
        ``(B, K)``, assign's dtype.

    Raises
    ------
    TypeError
        Tensors of different or non-floating dtypes, or a mask that is not a bool tensor.
    ValueError
        Shapes that do not match.

    See Also
    --------
    SoftDBoW : LOUPE's layer around it.

    Examples
    --------
    >>> a = torch.softmax(torch.randn(2, 5, 3), -1)
    >>> nt.soft_dbow_pool(a).shape
    torch.Size([2, 3])
    """
    if _onnx_export():
        return _decompositions.dbow_pool(assign, _set_mask(mask, assign))
    return _soft_dbow_pool(assign, _set_mask(mask, assign))


def context_gating(x: torch.Tensor, weights: torch.Tensor,
                   biases: torch.Tensor) -> torch.Tensor:
    """Context Gating, differentiable (twice): ``y = x * sigmoid(x W + b)`` over the last axis.

    The kernel is ``npool.context_gating_forward``.

    Parameters
    ----------
    x : torch.Tensor
        ``(..., n)``; floating, CPU or CUDA.
    weights : torch.Tensor
        ``(n, n)``: W.
    biases : torch.Tensor
        ``(n,)``: b.

    Returns
    -------
    torch.Tensor
        Of x's shape and dtype.

    Raises
    ------
    TypeError
        Tensors of different or non-floating dtypes.
    ValueError
        Shapes that do not match.

    See Also
    --------
    ContextGating : The layer (with LOUPE's BatchNorm variant).

    Examples
    --------
    >>> x = torch.randn(2, 5, 4)
    >>> nt.context_gating(x, torch.eye(4), torch.zeros(4)).shape
    torch.Size([2, 5, 4])
    """
    if _onnx_export():
        return _decompositions.gating(x, weights, biases)
    return _context_gating(x, weights, biases)


# ------------------------------------------------------------------ second derivatives
# The backward custom ops are differentiated through each op's decomposition into standard
# PyTorch ops (_decompositions.py): d/d(grad_out, inputs) of <gg, vjp(op)(inputs, grad_out)>.
def _vjp_of_vjp(decomposition, grad_out, inputs, grad_grads):
    """For the backward op computing vjp(decomposition)(inputs, grad_out): the gradients of
    <grad_grads, that vjp> with respect to grad_out and to each input (None: no gradient)."""
    with torch.enable_grad():
        dtype = next(t for t in inputs if t is not None).dtype
        g = grad_out.detach().to(dtype).requires_grad_()
        live = [None if t is None else t.detach().requires_grad_() for t in inputs]
        differentiable = [t for t in live if t is not None]
        first = torch.autograd.grad(decomposition(*live), differentiable, g, create_graph=True,
                                    allow_unused=True)
        pairs = [(f, gg) for f, gg in zip(first, grad_grads)
                 if f is not None and gg is not None and f.requires_grad]
        if not pairs:
            return [None] * (1 + len(inputs))
        second = torch.autograd.grad([f for f, _ in pairs], [g] + differentiable,
                                     [gg.to(f.dtype) for f, gg in pairs], allow_unused=True,
                                     create_graph=torch.is_grad_enabled())
    result, rest = [None if second[0] is None else second[0].to(grad_out.dtype)], iter(second[1:])
    result += [None if t is None else next(rest) for t in inputs]
    return result


def _flat(grads):
    return list(grads[0]) if len(grads) == 1 and isinstance(grads[0], (list, tuple)) else \
        list(grads)


def _save_tensors(ctx, inputs, output):
    """Tensors through save_for_backward, the other arguments as they are."""
    ctx.tensors = [i for i, t in enumerate(inputs) if isinstance(t, torch.Tensor)]
    ctx.save_for_backward(*(inputs[i] for i in ctx.tensors))
    ctx.others = [None if isinstance(t, torch.Tensor) else t for t in inputs]


def _restored(ctx):
    """The backward op's inputs, its tensors from the saved ones."""
    inputs = list(ctx.others)
    for i, t in zip(ctx.tensors, ctx.saved_tensors):
        inputs[i] = t
    return inputs


def _second_order(op, decomposition_of, differentiable):
    """Registers autograd on backward op ``op``: ``decomposition_of(inputs)`` gives the
    forward's decomposition as a function of the inputs at positions ``differentiable``."""
    def backward(ctx, *grad_grads):
        inputs = _restored(ctx)
        grads = _vjp_of_vjp(decomposition_of(inputs), inputs[0],
                            [inputs[i] for i in differentiable], _flat(grad_grads))
        out = [None] * len(inputs)
        out[0] = grads[0]
        for i, gr in zip(differentiable, grads[1:]):
            out[i] = gr
        return tuple(out)
    op.register_autograd(backward, setup_context=_save_tensors)


_second_order(_soft_pool_backward, lambda a: lambda x: _decompositions.windowed_softmax_pool(
    x, 1.0, *a[2:]), [1])
_second_order(_maxent_pool_backward, lambda a: lambda x, lam:
              _decompositions.windowed_softmax_pool(x, lam, *a[3:]), [1, 2])
_second_order(_global_max_pool_backward, lambda a: lambda x: _decompositions.selection_pool(
    x, a[2], 1, 0, 0.0, a[3]), [1])
_second_order(_global_avg_pool_backward,
              lambda a: lambda x: _decompositions.avg_pool(x, a[2]), [1])
_second_order(_global_lse_pool_backward,
              lambda a: lambda x: _decompositions.lse_pool(x, a[3], a[4]), [1])
_second_order(_global_gem_pool_backward, lambda a: lambda x, p: _decompositions.gem_pool(
    x, p, a[3], a[4]), [1, 2])
_second_order(_weldon_pool_backward, lambda a: lambda x: _decompositions.selection_pool(
    x, a[2], *a[3:]), [1])
_second_order(_netvlad_pool_backward, lambda a: lambda x, assign, centers:
              _decompositions.vlad_pool(x, assign, centers, a[4]), [1, 2, 3])
_second_order(_netfv_pool_backward, lambda a: lambda x, assign, mu, covar:
              _decompositions.fv_pool(x, assign, mu, covar, a[5]), [1, 2, 3, 4])
_second_order(_soft_dbow_pool_backward,
              lambda a: lambda assign: _decompositions.dbow_pool(assign, a[2]), [1])
_second_order(_context_gating_backward, lambda a: _decompositions.gating, [1, 2, 3])


# ------------------------------------------------------------------ autocast
# The forward op of every kernel of the op table runs under torch.autocast in the region's
# lower-precision dtype (the set pools did not: their ops ran in float32 inside a bfloat16
# region while the others ran in bfloat16).
for _kernel in _op_table.kernels():
    _register_autocast(f"npool::{_kernel}")


# ------------------------------------------------------------------ vmap
# Batching rules: a vmapped axis folds into the op's batch axis (N, or B) when only the pooled
# tensor carries it; otherwise the rule loops over the mapped axis itself (what PyTorch's
# fallback does, without its warning).
def _loop(op, info, in_dims, args):
    """op over the mapped axis, one slice at a time, stacked on axis 0."""
    size = info.batch_size
    outs = []
    for i in range(size):
        sliced = [a.select(d, i) if d is not None else a for a, d in zip(args, in_dims)]
        outs.append(op(*sliced))
    if isinstance(outs[0], (tuple, list)):
        stacked = tuple(torch.stack(parts) for parts in zip(*outs))
        return stacked, (0,) * len(stacked)
    return torch.stack(outs), 0


def _folded(op, x, x_dim, batched_rank, rest):
    """op on x with its mapped axis x_dim merged into the leading batch axis; x's other
    arguments (rest) are not mapped. ``batched_rank``: x's rank per sample when batched (an
    unbatched sample, one axis less, takes the mapped axis as its batch)."""
    x = x.movedim(x_dim, 0)
    if x.dim() == batched_rank:  # each sample unbatched: the mapped axis is the batch
        out = op(x, *rest)
        return out, (0,) * len(out) if isinstance(out, tuple) else 0
    v, n = x.shape[:2]
    out = op(x.reshape((v * n,) + tuple(x.shape[2:])), *rest)
    unfold = lambda t: t.reshape((v, n) + tuple(t.shape[1:]))  # noqa: E731
    if isinstance(out, tuple):
        return tuple(unfold(t) for t in out), (0,) * len(out)
    return unfold(out), 0


@torch.library.register_vmap("npool::soft_pool")
def _(info, in_dims, x, kernel_size, stride, padding, ceil_mode):
    return _folded(_soft_pool, x, in_dims[0], len(kernel_size) + 2,
                   (kernel_size, stride, padding, ceil_mode))


def _global_vmap(op):
    def rule(info, in_dims, x, *rest):
        return _folded(op, x, in_dims[0], -1, rest)  # (V, N, C, *spatial): always a batch
    return rule


for _op in (_global_max_pool, _global_avg_pool, _global_lse_pool, _weldon_pool):
    torch.library.register_vmap(_op._qualname, _global_vmap(_op))


@torch.library.register_vmap("npool::global_gem_pool")
def _(info, in_dims, x, p, eps, keepdims):
    if in_dims[1] is None and p.dim() < 2:  # p shared or per channel: folds with the batch
        return _folded(_global_gem_pool, x, in_dims[0], -1, (p, eps, keepdims))
    return _loop(lambda x, p: _global_gem_pool(x, p, eps, keepdims), info, in_dims[:2], (x, p))


@torch.library.register_vmap("npool::maxent_pool")
def _(info, in_dims, x, lam, kernel_size, stride, padding, ceil_mode):
    return _loop(lambda x, lam: _maxent_pool(x, lam, kernel_size, stride, padding, ceil_mode),
                 info, in_dims[:2], (x, lam))


@torch.library.register_vmap("npool::context_gating")
def _(info, in_dims, x, weights, biases):
    if in_dims[1] is None and in_dims[2] is None:  # x (..., n) takes any leading axes
        return _context_gating(x.movedim(in_dims[0], 0), weights, biases), 0
    return _loop(_context_gating, info, in_dims, (x, weights, biases))


@torch.library.register_vmap("npool::netvlad_pool")
def _(info, in_dims, x, assign, centers, mask):
    return _loop(lambda *a: _netvlad_pool(*a), info, in_dims, (x, assign, centers, mask))


@torch.library.register_vmap("npool::netfv_pool")
def _(info, in_dims, x, assign, mu, covar_weights, mask):
    return _loop(_netfv_pool, info, in_dims, (x, assign, mu, covar_weights, mask))


@torch.library.register_vmap("npool::soft_dbow_pool")
def _(info, in_dims, assign, mask):
    return _loop(_soft_dbow_pool, info, in_dims, (assign, mask))
