"""Each npool op written with standard PyTorch ops: differentiable any number of times, and
what npool.torch differentiates to give second derivatives (the backward custom ops' autograd).

These compute the same math as npool's kernels (docs/semantics.md), as
``npool.testing.references`` does in NumPy; they are the portable form of an op, not its fast
one: the local pools unfold every window, the selections reuse the indices the npool forward
chose. Every exponential is taken relative to its window's or map's maximum.
"""
import math

import torch
import torch.nn.functional as F

from .. import _checks


# ------------------------------------------------------------------ local pools
def _windows(t, kernel_size, stride, padding, ceil_mode, fill):
    """t (..., *spatial) as (..., *out, window): every window's cells on a last axis, padded
    with ``fill`` on both sides as the output sizes need."""
    nd = len(kernel_size)
    spatial = tuple(t.shape[-nd:])
    out = _checks.WindowArgs(nd, tuple(kernel_size), tuple(stride), tuple(padding),
                             ceil_mode).output_size(spatial)
    pads = []
    for n, k, s, p, o in reversed(list(zip(spatial, kernel_size, stride, padding, out))):
        pads += [p, max(0, (o - 1) * s + k - n - p)]
    cells = F.pad(t, pads, value=fill) if any(pads) else t
    first = t.dim() - nd
    for axis, (k, s) in enumerate(zip(kernel_size, stride)):
        cells = cells.unfold(first + axis, k, s)
    cells = cells[(Ellipsis,) + tuple(slice(0, o) for o in out) + (slice(None),) * nd]
    return cells.flatten(-nd)


def windowed_softmax_pool(x, lam, kernel_size, stride, padding, ceil_mode):
    """Max-Ent pooling (SoftPool: lam = 1): ``y_o = sum_{i in R(o)} softmax(lam_o x)_i x_i``
    over the real cells R(o) of each window (padding is left out)."""
    cells = _windows(x, kernel_size, stride, padding, ceil_mode, 0.0)
    real = _windows(torch.ones_like(x, dtype=torch.bool), kernel_size, stride, padding,
                    ceil_mode, False)
    lam = torch.as_tensor(lam, dtype=x.dtype, device=x.device)
    z = torch.where(real, lam.unsqueeze(-1) * cells, -math.inf)
    return (torch.softmax(z, dim=-1) * cells).sum(-1)


# ------------------------------------------------------------------ global pools
def _maps(x):
    return x.reshape(x.shape[0], x.shape[1], -1)


def _pooled(values, x, keepdims):
    return values.reshape(tuple(x.shape[:2]) + (1,) * (x.dim() - 2)) if keepdims else values


def selection_pool(x, indices, kmax, kmin, alpha, keepdims):
    """WELDON (k-max: kmin = 0; max: kmax = 1, kmin = 0) through the flat ``indices`` the npool
    forward selected (top set, then bottom set): ``mean(top) + alpha mean(bottom)``."""
    values = _maps(x).gather(2, indices.reshape(x.shape[0], x.shape[1], -1))
    y = values[..., :kmax].mean(-1)
    if kmin:
        y = y + alpha * values[..., kmax:].mean(-1)
    return _pooled(y, x, keepdims)


def avg_pool(x, keepdims):
    return _pooled(_maps(x).mean(-1), x, keepdims)


def lse_pool(x, beta, keepdims):
    """``(1/beta) log(mean exp(beta x))``; the mean at beta = 0."""
    m = _maps(x)
    if beta == 0:
        return _pooled(m.mean(-1), x, keepdims)
    y = (torch.logsumexp(beta * m, dim=-1) - math.log(m.shape[-1])) / beta
    return _pooled(y, x, keepdims)


# ------------------------------------------------------------------ set pools
def l2n(v, dim):
    """``v / sqrt(max(sum v^2, 1e-12))`` along dim."""
    return v / torch.sqrt(torch.clamp_min((v * v).sum(dim, keepdim=True), 1e-12))


def _masked(assign, mask):
    return assign if mask is None else assign * mask.unsqueeze(-1).to(assign.dtype)


def vlad_pool(x, assign, centers, mask):
    """NetVLAD (NetRVLAD without centres): V = sum_m a (x - c), l2n over d, D-major, l2n."""
    a = _masked(assign, mask)
    v = torch.einsum("bmk,bmd->bdk", a, x)
    if centers is not None:
        v = v - a.sum(1).unsqueeze(1) * centers
    b, d, k = v.shape
    return l2n(l2n(v, 1).reshape(b, d * k), 1)


def fv_pool(x, assign, mu, covar_weights, mask):
    """NetFV: concat(l2n(flatten(l2n_d(F1))), l2n(flatten(F2)))."""
    a = _masked(assign, mask)
    sigma = covar_weights * covar_weights + 1e-6
    a_sum = a.sum(1).unsqueeze(1)
    s1 = torch.einsum("bmk,bmd->bdk", a, x)
    s2 = torch.einsum("bmk,bmd->bdk", a, x * x)
    f1 = (s1 - a_sum * mu) / sigma
    f2 = (s2 - 2 * mu * s1 + mu * mu * a_sum) / (sigma * sigma) - a_sum
    b, d, k = f1.shape
    return torch.cat([l2n(l2n(f1, 1).reshape(b, d * k), 1), l2n(f2.reshape(b, d * k), 1)], 1)


def dbow_pool(assign, mask):
    return l2n(_masked(assign, mask).sum(1), 1)


def gating(x, weights, biases):
    return x * torch.sigmoid(x @ weights + biases)


def select_pool(x, kmax, kmin, alpha, keepdims):
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
