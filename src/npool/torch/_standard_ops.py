"""Each npool op written with standard PyTorch ops: differentiable any number of times, and
what npool.torch differentiates to give second derivatives (the backward custom ops' autograd)
and records while exporting to ONNX.

The math is npool's decomposition of each op (npool/_decompositions.py, written once for every
framework and checked against ``npool.testing``'s references), run here with PyTorch's
operations (``TorchOps``): gathered windows with a max-subtracted softmax, ``log1p``/``expm1``
LSE, einsum set pools. The selections reuse the indices the npool forward chose
(``indexed_selection_pool``), or ``topk`` where there are none (``topk_selection_pool``).
"""
import torch

from .. import _checks, _decompositions


class TorchOps:
    """npool/_decompositions.py's ``ops`` namespace in PyTorch."""

    # (index and condition arrays come from npool/_decompositions.py's caches, read-only:
    # copied into tensors, as torch.as_tensor would share memory it could write and warn)
    @staticmethod
    def take(x, index):
        return x.index_select(-1, torch.tensor(index, device=x.device))

    @staticmethod
    def reshape_tail(x, count, tail):
        return x.reshape(tuple(x.shape[:x.dim() - count]) + tuple(tail))

    @staticmethod
    def where(condition, a, b):
        return torch.where(torch.tensor(condition, device=a.device), a, b)

    @staticmethod
    def max(x, axis, keepdims):
        return x.amax(axis, keepdim=keepdims)

    @staticmethod
    def sum(x, axis, keepdims):
        return x.sum(axis, keepdim=keepdims)

    exp = staticmethod(torch.exp)
    expm1 = staticmethod(torch.expm1)
    log1p = staticmethod(torch.log1p)
    log = staticmethod(torch.log)
    sqrt = staticmethod(torch.sqrt)
    sigmoid = staticmethod(torch.sigmoid)
    einsum = staticmethod(torch.einsum)
    matmul = staticmethod(torch.matmul)

    @staticmethod
    def maximum(x, number):
        return torch.clamp_min(x, number)

    @staticmethod
    def stop_gradient(x):
        return x.detach()

    @staticmethod
    def concat(xs, axis):
        return torch.cat(xs, axis)

    @staticmethod
    def cast_like(a, x):
        return a.to(x.dtype)

    @staticmethod
    def top_k(x, k):
        return x.topk(k, dim=-1).values


# ------------------------------------------------------------------ local pools
def windowed_softmax_pool(x, lam, kernel_size, stride, padding, ceil_mode, dilation=(),
                          output_size=()):
    """Max-Ent pooling (SoftPool: lam = 1) of x ``(N, C, *spatial)`` or ``(C, *spatial)`` over
    the custom ops' window lists (padding: before and after each axis; adaptive when
    ``output_size`` is given); ``lam`` a number or a tensor that broadcasts to the output."""
    nd = len(output_size or kernel_size)
    spatial = tuple(int(n) for n in x.shape[-nd:])
    window = _checks.local_window(nd, spatial, output_size=tuple(output_size) or None) \
        if output_size else _checks.WindowArgs(nd, tuple(kernel_size), tuple(stride),
                                               tuple(zip(padding[0::2], padding[1::2])),
                                               ceil_mode, spatial=spatial,
                                               dilation=tuple(dilation) or 1)
    if isinstance(lam, torch.Tensor) and lam.dim() < x.dim():
        lam = lam.reshape((1,) * (x.dim() - lam.dim()) + tuple(lam.shape))
    return _decompositions.windowed_softmax_pool(TorchOps, x, lam, window)


# ------------------------------------------------------------------ global pools
def _maps(x):
    return x.reshape(x.shape[0], x.shape[1], -1)


def _pooled(values, x, keepdims):
    return values.reshape(tuple(x.shape[:2]) + (1,) * (x.dim() - 2)) if keepdims else values


def indexed_selection_pool(x, indices, kmax, kmin, alpha, keepdims):
    """WELDON (k-max: kmin = 0; max: kmax = 1, kmin = 0) through the flat ``indices`` the npool
    forward selected (top set, then bottom set): ``mean(top) + alpha mean(bottom)``."""
    values = _maps(x).gather(2, indices.reshape(x.shape[0], x.shape[1], -1))
    y = values[..., :kmax].mean(-1)
    if kmin:
        y = y + alpha * values[..., kmax:].mean(-1)
    return _pooled(y, x, keepdims)


def avg_pool(x, keepdims):
    return _pooled(_decompositions.global_avg_pool(TorchOps, x, x.dim() - 2), x, keepdims)


def lse_pool(x, beta, keepdims):
    """``(1/beta) log(mean exp(beta x))``; the mean at beta = 0."""
    return _pooled(_decompositions.global_lse_pool(TorchOps, x, x.dim() - 2, beta), x, keepdims)


def gem_pool(x, p, eps, keepdims):
    """GeM, ``(mean max(x, eps)^p)^(1/p)``; p a number or a tensor broadcasting to (N, C)."""
    return _pooled(_decompositions.global_gem_pool(TorchOps, x, x.dim() - 2, p, eps), x, keepdims)


# ------------------------------------------------------------------ set pools
def vlad_pool(x, assign, centers, mask):
    """NetVLAD (NetRVLAD: ``centers=None``)."""
    return _decompositions.vlad_pool(TorchOps, x, assign, centers, mask)


def fv_pool(x, assign, mu, covar_weights, mask):
    return _decompositions.fv_pool(TorchOps, x, assign, mu, covar_weights, mask)


def dbow_pool(assign, mask):
    return _decompositions.dbow_pool(TorchOps, assign, mask)


def gating(x, weights, biases):
    return _decompositions.context_gating(TorchOps, x, weights, biases)


def topk_selection_pool(x, kmax, kmin, alpha, keepdims):
    """WELDON (k-max: kmin = 0; max: kmax = 1, kmin = 0) selecting with ``topk``: the values
    and the flat indices (top set, then bottom set, each ascending) without npool's kernels.
    Among equal values ``topk`` may pick other cells than npool's rule (lower index first):
    the values are the same, the indices may differ."""
    m = _maps(x)
    values, top = m.topk(kmax, dim=-1)
    y = values.mean(-1)
    indices = [top.sort(-1).values]
    if kmin:
        low_values, low = m.topk(kmin, dim=-1, largest=False)
        y = y + alpha * low_values.mean(-1)
        indices.append(low.sort(-1).values)
    return _pooled(y, x, keepdims), torch.cat(indices, -1)
