"""npool.torch's set pools (LOUPE's NetVLAD, NetRVLAD, NetFV, Soft-DBoW and Context Gating)
registered with ``torch.library``: for each, the forward and backward custom ops, their fakes,
autograd, second order, autocast and vmap rules, together, and the functional forms."""
from typing import Optional

import torch

import npool

from . import _standard_ops
from ._registration import (loop_over_mapped_axis, onnx_export, register_family_autocast,
                            second_order)
from ._tensors import from_core, to_core, torch_matmul


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
    if onnx_export():
        return _standard_ops.vlad_pool(x, assign, centers, _set_mask(mask, x))
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
    if onnx_export():
        return _standard_ops.vlad_pool(x, assign, None, _set_mask(mask, x))
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
    if onnx_export():
        return _standard_ops.fv_pool(x, assign, mu, covar_weights, _set_mask(mask, x))
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
    if onnx_export():
        return _standard_ops.dbow_pool(assign, _set_mask(mask, assign))
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
    if onnx_export():
        return _standard_ops.gating(x, weights, biases)
    return _context_gating(x, weights, biases)


# ------------------------------------------------------------------ second derivatives
# The backward ops differentiated through the op's decomposition (_standard_ops.py).
second_order(_netvlad_pool_backward, lambda a: lambda x, assign, centers:
              _standard_ops.vlad_pool(x, assign, centers, a[4]), [1, 2, 3])
second_order(_netfv_pool_backward, lambda a: lambda x, assign, mu, covar:
              _standard_ops.fv_pool(x, assign, mu, covar, a[5]), [1, 2, 3, 4])
second_order(_soft_dbow_pool_backward,
              lambda a: lambda assign: _standard_ops.dbow_pool(assign, a[2]), [1])
second_order(_context_gating_backward, lambda a: _standard_ops.gating, [1, 2, 3])


# ------------------------------------------------------------------ autocast, vmap
register_family_autocast("set")


@torch.library.register_vmap("npool::context_gating")
def _(info, in_dims, x, weights, biases):
    if in_dims[1] is None and in_dims[2] is None:  # x (..., n) takes any leading axes
        return _context_gating(x.movedim(in_dims[0], 0), weights, biases), 0
    return loop_over_mapped_axis(_context_gating, info, in_dims, (x, weights, biases))


@torch.library.register_vmap("npool::netvlad_pool")
def _(info, in_dims, x, assign, centers, mask):
    return loop_over_mapped_axis(lambda *a: _netvlad_pool(*a), info, in_dims, (x, assign, centers, mask))


@torch.library.register_vmap("npool::netfv_pool")
def _(info, in_dims, x, assign, mu, covar_weights, mask):
    return loop_over_mapped_axis(_netfv_pool, info, in_dims, (x, assign, mu, covar_weights, mask))


@torch.library.register_vmap("npool::soft_dbow_pool")
def _(info, in_dims, assign, mask):
    return loop_over_mapped_axis(_soft_dbow_pool, info, in_dims, (assign, mask))
