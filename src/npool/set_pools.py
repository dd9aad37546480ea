"""Learnable set pooling from LOUPE (Miech et al., "Learnable pooling with Context Gating"):
NetVLAD, NetRVLAD, NetFV, Soft-DBoW and Context Gating, with masks.

``x`` is ``(B, M, D)`` (batch, samples, features), ``assign`` the soft assignment ``(B, M, K)``
(a softmax over K that the caller computes), ``mask`` ``(B, M)`` booleans (True: a real sample)
or None. A masked sample changes no output and gets a zero gradient. ``l2n(v) = v /
sqrt(max(sum v^2, 1e-12))``. Outputs are flattened D-major (``d * K + k``, LOUPE's order).

The two large contractions per op (``x^T a`` and its transposes) are BLAS matrix products; no
``(B, M, K, D)`` array is ever formed. ``matmul=`` (default ``numpy.matmul``) lets a framework
adapter run them on its own BLAS: the torch adapter passes torch's, because numpy's OpenBLAS
threads keep spinning after each call and slow the next torch operation down when both share
the cores (measured: a torch GEMM right after a numpy matmul took 1.6x its time).

GPU arrays go to ``npool._cuda.set_pools`` (src/cuda/set_pools.cu): the same math on npool's own
kernels, products included; ``matmul=`` applies to numpy arrays only.

The trainable layers around these ops (assignment, BatchNorm, projection) live in the framework
adapters: ``npool.torch.NetVLAD`` etc. and ``npool.tf.NetVLAD`` etc.
"""
from typing import Any, Callable, Optional, Tuple

import numpy as np

from . import _checks
from ._types import Array, ArrayLike, ArrayOrPair, Out
from ._cpu import kernel_module
from ._dispatch import backend_of
from ._threads import threads_for

_EPS = 1e-12  # the squared-norm floor of l2n
_SIGMA_EPS = 1e-6  # NetFV: sigma = covar_weights ** 2 + 1e-6


def _l2n(v, axis):
    """l2n along ``axis`` and what its backward needs."""
    squared = np.sum(v * v, axis=axis, keepdims=True)
    norm = np.sqrt(np.maximum(squared, _EPS))
    y = v / norm
    return y, (y, norm, squared > _EPS)


def _row_norms(v):
    """The floored l2 norms of the rows of v (B, n), as (B, 1). Rows whose sum of squares
    overflows although the norm is finite (float32 values past 1e19) are scaled by their
    largest magnitude before squaring."""
    with np.errstate(over="ignore"):
        squared = np.einsum("bi,bi->b", v, v)
    norms = np.sqrt(np.maximum(squared, _EPS))
    bad = np.flatnonzero(~np.isfinite(squared))
    if bad.size:
        rows = v[bad].astype(np.float64)
        top = np.abs(rows).max(axis=1)
        finite = np.isfinite(top) & (top > 0)
        with np.errstate(over="ignore"):
            unit = rows[finite] / top[finite, None]
            scaled = top[finite] * np.sqrt(np.einsum("bi,bi->b", unit, unit))
        norms[bad[finite]] = scaled.astype(norms.dtype)
    return norms[:, None]


def _l2n_backward(g, saved, axis):
    y, norm, active = saved
    dot = np.sum(y * g, axis=axis, keepdims=True)
    return np.where(active, (g - y * dot) / norm, g / norm)


def _matmul_function(matmul, work):
    """The batched matrix product: numpy.matmul, or the caller's (same signature and result,
    e.g. torch's through NumPy views, so that one process does not run two BLAS thread pools
    that spin against each other).

    A caller's result is checked (a numpy array of the operands' dtype ``work`` and of the
    product's shape) and copied into a new C-contiguous array before any kernel sees it: the
    kernels normalise it in place, so it must be npool's own memory, whatever the callable
    returned (a view of an input, a read-only or strided array).
    """
    if matmul is None:
        return np.matmul
    if not callable(matmul):
        raise TypeError(f"matmul must be a callable like numpy.matmul, got "
                        f"{type(matmul).__name__}")

    def checked(a, b):
        shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
        result = matmul(a, b)
        if not isinstance(result, np.ndarray) or isinstance(result, np.ma.MaskedArray):
            raise TypeError(f"matmul must return a numpy.ndarray like numpy.matmul, got "
                            f"{type(result).__name__}")
        if result.shape != shape:
            raise ValueError(f"matmul returned shape {result.shape} for operands of shapes "
                             f"{a.shape} and {b.shape}; numpy.matmul gives {shape}")
        if result.dtype != work:
            raise TypeError(f"matmul returned dtype {result.dtype} for {work} operands; it must "
                            f"keep the operands' dtype as numpy.matmul does")
        return np.array(result, dtype=work, order="C", copy=True)

    return checked


def _describe(a, name, dtypes=None):
    from ._cuda._arrays import describe
    return describe(a, name) if dtypes is None else describe(a, name, dtypes)


def _gpu_backend(arrays, matmul):
    """npool._cuda.set_pools when ``arrays`` (name -> array or None) are GPU arrays (a mix
    with numpy arrays is a TypeError), else None."""
    if backend_of(**{name: a for name, a in arrays.items() if a is not None}) != "cuda":
        return None
    if matmul is not None:
        raise ValueError("matmul= applies to numpy arrays only: on the GPU the products run on "
                         "npool's own kernels")
    from ._cuda import set_pools
    return set_pools


