"""npool.torch's global pools (max, avg, LSE, GeM, k-max and WELDON) registered with
``torch.library``: for each, the forward and backward custom ops, their fakes, autograd, second
order, autocast and vmap rules, together, and the functional forms."""
from typing import Any, Optional, Union

import torch

import npool

from .. import _checks
from . import _standard_ops
from .._types import Count
from ._registration import (folded_into_batch, layout_of, loop_over_mapped_axis, onnx_export,
                            register_family_autocast, second_order)
from ._tensors import from_core, to_core


# what a global pool with return_indices returns: y, or (y, indices) - typed loosely, as the
# core's ArrayOrPair, so that callers of the common form (a tensor) need no narrowing
TensorOrPair = Any


# ------------------------------------------------------------------ global pools
def _pooled_shape(x, keepdims):
    return tuple(x.shape[:2]) + ((1,) * (x.dim() - 2) if keepdims else ())


def _grad_like(x):
    """A new tensor with the strides npool's cores give a gradient of (batched) x."""
    return x.new_empty_strided(tuple(x.shape),
                               _checks.dense_strides(tuple(x.shape), layout_of(x)))


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
        if onnx_export():
            y, indices = _standard_ops.topk_selection_pool(x, 1, 0, 0.0, keepdims)
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
    if onnx_export():
        return _global(x, spatial_dims, lambda x: _standard_ops.avg_pool(x, keepdims))
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
    if onnx_export():
        return _global(x, spatial_dims, lambda x: _standard_ops.lse_pool(x, beta, keepdims))
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
    if onnx_export():
        return _global(x, spatial_dims,
                       lambda x: _standard_ops.gem_pool(x, p.to(x.dtype), eps, keepdims))
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
        select = _standard_ops.topk_selection_pool if onnx_export() else _weldon_pool
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
        select = _standard_ops.topk_selection_pool if onnx_export() else _weldon_pool
        y, indices = select(x, top, bottom, alpha, keepdims)
        return (y, indices) if return_indices else y
    return _global(x, spatial_dims, pool)


# ------------------------------------------------------------------ second derivatives
# The backward ops differentiated through the op's decomposition (_standard_ops.py).
second_order(_global_max_pool_backward, lambda a: lambda x: _standard_ops.indexed_selection_pool(
    x, a[2], 1, 0, 0.0, a[3]), [1])
second_order(_global_avg_pool_backward,
              lambda a: lambda x: _standard_ops.avg_pool(x, a[2]), [1])
second_order(_global_lse_pool_backward,
              lambda a: lambda x: _standard_ops.lse_pool(x, a[3], a[4]), [1])
second_order(_global_gem_pool_backward, lambda a: lambda x, p: _standard_ops.gem_pool(
    x, p, a[3], a[4]), [1, 2])
second_order(_weldon_pool_backward, lambda a: lambda x: _standard_ops.indexed_selection_pool(
    x, a[2], *a[3:]), [1])


# ------------------------------------------------------------------ autocast, vmap
register_family_autocast("global")


def _global_vmap(op):
    def rule(info, in_dims, x, *rest):
        return folded_into_batch(op, x, in_dims[0], -1, rest)  # (V, N, C, *spatial): always a batch
    return rule


for _op in (_global_max_pool, _global_avg_pool, _global_lse_pool, _weldon_pool):
    torch.library.register_vmap(_op._qualname, _global_vmap(_op))


@torch.library.register_vmap("npool::global_gem_pool")
def _(info, in_dims, x, p, eps, keepdims):
    if in_dims[1] is None and p.dim() < 2:  # p shared or per channel: folds with the batch
        return folded_into_batch(_global_gem_pool, x, in_dims[0], -1, (p, eps, keepdims))
    return loop_over_mapped_axis(lambda x, p: _global_gem_pool(x, p, eps, keepdims), info,
                                 in_dims[:2], (x, p))
