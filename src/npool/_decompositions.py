"""Every npool op as a composition of standard array operations, written once for all frameworks.

Where a graph must stand on its own - a SavedModel, an XLA compilation, a TFLite model - npool's
kernels cannot be in it. There an adapter runs these functions with its framework's array
operations (an ``ops`` namespace, below), so the graph holds only standard ops: a gather of each
window's cells, max-subtracted exponentials, reductions, ``top_k``, matrix products. Gradients
of any order come from the framework's own differentiation of them.

They compute the math of docs/semantics.md for finite inputs (``NumpyOps`` runs them against
``npool.testing``'s references in the tests); they are the decomposition of an op, not its fast
one: every window's cells are gathered into memory (kernel-size times the input), and
non-finite inputs follow the plain formulas (a window of +inf gives NaN, where npool's kernels
share the weight among the +inf cells). Exponentials are taken relative to the window's or the
map's maximum, so they overflow where npool's kernels do not: nowhere for finite ``lam * x``.

Layout: the local and global pools take ``(..., C, *spatial)`` (npool's channels-first order;
the adapters transpose), spatial sizes known when the graph is built; the leading axes may be
unknown until it runs. Half-precision inputs are the adapters' to cast to float32 and back.

The ``ops`` namespace each adapter provides:

- ``take(x, index)``: x's entries at the flat NumPy int64 ``index`` (1-D) along the last axis;
- ``reshape_tail(x, count, tail)``: x with its last ``count`` axes replaced by the static
  ``tail``, the leading axes kept;
- ``where(cond, a, b)`` (``cond`` may be a NumPy bool array, ``b`` a Python number),
  ``max(x, axis, keepdims)``, ``sum(x, axis, keepdims)``, ``exp``, ``expm1``, ``log``, ``log1p``,
  ``sqrt``,
  ``sigmoid``, ``maximum(x, number)``, ``stop_gradient``, ``matmul``, ``einsum(spec, *xs)``,
  ``concat(xs, axis)``, ``cast_like(a, x)`` (a in x's dtype);
- ``top_k(x, k)``: the k largest entries along the last axis (values).
"""
import math

import numpy as np

from . import _checks


# ------------------------------------------------------------------ local pools
def window_cells(spatial, window):
    """The cells of every window of ``window`` (a ``_checks.WindowArgs``, or its
    ``AdaptiveWindows``) over ``spatial``: ``(index, real, out)``, where ``index[o, j]`` is the
    flat (C-order) spatial index of cell j of window o, ``real[o, j]`` is False where window o
    has fewer than ``j + 1`` real cells (padding, beyond the input, or a shorter adaptive
    window: its index is then a valid placeholder) and ``out`` the output's spatial shape.
    Per axis, window o's real cells are ``first + j d`` for ``j < count`` (the geometry's
    ``window_tables``)."""
    nd = window.nd
    spatial = tuple(spatial)
    out = window.output_size(spatial)
    index = np.zeros((1,) * (2 * nd), np.int64)
    real = np.ones((1,) * (2 * nd), bool)
    tables = window.window_tables(spatial, out)
    for axis, (n, k, d, (first, count), o) in enumerate(zip(spatial, window.kernel,
                                                            window.dilation, tables, out)):
        shape = [1] * (2 * nd)
        shape[axis], shape[nd + axis] = o, k
        j = np.arange(k)[None, :]
        in_window = (j < count[:, None]).reshape(shape)
        position = np.where(in_window, (first[:, None] + d * j).reshape(shape), 0)
        real = real & in_window
        index = index * n + position
    windows, cells = math.prod(out), math.prod(window.kernel)
    return (np.broadcast_to(index, out + window.kernel).reshape(windows, cells),
            np.broadcast_to(real, out + window.kernel).reshape(windows, cells), out)


def _spatial(x, nd):
    spatial = tuple(x.shape[-nd:])
    if len(spatial) != nd or any(n is None for n in spatial):
        raise ValueError(f"the decomposition of a {nd}-d pool needs the spatial size of x when "
                         f"the graph is built, got shape {tuple(x.shape)}")
    return tuple(int(n) for n in spatial)