def _into(result, out, inputs):
    """``result`` (an array, or a tuple of arrays and Nones) delivered into ``out=``: None, an
    array for a single result, or a tuple with one entry (None or an array of that result's
    shape and dtype) per result; the kernels' own buffers are copied there (the BLAS products
    of the set pools allocate their results)."""
    if out is None:  # (GPU results always: _Call refuses out= there)
        return result
    results = result if isinstance(result, tuple) else (result,)
    entries = _checks.out_entries(out, len(results))
    delivered = tuple(
        r if r is None else _checks.deliver(r, _checks.out_array(
            entry, r.shape, r.dtype, inputs, name="out" if len(results) == 1 else f"out[{i}]"))
        for i, (r, entry) in enumerate(zip(results, entries)))
    return delivered if isinstance(result, tuple) else delivered[0]


def _refuse_gpu_out(gpu, out):
    if gpu is not None:
        _checks.refuse_gpu_out([out], "the set pools")


class _Call:
    """One validated call: x (B, M, D), assign (B, M, K) and the mask (B, M).

    On the CPU, ``x`` and ``a`` (assign with masked rows zeroed) are numpy arrays of the
    working dtype. With GPU arrays (``gpu``: npool._cuda.set_pools), every array is described
    (``x``, ``assign``, ``mask``: DeviceArrays) and the GPU module computes. ``others`` (name ->
    array) are the call's other arrays, checked to be on the same device.
    """

    def __init__(self, x=None, assign=None, mask=None, matmul=None, uses_x=True, out=None,
                 **others):
        arrays = {"x": x, "assign": assign} if uses_x else {"assign": assign}
        for name, a in arrays.items():  # a missing array is named before anything else
            if a is None:
                _checks.float_array(a, name)
        self.gpu = _gpu_backend(dict(arrays, mask=mask, **others), matmul)
        _refuse_gpu_out(self.gpu, out)
        if self.gpu is not None:
            arrays = {name: _describe(a, name) for name, a in arrays.items()}
        first = next(iter(arrays.values()))
        for name, a in arrays.items():
            _checks.float_array(a, name)
            if a.ndim != 3:
                raise ValueError(f"{name} must be 3-D (B, M, {'D' if name == 'x' else 'K'}), "
                                 f"got shape {a.shape}")
            if a.dtype != first.dtype:
                raise TypeError(f"{name} must have the dtype of the other inputs "
                                f"({first.dtype}), got {a.dtype}")
        if "x" in arrays and "assign" in arrays and \
                arrays["x"].shape[:2] != arrays["assign"].shape[:2]:
            raise ValueError(f"x and assign must agree on (B, M), got {arrays['x'].shape[:2]} "
                             f"and {arrays['assign'].shape[:2]}")
        self.dtype = first.dtype
        self.work = _checks.compute_dtype(first.dtype)
        self.matmul = _matmul_function(matmul, self.work)
        self.sizes = first.shape[:2]
        self.clusters = arrays["assign"].shape[2] if "assign" in arrays else None
        self.mask = self._mask(mask)
        if self.gpu is not None:
            self.x, self.assign = arrays.get("x"), arrays.get("assign")
            return
        self.x = None if x is None else x.astype(self.work, copy=False)
        if assign is not None:
            a = assign.astype(self.work, copy=False)
            self.a = a * self.mask if self.mask is not None else a

    def _mask(self, mask):
        """None, the mask as a (B, M, 1) working-dtype array (CPU) or its DeviceArray (GPU)."""
        if mask is None:
            return None
        if self.gpu is not None:
            mask = _describe(mask, "mask", (np.dtype(np.bool_),))
        else:
            mask = np.asarray(mask)
            if mask.dtype != np.bool_:
                raise TypeError(f"mask must be an array of bools, got dtype {mask.dtype}")
        if mask.shape != self.sizes:
            raise ValueError(f"mask must have shape (B, M) = {self.sizes}, got {mask.shape}")
        return mask if self.gpu is not None else mask[..., None].astype(self.work)

    def array(self, a, name):
        """A further array of the call: itself (CPU) or its DeviceArray (GPU)."""
        return _describe(a, name) if self.gpu is not None else a

    def masked(self, g):
        return g * self.mask if self.mask is not None else g

    def parameter(self, p: Any, name: str, shape: Tuple[int, ...]) -> Any:
        """A (D, K) parameter, checked: C-contiguous in the working dtype (CPU; any layout is
        accepted) or described (GPU)."""
        p = self.array(p, name)
        _checks.float_array(p, name)
        if p.shape != shape:
            raise ValueError(f"{name} must have shape {shape} (D, K), got {p.shape}")
        if p.dtype != self.dtype:
            raise TypeError(f"{name} must have the dtype of x ({self.dtype}), got {p.dtype}")
        return p if self.gpu is not None else np.ascontiguousarray(p, dtype=self.work)

    def grad_out(self, g, shape):
        g = self.array(g, "grad_out")
        _checks.grad_out_array(g, shape, np.empty(0, self.dtype))
        return g if self.gpu is not None else g.astype(self.work, copy=False)

    def out(self, *arrays):
        """The results in the caller's dtype (None stays None)."""
        result = tuple(None if a is None else a.astype(self.dtype, copy=False) for a in arrays)
        return result if len(result) > 1 else result[0]


# ------------------------------------------------------------------ NetVLAD / NetRVLAD
def _vlad(s, centers):
    """The NetVLAD output (B, D, K) and its norms (B, K + 1): the BLAS contraction V = x^T a,
    then the fused residual correction and both normalisations, in place."""
    v = s.matmul(s.x.transpose(0, 2, 1), s.a)  # (B, D, K), C-contiguous
    b, _, k = v.shape
    norms = np.empty((b, k + 1), s.work)
    if b:
        kernel_module("_set_pools").vlad_normalize(
            v, centers if centers is not None else np.zeros((1, 1), s.work),
            np.ascontiguousarray(s.a.sum(axis=1)), norms, centers is not None, threads_for(b))
    return v, norms


