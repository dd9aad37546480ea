"""Plain float64 NumPy references for the local soft pools, written for clarity, not speed.

They loop over every output window, so they are independent of npool's kernels (no shared code,
no line splitting, no vectorised exp).
"""
import itertools

import numpy as np


def output_size(length, k, s, p, ceil_mode):
    n = (length + 2 * p - k + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (n - 1) * s >= length + p:
        n -= 1
    return n


def _windows(spatial, kernel, stride, padding, ceil_mode):
    """For every output index, the slices of its real (unpadded) cells."""
    sizes = [output_size(L, k, s, p, ceil_mode)
             for L, k, s, p in zip(spatial, kernel, stride, padding)]
    for out_index in itertools.product(*(range(n) for n in sizes)):
        slices = []
        for o, L, k, s, p in zip(out_index, spatial, kernel, stride, padding):
            start = o * s - p
            slices.append(slice(max(start, 0), min(start + k, L)))
        yield out_index, tuple(slices)


def _as_tuple(v, nd):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd


def softmax_pool(x, nd, lam, kernel_size, stride=None, padding=0, ceil_mode=False):
    """y_o = sum_i w_i x_i, w = softmax(lam * x) over the real cells of window o (float64)."""
    return maxent_pool(x, nd, lam, kernel_size, stride, padding, ceil_mode)[0]


def softmax_pool_grad(grad_out, x, nd, lam, kernel_size, stride=None, padding=0,
                      ceil_mode=False):
    """dL/dx_i = sum_o g_o w_{o,i} (1 + lam (x_i - y_o)) (float64)."""
    return maxent_pool_grad(grad_out, x, nd, lam, kernel_size, stride, padding, ceil_mode)[0]


# ------------------------------------------------------------------ global pools
def maps(x):
    """(N, C, *spatial) as (N, C, n) float64 maps, cells in flat (C) order."""
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[0], x.shape[1], -1)


def ranked(values, largest=True):
    """Flat indices of one map in selection order: larger (or smaller) first, NaN counted as the
    largest value, lower index first among equal values."""
    def rank(i):
        v = values[i]
        nan = bool(np.isnan(v))
        if largest:
            return (not nan, 0.0 if nan else -v, i)
        return (nan, 0.0 if nan else v, i)
    return sorted(range(len(values)), key=rank)


def k_rule(k, n):
    if isinstance(k, float):
        return max(1, int(np.floor(k * n + 1e-6)))
    return min(k, n)


def global_max(x):
    m = maps(x)
    return np.array([[m[a, b][ranked(m[a, b])[0]] for b in range(m.shape[1])]
                     for a in range(m.shape[0])]).reshape(m.shape[:2])


def global_kmax(x, k):
    m = maps(x)
    out = np.empty(m.shape[:2])
    for a, b in np.ndindex(*m.shape[:2]):
        chosen = ranked(m[a, b])[:k_rule(k, m.shape[2])]
        out[a, b] = m[a, b][chosen].mean()
    return out


def weldon(x, kmax, kmin, alpha):
    m = maps(x)
    n = m.shape[2]
    top = k_rule(kmax, n)
    bottom = top if kmin is None else k_rule(kmin, n)
    out = np.empty(m.shape[:2])
    for a, b in np.ndindex(*m.shape[:2]):
        v = m[a, b]
        out[a, b] = v[ranked(v)[:top]].mean()
        if bottom:
            out[a, b] += alpha * v[ranked(v, largest=False)[:bottom]].mean()
    return out


def weldon_grad(g, x, kmax, kmin, alpha):
    m = maps(x)
    n = m.shape[2]
    top = k_rule(kmax, n)
    bottom = top if kmin is None else k_rule(kmin, n)
    grad = np.zeros_like(m)
    for a, b in np.ndindex(*m.shape[:2]):
        v = m[a, b]
        for i in ranked(v)[:top]:
            grad[a, b, i] += g[a, b] / top
        for i in ranked(v, largest=False)[:bottom]:
            grad[a, b, i] += alpha * g[a, b] / bottom
    return grad.reshape(np.shape(x))


