"""The float64 references of every npool op: plain NumPy, written to be read next to
docs/semantics.md, one (forward, backward) pair per op with the signatures of
``npool.<op>_forward`` / ``npool.<op>_backward``.

They loop over windows and maps rather than vectorising, share no code with npool's kernels,
and take every exponential after subtracting the largest exponent of its window or map, so any
finite input gives an exact result. Arguments that only let npool skip work (``indices``,
``output``, ``norms``, ``matmul``) are accepted and ignored: a reference recomputes.
"""
import itertools
import math
import numbers

import numpy as np

L2N_FLOOR = 1e-12  # l2n(v) = v / sqrt(max(sum v^2, 1e-12))
FV_SIGMA_EPS = 1e-6  # NetFV: sigma = covar_weights^2 + 1e-6
LN2_HI, LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10  # k ln2, exact for
# |k| < 2**20 in two parts


def f64(a):
    return np.asarray(a, dtype=np.float64)


def as_tuple(v, nd):
    return tuple(int(e) for e in v) if isinstance(v, (tuple, list)) else (int(v),) * nd


# ------------------------------------------------------------------ windows
def padding_pairs(spatial, kernel, stride, padding, dilation=1):
    """``(before, after)`` cells of padding per axis: ``padding`` an int or per-axis ints (both
    sides), per-axis ``(before, after)`` pairs, or TensorFlow's ``"same"`` (the output has
    ceil(L / s) cells: ``max((ceil(L / s) - 1) s + e - L, 0)`` padding cells, the smaller half
    before, e = (k - 1) d + 1 the window's extent) or ``"valid"`` (none)."""
    nd = len(spatial)
    if isinstance(padding, str):
        if padding.lower() == "valid":
            return ((0, 0),) * nd
        if padding.lower() != "same":
            raise ValueError(f"padding {padding!r} is not 'same' or 'valid'")
        pairs = []
        for n, k, s, d in zip(spatial, kernel, stride, as_tuple(dilation, nd)):
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
            pairs.append((total // 2, total - total // 2))
        return tuple(pairs)
    if isinstance(padding, (tuple, list)) and any(isinstance(p, (tuple, list)) for p in padding):
        return tuple((int(before), int(after)) for before, after in padding)
    return tuple((p, p) for p in as_tuple(padding, nd))


def output_size(length, kernel, stride, padding, ceil_mode, dilation=1):
    """PyTorch's rule over the padded length: floor((L + before + after - e [+ s - 1]) / s) + 1
    with e = (k - 1) d + 1 the window's extent; with ceil_mode a last window that would start
    in the right padding is dropped. ``padding``: p on both sides, or ``(before, after)``."""
    before, after = (padding, padding) if isinstance(padding, numbers.Integral) else padding
    extent = (kernel - 1) * dilation + 1
    n = (length + before + after - extent + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (n - 1) * stride >= length + before:
        n -= 1
    return n


def window_geometry(spatial, kernel_size, stride, padding, ceil_mode, dilation=1):
    """(kernel, stride, (before, after) padding pairs, output sizes) per axis."""
    nd = len(spatial)
    kernel = as_tuple(kernel_size, nd)
    stride = kernel if stride is None else as_tuple(stride, nd)
    dilation = as_tuple(dilation, nd)
    pairs = padding_pairs(spatial, kernel, stride, padding, dilation)
    sizes = tuple(output_size(n, k, s, p, ceil_mode, d)
                  for n, k, s, p, d in zip(spatial, kernel, stride, pairs, dilation))
    return kernel, stride, pairs, sizes


def windows(spatial, kernel_size, stride=None, padding=0, ceil_mode=False, dilation=1):
    """For every output position o, the slices of its real cells R(o): window o spans cells
    ``o s - before + j d`` (j < k) of each axis; padded cells are left out of the window, not
    counted as zeros."""
    kernel, stride, pairs, sizes = window_geometry(spatial, kernel_size, stride, padding,
                                                   ceil_mode, dilation)
    dilation = as_tuple(dilation, len(spatial))
    for out_index in itertools.product(*(range(n) for n in sizes)):
        slices = []
        for o, n, k, s, (p, _), d in zip(out_index, spatial, kernel, stride, pairs, dilation):
            cells = [c for c in range(o * s - p, o * s - p + (k - 1) * d + 1, d) if 0 <= c < n]
            slices.append(slice(cells[0], cells[-1] + 1, d) if cells else slice(0, 0))
        yield out_index, tuple(slices)


def adaptive_output_size(spatial, output_size):
    """An adaptive pool's output size per axis: ``output_size`` an int or per-axis ints, None
    entries keeping the input's size."""
    nd = len(spatial)
    sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size,) * nd
    return tuple(int(n) if o is None else int(o) for n, o in zip(spatial, sizes))


def adaptive_windows(spatial, output_size):
    """For every output position o, the slices of its cells: PyTorch's adaptive windows, window
    o of n over L cells spanning ``[floor(o L / n), ceil((o + 1) L / n))``."""
    sizes = adaptive_output_size(spatial, output_size)
    for out_index in itertools.product(*(range(n) for n in sizes)):
        yield out_index, tuple(slice(o * n // m, -(-(o + 1) * n // m))
                               for o, n, m in zip(out_index, spatial, sizes))


def pool_windows(spatial, kernel_size=None, stride=None, padding=0, ceil_mode=False,
                 dilation=1, output_size=None):
    """(output sizes, [(output index, window slices)]) of a local pool from its keyword
    arguments: adaptive (``output_size``) or windowed (``kernel_size``, ...)."""
    if output_size is not None:
        return (adaptive_output_size(spatial, output_size),
                list(adaptive_windows(spatial, output_size)))
    *_, sizes = window_geometry(spatial, kernel_size, stride, padding, ceil_mode, dilation)
    return sizes, list(windows(spatial, kernel_size, stride, padding, ceil_mode, dilation))


WINDOW_OPTIONS = ("kernel_size", "stride", "padding", "ceil_mode", "dilation", "output_size")


def window_cells(x, window, nd):
    """The real cells of one window as (..., cells): the leading axes kept, the window's
    spatial cells flattened in C order."""
    count = int(np.prod([len(range(w.start, w.stop, w.step or 1)) for w in window]))
    return x[(Ellipsis,) + window].reshape(x.shape[:-nd] + (count,))


def softmax_weights(z):
    """softmax over the last axis with its limits: +inf cells share the whole weight, -inf cells
    get none, a window of only -inf weighs its cells equally (the output is then -inf), NaN
    anywhere gives NaN weights."""
    top = np.max(z, axis=-1, keepdims=True)
    finite_top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.where(np.isposinf(top), np.where(np.isposinf(z), 1.0, 0.0),
                     np.where(np.isneginf(top), 1.0, np.exp(z - finite_top)))
        w = e / e.sum(axis=-1, keepdims=True)
    return np.where(np.isnan(z).any(axis=-1, keepdims=True), np.nan, w)


def _weighted_mean(w, cells):
    """sum_i w_i x_i, where a cell of zero weight adds nothing even if it is infinite."""
    with np.errstate(invalid="ignore"):
        terms = np.where(w == 0, 0.0, w * cells)
    return terms.sum(axis=-1)


# ------------------------------------------------------------------ Max-Ent and SoftPool
def _maxent_parts(x, lam, nd, **window_options):
    """Per output o: y_o, the weights w_{o,i} and the real cells, with lam broadcast to y;
    ``window_options``: ``pool_windows``' keyword arguments."""
    x = f64(x)
    sizes, pool = pool_windows(x.shape[-nd:], **window_options)
    out_shape = x.shape[:-nd] + sizes
    lam = np.broadcast_to(f64(lam), out_shape)
    y = np.empty(out_shape)
    parts = []
    for out_index, window in pool:
        cells = window_cells(x, window, nd)
        lam_o = lam[(Ellipsis,) + out_index][..., None]
        with np.errstate(invalid="ignore"):
            z = np.where(lam_o == 0, 0.0, lam_o * cells)  # lam = 0: the average, even of inf
        w = softmax_weights(np.where(np.isnan(cells), np.nan, z))
        y[(Ellipsis,) + out_index] = _weighted_mean(w, cells)
        parts.append((out_index, window, cells, w, lam_o))
    return y, lam, parts


def maxent_pool_forward(nd):
    def forward(x, lam, kernel_size, stride=None, padding=0, ceil_mode=False, *, dilation=1):
        """y_o = sum_{i in R(o)} w_i x_i,  w = softmax_{R(o)}(lam_o x)."""
        return _maxent_parts(x, lam, nd, kernel_size=kernel_size, stride=stride,
                             padding=padding, ceil_mode=ceil_mode, dilation=dilation)[0]
    forward.__name__ = f"maxent_pool{nd}d_forward"
    return forward


def maxent_pool_backward(nd):
    def backward(grad_out, x, lam, kernel_size, stride=None, padding=0, ceil_mode=False, *,
                 dilation=1):
        """dL/dx_i = sum_o g_o w_{o,i} (1 + lam_o (x_i - y_o));
        dL/dlam_o = g_o sum_i w_{o,i} (x_i - y_o)^2, summed down to lam's shape."""
        return _maxent_gradients(grad_out, x, lam, nd, kernel_size=kernel_size, stride=stride,
                                 padding=padding, ceil_mode=ceil_mode, dilation=dilation)
    backward.__name__ = f"maxent_pool{nd}d_backward"
    return backward


def _maxent_gradients(grad_out, x, lam, nd, **window_options):
    """(grad_x, grad_lam) of Max-Ent pooling over the windows of ``window_options``."""
    x64 = f64(x)
    g = f64(grad_out)
    y, lam_full, parts = _maxent_parts(x64, lam, nd, **window_options)
    grad_x = np.zeros_like(x64)
    grad_lam = np.zeros(y.shape)
    for out_index, window, cells, w, lam_o in parts:
        g_o = g[(Ellipsis,) + out_index][..., None]
        y_o = y[(Ellipsis,) + out_index][..., None]
        with np.errstate(invalid="ignore"):
            d = np.where(w == 0, 0.0, cells - y_o)
            grad_x[(Ellipsis,) + window] += (g_o * w * (1 + lam_o * d)).reshape(
                x64[(Ellipsis,) + window].shape)
            grad_lam[(Ellipsis,) + out_index] = (g_o * w * d * d).sum(axis=-1)
    return grad_x, sum_to_shape(grad_lam, np.shape(lam))


def sum_to_shape(a, shape):
    """a summed over the axes that broadcasting ``shape`` to a's shape added or stretched."""
    lead = a.ndim - len(shape)
    a = a.sum(axis=tuple(range(lead))) if lead else a
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and a.shape[i] != 1)
    return a.sum(axis=axes, keepdims=True).reshape(shape) if axes else a.reshape(shape)


def soft_pool_forward(nd):
    maxent = maxent_pool_forward(nd)

    def forward(x, kernel_size, stride=None, padding=0, ceil_mode=False, *, dilation=1):
        """SoftPool: Max-Ent pooling with lam = 1."""
        return maxent(x, 1.0, kernel_size, stride, padding, ceil_mode, dilation=dilation)
    forward.__name__ = f"soft_pool{nd}d_forward"
    return forward


def soft_pool_backward(nd):
    maxent = maxent_pool_backward(nd)

    def backward(grad_out, x, kernel_size, stride=None, padding=0, ceil_mode=False, *,
                 dilation=1):
        """dL/dx_i = sum_o g_o w_{o,i} (1 + x_i - y_o)."""
        return maxent(grad_out, x, 1.0, kernel_size, stride, padding, ceil_mode,
                      dilation=dilation)[0]
    backward.__name__ = f"soft_pool{nd}d_backward"
    return backward


def adaptive_maxent_pool_forward(nd):
    def forward(x, lam, output_size):
        """Max-Ent pooling over PyTorch's adaptive windows (``adaptive_windows``)."""
        return _maxent_parts(x, lam, nd, output_size=output_size)[0]
    forward.__name__ = f"adaptive_maxent_pool{nd}d_forward"
    return forward


def adaptive_maxent_pool_backward(nd):
    def backward(grad_out, x, lam, output_size):
        """Max-Ent pooling's gradients over PyTorch's adaptive windows."""
        return _maxent_gradients(grad_out, x, lam, nd, output_size=output_size)
    backward.__name__ = f"adaptive_maxent_pool{nd}d_backward"
    return backward


def adaptive_soft_pool_forward(nd):
    def forward(x, output_size):
        """SoftPool over PyTorch's adaptive windows: lam = 1."""
        return _maxent_parts(x, 1.0, nd, output_size=output_size)[0]
    forward.__name__ = f"adaptive_soft_pool{nd}d_forward"
    return forward


def adaptive_soft_pool_backward(nd):
    def backward(grad_out, x, output_size):
        """SoftPool's gradient over PyTorch's adaptive windows."""
        return _maxent_gradients(grad_out, x, 1.0, nd, output_size=output_size)[0]
    backward.__name__ = f"adaptive_soft_pool{nd}d_backward"
    return backward


# ------------------------------------------------------------------ global pools
def maps(x):
    """(N, C, *spatial) as (N, C, n) float64 maps, cells in flat C order."""
    x = f64(x)
    return x.reshape(x.shape[:2] + (int(np.prod(x.shape[2:])),))


def _pooled(values, x, keepdims):
    shape = np.shape(x)
    return values.reshape(shape[:2] + (1,) * (len(shape) - 2)) if keepdims else values


def _g(grad_out, x):
    return f64(grad_out).reshape(np.shape(x)[:2])


def k_rule(k, n, rounding="floor"):
    """An int is a count clipped to n; a float a fraction of n: max(1, floor(k n + 1e-6)), or
    max(1, round(k n)) (half to even) with rounding="round"."""
    if isinstance(k, numbers.Integral):
        return min(int(k), n)
    if rounding == "round":
        return max(1, round(k * n))
    return max(1, math.floor(k * n + 1e-6))


def ranked(values, largest=True):
    """The flat indices of one map in selection order: larger values first (smaller for the
    bottom set), NaN above +inf, and the lower index first among equal values (-0 == +0)."""
    def key(i):
        v = values[i]
        if np.isnan(v):
            return (0 if largest else 1, 0.0, i)
        return (1 if largest else 0, -v if largest else v, i)
    return sorted(range(len(values)), key=key)


def _selections(x, top, bottom):
    """Per map, the flat indices of the top and bottom sets."""
    m = maps(x)
    return m, [(ranked(m[a, b])[:top], ranked(m[a, b], largest=False)[:bottom])
               for a, b in np.ndindex(*m.shape[:2])]


def _weldon_values(x, top, bottom, alpha):
    m, chosen = _selections(x, top, bottom)
    values = np.empty(m.shape[:2])
    for (a, b), (high, low) in zip(np.ndindex(*m.shape[:2]), chosen):
        v = m[a, b]
        values[a, b] = v[high].mean() + (alpha * v[low].mean() if bottom else 0.0)
    indices = np.array([sorted(high) + sorted(low) for high, low in chosen],
                       dtype=np.int64).reshape(m.shape[:2] + (top + bottom,))
    return values, indices


def _weldon_gradient(g, x, top, bottom, alpha):
    m, chosen = _selections(x, top, bottom)
    grad = np.zeros_like(m)
    for (a, b), (high, low) in zip(np.ndindex(*m.shape[:2]), chosen):
        grad[a, b, high] += g[a, b] / top
        if bottom:
            grad[a, b, low] += alpha * g[a, b] / bottom  # both terms for a cell in both sets
    return grad.reshape(np.shape(x))


def global_max_pool_forward(x, keepdims=False, return_indices=False):
    """y = max x per map; the first maximum in flat order; NaN wins."""
    values, indices = _weldon_values(x, 1, 0, 0.0)
    y = _pooled(values, x, keepdims)
    return (y, indices.reshape(y.shape)) if return_indices else y


def global_max_pool_backward(grad_out, x, keepdims=False, return_indices=False, indices=None):
    """grad_out at the selected maximum of each map, 0 elsewhere."""
    return _weldon_gradient(_g(grad_out, x), x, 1, 0, 0.0)


def global_avg_pool_forward(x, keepdims=False):
    """y = mean x per map."""
    return _pooled(maps(x).mean(axis=2), x, keepdims)


def global_avg_pool_backward(grad_out, x, keepdims=False):
    """grad_out / n on every cell."""
    m = maps(x)
    return np.broadcast_to(_g(grad_out, x)[..., None] / m.shape[2], m.shape).reshape(
        np.shape(x)).copy()


def global_kmax_pool_forward(x, k=1, keepdims=False, return_indices=False, *,
                             rounding="floor"):
    """y = mean of the k largest cells of each map (the k rule for k)."""
    count = k_rule(k, maps(x).shape[2], rounding)
    values, indices = _weldon_values(x, count, 0, 0.0)
    y = _pooled(values, x, keepdims)
    return (y, indices) if return_indices else y


def global_kmax_pool_backward(grad_out, x, k=1, keepdims=False, return_indices=False,
                              indices=None, *, rounding="floor"):
    """grad_out / k on each of the k selected cells."""
    count = k_rule(k, maps(x).shape[2], rounding)
    return _weldon_gradient(_g(grad_out, x), x, count, 0, 0.0)


def _weldon_counts(x, kmax, kmin, rounding):
    n = maps(x).shape[2]
    top = k_rule(kmax, n, rounding)
    return top, top if kmin is None else k_rule(kmin, n, rounding)


def weldon_pool_forward(x, kmax=1, kmin=None, alpha=1.0, keepdims=False, return_indices=False,
                        *, rounding="floor"):
    """y = mean(kmax largest) + alpha mean(kmin smallest); kmin=None is kmax, kmin=0 drops the
    second term; the indices are the top set then the bottom set, each ascending."""
    top, bottom = _weldon_counts(x, kmax, kmin, rounding)
    values, indices = _weldon_values(x, top, bottom, float(alpha))
    y = _pooled(values, x, keepdims)
    return (y, indices) if return_indices else y


def weldon_pool_backward(grad_out, x, kmax=1, kmin=None, alpha=1.0, keepdims=False,
                         return_indices=False, indices=None, *, rounding="floor"):
    """grad_out / kmax on the top set plus alpha grad_out / kmin on the bottom set."""
    top, bottom = _weldon_counts(x, kmax, kmin, rounding)
    return _weldon_gradient(_g(grad_out, x), x, top, bottom, float(alpha))


def global_lse_pool_forward(x, beta=1.0, keepdims=False):
    """y = (1/beta) log((1/n) sum exp(beta x)); beta = 0 is the mean."""
    m = maps(x)
    if beta == 0:
        return _pooled(m.mean(axis=2), x, keepdims)
    z = beta * m
    top = z.max(axis=2, keepdims=True)
    finite_top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        # log(mean exp(z - top)) as log1p(mean expm1(z - top)): exact also when beta is so
        # small that every exp(z - top) rounds to 1
        values = (finite_top[..., 0] + np.log1p(np.expm1(z - finite_top).mean(axis=2))) / beta
    values = np.where(np.isfinite(top[..., 0]) | np.isnan(top[..., 0]), values, top[..., 0] / beta)
    return _pooled(values, x, keepdims)


def global_lse_pool_backward(grad_out, x, beta=1.0, keepdims=False):
    """grad_out softmax(beta x) (grad_out / n at beta = 0), no thresholding."""
    m = maps(x)
    g = _g(grad_out, x)[..., None]
    if beta == 0:
        return np.broadcast_to(g / m.shape[2], m.shape).reshape(np.shape(x)).copy()
    return (g * softmax_weights(beta * m)).reshape(np.shape(x))


def _gem_parts(x, p, eps):
    """Per map: z = max(x, eps) (n cells), M = max z, u = log(z / M) <= 0, w = exp(p u) and
    L = log(mean w), with p broadcast to the maps; log1p(mean(expm1(p u))) keeps L exact when
    every p u is near 0 (p -> 0)."""
    # eps rounded to the dtype a pool computes in (float32 for every narrower float)
    eps = float(np.float64(eps) if np.asarray(x).dtype == np.float64 else np.float32(eps))
    z = np.maximum(maps(x), eps)
    p = np.broadcast_to(f64(p), z.shape[:2])[..., None]
    top = z.max(axis=2, keepdims=True, initial=eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        mantissa, exponent = np.frexp(z)
        top_mantissa, top_exponent = np.frexp(top)
        # log(z / M) from mantissas and exponents: z / M may underflow
        k = (exponent - top_exponent).astype(np.float64)
        u = k * LN2_HI + ((np.log(mantissa) - np.log(top_mantissa)) + k * LN2_LO)
        w = np.exp(p * u)
        log_mean = np.log1p(np.expm1(p * u).mean(axis=2, keepdims=True))
    return z, p, top, u, w, log_mean


def global_gem_pool_forward(x, p=3.0, eps=1e-6, keepdims=False):
    """y = (mean max(x, eps)^p)^(1/p) per map = M exp(L / p), eps rounded to the dtype the
    pool computes in; NaN maps give NaN, +inf maps +inf."""
    z, p, top, u, w, log_mean = _gem_parts(x, p, eps)
    with np.errstate(invalid="ignore", over="ignore"):
        values = (top * np.exp(log_mean / p))[..., 0]
    cells = maps(x)
    values = np.where(np.isposinf(cells).any(axis=2), np.inf, values)
    return _pooled(np.where(np.isnan(cells).any(axis=2), np.nan, values), x, keepdims)


def global_gem_pool_backward(grad_out, x, p=3.0, eps=1e-6, keepdims=False):
    """(grad_x, grad_p): g (z_i / y)^(p - 1) / n where x_i >= eps (else 0), and
    g (y / p) (sum w u / sum w - L / p) = g y KL(softmax(p u) || uniform) / p^2 summed to p's
    shape; NaN for maps with a NaN or +inf."""
    z, pp, top, u, w, log_mean = _gem_parts(x, p, eps)
    g = _g(grad_out, x)[..., None]
    y = top * np.exp(log_mean / pp)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        grad_x = g * w / w.sum(axis=2, keepdims=True) * y / z * (maps(x) >= z)
        # dy/dp = (y / p^2) KL(q || uniform), q the softmax of a = p u, summed from its
        # non-negative terms (1/n) ((1 + e_i) log1p(e_i) - e_i), e_i = n q_i - 1 =
        # -m_i / (1 + m_i) with m_i = mean_j expm1(a_j - a_i): no cancellation as p -> 0;
        # the plain sum sum q a - L where a spreads too far for exp (no cancellation there)
        a = pp * u
        pairwise = a[..., None, :] - a[..., :, None]
        near = np.all(np.abs(pairwise) < 30, axis=(-1, -2))[..., None]
        m = np.expm1(np.where(near[..., None], pairwise, 0.0)).mean(axis=-1)
        e = -m / (1 + m)
        terms = np.array([sum((-1) ** k * v ** k / (k * (k - 1)) for k in range(2, 60))
                          if abs(v) < 0.5 else (1 + v) * math.log1p(v) - v
                          for v in e.ravel()]).reshape(e.shape)
        plain = (w * a).sum(axis=2, keepdims=True) / w.sum(axis=2, keepdims=True) - log_mean
        kl = np.where(near, terms.mean(axis=2, keepdims=True), plain)
        grad_p = g * (y / pp) * kl / pp
    bad = ~np.isfinite(maps(x)).all(axis=2) & (np.isnan(maps(x)).any(axis=2)
                                                | np.isposinf(maps(x)).any(axis=2))
    grad_x[bad] = np.nan
    grad_p = np.where(bad[..., None], np.nan, grad_p)
    return grad_x.reshape(np.shape(x)), sum_to_shape(grad_p[..., 0], np.shape(p))


# ------------------------------------------------------------------ set pools (LOUPE)
def l2n(v, axis):
    """v / sqrt(max(sum v^2, 1e-12)) along axis."""
    return v / np.sqrt(np.maximum(np.sum(v * v, axis=axis, keepdims=True), L2N_FLOOR))


def l2n_backward(g, v, axis):
    """The gradient through l2n: (g - y (y . g)) / n while the floor is off, g / n on it."""
    squared = np.sum(v * v, axis=axis, keepdims=True)
    n = np.sqrt(np.maximum(squared, L2N_FLOOR))
    y = v / n
    return np.where(squared > L2N_FLOOR, (g - y * np.sum(y * g, axis=axis, keepdims=True)) / n,
                    g / n)


def _masked(assign, mask):
    a = f64(assign)
    return a if mask is None else a * np.asarray(mask, bool)[..., None]


def _vlad_residuals(x, a, centers):
    """V[b,d,k] = sum_m a[b,m,k] (x[b,m,d] - c[d,k])."""
    v = np.einsum("bmk,bmd->bdk", a, x)
    return v if centers is None else v - a.sum(axis=1)[:, None, :] * f64(centers)[None]


def _vlad(x, assign, centers, mask, return_norms):
    x, a = f64(x), _masked(assign, mask)
    v = _vlad_residuals(x, a, centers)
    b, d, k = v.shape
    flat = l2n(v, axis=1).reshape(b, d * k)  # intra-normalised over d, flattened d * K + k
    y = l2n(flat, axis=1)
    if not return_norms:
        return y
    column = np.sqrt(np.maximum(np.sum(v * v, axis=1), L2N_FLOOR))
    total = np.sqrt(np.maximum(np.sum(flat * flat, axis=1, keepdims=True), L2N_FLOOR))
    return y, np.concatenate([column, total], axis=1)


def _vlad_backward(grad_out, x, assign, centers, mask):
    x, a = f64(x), _masked(assign, mask)
    v = _vlad_residuals(x, a, centers)
    b, d, k = v.shape
    flat = l2n(v, axis=1).reshape(b, d * k)
    g_flat = l2n_backward(f64(grad_out), flat, axis=1).reshape(b, d, k)
    g_v = l2n_backward(g_flat, v, axis=1)  # dL/dV (B, D, K)
    grad_x = np.einsum("bmk,bdk->bmd", a, g_v)
    residual_term = np.einsum("bmd,bdk->bmk", x, g_v)
    if centers is not None:
        residual_term = residual_term - np.einsum("dk,bdk->bk", f64(centers), g_v)[:, None, :]
    grad_a = residual_term if mask is None else residual_term * np.asarray(mask, bool)[..., None]
    grad_c = None if centers is None else -np.einsum("bk,bdk->dk", a.sum(axis=1), g_v)
    return grad_x, grad_a, grad_c


def netvlad_pool_forward(x, assign, centers, mask=None, return_norms=False, matmul=None):
    """V = sum_m a (x - c) per (d, k), l2n over d per k, flattened d K + k, l2n. With
    return_norms, also the K floored column norms and the floored global norm (B, K + 1)."""
    return _vlad(x, assign, centers, mask, return_norms)


def netvlad_pool_backward(grad_out, x, assign, centers, mask=None, output=None, norms=None,
                          matmul=None):
    """(grad_x, grad_assign, grad_centers) through both l2n's and V."""
    return _vlad_backward(grad_out, x, assign, centers, mask)


def netrvlad_pool_forward(x, assign, mask=None, return_norms=False, matmul=None):
    """NetVLAD without centres: V = sum_m a x."""
    return _vlad(x, assign, None, mask, return_norms)


def netrvlad_pool_backward(grad_out, x, assign, mask=None, output=None, norms=None,
                           matmul=None):
    """(grad_x, grad_assign)."""
    return _vlad_backward(grad_out, x, assign, None, mask)[:2]


def _fv_parts(x, assign, mu, covar_weights, mask):
    x, a = f64(x), _masked(assign, mask)
    mu, cw = f64(mu), f64(covar_weights)
    sigma = cw * cw + FV_SIGMA_EPS
    a_sum = a.sum(axis=1)[:, None, :]                       # (B, 1, K)
    s1 = np.einsum("bmk,bmd->bdk", a, x)                    # sum_m a x
    s2 = np.einsum("bmk,bmd->bdk", a, x * x)                # sum_m a x^2
    f1 = (s1 - a_sum * mu) / sigma
    f2 = (s2 - 2 * mu * s1 + mu * mu * a_sum) / sigma ** 2 - a_sum  # sum_m a (x-mu)^2/s^2 - A
    return x, a, mu, cw, sigma, a_sum, s1, f1, f2


def netfv_pool_forward(x, assign, mu, covar_weights, mask=None, matmul=None):
    """concat(l2n(flatten(l2n_d(F1))), l2n(flatten(F2))), F1 = (sum_m a x - A mu) / sigma,
    F2 = sum_m a (x - mu)^2 / sigma^2 - A, sigma = covar_weights^2 + 1e-6, A = sum_m a."""
    *_, f1, f2 = _fv_parts(x, assign, mu, covar_weights, mask)
    b, d, k = f1.shape
    first = l2n(l2n(f1, axis=1).reshape(b, d * k), axis=1)
    return np.concatenate([first, l2n(f2.reshape(b, d * k), axis=1)], axis=1)


def netfv_pool_backward(grad_out, x, assign, mu, covar_weights, mask=None, matmul=None):
    """(grad_x, grad_assign, grad_mu, grad_covar_weights)."""
    x, a, mu, cw, sigma, a_sum, s1, f1, f2 = _fv_parts(x, assign, mu, covar_weights, mask)
    b, d, k = f1.shape
    g = f64(grad_out)
    flat1 = l2n(f1, axis=1).reshape(b, d * k)
    g_f1 = l2n_backward(l2n_backward(g[:, :d * k], flat1, axis=1).reshape(b, d, k), f1, axis=1)
    g_f2 = l2n_backward(g[:, d * k:], f2.reshape(b, d * k), axis=1).reshape(b, d, k)
    g_s1 = g_f1 / sigma - 2 * mu * g_f2 / sigma ** 2        # dL/d(sum_m a x)
    g_s2 = g_f2 / sigma ** 2                                 # dL/d(sum_m a x^2)
    g_a_sum = np.sum(-g_f1 * mu / sigma + g_f2 * (mu * mu / sigma ** 2 - 1), axis=1)  # (B, K)
    grad_x = np.einsum("bmk,bdk->bmd", a, g_s1) + 2 * x * np.einsum("bmk,bdk->bmd", a, g_s2)
    grad_a = (np.einsum("bmd,bdk->bmk", x, g_s1) + np.einsum("bmd,bdk->bmk", x * x, g_s2)
              + g_a_sum[:, None, :])
    if mask is not None:
        grad_a = grad_a * np.asarray(mask, bool)[..., None]
    grad_mu = np.sum(-g_f1 * a_sum / sigma + g_f2 * (2 * mu * a_sum - 2 * s1) / sigma ** 2,
                     axis=0)
    g_sigma = np.sum(-g_f1 * f1 / sigma - 2 * g_f2 * (f2 + a_sum) / sigma, axis=0)
    return grad_x, grad_a, grad_mu, 2 * cw * g_sigma


def soft_dbow_pool_forward(assign, mask=None):
    """l2n(sum_m a) per set: (B, K)."""
    return l2n(_masked(assign, mask).sum(axis=1), axis=1)


def soft_dbow_pool_backward(grad_out, assign, mask=None):
    """grad_assign: the l2n gradient on every real sample's row."""
    a = _masked(assign, mask)
    g = l2n_backward(f64(grad_out), a.sum(axis=1), axis=1)[:, None, :]
    grad = np.broadcast_to(g, a.shape).copy()
    return grad if mask is None else grad * np.asarray(mask, bool)[..., None]


def _sigmoid(z):
    return 0.5 * (1 + np.tanh(0.5 * z))  # exact for any z, no overflow


def context_gating_forward(x, weights, biases, matmul=None):
    """y = x sigmoid(x W + b) over the last axis of x."""
    x = f64(x)
    return x * _sigmoid(x @ f64(weights) + f64(biases))


def context_gating_backward(grad_out, x, weights, biases, matmul=None):
    """(grad_x, grad_weights, grad_biases): with s = sigmoid(x W + b) and
    g_z = g x s (1 - s): g s + g_z W^T, x^T g_z, sum g_z."""
    x, w, g = f64(x), f64(weights), f64(grad_out)
    s = _sigmoid(x @ w + f64(biases))
    g_z = g * x * s * (1 - s)
    rows = x.reshape(-1, x.shape[-1])
    g_rows = g_z.reshape(-1, x.shape[-1])
    return g * s + g_z @ w.T, rows.T @ g_rows, g_rows.sum(axis=0)


# ------------------------------------------------------------------ the table
REFERENCES = {
    **{f"soft_pool{nd}d": (soft_pool_forward(nd), soft_pool_backward(nd)) for nd in (1, 2, 3)},
    **{f"maxent_pool{nd}d": (maxent_pool_forward(nd), maxent_pool_backward(nd))
       for nd in (1, 2, 3)},
    **{f"adaptive_soft_pool{nd}d": (adaptive_soft_pool_forward(nd),
                                     adaptive_soft_pool_backward(nd)) for nd in (1, 2, 3)},
    **{f"adaptive_maxent_pool{nd}d": (adaptive_maxent_pool_forward(nd),
                                       adaptive_maxent_pool_backward(nd)) for nd in (1, 2, 3)},
    "global_max_pool": (global_max_pool_forward, global_max_pool_backward),
    "global_avg_pool": (global_avg_pool_forward, global_avg_pool_backward),
    "global_kmax_pool": (global_kmax_pool_forward, global_kmax_pool_backward),
    "global_lse_pool": (global_lse_pool_forward, global_lse_pool_backward),
    "global_gem_pool": (global_gem_pool_forward, global_gem_pool_backward),
    "weldon_pool": (weldon_pool_forward, weldon_pool_backward),
    "netvlad_pool": (netvlad_pool_forward, netvlad_pool_backward),
    "netrvlad_pool": (netrvlad_pool_forward, netrvlad_pool_backward),
    "netfv_pool": (netfv_pool_forward, netfv_pool_backward),
    "soft_dbow_pool": (soft_dbow_pool_forward, soft_dbow_pool_backward),
    "context_gating": (context_gating_forward, context_gating_backward),
}