def _vlad_state(s, centers, output, norms):
    """The forward's (output, norms) as given to a backward, checked; None when not given (the
    backward recomputes them)."""
    if output is None and norms is None:
        return None
    if output is None or norms is None:
        raise ValueError("output and norms must be given together (both from the forward with "
                         "return_norms=True) or not at all")
    (b, _, d), k = s.x.shape, s.clusters
    output, norms = s.array(output, "output"), s.array(norms, "norms")
    for name, array, shape in (("output", output, (b, d * k)), ("norms", norms, (b, k + 1))):
        _checks.float_array(array, name)
        if array.shape != shape:
            raise ValueError(f"{name} must have shape {shape} as the forward returned it, got "
                             f"{array.shape}")
    if s.gpu is not None:
        return output, norms
    return (np.ascontiguousarray(output, dtype=s.work).reshape(b, d, k),
            np.ascontiguousarray(norms, dtype=s.work))


def _vlad_backward(s, centers, g, state):
    """dL/dV through the normalisations (fused, in place on a copy of g), then the BLAS
    products: grad_x = a dV^T, grad_a = x dV (- the centroid term), grad_c = -dV a_sum."""
    if s.gpu is not None:
        return s.gpu.vlad_backward(s, centers, g, *(state or (None, None)))
    y, norms = state or _vlad(s, centers)
    g_v = np.array(g.reshape(y.shape), dtype=s.work, order="C")  # becomes dL/dV in place
    if len(g_v):
        kernel_module("_set_pools").vlad_normalize_backward(
            g_v, y, norms, np.empty((len(g_v), y.shape[2]), s.work), threads_for(len(g_v)))
    grad_x = s.matmul(s.a, g_v.transpose(0, 2, 1))  # (B, M, D); masked rows of a are 0
    grad_a = s.matmul(s.x, g_v)  # (B, M, K)
    grad_c = None
    if centers is not None:
        grad_a -= np.einsum("bdk,dk->bk", g_v, centers)[:, None, :]
        grad_c = -np.einsum("bdk,bk->dk", g_v, s.a.sum(axis=1))
    return s.out(grad_x, s.masked(grad_a), grad_c)


def _vlad_forward(s, centers, return_norms):
    if s.gpu is not None:
        output, norms = s.gpu.vlad_forward(s, centers, return_norms)
        return (output, norms) if return_norms else output
    output, norms = _vlad(s, centers)
    b, d, k = output.shape
    output = s.out(output.reshape(b, d * k))
    return (output, s.out(norms)) if return_norms else output


def netvlad_pool_forward(x: ArrayLike, assign: ArrayLike, centers: ArrayLike,
                         mask: Optional[ArrayLike] = None, return_norms: bool = False,
                         matmul: Optional[Callable[..., Any]] = None, *,
                         out: Out = None) -> ArrayOrPair:
    """NetVLAD pooling (Arandjelovic et al., CVPR 2016; LOUPE).

    ::

        V[b, d, k] = sum_m a[b, m, k] (x[b, m, d] - c[d, k])
        y = l2n(flatten_D_major(V / ||V[b, :, k]||))     (l2n: v / sqrt(max(sum v^2, 1e-12)))

    The contraction is one BLAS product (no ``(B, M, K, D)`` array is formed).

    Parameters
    ----------
    x : numpy.ndarray or GPU array
        ``(B, M, D)``: B sets of M samples of D features; float16, bfloat16, float32 or
        float64.
    assign : numpy.ndarray or GPU array
        ``(B, M, K)``: the soft assignment of each sample to K clusters (a softmax over K,
        computed by the caller); x's dtype.
    centers : numpy.ndarray or GPU array
        ``(D, K)``: the cluster centres.
    mask : array of bool, optional
        ``(B, M)``: True for the real samples of each set; the others change no output and get
        zero gradients. None: every sample is real.
    return_norms : bool, default False
        Also return the norms ``(B, K + 1)`` (K column norms, then the global one), which the
        backward takes to skip recomputing the forward.
    matmul : callable, optional
        ``matmul(a, b)`` for the two large products (default ``numpy.matmul``; the torch
        adapter passes torch's BLAS). NumPy arrays only.
    out : array or tuple, optional
        Keyword only (CPU): where to write the output (with ``return_norms`` a pair of
        destinations, each None or an array).

    Returns
    -------
    y : numpy.ndarray or GPUArray
        ``(B, D * K)``, flattened D-major (``d * K + k``, LOUPE's order).
    norms : numpy.ndarray or GPUArray
        With ``return_norms``: ``(B, K + 1)``.

    Raises
    ------
    TypeError
        Non-float arrays, arrays of different dtypes, a non-bool mask.
    ValueError
        Shapes that do not agree, or a bad ``out``; ``out`` on GPU arrays.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    >>> a = np.full((2, 5, 3), 1 / 3, np.float32)
    >>> c = np.zeros((4, 3), np.float32)
    >>> y = npool.netvlad_pool_forward(x, a, c)
    >>> y.shape, bool(np.allclose((y * y).sum(axis=1), 1))
    ((2, 12), True)
    """
    return_norms = _checks.flag(return_norms, "return_norms")
    s = _Call(x, assign, mask, matmul, out=out, centers=centers)
    c = s.parameter(centers, "centers", (s.x.shape[2], s.clusters))
    return _into(_vlad_forward(s, c, return_norms), out,
                 dict(x=x, assign=assign, centers=centers))


