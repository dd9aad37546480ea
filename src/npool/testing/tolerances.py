"""Error scales that follow the conditioning of a problem: the tolerances of
``npool.testing.assert_close``, which no hypothesis draw can break by luck.

A correct float computation of ``sum_i t_i`` is off by about ``eps * sum_i |t_i|`` (the terms
that cancel), not by ``eps * |sum_i t_i|``; a normalisation ``v / max(|v|, floor)`` multiplies
that error by ``1 / max(|v|, floor)``; an exponential ``exp(z)`` carries the rounding of ``z``
as a relative error. The scales below bound the rounding error of each result element of an op
divided by the unit roundoff of the dtype it was computed in; ``assert_within`` accepts
``|actual - expected| <= factor * eps * scale`` (factor 64 by default) plus the dtype's
smallest subnormal.

- Local pools (SoftPool, Max-Ent), per output o over its real cells: X = max |x|, spread =
  max x - min x, E = min(|lam| spread, 100) (cells further below the maximum weigh nothing).
  Forward ``X (1 + E)``; grad_x ``sum_o |g_o| (1 + E_o)(1 + |lam_o| X_o)`` over the windows
  holding the cell; grad_lam ``|g_o| (var_o (1 + E_o) + X_o sqrt(var_o) + eps X_o^2)`` with
  ``var_o = sum_i w_i (x_i - y_o)^2``, summed as lam is.
- Global pools, per map of n cells: forward ``max |x|`` (LSE: times ``1 + min(|beta| range,
  100)``); backward ``|g| (1 + |alpha|)`` for the selections, ``|g| / n`` for avg, ``|g| (1 +
  |beta| max|x|)`` for LSE.
- GeM: ``gem_scales`` below.
- Set pools: ``vlad_scales``, ``fv_scales`` below; Soft-DBoW and Context Gating likewise.
"""
import numpy as np

from .references import f64, maps, pool_windows, softmax_weights, sum_to_shape, window_cells

VLAD_FLOOR = 1e-6  # the norm floor of l2n (squared-norm floor 1e-12)