def windowed_softmax_pool(ops, x, lam, window):
    """Max-Ent pooling (SoftPool: ``lam = 1``) of x ``(..., *spatial)`` over ``window``::

        y_o = sum_{i in R(o)} softmax(lam_o x)_i x_i

    over the real cells R(o) of window o (padding is left out), the softmax relative to the
    window's largest ``lam_o x_i``. ``lam``: a Python number, or a tensor of x's rank that
    broadcasts to the output."""
    nd = window.nd
    spatial = _spatial(x, nd)
    index, real, out = window_cells(spatial, window)
    windows, size = index.shape
    cells = ops.take(ops.reshape_tail(x, nd, (math.prod(spatial),)), index.reshape(-1))
    cells = ops.reshape_tail(cells, 1, (windows, size))
    if not isinstance(lam, (int, float)):
        lam = _lam_per_window(ops, lam, out)
    z = ops.where(real, lam * cells, -math.inf)
    weights = ops.exp(z - ops.stop_gradient(ops.max(z, -1, True)))
    y = ops.sum(weights * ops.where(real, cells, 0.0), -1, False) / ops.sum(weights, -1, False)
    return ops.reshape_tail(y, 1, out)


def local_pool(ops, x, lam, nd, window_options):
    """``windowed_softmax_pool`` over the windows of a local pool's keyword arguments
    (``_checks.local_window``'s: kernel_size, ..., or output_size), for x's spatial size."""
    return windowed_softmax_pool(ops, x, lam, _checks.local_window(nd, _spatial(x, nd),
                                                                   **window_options))


def _lam_per_window(ops, lam, out):
    """lam (x's rank, each spatial axis 1 or the output's) as ``(..., windows or 1, 1)``."""
    nd = len(out)
    sizes = tuple(int(n) for n in lam.shape[-nd:])
    if any(n not in (1, o) for n, o in zip(sizes, out)):
        raise ValueError(f"lam's spatial axes {sizes} must each be 1 or the output's {out}")
    if math.prod(sizes) == 1:
        return ops.reshape_tail(lam, nd, (1, 1))
    index = np.zeros((1,) * nd, np.int64)
    for axis, (n, o) in enumerate(zip(sizes, out)):
        shape = [1] * nd
        shape[axis] = o
        index = index * n + (np.arange(o).reshape(shape) if n > 1 else 0)
    per_window = ops.take(ops.reshape_tail(lam, nd, (math.prod(sizes),)),
                          np.broadcast_to(index, out).reshape(-1))
    return ops.reshape_tail(per_window, 1, (math.prod(out), 1))


# ------------------------------------------------------------------ global pools
def _maps(ops, x, nd):
    """x ``(..., C, *spatial)`` as ``(..., C, cells)`` and the number of cells."""
    cells = math.prod(_spatial(x, nd))
    return ops.reshape_tail(x, nd, (cells,)), cells


def global_max_pool(ops, x, nd):
    """``max x`` over the ``nd`` last (spatial) axes."""
    return ops.max(_maps(ops, x, nd)[0], -1, False)


def global_avg_pool(ops, x, nd):
    """``mean x`` over the spatial axes."""
    maps, cells = _maps(ops, x, nd)
    return ops.sum(maps, -1, False) / cells


def global_lse_pool(ops, x, nd, beta):
    """``(1/beta) log(mean exp(beta x))`` over the spatial axes (the mean at ``beta = 0``),
    relative to the map's largest ``z = beta x``: ``(z_max + log1p(mean expm1(z - z_max))) /
    beta``, exact also where ``beta x`` is small (no cancellation against ``log(cells)``)."""
    if beta == 0:
        return global_avg_pool(ops, x, nd)
    maps, cells = _maps(ops, x, nd)
    z = beta * maps
    top = ops.stop_gradient(ops.max(z, -1, True))
    spread = ops.log1p(ops.sum(ops.expm1(z - top), -1, False) / cells)
    return (ops.reshape_tail(top, 1, ()) + spread) / beta