def netvlad_pool_backward(grad_out: ArrayLike, x: ArrayLike, assign: ArrayLike, centers: ArrayLike,
                          mask: Optional[ArrayLike] = None, output: Optional[ArrayLike] = None,
                          norms: Optional[ArrayLike] = None,
                          matmul: Optional[Callable[..., Any]] = None, *,
                          out: Out = None) -> Tuple[Array, Array, Array]:
    """Gradients of ``netvlad_pool_forward``.

    dL/dV through both normalisations (fused), then the BLAS products
    ``grad_x = a dV^T``, ``grad_assign = x dV - (dV * c)`` summed over d,
    ``grad_centers = -dV a_sum``.

    Parameters
    ----------
    grad_out : numpy.ndarray or GPU array
        ``(B, D * K)``: dL/dy.
    x : numpy.ndarray or GPU array
        ``(B, M, D)``: B sets of M samples of D features; float16, bfloat16, float32 or
        float64.
    assign : numpy.ndarray or GPU array
        ``(B, M, K)``: the soft assignment of each sample to K clusters (a softmax over K,
        computed by the caller); x's dtype.
    centers : numpy.ndarray or GPU array
        ``(D, K)``: the cluster centres.
    mask : array of bool, optional
        ``(B, M)``: True for the real samples of each set; the others change no output and get
        zero gradients. None: every sample is real.
    output, norms : array, optional
        The forward's output and norms (``return_norms=True``), given together: the backward
        then skips recomputing them.
    matmul : callable, optional
        ``matmul(a, b)`` for the two large products (default ``numpy.matmul``; the torch
        adapter passes torch's BLAS). NumPy arrays only.
    out : tuple, optional
        Keyword only (CPU): three destinations, one per gradient, each None or an array.

    Returns
    -------
    grad_x : numpy.ndarray or GPUArray
        ``(B, M, D)``.
    grad_assign : numpy.ndarray or GPUArray
        ``(B, M, K)`` (0 on masked samples).
    grad_centers : numpy.ndarray or GPUArray
        ``(D, K)``.

    Raises
    ------
    TypeError
        Non-float arrays, arrays of different dtypes, a non-bool mask.
    ValueError
        Shapes that do not agree, or a bad ``out``; ``out`` on GPU arrays.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    >>> a = np.full((2, 5, 3), 1 / 3, np.float32)
    >>> c = np.zeros((4, 3), np.float32)
    >>> g = np.ones((2, 12), np.float32)
    >>> [t.shape for t in npool.netvlad_pool_backward(g, x, a, c)]
    [(2, 5, 4), (2, 5, 3), (4, 3)]
    """
    s = _Call(x, assign, mask, matmul, out=out, centers=centers, grad_out=grad_out,
             output=output, norms=norms)
    k = s.clusters
    c = s.parameter(centers, "centers", (s.x.shape[2], k))
    state = _vlad_state(s, c, output, norms)
    g = s.grad_out(grad_out, (s.x.shape[0], s.x.shape[2] * k))
    return _into(_vlad_backward(s, c, g, state), out,
                 dict(grad_out=grad_out, x=x, assign=assign, centers=centers))


def netrvlad_pool_forward(x: ArrayLike, assign: ArrayLike, mask: Optional[ArrayLike] = None,
                          return_norms: bool = False, matmul: Optional[Callable[..., Any]] = None,
                          *, out: Out = None) -> ArrayOrPair:
    """NetRVLAD pooling (LOUPE): NetVLAD without the centres.

    ``V[b, d, k] = sum_m a[b, m, k] x[b, m, d]``, then NetVLAD's normalisations.

    Parameters
    ----------
    x : numpy.ndarray or GPU array
        ``(B, M, D)``: B sets of M samples of D features; float16, bfloat16, float32 or
        float64.
    assign : numpy.ndarray or GPU array
        ``(B, M, K)``: the soft assignment of each sample to K clusters (a softmax over K,
        computed by the caller); x's dtype.
    mask : array of bool, optional
        ``(B, M)``: True for the real samples of each set; the others change no output and get
        zero gradients. None: every sample is real.
    return_norms : bool, default False
        Also return the norms ``(B, K + 1)`` (K column norms, then the global one), which the
        backward takes to skip recomputing the forward.
    matmul : callable, optional
        ``matmul(a, b)`` for the two large products (default ``numpy.matmul``; the torch
        adapter passes torch's BLAS). NumPy arrays only.
    out : array or tuple, optional
        Keyword only (CPU): as ``netvlad_pool_forward``'s.

    Returns
    -------
    y : numpy.ndarray or GPUArray
        ``(B, D * K)``.
    norms : numpy.ndarray or GPUArray
        With ``return_norms``: ``(B, K + 1)``.

    Raises
    ------
    TypeError
        Non-float arrays, arrays of different dtypes, a non-bool mask.
    ValueError
        Shapes that do not agree, or a bad ``out``; ``out`` on GPU arrays.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    >>> a = np.full((2, 5, 3), 1 / 3, np.float32)
    >>> npool.netrvlad_pool_forward(x, a).shape
    (2, 12)
    """
    return_norms = _checks.flag(return_norms, "return_norms")
    return _into(_vlad_forward(_Call(x, assign, mask, matmul, out=out), None, return_norms),
                 out, dict(x=x, assign=assign))


