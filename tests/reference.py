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
    x = np.asarray(x, dtype=np.float64)
    kernel = _as_tuple(kernel_size, nd)
    stride = kernel if stride is None else _as_tuple(stride, nd)
    padding = _as_tuple(padding, nd)
    spatial = x.shape[-nd:]
    sizes = [output_size(L, k, s, p, ceil_mode)
             for L, k, s, p in zip(spatial, kernel, stride, padding)]
    y = np.empty(x.shape[:-nd] + tuple(sizes))
    for out_index, window in _windows(spatial, kernel, stride, padding, ceil_mode):
        cells = x[(Ellipsis,) + window].reshape(x.shape[:-nd] + (-1,))
        z = lam * cells
        w = np.exp(z - z.max(axis=-1, keepdims=True))
        w /= w.sum(axis=-1, keepdims=True)
        y[(Ellipsis,) + out_index] = (w * cells).sum(axis=-1)
    return y


def softmax_pool_grad(grad_out, x, nd, lam, kernel_size, stride=None, padding=0,
                      ceil_mode=False):
    """dL/dx_i = sum_o g_o w_{o,i} (1 + lam (x_i - y_o)) (float64)."""
    x = np.asarray(x, dtype=np.float64)
    g = np.asarray(grad_out, dtype=np.float64)
    kernel = _as_tuple(kernel_size, nd)
    stride = kernel if stride is None else _as_tuple(stride, nd)
    padding = _as_tuple(padding, nd)
    spatial = x.shape[-nd:]
    grad = np.zeros_like(x)
    for out_index, window in _windows(spatial, kernel, stride, padding, ceil_mode):
        cells = x[(Ellipsis,) + window]
        flat = cells.reshape(x.shape[:-nd] + (-1,))
        z = lam * flat
        w = np.exp(z - z.max(axis=-1, keepdims=True))
        w /= w.sum(axis=-1, keepdims=True)
        y = (w * flat).sum(axis=-1, keepdims=True)
        g_o = g[(Ellipsis,) + out_index][..., None]
        term = g_o * w * (1 + lam * (flat - y))
        grad[(Ellipsis,) + window] += term.reshape(cells.shape)
    return grad