def global_lse(x, beta):
    m = maps(x)
    if beta == 0:
        return m.mean(axis=2)
    z = beta * m
    top = z.max(axis=2, keepdims=True)
    return (top[..., 0] + np.log(np.exp(z - top).mean(axis=2))) / beta


def global_lse_grad(g, x, beta):
    m = maps(x)
    if beta == 0:
        return np.broadcast_to((g / m.shape[2])[..., None], m.shape).reshape(np.shape(x))
    z = beta * m
    w = np.exp(z - z.max(axis=2, keepdims=True))
    w /= w.sum(axis=2, keepdims=True)
    return (g[..., None] * w).reshape(np.shape(x))


# ------------------------------------------------------------------ Max-Entropy pooling
def maxent_pool(x, nd, lam, kernel_size, stride=None, padding=0, ceil_mode=False):
    """y_o = sum_i w_i x_i, w = softmax(lam_o x) over window o, lam broadcast to y (float64).
    Returns (y, per-output dL/dlam for g = 1 helper terms: sum w (x - y)^2)."""
    x = np.asarray(x, dtype=np.float64)
    kernel = _as_tuple(kernel_size, nd)
    stride = kernel if stride is None else _as_tuple(stride, nd)
    padding = _as_tuple(padding, nd)
    spatial = x.shape[-nd:]
    sizes = [output_size(L, k, s, p, ceil_mode)
             for L, k, s, p in zip(spatial, kernel, stride, padding)]
    shape = x.shape[:-nd] + tuple(sizes)
    lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), shape)
    y = np.empty(shape)
    variance = np.empty(shape)
    for out_index, window in _windows(spatial, kernel, stride, padding, ceil_mode):
        cells = x[(Ellipsis,) + window].reshape(x.shape[:-nd] + (-1,))
        z = lam[(Ellipsis,) + out_index][..., None] * cells
        w = np.exp(z - z.max(axis=-1, keepdims=True))
        w /= w.sum(axis=-1, keepdims=True)
        y_o = (w * cells).sum(axis=-1)
        y[(Ellipsis,) + out_index] = y_o
        variance[(Ellipsis,) + out_index] = (w * (cells - y_o[..., None]) ** 2).sum(axis=-1)
    return y, variance


def maxent_pool_grad(grad_out, x, nd, lam, kernel_size, stride=None, padding=0,
                     ceil_mode=False):
    """(dL/dx, per-output dL/dlam = g_o sum_i w_i (x_i - y_o)^2) in float64."""
    x = np.asarray(x, dtype=np.float64)
    g = np.asarray(grad_out, dtype=np.float64)
    kernel = _as_tuple(kernel_size, nd)
    stride = kernel if stride is None else _as_tuple(stride, nd)
    padding = _as_tuple(padding, nd)
    spatial = x.shape[-nd:]
    lam = np.broadcast_to(np.asarray(lam, dtype=np.float64), g.shape)
    grad = np.zeros_like(x)
    for out_index, window in _windows(spatial, kernel, stride, padding, ceil_mode):
        cells = x[(Ellipsis,) + window]
        flat = cells.reshape(x.shape[:-nd] + (-1,))
        lam_o = lam[(Ellipsis,) + out_index][..., None]
        z = lam_o * flat
        w = np.exp(z - z.max(axis=-1, keepdims=True))
        w /= w.sum(axis=-1, keepdims=True)
        y = (w * flat).sum(axis=-1, keepdims=True)
        g_o = g[(Ellipsis,) + out_index][..., None]
        grad[(Ellipsis,) + window] += (g_o * w * (1 + lam_o * (flat - y))).reshape(cells.shape)
    _, variance = maxent_pool(x, nd, lam, kernel_size, stride, padding, ceil_mode)
    return grad, g * variance