def global_gem_pool(ops, x, nd, p, eps):
    """GeM, ``(mean max(x, eps)^p)^(1/p)`` over the spatial axes, relative to the map's
    largest clamped cell M: ``M exp(log1p(mean expm1(p (log z - log M))) / p)``, so no power
    overflows and p -> 0 loses nothing to cancellation. ``p`` a number or an array that
    broadcasts to x's leading ``(..., C)`` axes; M's gradient is stopped (y is homogeneous of
    degree 1 in z: M's total derivative is 0, and ties at the maximum need no rule)."""
    maps, cells = _maps(ops, x, nd)
    z = ops.maximum(maps, eps)
    top = ops.stop_gradient(ops.max(z, -1, True))
    per_cell = p if isinstance(p, (int, float)) else ops.reshape_tail(p, 0, (1,))
    spread = ops.log1p(ops.sum(ops.expm1(per_cell * (ops.log(z) - ops.log(top))), -1, False)
                       / cells)
    return ops.reshape_tail(top, 1, ()) * ops.exp(spread / p)


def weldon_pool(ops, x, nd, kmax, kmin=None, alpha=1.0, rounding="floor"):
    """WELDON: ``mean(kmax largest) + alpha mean(kmin smallest)`` over the spatial axes, with
    npool's k rule (``_checks.weldon_counts``); k-max pooling is ``kmin=0``, max ``kmax=1``."""
    maps, cells = _maps(ops, x, nd)
    top, bottom = _checks.weldon_counts(kmax, kmin, cells, rounding)
    y = ops.sum(ops.top_k(maps, top), -1, False) / top
    if bottom:
        y = y - alpha * ops.sum(ops.top_k(-maps, bottom), -1, False) / bottom
    return y


# ------------------------------------------------------------------ set pools (LOUPE)
def l2n(ops, v, axis):
    """``v / sqrt(max(sum v^2, 1e-12))`` along ``axis``."""
    return v / ops.sqrt(ops.maximum(ops.sum(v * v, axis, True), 1e-12))


def _masked(ops, assign, mask):
    if mask is None:
        return assign
    samples = mask.shape[-1]
    return assign * ops.reshape_tail(ops.cast_like(mask, assign), 1,
                                     (-1 if samples is None else int(samples), 1))


def vlad_pool(ops, x, assign, centers, mask=None):
    """NetVLAD (NetRVLAD: ``centers=None``), x ``(B, M, D)``, assign ``(B, M, K)``, centers
    ``(D, K)``, mask ``(B, M)`` or None::

        V_dk = sum_m a_mk (x_md - c_dk);  y = l2n(flatten_{D-major}(l2n_d(V)))"""
    a = _masked(ops, assign, mask)
    v = ops.einsum("bmk,bmd->bdk", a, x)
    if centers is not None:
        v = v - ops.sum(a, 1, True) * centers
    d, k = int(v.shape[-2]), int(v.shape[-1])
    return l2n(ops, ops.reshape_tail(l2n(ops, v, 1), 2, (d * k,)), -1)


def fv_pool(ops, x, assign, mu, covar_weights, mask=None):
    """NetFV: ``concat(l2n(flatten(l2n_d(F1))), l2n(flatten(F2)))`` with sigma = w^2 + 1e-6,
    ``F1 = (S1 - a_sum mu) / sigma``, ``F2 = (S2 - 2 mu S1 + mu^2 a_sum) / sigma^2 - a_sum``."""
    a = _masked(ops, assign, mask)
    sigma = covar_weights * covar_weights + 1e-6
    a_sum = ops.sum(a, 1, True)
    s1 = ops.einsum("bmk,bmd->bdk", a, x)
    s2 = ops.einsum("bmk,bmd->bdk", a, x * x)
    f1 = (s1 - a_sum * mu) / sigma
    f2 = (s2 - 2.0 * mu * s1 + mu * mu * a_sum) / (sigma * sigma) - a_sum
    d, k = int(f1.shape[-2]), int(f1.shape[-1])
    return ops.concat([l2n(ops, ops.reshape_tail(l2n(ops, f1, 1), 2, (d * k,)), -1),
                       l2n(ops, ops.reshape_tail(f2, 2, (d * k,)), -1)], -1)


def dbow_pool(ops, assign, mask=None):
    """Soft-DBoW: ``l2n(sum_m a_mk)``."""
    return l2n(ops, ops.sum(_masked(ops, assign, mask), 1, False), -1)


def context_gating(ops, x, weights, biases):
    """Context Gating: ``x * sigmoid(x W + b)``."""
    return x * ops.sigmoid(ops.matmul(x, weights) + biases)