def netrvlad_pool_backward(grad_out: ArrayLike, x: ArrayLike, assign: ArrayLike,
                           mask: Optional[ArrayLike] = None, output: Optional[ArrayLike] = None,
                           norms: Optional[ArrayLike] = None,
                           matmul: Optional[Callable[..., Any]] = None, *,
                           out: Out = None) -> Tuple[Array, Array]:
    """Gradients of ``netrvlad_pool_forward``.

    As NetVLAD's without the centre terms.

    Parameters
    ----------
    grad_out : numpy.ndarray or GPU array
        ``(B, D * K)``: dL/dy.
    x : numpy.ndarray or GPU array
        ``(B, M, D)``: B sets of M samples of D features; float16, bfloat16, float32 or
        float64.
    assign : numpy.ndarray or GPU array
        ``(B, M, K)``: the soft assignment of each sample to K clusters (a softmax over K,
        computed by the caller); x's dtype.
    mask : array of bool, optional
        ``(B, M)``: True for the real samples of each set; the others change no output and get
        zero gradients. None: every sample is real.
    output, norms : array, optional
        The forward's output and norms (``return_norms=True``), given together: the backward
        then skips recomputing them.
    matmul : callable, optional
        ``matmul(a, b)`` for the two large products (default ``numpy.matmul``; the torch
        adapter passes torch's BLAS). NumPy arrays only.
    out : tuple, optional
        Keyword only (CPU): two destinations, one per gradient, each None or an array.

    Returns
    -------
    grad_x : numpy.ndarray or GPUArray
        ``(B, M, D)``.
    grad_assign : numpy.ndarray or GPUArray
        ``(B, M, K)``.

    Raises
    ------
    TypeError
        Non-float arrays, arrays of different dtypes, a non-bool mask.
    ValueError
        Shapes that do not agree, or a bad ``out``; ``out`` on GPU arrays.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    >>> a = np.full((2, 5, 3), 1 / 3, np.float32)
    >>> [t.shape for t in npool.netrvlad_pool_backward(np.ones((2, 12), np.float32), x, a)]
    [(2, 5, 4), (2, 5, 3)]
    """
    s = _Call(x, assign, mask, matmul, out=out, grad_out=grad_out, output=output, norms=norms)
    state = _vlad_state(s, None, output, norms)
    g = s.grad_out(grad_out, (s.x.shape[0], s.x.shape[2] * s.clusters))
    return _into(_vlad_backward(s, None, g, state)[:2], out,
                 dict(grad_out=grad_out, x=x, assign=assign))


# ------------------------------------------------------------------ Soft-DBoW
def soft_dbow_pool_forward(assign: ArrayLike, mask: Optional[ArrayLike] = None, *,
                           out: Out = None) -> Array:
    """Soft-DBoW pooling (LOUPE): the normalised sum of each set's assignments.

    ``y[b] = l2n(sum_m a[b, m, :])``.

    Parameters
    ----------
    assign : numpy.ndarray or GPU array
        ``(B, M, K)``: the soft assignment of each sample to K clusters (a softmax over K,
        computed by the caller); x's dtype.
    mask : array of bool, optional
        ``(B, M)``: True for the real samples of each set; the others change no output and get
        zero gradients. None: every sample is real.
    out : array, optional
        Keyword only (CPU): where to write the output (its shape and dtype).

    Returns
    -------
    y : numpy.ndarray or GPUArray
        ``(B, K)``.

    Raises
    ------
    TypeError
        Non-float arrays, arrays of different dtypes, a non-bool mask.
    ValueError
        Shapes that do not agree, or a bad ``out``; ``out`` on GPU arrays.

    Examples
    --------
    >>> a = np.full((2, 5, 4), 0.25, np.float32)
    >>> npool.soft_dbow_pool_forward(a).tolist()
    [[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]]
    """
    s = _Call(assign=assign, mask=mask, uses_x=False, out=out)
    if s.gpu is not None:
        return s.gpu.soft_dbow_forward(s)
    return _into(s.out(_l2n(s.a.sum(axis=1), axis=1)[0]), out, dict(assign=assign))


def soft_dbow_pool_backward(grad_out: ArrayLike, assign: ArrayLike,
                            mask: Optional[ArrayLike] = None, *, out: Out = None) -> Array:
    """Gradient of ``soft_dbow_pool_forward`` with respect to assign.

    dL/da through the l2 normalisation, the same for every (real) sample of a set.

    Parameters
    ----------
    grad_out : numpy.ndarray or GPU array
        ``(B, K)``: dL/dy.
    assign : numpy.ndarray or GPU array
        ``(B, M, K)``: the soft assignment of each sample to K clusters (a softmax over K,
        computed by the caller); x's dtype.
    mask : array of bool, optional
        ``(B, M)``: True for the real samples of each set; the others change no output and get
        zero gradients. None: every sample is real.
    out : array, optional
        Keyword only (CPU): where to write the gradient (assign's shape and dtype).

    Returns
    -------
    grad_assign : numpy.ndarray or GPUArray
        ``(B, M, K)`` (0 on masked samples).

    Raises
    ------
    TypeError
        Non-float arrays, arrays of different dtypes, a non-bool mask.
    ValueError
        Shapes that do not agree, or a bad ``out``; ``out`` on GPU arrays.

    Examples
    --------
    >>> a = np.full((2, 5, 4), 0.25, np.float32)
    >>> npool.soft_dbow_pool_backward(np.ones((2, 4), np.float32), a).shape
    (2, 5, 4)
    """
    s = _Call(assign=assign, mask=mask, uses_x=False, out=out, grad_out=grad_out)
    g = s.grad_out(grad_out, (s.sizes[0], s.clusters))
    if s.gpu is not None:
        return s.gpu.soft_dbow_backward(s, g)
    _, saved = _l2n(s.a.sum(axis=1), axis=1)
    g = _l2n_backward(g, saved, axis=1)
    grad = np.empty(s.a.shape, s.work)
    grad[...] = g[:, None, :]
    return _into(s.out(s.masked(grad)), out, dict(grad_out=grad_out, assign=assign))