def float_info(dtype):
    """``numpy.finfo`` of a float dtype, bfloat16 (ml_dtypes) included."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        import ml_dtypes
        return ml_dtypes.finfo(dtype)
    return np.finfo(dtype)


def as_dtype(name):
    """A dtype from a name or type, "bfloat16" included (ml_dtypes')."""
    if isinstance(name, str) and name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def assert_within(got, expected, scale, dtype, factor=64.0):
    """|got - expected| <= factor * eps(dtype) * scale, elementwise, NaN where both are; plus
    the dtype's smallest subnormal, the absolute resolution of a result near 0."""
    got = np.asarray(got, np.float64)
    expected = np.asarray(expected, np.float64)
    info = float_info(dtype)
    bound = (factor * info.eps * np.broadcast_to(scale, expected.shape)
             + float(info.smallest_subnormal))
    error = np.abs(got - expected)
    bad = ~((error <= bound) | (np.isnan(got) & np.isnan(expected)) | (got == expected))
    assert not bad.any(), (
        f"{int(bad.sum())} of {bad.size} elements off by more than {factor} eps x their "
        f"error scale; worst: got {got[bad][:3]}, expected {expected[bad][:3]}, "
        f"scale {np.broadcast_to(scale, expected.shape)[bad][:3]}")


def _masked_assign(a, mask):
    a = np.asarray(a, np.float64)
    return a if mask is None else a * mask[..., None]


def _vlad_parts(x, assign, centers, mask):
    """V (B, D, K), T_k (B, K): the largest sum of term magnitudes of V's column k, the
    column norms, the floored column norms n_k and the floored global norm n (B, 1)."""
    x = np.asarray(x, np.float64)
    a = _masked_assign(assign, mask)
    b, m, d = x.shape
    k = a.shape[2]
    c = np.zeros((d, k)) if centers is None else np.asarray(centers, np.float64)
    a_sum = a.sum(axis=1)  # (B, K)
    v = np.einsum("bmd,bmk->bdk", x, a) - c[None] * a_sum[:, None, :]
    terms = np.einsum("bmd,bmk->bdk", np.abs(x), a) + np.abs(c)[None] * a_sum[:, None, :]
    t_k = terms.max(axis=1) if d else np.zeros((b, k))
    column = np.sqrt(np.sum(v * v, axis=1))
    n_k = np.maximum(column, VLAD_FLOOR)
    total = np.sqrt(np.sum((column / n_k) ** 2, axis=1))
    n = np.maximum(total, VLAD_FLOOR)[:, None]
    return x, a, c, a_sum, v, t_k, column, n_k, n


def vlad_norm_scales(x, assign, centers=None, mask=None):
    """Error scales of the norms (B, K + 1) NetVLAD's forward returns."""
    x, a, c, a_sum, v, t_k, column, n_k, n = _vlad_parts(x, assign, centers, mask)
    d = x.shape[2]
    columns = np.sqrt(d) * t_k + n_k
    return np.concatenate([columns, n * (1 + (t_k / n_k).max(axis=1, keepdims=True, initial=0))],
                          axis=1)


def vlad_scales(x, assign, centers=None, mask=None, grad_out=None):
    """Error scales of NetVLAD/NetRVLAD: the forward (B, D * K) and, with ``grad_out``, the
    gradients (grad_x (B, M, D), grad_assign (B, M, K), grad_centers (D, K)).

    Per set b and cluster k: T_k = max_d sum_m a |x - c| bounds the terms of V's column k;
    its intra-norm n_k = max(|V_k|, 1e-6) and the global norm n divide them, so the forward's
    column error is eps T_k / (n_k n) (plus eps |y| for the normalisations). Backward: dL/dV has
    magnitude up to G_k = 2 |g_b| / (n_k n) (|g_b| the l2 norm of grad_out's row), and carries
    the relative error rho_k = (T_k + |V_k|) / n_k of the forward quantities it is made of; the
    products with a and x then add their own terms.
    """
    x, a, c, a_sum, v, t_k, column, n_k, n = _vlad_parts(x, assign, centers, mask)
    b, m, d = x.shape
    k = a.shape[2]
    y = (v / (n_k[:, None, :] * n[:, :, None])).reshape(b, d * k)
    forward = (np.broadcast_to((t_k / (n_k * n))[:, None, :], (b, d, k)).reshape(b, d * k)
               + np.abs(y) * (1 + (t_k / n_k).max(axis=1, keepdims=True, initial=0)))
    if grad_out is None:
        return forward
    g = np.asarray(grad_out, np.float64)
    g_norm = np.sqrt(np.sum(g * g, axis=1, keepdims=True))  # (B, 1)
    rho = (t_k + column) / n_k + 1  # (B, K)
    scale_k = 2 * g_norm / (n_k * n) * rho  # error scale of dL/dV per column
    grad_x = np.einsum("bmk,bk->bm", a, scale_k)[:, :, None] * np.ones(d)
    x_abs = np.abs(x).max(axis=2, initial=0)[:, :, None]  # (B, M, 1)
    c_abs = np.abs(c).max(axis=0, initial=0)  # (K,)
    grad_a = d * (x_abs + c_abs) * scale_k[:, None, :] * np.ones((1, m, 1))
    if mask is not None:
        grad_a = grad_a * mask[..., None]
    grad_c = d * np.einsum("bk,bk->k", a_sum, scale_k)[None, :] * np.ones((d, 1))
    return forward, (grad_x, grad_a, grad_c)


FV_SIGMA_EPS = 1e-6  # sigma = covar_weights^2 + 1e-6


def fv_scales(x, assign, mu, covar_weights, mask=None, grad_out=None):
    """Error scales of NetFV: the forward (B, 2 D K) and, with ``grad_out``, the gradients
    (grad_x, grad_assign, grad_mu, grad_covar_weights).

    F1 = (S1 - a_sum mu) / sigma is normalised as NetVLAD's V (terms T1 = (sum_m a |x| +
    a_sum |mu|) / sigma per entry, intra-norms n_k, global norm n); F2 = (S2 - 2 mu S1 +
    mu^2 a_sum) / sigma^2 - a_sum is only l2n'd (terms T2, norm n2). Backward: dL/dF1 up to
    G1_k = 2 |g1| / (n_k n) with relative error rho1_k, dL/dF2 up to G2 = 2 |g2| / n2 with
    relative error rho2; the moment gradients p = dL/dF1 / sigma, q = dL/dF2 / sigma^2 and the
    products with a, x, x^2 add their own terms.
    """
    x = np.asarray(x, np.float64)
    a = _masked_assign(assign, mask)
    mu = np.asarray(mu, np.float64)
    cw = np.asarray(covar_weights, np.float64)
    b, m, d = x.shape
    k = a.shape[2]
    sigma = cw * cw + FV_SIGMA_EPS
    a_sum = a.sum(axis=1)[:, None, :]  # (B, 1, K)
    s1 = np.einsum("bmd,bmk->bdk", x, a)
    s1_abs = np.einsum("bmd,bmk->bdk", np.abs(x), a)
    s2 = np.einsum("bmd,bmk->bdk", x * x, a)
    f1 = (s1 - a_sum * mu) / sigma
    t1 = (s1_abs + a_sum * np.abs(mu)) / sigma
    f2 = (s2 - 2 * mu * s1 + mu * mu * a_sum) / sigma ** 2 - a_sum
    t2 = (s2 + 2 * np.abs(mu) * s1_abs + mu * mu * a_sum) / sigma ** 2 + a_sum
    column = np.sqrt(np.sum(f1 * f1, axis=1))  # (B, K)
    n_k = np.maximum(column, VLAD_FLOOR)
    t1_k = t1.max(axis=1) if d else np.zeros((b, k))
    total = np.sqrt(np.sum((column / n_k) ** 2, axis=1))
    n = np.maximum(total, VLAD_FLOOR)[:, None]  # (B, 1)
    n2 = np.maximum(np.sqrt(np.sum(f2 * f2, axis=(1, 2))), VLAD_FLOOR)[:, None]  # (B, 1)
    t2_max = t2.reshape(b, d * k).max(axis=1, initial=0)[:, None]  # (B, 1)
    y1 = (f1 / (n_k[:, None, :] * n[:, :, None])).reshape(b, d * k)
    y2 = (f2 / n2[:, :, None]).reshape(b, d * k)
    first = (np.broadcast_to((t1_k / (n_k * n))[:, None, :], (b, d, k)).reshape(b, d * k)
             + np.abs(y1) * (1 + (t1_k / n_k).max(axis=1, keepdims=True, initial=0)))
    second = t2_max / n2 + np.abs(y2) * (1 + t2_max / n2)
    forward = np.concatenate([first, second], axis=1)
    if grad_out is None:
        return forward
    g = np.asarray(grad_out, np.float64)
    g1, g2 = g[:, :d * k], g[:, d * k:]
    rho1 = (t1_k + column) / n_k + 1  # (B, K)
    big_g1 = (2 * np.sqrt(np.sum(g1 * g1, axis=1, keepdims=True)) / (n_k * n) * rho1)[:, None, :]
    big_g2 = (2 * np.sqrt(np.sum(g2 * g2, axis=1, keepdims=True)) / n2 * (t2_max / n2 + 1))[
        :, :, None]  # (B, 1, 1)
    p = big_g1 / sigma  # (B, D, K): scales of dL/dS1's first part and of dL/dF1 / sigma
    q = big_g2 / sigma ** 2
    g_s1 = p + 2 * np.abs(mu) * q
    grad_x = (np.einsum("bmk,bdk->bmd", a, g_s1)
              + 2 * np.abs(x) * np.einsum("bmk,bdk->bmd", a, np.broadcast_to(q, g_s1.shape)))
    g_a_sum = np.sum(p * np.abs(mu) + q * mu * mu + big_g2, axis=1)[:, None, :]  # (B, 1, K)
    grad_a = (np.einsum("bmd,bdk->bmk", np.abs(x), g_s1)
              + np.einsum("bmd,bdk->bmk", x * x, np.broadcast_to(q, g_s1.shape)) + g_a_sum)
    if mask is not None:
        grad_a = grad_a * mask[..., None]
    grad_mu = np.sum(p * a_sum + 2 * q * (s1_abs + np.abs(mu) * a_sum), axis=0)
    g_sigma = np.sum(big_g1 * (np.abs(f1) + t1) / sigma
                     + 2 * big_g2 * (np.abs(f2) + t2 + a_sum) / sigma, axis=0)
    grad_cw = 2 * np.abs(cw) * g_sigma
    return forward, (grad_x, grad_a, grad_mu, grad_cw)


# ------------------------------------------------------------------ local and global pools
def local_scales(x, lam, nd, kernel_size=None, stride=None, padding=0, ceil_mode=False,
                 grad_out=None, lam_shape=None, dilation=1, output_size=None):
    """Error scales of Max-Ent pooling (SoftPool: lam = 1) over windows (``kernel_size``, ...)
    or adaptive ones (``output_size``): the forward, and with ``grad_out`` (grad_x, grad_lam
    summed to ``lam_shape``)."""
    x = f64(x)
    spatial = x.shape[-nd:]
    sizes, pool = pool_windows(spatial, kernel_size, stride, padding, ceil_mode, dilation,
                               output_size)
    out_shape = x.shape[:-nd] + sizes
    lam_full = np.broadcast_to(f64(lam), out_shape)
    forward = np.zeros(out_shape)
    grad_x = np.zeros_like(x)
    grad_lam = np.zeros(out_shape)
    g = None if grad_out is None else np.abs(f64(grad_out))
    eps = np.finfo(np.float64).eps
    with np.errstate(invalid="ignore", over="ignore"):
        for out_index, window in pool:
            cells = window_cells(x, window, nd)
            finite = np.where(np.isfinite(cells), cells, 0.0)
            big = np.abs(finite).max(axis=-1)
            spread = finite.max(axis=-1) - finite.min(axis=-1)
            lam_o = np.abs(lam_full[(Ellipsis,) + out_index])
            exponent = 1 + np.minimum(lam_o * spread, 100.0)
            forward[(Ellipsis,) + out_index] = big * exponent
            if g is None:
                continue
            g_o = g[(Ellipsis,) + out_index]
            cell_scale = g_o * exponent * (1 + lam_o * big)
            grad_x[(Ellipsis,) + window] += np.broadcast_to(
                cell_scale.reshape(cell_scale.shape + (1,) * nd),
                grad_x[(Ellipsis,) + window].shape)
            w = softmax_weights(lam_full[(Ellipsis,) + out_index][..., None] * finite)
            y = (w * finite).sum(axis=-1, keepdims=True)
            var = (w * (finite - y) ** 2).sum(axis=-1)
            grad_lam[(Ellipsis,) + out_index] = g_o * (var * exponent + big * np.sqrt(var)
                                                       + eps * big * big)
    if g is None:
        return forward
    shape = np.shape(lam) if lam_shape is None else lam_shape
    return forward, (grad_x, sum_to_shape(grad_lam, shape))


def gem_scales(x, p, eps=1e-6, grad_out=None):
    """Error scales of GeM per map, with M = max z, u = log(z / M), w = exp(p u), S = sum w:
    y's rounding is that of a log carried to the output (``M (2 + log(M / y))``); dL/dx_i,
    ``G_i = g y w_i / (S z_i)``, adds the rounding of ``p u_i`` in w_i, ``G_i (4 + p |u_i| +
    log(M / y))``, plus the map's largest G (the weights' sum); dL/dp the cancellation of its
    two terms, ``|g| (y / p) (4 (1 + log(M / y)) + p E_w[u^2] + (1 + |log(S / n)|) / p)``,
    summed to p's shape."""
    from .references import _gem_parts
    cells = maps(x)
    finite = np.isfinite(cells).all(axis=2, keepdims=True)
    safe = np.where(np.isfinite(cells), cells, 0.0)
    z, pp, top, u, w, log_mean = _gem_parts(safe, p, eps)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        y = top * np.exp(log_mean / pp)
        spread = np.log(top / y)
        forward = np.where(finite, top * (2 + spread), 0.0)[..., 0]
        if grad_out is None:
            return forward
        g = np.abs(f64(grad_out)).reshape(cells.shape[:2])[..., None]
        s = w.sum(axis=2, keepdims=True)
        big = g * y * w / (s * z)
        grad_x = big * (4 + pp * np.abs(u) + spread) + big.max(axis=2, keepdims=True)
        second = (w * u * u).sum(axis=2, keepdims=True) / s
        grad_p = g * (y / pp) * (4 * (1 + spread) + pp * second + (1 + np.abs(log_mean)) / pp)
    grad_x = np.where(finite, grad_x, 0.0).reshape(np.shape(x))
    grad_p = sum_to_shape(np.where(finite, grad_p, 0.0)[..., 0], np.shape(p))
    return forward, (grad_x, grad_p)


def global_scales(op, x, options, grad_out=None, p=None):
    """Error scales of a global pool: the forward (N, C) and, with ``grad_out``, the gradients
    of its differentiable inputs (grad_x; GeM's also grad_p, from ``p``)."""
    if op == "global_gem_pool":
        result = gem_scales(x, p, options.get("eps", 1e-6), grad_out)
        forward = result if grad_out is None else result[0]
        if options.get("keepdims"):
            forward = forward.reshape(np.shape(x)[:2] + (1,) * (len(np.shape(x)) - 2))
        return forward if grad_out is None else (forward, result[1])
    m = maps(x)
    finite = np.where(np.isfinite(m), m, 0.0)
    big = np.abs(finite).max(axis=2, initial=0)
    n = max(m.shape[2], 1)
    beta = abs(options.get("beta", 1.0))
    if op == "global_lse_pool":
        spread = finite.max(axis=2, initial=0) - finite.min(axis=2, initial=0)
        forward = big * (1 + np.minimum(beta * spread, 100.0))
    else:
        forward = big
    if options.get("keepdims"):
        forward = forward.reshape(np.shape(x)[:2] + (1,) * (len(np.shape(x)) - 2))
    if grad_out is None:
        return forward
    g = np.abs(f64(grad_out)).reshape(m.shape[:2])
    if op == "global_avg_pool":
        per_map = g / n
    elif op == "global_lse_pool":
        per_map = g * (1 + beta * big)
    else:
        per_map = g * (1 + abs(options.get("alpha", 1.0)))
    return forward, (np.broadcast_to(per_map[..., None], m.shape).reshape(np.shape(x)),)


def dbow_scales(assign, mask=None, grad_out=None):
    """Error scales of Soft-DBoW: bow_k = sum_m a (terms T_k = sum_m |a|), l2n by n."""
    a = _masked_assign(assign, mask)
    bow = a.sum(axis=1)
    t = np.abs(a).sum(axis=1)
    n = np.maximum(np.sqrt(np.sum(bow * bow, axis=1, keepdims=True)), VLAD_FLOOR)
    rho = 1 + t.max(axis=1, keepdims=True, initial=0) / n
    forward = t / n + np.abs(bow / n) * rho
    if grad_out is None:
        return forward
    g = np.sqrt(np.sum(f64(grad_out) ** 2, axis=1, keepdims=True))
    grad = np.broadcast_to((2 * g / n * rho)[:, None, :], a.shape)
    return forward, ((grad if mask is None else grad * mask[..., None]),)


def gating_scales(x, weights, biases, grad_out=None):
    """Error scales of Context Gating: z = x W + b with terms Z = |x| |W| + |b|."""
    x, w = f64(x), f64(weights)
    z_terms = 1 + np.abs(x) @ np.abs(w) + np.abs(f64(biases))
    forward = np.abs(x) * z_terms
    if grad_out is None:
        return forward
    g = np.abs(f64(grad_out))
    gz = g * np.abs(x) * z_terms
    rows, gz_rows = np.abs(x).reshape(-1, x.shape[-1]), gz.reshape(-1, x.shape[-1])
    return forward, (g + gz @ np.abs(w).T, rows.T @ gz_rows,
                     gz_rows.sum(axis=0))