# ------------------------------------------------------------------ NumPy
class NumpyOps:
    """The ``ops`` namespace in NumPy: runs the decompositions on arrays (the tests check them
    against ``npool.testing``'s references this way)."""

    @staticmethod
    def take(x, index):
        return np.take(x, index, axis=-1)

    @staticmethod
    def reshape_tail(x, count, tail):
        lead = x.shape[:x.ndim - count]
        return np.reshape(x, lead + tuple(tail))

    where = staticmethod(np.where)
    exp = staticmethod(np.exp)
    expm1 = staticmethod(np.expm1)
    log1p = staticmethod(np.log1p)
    log = staticmethod(np.log)
    sqrt = staticmethod(np.sqrt)
    maximum = staticmethod(np.maximum)
    matmul = staticmethod(np.matmul)
    einsum = staticmethod(np.einsum)

    @staticmethod
    def max(x, axis, keepdims):
        return np.max(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def sum(x, axis, keepdims):
        return np.sum(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def sigmoid(x):
        return 1 / (1 + np.exp(-x))

    @staticmethod
    def stop_gradient(x):
        return x

    @staticmethod
    def concat(xs, axis):
        return np.concatenate(xs, axis=axis)

    @staticmethod
    def cast_like(a, x):
        return np.asarray(a).astype(x.dtype)

    @staticmethod
    def top_k(x, k):
        return -np.sort(-x, axis=-1)[..., :k]


# ------------------------------------------------------------------ npool's signatures
def forward(op, ops, *args, **options):
    """``npool.<op>_forward(*args, **options)`` in its decomposition with ``ops``: the output
    only (``return_indices`` and ``return_norms`` are refused: selections and norms are the
    kernels' business), x in npool's ``(N, C, *spatial)`` order. ``op`` as in
    ``npool.testing.OPS``."""
    if options.pop("return_indices", False) or options.pop("return_norms", False):
        raise ValueError(f"the decomposition of {op} gives the output only")
    options.pop("matmul", None)
    if op.startswith(("soft_pool", "maxent_pool", "adaptive_")):
        nd = int(op[-2])
        soft = "soft" in op
        x, lam = (args[0], 1.0) if soft else args[:2]
        rest = args[1:] if soft else args[2:]
        names = (("output_size",) if op.startswith("adaptive_") else
                 ("kernel_size", "stride", "padding", "ceil_mode"))
        window = _checks.local_window(nd, _spatial(x, nd), **dict(zip(names, rest)),
                                      **options)
        if np.ndim(lam) == 0 and not hasattr(lam, "shape"):
            lam = float(lam)
        elif len(lam.shape) < len(x.shape):
            lam = ops.reshape_tail(lam, len(lam.shape),
                                   (1,) * (len(x.shape) - len(lam.shape)) + tuple(lam.shape))
        return windowed_softmax_pool(ops, x, lam, window)
    if op.startswith(("global", "weldon")):
        x = args[0]
        nd = len(x.shape) - 2
        keepdims = options.pop("keepdims", False)
        if op == "global_max_pool":
            y = global_max_pool(ops, x, nd)
        elif op == "global_avg_pool":
            y = global_avg_pool(ops, x, nd)
        elif op == "global_lse_pool":
            y = global_lse_pool(ops, x, nd, options.get("beta", 1.0))
        elif op == "global_gem_pool":
            p = args[1] if len(args) > 1 else options.get("p", 3.0)
            y = global_gem_pool(ops, x, nd, p, options.get("eps", 1e-6))
        elif op == "global_kmax_pool":
            y = weldon_pool(ops, x, nd, options.get("k", 1), 0,
                            rounding=options.get("rounding", "floor"))
        else:
            y = weldon_pool(ops, x, nd, options.get("kmax", 1), options.get("kmin"),
                            options.get("alpha", 1.0), options.get("rounding", "floor"))
        return ops.reshape_tail(y, 0, (1,) * nd) if keepdims else y
    mask = options.get("mask")
    if op == "netvlad_pool":
        return vlad_pool(ops, *args[:3], mask)
    if op == "netrvlad_pool":
        return vlad_pool(ops, args[0], args[1], None, mask)
    if op == "netfv_pool":
        return fv_pool(ops, *args[:4], mask)
    if op == "soft_dbow_pool":
        return dbow_pool(ops, args[0], mask)
    if op == "context_gating":
        return context_gating(ops, *args[:3])
    raise ValueError(f"unknown op {op!r}")