# ------------------------------------------------------------------ NetFV
def _fv(s, mu, covar, for_backward=False):
    """The NetFV parts y1 (B, D, K) and y2 (B, D * K) and, ``for_backward``, what the backward
    needs: sigma, the moment sum_m a x, a_sum (B, 1, K), F1 and F2 before normalisation, the
    norms of both parts. F1's intra and global l2n are NetRVLAD's (the fused kernel, in place),
    F2's global l2n a NumPy pass."""
    sigma = covar * covar + _SIGMA_EPS
    xt = s.x.transpose(0, 2, 1)
    s1 = s.matmul(xt, s.a)  # sum_m a x          (B, D, K)
    s2 = s.matmul(xt * xt, s.a)  # sum_m a x^2   (B, D, K)
    a_sum = s.a.sum(axis=1)[:, None, :]  # (B, 1, K)
    b, d, k = s1.shape
    f1 = (s1 - a_sum * mu) / sigma
    f2 = (s2 - 2 * mu * s1 + mu * mu * a_sum) / (sigma * sigma) - a_sum
    saved = (sigma, s1, a_sum, f1.copy(), f2) if for_backward else None
    norms1 = np.empty((b, k + 1), s.work)
    if b:
        kernel_module("_set_pools").vlad_normalize(
            f1, np.zeros((1, 1), s.work), np.ascontiguousarray(a_sum[:, 0]), norms1, False,
            threads_for(b))
    f2 = f2.reshape(b, d * k)
    norms2 = _row_norms(f2)
    y2 = f2 / norms2
    return (f1, y2, saved + (norms1, norms2)) if for_backward else (f1, y2, None)


def netfv_pool_forward(x: ArrayLike, assign: ArrayLike, mu: ArrayLike, covar_weights: ArrayLike,
                       mask: Optional[ArrayLike] = None,
                       matmul: Optional[Callable[..., Any]] = None, *, out: Out = None) -> Array:
    """NetFV pooling (LOUPE's Fisher vector).

    ::

        F1[d, k] = (sum_m a_mk x_md - a_sum_k mu_dk) / sigma_dk     (intra-normalised over d)
        F2[d, k] = sum_m a_mk (x_md - mu_dk)^2 / sigma_dk^2 - a_sum_k
        y = concat(l2n(flatten(F1)), l2n(flatten(F2)))

    with ``sigma = covar_weights^2 + 1e-6`` and no intra-normalisation of F2, as LOUPE.

    Parameters
    ----------
    x : numpy.ndarray or GPU array
        ``(B, M, D)``: B sets of M samples of D features; float16, bfloat16, float32 or
        float64.
    assign : numpy.ndarray or GPU array
        ``(B, M, K)``: the soft assignment of each sample to K clusters (a softmax over K,
        computed by the caller); x's dtype.
    mu : numpy.ndarray or GPU array
        ``(D, K)``: the cluster means.
    covar_weights : numpy.ndarray or GPU array
        ``(D, K)``: ``sigma = covar_weights^2 + 1e-6``.
    mask : array of bool, optional
        ``(B, M)``: True for the real samples of each set; the others change no output and get
        zero gradients. None: every sample is real.
    matmul : callable, optional
        ``matmul(a, b)`` for the two large products (default ``numpy.matmul``; the torch
        adapter passes torch's BLAS). NumPy arrays only.
    out : array, optional
        Keyword only (CPU): where to write the output (its shape and dtype).

    Returns
    -------
    y : numpy.ndarray or GPUArray
        ``(B, 2 * D * K)``.

    Raises
    ------
    TypeError
        Non-float arrays, arrays of different dtypes, a non-bool mask.
    ValueError
        Shapes that do not agree, or a bad ``out``; ``out`` on GPU arrays.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    >>> a = np.full((2, 5, 3), 1 / 3, np.float32)
    >>> mu, cw = np.zeros((4, 3), np.float32), np.ones((4, 3), np.float32)
    >>> npool.netfv_pool_forward(x, a, mu, cw).shape
    (2, 24)
    """
    s = _Call(x, assign, mask, matmul, out=out, mu=mu, covar_weights=covar_weights)
    shape = (s.x.shape[2], s.clusters)
    mu = s.parameter(mu, "mu", shape)
    covar = s.parameter(covar_weights, "covar_weights", shape)
    if s.gpu is not None:
        return s.gpu.fv_forward(s, mu, covar)
    y1, y2, _ = _fv(s, mu, covar)
    return _into(s.out(np.concatenate([y1.reshape(y2.shape), y2], axis=1)), out,
                 dict(x=x, assign=assign, mu=mu, covar_weights=covar_weights))


def netfv_pool_backward(grad_out: ArrayLike, x: ArrayLike, assign: ArrayLike, mu: ArrayLike,
                        covar_weights: ArrayLike, mask: Optional[ArrayLike] = None,
                        matmul: Optional[Callable[..., Any]] = None, *,
                        out: Out = None) -> Tuple[Array, Array, Array, Array]:
    """Gradients of ``netfv_pool_forward``.

    Through both normalisations, then the products with a and x (BLAS).

    Parameters
    ----------
    grad_out : numpy.ndarray or GPU array
        ``(B, 2 * D * K)``: dL/dy.
    x : numpy.ndarray or GPU array
        ``(B, M, D)``: B sets of M samples of D features; float16, bfloat16, float32 or
        float64.
    assign : numpy.ndarray or GPU array
        ``(B, M, K)``: the soft assignment of each sample to K clusters (a softmax over K,
        computed by the caller); x's dtype.
    mu : numpy.ndarray or GPU array
        ``(D, K)``: the cluster means.
    covar_weights : numpy.ndarray or GPU array
        ``(D, K)``: ``sigma = covar_weights^2 + 1e-6``.
    mask : array of bool, optional
        ``(B, M)``: True for the real samples of each set; the others change no output and get
        zero gradients. None: every sample is real.
    matmul : callable, optional
        ``matmul(a, b)`` for the two large products (default ``numpy.matmul``; the torch
        adapter passes torch's BLAS). NumPy arrays only.
    out : tuple, optional
        Keyword only (CPU): four destinations, one per gradient, each None or an array.

    Returns
    -------
    grad_x : numpy.ndarray or GPUArray
        ``(B, M, D)``.
    grad_assign : numpy.ndarray or GPUArray
        ``(B, M, K)``.
    grad_mu : numpy.ndarray or GPUArray
        ``(D, K)``.
    grad_covar_weights : numpy.ndarray or GPUArray
        ``(D, K)``.

    Raises
    ------
    TypeError
        Non-float arrays, arrays of different dtypes, a non-bool mask.
    ValueError
        Shapes that do not agree, or a bad ``out``; ``out`` on GPU arrays.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    >>> a = np.full((2, 5, 3), 1 / 3, np.float32)
    >>> mu, cw = np.zeros((4, 3), np.float32), np.ones((4, 3), np.float32)
    >>> g = np.ones((2, 24), np.float32)
    >>> [t.shape for t in npool.netfv_pool_backward(g, x, a, mu, cw)]
    [(2, 5, 4), (2, 5, 3), (4, 3), (4, 3)]
    """
    s = _Call(x, assign, mask, matmul, out=out, mu=mu, covar_weights=covar_weights,
             grad_out=grad_out)
    shape = (s.x.shape[2], s.clusters)
    means = s.parameter(mu, "mu", shape)
    covar = s.parameter(covar_weights, "covar_weights", shape)
    g = s.grad_out(grad_out, (s.sizes[0], 2 * shape[0] * shape[1]))
    if s.gpu is not None:
        return s.gpu.fv_backward(s, means, covar, g)
    y1, y2, (sigma, s1, a_sum, f1, f2, norms1, norms2) = _fv(s, means, covar, for_backward=True)
    b, d, k = y1.shape
    g_f1 = np.array(g[:, :d * k].reshape(y1.shape), dtype=s.work, order="C")
    if b:  # through NetRVLAD's normalisations (fused, in place)
        kernel_module("_set_pools").vlad_normalize_backward(
            g_f1, y1, norms1, np.empty((b, k), s.work), threads_for(b))
    g2 = g[:, d * k:]  # through F2's l2n
    dot = np.where(norms2 > np.sqrt(_EPS), np.einsum("bi,bi->b", y2, g2)[:, None], 0)
    g_f2 = ((g2 - y2 * dot) / norms2).reshape(y1.shape)
    p = g_f1 / sigma
    q = g_f2 / (sigma * sigma)
    g_s1 = p - 2 * means * q  # dL/d(sum_m a x)
    g_s2 = q  # dL/d(sum_m a x^2)
    g_a_sum = (np.sum(-p * means + q * means * means - g_f2, axis=1))[:, None, :]  # (B, 1, K)
    grad_x = s.matmul(s.a, g_s1.transpose(0, 2, 1)) + \
        2 * s.x * s.matmul(s.a, g_s2.transpose(0, 2, 1))
    grad_a = s.matmul(s.x, g_s1) + s.matmul(s.x * s.x, g_s2) + g_a_sum
    grad_mu = np.sum(-p * a_sum - 2 * q * s1 + 2 * q * means * a_sum, axis=0)
    g_sigma = np.sum(-g_f1 * f1 / sigma - 2 * g_f2 * (f2 + a_sum) / sigma, axis=0)
    return _into(s.out(grad_x, s.masked(grad_a), grad_mu, g_sigma * 2 * covar), out,
                 dict(grad_out=grad_out, x=x, assign=assign, mu=mu,
                      covar_weights=covar_weights))


# ------------------------------------------------------------------ Context Gating
def _gating_checked(x: Any, weights: Any, biases: Any, matmul: Any, grad_out: Any = None,
                    backward: bool = False, out: Out = None) -> Tuple[Any, Any, Any, Any, Any]:
    """(GPU module or None, x, weights, biases, grad_out), checked (described on the GPU)."""
    arrays = dict(x=x, weights=weights, biases=biases)
    for name, a in arrays.items():
        if a is None:
            _checks.float_array(a, name)  # names the missing array
    if backward:
        if grad_out is None:
            _checks.grad_out_array(grad_out, (), x)
        arrays["grad_out"] = grad_out
    gpu = _gpu_backend(arrays, matmul)
    _refuse_gpu_out(gpu, out)
    if gpu is not None:
        arrays = {name: _describe(a, name) for name, a in arrays.items()}
    x, weights, biases = arrays["x"], arrays["weights"], arrays["biases"]
    _checks.float_array(x, "x")
    if x.ndim < 1:
        raise ValueError("x must have at least one axis (its last is the features)")
    n = x.shape[-1]
    for name, p, shape in (("weights", weights, (n, n)), ("biases", biases, (n,))):
        _checks.float_array(p, name)
        if p.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {p.shape}")
        if p.dtype != x.dtype:
            raise TypeError(f"{name} must have the dtype of x ({x.dtype}), got {p.dtype}")
    if backward:
        _checks.grad_out_array(arrays["grad_out"], x.shape, x)
    return gpu, x, weights, biases, arrays.get("grad_out")


def _gate(x, weights, biases, matmul):
    """x as (N, n) rows in the working dtype, sigmoid(x W + b), the working dtype, matmul."""
    work = _checks.compute_dtype(x.dtype)
    flat = x.reshape(-1, x.shape[-1]).astype(work, copy=False)
    matmul = _matmul_function(matmul, work)
    gate = 1 / (1 + np.exp(-(matmul(flat, weights.astype(work)) + biases.astype(work))))
    return flat, gate, work, matmul


def context_gating_forward(x: ArrayLike, weights: ArrayLike, biases: ArrayLike,
                           matmul: Optional[Callable[..., Any]] = None, *,
                           out: Out = None) -> Array:
    """Context Gating (Miech et al., 2017; LOUPE).

    ``y = x * sigmoid(x W + b)`` over the last axis of x.

    Parameters
    ----------
    x : numpy.ndarray or GPU array
        ``(..., n)``: features on the last axis.
    weights : numpy.ndarray or GPU array
        ``(n, n)``, x's dtype.
    biases : numpy.ndarray or GPU array
        ``(n,)``, x's dtype.
    matmul : callable, optional
        ``matmul(a, b)`` for the two large products (default ``numpy.matmul``; the torch
        adapter passes torch's BLAS). NumPy arrays only.
    out : array, optional
        Keyword only (CPU): where to write y (x's shape and dtype).

    Returns
    -------
    y : numpy.ndarray or GPUArray
        x's shape and dtype.

    Raises
    ------
    TypeError
        Non-float arrays, arrays of different dtypes, a non-bool mask.
    ValueError
        Shapes that do not agree, or a bad ``out``; ``out`` on GPU arrays.

    Examples
    --------
    >>> x = np.ones((2, 3), np.float32)
    >>> npool.context_gating_forward(x, np.zeros((3, 3), np.float32),
    ...                              np.zeros(3, np.float32)).tolist()
    [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]
    """
    gpu, xs, ws, bs, _ = _gating_checked(x, weights, biases, matmul, out=out)
    if gpu is not None:
        return gpu.gating_forward(xs, ws, bs)
    flat, gate, _, _ = _gate(xs, ws, bs, matmul)
    return _into((flat * gate).reshape(xs.shape).astype(xs.dtype, copy=False), out,
                 dict(x=xs, weights=ws, biases=bs))


def context_gating_backward(grad_out: ArrayLike, x: ArrayLike, weights: ArrayLike,
                            biases: ArrayLike, matmul: Optional[Callable[..., Any]] = None, *,
                            out: Out = None) -> Tuple[Array, Array, Array]:
    """Gradients of ``context_gating_forward``.

    With ``s = sigmoid(x W + b)`` and ``g_z = g * x * s * (1 - s)``: ``grad_x = g * s + g_z W^T``,
    ``grad_weights = x^T g_z``, ``grad_biases = sum g_z``.

    Parameters
    ----------
    grad_out : numpy.ndarray or GPU array
        dL/dy, x's shape and dtype.
    x : numpy.ndarray or GPU array
        ``(..., n)``: features on the last axis.
    weights : numpy.ndarray or GPU array
        ``(n, n)``, x's dtype.
    biases : numpy.ndarray or GPU array
        ``(n,)``, x's dtype.
    matmul : callable, optional
        ``matmul(a, b)`` for the two large products (default ``numpy.matmul``; the torch
        adapter passes torch's BLAS). NumPy arrays only.
    out : tuple, optional
        Keyword only (CPU): three destinations, one per gradient, each None or an array.

    Returns
    -------
    grad_x : numpy.ndarray or GPUArray
        x's shape.
    grad_weights : numpy.ndarray or GPUArray
        ``(n, n)``.
    grad_biases : numpy.ndarray or GPUArray
        ``(n,)``.

    Raises
    ------
    TypeError
        Non-float arrays, arrays of different dtypes, a non-bool mask.
    ValueError
        Shapes that do not agree, or a bad ``out``; ``out`` on GPU arrays.

    Examples
    --------
    >>> x = np.ones((2, 3), np.float32)
    >>> w, b = np.zeros((3, 3), np.float32), np.zeros(3, np.float32)
    >>> [t.shape for t in npool.context_gating_backward(np.ones_like(x), x, w, b)]
    [(2, 3), (3, 3), (3,)]
    """
    gpu, xs, ws, bs, gs = _gating_checked(x, weights, biases, matmul, grad_out, backward=True,
                                          out=out)
    if gpu is not None:
        return gpu.gating_backward(gs, xs, ws, bs)
    flat, gate, work, product = _gate(xs, ws, bs, matmul)
    g = gs.reshape(flat.shape).astype(work, copy=False)
    g_z = g * flat * gate * (1 - gate)
    grad_x = g * gate + product(g_z, ws.astype(work).T)
    return _into(tuple(a.astype(xs.dtype, copy=False) for a in (
        grad_x.reshape(xs.shape), product(flat.T, g_z), g_z.sum(axis=0))), out,
        dict(grad_out=gs, x=xs, weights=ws, biases=bs))
