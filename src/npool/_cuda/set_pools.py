"""Launch the set-pool kernels of src/cuda/set_pools.cu on GPU arrays (see npool.set_pools for
the math; the arrays arrive validated, as DeviceArrays).

Everything is computed in the working dtype (float32 for float16 inputs, which are converted
first, as on the CPU). The products go to npool's own tiled batched matmul (PyCUDA has no
cuBLAS); a transposed operand is the same memory with its last two strides swapped. Masked
assignments are made once per call (a contiguous copy with masked rows zeroed), which also
zeroes every product term of a masked sample.
"""
import contextlib

import numpy as np

from .. import _checks
from . import _device, reductions
from .._device_array import DeviceArray
from ._arrays import run_stride, type_suffix

_MATMUL_TILE = 16  # TILE in set_pools.cu
MATMUL_ARGS = np.dtype([
    ("a", "u8"), ("b", "u8"), ("c", "u8"), ("batch", "i8"), ("rows", "i8"), ("cols", "i8"),
    ("inner", "i8"), ("a_strides", "i8", 3), ("b_strides", "i8", 3), ("c_strides", "i8", 3),
    ("tiles_r", "i8"), ("tiles_c", "i8"), ("accumulate", "i8"), ("square_a", "i8"),
    ("count", "i8")])
VLAD_ARGS = np.dtype([
    ("v", "u8"), ("y", "u8"), ("centers", "u8"), ("assign", "u8"), ("a_sum", "u8"),
    ("norms", "u8"), ("cdot", "u8"), ("grad_centers", "u8"), ("sets", "i8"), ("samples", "i8"),
    ("features", "i8"), ("clusters", "i8"), ("set_stride", "i8"), ("count", "i8")])
L2N_ARGS = np.dtype([("v", "u8"), ("y", "u8"), ("norms", "u8"), ("rows", "i8"),
                     ("length", "i8"), ("row_stride", "i8"), ("count", "i8")])
FV_ARGS = np.dtype([
    ("s", "u8"), ("f", "u8"), ("s1", "u8"), ("a_sum", "u8"), ("mu", "u8"), ("covar", "u8"),
    ("terms", "u8"), ("sets", "i8"), ("features", "i8"), ("clusters", "i8"),
    ("set_stride", "i8"), ("count", "i8")])
GATING_ARGS = np.dtype([
    ("x", "u8"), ("z", "u8"), ("biases", "u8"), ("grad_out", "u8"), ("out", "u8"),
    ("grad_z", "u8"), ("features", "i8"), ("x_strides", "i8", 2), ("g_strides", "i8", 2),
    ("count", "i8")])
ROWS_ARGS = np.dtype([
    ("in", "u8"), ("out", "u8"), ("sub", "u8"), ("mask", "u8"), ("factor", "u8"),
    ("samples", "i8"), ("clusters", "i8"), ("in_strides", "i8", 3), ("mask_strides", "i8", 2),
    ("factor_strides", "i8", 3), ("scale", "f8"), ("count", "i8")])


def _contiguous(shape):
    return _checks.dense_strides(shape, "contiguous")


def _is_contiguous(a):
    return _checks.layout_of_strides(a.shape, a.strides) == "contiguous"


def view(a, shape, strides, offset=0):
    """The DeviceArray of ``shape`` and element ``strides`` over a's memory from element
    ``offset``."""
    return DeviceArray(a.ptr + offset * a.dtype.itemsize, shape, strides, a.dtype, a.stream,
                       a.obj)


def transposed(a):
    """a with its last two axes swapped (no copy)."""
    return view(a, a.shape[:-2] + a.shape[-1:] + a.shape[-2:-1],
                a.strides[:-2] + a.strides[-1:] + a.strides[-2:-1])


def _as_3d(a):
    """a (at most 3-D) as 3-D, with leading axes of size 1."""
    pad = 3 - a.ndim
    return view(a, (1,) * pad + a.shape, (0,) * pad + a.strides)


def rows_of(a):
    """a (..., n) as (N, n) without a copy, or None when its leading axes do not form one
    strided run."""
    rows = int(np.prod(a.shape[:-1], dtype=np.int64))
    if a.size == 0:
        return view(a, (rows, a.shape[-1]), (0, 0))
    if a.ndim == 1:
        return view(a, (1, a.shape[0]), (0, a.strides[0]))
    step = run_stride(a.shape[:-1], a.strides[:-1])
    return None if step is None else view(a, (rows, a.shape[-1]), (step, a.strides[-1]))


class _Call:
    """The launches of one GPU call of a set pool, in its session, in the working dtype."""

    def __init__(self, session, dtype):
        self.session = session
        self.dtype = np.dtype(dtype)
        self.work = _checks.compute_dtype(self.dtype)
        self.suffix = type_suffix(self.work)
        self.block_shared = 8 * session.block_size  # block_reduce's slots (float64 sums)

    # ---------------------------------------------------------------- memory
    def scratch(self, shape):
        """A new C-contiguous working array, freed when the call's kernels are done."""
        shape = tuple(int(n) for n in shape)
        size = int(np.prod(shape, dtype=np.int64))
        return DeviceArray(self.session.workspace(size * self.work.itemsize), shape,
                           _contiguous(shape), self.work)

    def output(self, shape):
        """Where a result of ``shape`` is computed: the returned array itself when the caller's
        dtype is the working dtype, else scratch that ``finish`` converts."""
        if self.work == self.dtype:
            _, array = self.session.empty(shape, self.dtype, _contiguous(shape))
            return array
        return self.scratch(shape)

    def finish(self, a):
        """The caller's array (of the caller's dtype) of result ``a`` from ``output``."""
        if self.work == self.dtype:
            return a.obj
        obj, out = self.session.empty(a.shape, self.dtype, _contiguous(a.shape))
        flat = (a.size,), (1,)  # both C-contiguous
        self.set_rows(view(a, *flat), view(out, *flat),
                  kernel=f"npool_set_rows_{self.suffix}_{type_suffix(self.dtype)}")
        return obj

    def copy(self, a, mask=None):
        """A new C-contiguous working copy of a (at most 3-D, any dtype and strides); with a
        (B, M) ``mask``, a's masked rows (B, M, :) are zero in it."""
        out = self.scratch(a.shape)
        self.set_rows(a, out, mask=mask,
                      kernel=f"npool_set_rows_{type_suffix(a.dtype)}_{self.suffix}")
        return out

    def operand(self, a, contiguous=False):
        """a in the working dtype (and C-contiguous if asked): a itself, or a copy."""
        if a.dtype == self.work and (not contiguous or _is_contiguous(a)):
            return a
        return self.copy(a)

    # ---------------------------------------------------------------- kernels
    def launch(self, kernel, args, count):
        if count:
            args["count"] = count
            self.session.launch(f"npool_{kernel}_{self.suffix}", args[()], count)

    def launch_blocks(self, kernel, args, blocks, shared_bytes=None):
        if blocks:
            shared = self.block_shared if shared_bytes is None else shared_bytes
            self.session.launch_blocks(f"npool_{kernel}_{self.suffix}", args[()], blocks, shared)

    def set_rows(self, a, out, sub=None, mask=None, factor=None, scale=1.0, kernel=None):
        """out (C-contiguous, a's shape) = scale (a - sub[b, None, k]) mask[b, m, None] factor,
        over a seen as (B, M, K); in place when out is a."""
        a3 = _as_3d(a)
        args = np.zeros((), ROWS_ARGS)
        args["in"], args["out"] = a.ptr, out.ptr
        args["samples"], args["clusters"] = a3.shape[1], a3.shape[2]
        args["in_strides"] = a3.strides
        if sub is not None:
            args["sub"] = sub.ptr
        if mask is not None:
            args["mask"], args["mask_strides"] = mask.ptr, mask.strides
        if factor is not None:
            args["factor"], args["factor_strides"] = factor.ptr, _as_3d(factor).strides
        args["scale"] = scale
        count = a.size
        if count:
            args["count"] = count
            name = kernel or f"npool_set_rows_{self.suffix}_{self.suffix}"
            self.session.launch(name, args[()], count)

    def as_rows(self, a, name):
        """a (..., n) as (N, n) working rows: a view, or a C-contiguous copy when its leading
        axes do not form one strided run (then a may have at most 3 axes)."""
        flat = rows_of(a)
        if flat is not None:
            return self.operand(flat)
        if a.ndim > 3:
            raise ValueError(f"on the GPU, the leading axes of {name} must form one strided run "
                             f"(as in a C-contiguous array) when it has more than 3 axes; copy "
                             f"{name} first")
        return rows_of(self.copy(a))

    def matmul(self, a, b, c, accumulate=False, square_a=False):
        """c[i] (+)= a[i] b[i] for 3-D arrays of any strides (a's elements squared if asked)."""
        batch, rows, inner = a.shape
        cols = b.shape[2]
        args = np.zeros((), MATMUL_ARGS)
        args["a"], args["b"], args["c"] = a.ptr, b.ptr, c.ptr
        args["batch"], args["rows"], args["cols"], args["inner"] = batch, rows, cols, inner
        args["a_strides"], args["b_strides"], args["c_strides"] = a.strides, b.strides, c.strides
        tiles_r, tiles_c = -(-rows // _MATMUL_TILE), -(-cols // _MATMUL_TILE)
        args["tiles_r"], args["tiles_c"] = tiles_r, tiles_c
        args["accumulate"], args["square_a"] = accumulate, square_a
        self.launch_blocks("batched_matmul", args, batch * tiles_r * tiles_c,
                           2 * _MATMUL_TILE ** 2 * self.work.itemsize)

    def sum_to_shape(self, full, out, out_shape):
        """out = full (C-contiguous working array) summed to out_shape (1 on summed axes)."""
        reductions.sum_to_shape(self.session, self.work, full.ptr, full.shape, out.ptr,
                                out_shape)

    def vlad_normalize(self, v, a, a_sum, norms, centers=None, set_stride=None):
        """V (B, D, K) in place: residual correction, intra- and global l2n; writes a_sum."""
        b, d, k = v.shape
        args = self._vlad_args(v, a_sum, norms, centers, set_stride)
        args["assign"], args["samples"] = a.ptr, a.shape[1]
        self.launch_blocks("vlad_normalize", args, b)

    def vlad_normalize_backward(self, g, y, norms, centers=None, cdot=None, set_stride=None):
        """dL/dy -> dL/dV in place (g, y (B, D, K)); cdot[b, k] = sum_d dV c."""
        args = self._vlad_args(g, None, norms, centers, set_stride)
        args["y"] = y.ptr
        if cdot is not None:
            args["cdot"] = cdot.ptr
        self.launch_blocks("vlad_normalize_backward", args, g.shape[0])

    def vlad_centers_gradient(self, g, a_sum, grad_centers):
        """grad_centers (D, K) = -sum_b dV[b] a_sum[b] (g = dV (B, D, K), a_sum (B, K))."""
        b, d, k = g.shape
        args = self._vlad_args(g, a_sum, None, None, None)
        args["grad_centers"] = grad_centers.ptr
        self.launch("vlad_centers_gradient", args, d * k)

    def _vlad_args(self, v, a_sum, norms, centers, set_stride):
        b, d, k = v.shape
        args = np.zeros((), VLAD_ARGS)
        args["v"] = v.ptr
        if norms is not None:
            args["norms"] = norms.ptr
        if a_sum is not None:
            args["a_sum"] = a_sum.ptr
        if centers is not None:
            args["centers"] = centers.ptr
        args["sets"], args["features"], args["clusters"] = b, d, k
        args["set_stride"] = d * k if set_stride is None else set_stride
        return args

    def l2n_rows(self, v, norms, row_stride, y=None):
        """l2n of the rows v (rows, length) in place (backward: dL/dy -> dL/dv, given y)."""
        rows, length = v.shape
        args = np.zeros((), L2N_ARGS)
        args["v"], args["norms"] = v.ptr, norms.ptr
        args["rows"], args["length"], args["row_stride"] = rows, length, row_stride
        if y is not None:
            args["y"] = y.ptr
        self.launch_blocks("l2n_rows" if y is None else "l2n_rows_backward", args, rows)


@contextlib.contextmanager
def _call(dtype, **arrays):
    """A _Call on the GPU that holds ``arrays`` (name -> DeviceArray or None), ordered after
    their streams."""
    present = {name: a for name, a in arrays.items() if a is not None}
    device = _device.device_for(present)
    with device.session([a.stream for a in present.values()]) as session:
        yield _Call(session, dtype)


# ------------------------------------------------------------------ NetVLAD / NetRVLAD
def vlad_forward(s, centers, return_norms):
    """(output (B, D * K), norms (B, K + 1) or None) of NetVLAD (NetRVLAD without centers)."""
    (b, m, d), k = s.x.shape, s.assign.shape[2]
    with _call(s.dtype, x=s.x, assign=s.assign, mask=s.mask, centers=centers) as w:
        x, a = w.operand(s.x), w.copy(s.assign, s.mask)
        c = w.operand(centers, contiguous=True) if centers is not None else None
        out = w.output((b, d * k))
        norms = w.output((b, k + 1)) if return_norms else w.scratch((b, k + 1))
        v = view(out, (b, d, k), (d * k, k, 1))
        w.matmul(transposed(x), a, v)
        w.vlad_normalize(v, a, w.scratch((b, k)), norms, c)
        return w.finish(out), (w.finish(norms) if return_norms else None)


def vlad_backward(s, centers, grad_out, output, norms):
    """(grad_x, grad_assign, grad_centers or None); ``output, norms`` from the forward, or None
    to recompute them."""
    (b, m, d), k = s.x.shape, s.assign.shape[2]
    with _call(s.dtype, x=s.x, assign=s.assign, mask=s.mask, centers=centers,
               grad_out=grad_out, output=output, norms=norms) as w:
        x, a = w.operand(s.x), w.copy(s.assign, s.mask)
        c = w.operand(centers, contiguous=True) if centers is not None else None
        a_sum = w.scratch((b, k))
        if output is None:
            y, n = w.scratch((b, d, k)), w.scratch((b, k + 1))
            w.matmul(transposed(x), a, y)
            w.vlad_normalize(y, a, a_sum, n, c)
        else:
            y = w.operand(output, contiguous=True)
            y = view(y, (b, d, k), (d * k, k, 1))
            n = w.operand(norms, contiguous=True)
            w.sum_to_shape(a, a_sum, (b, 1, k))
        g = w.copy(grad_out)  # becomes dL/dV in place
        g = view(g, (b, d, k), (d * k, k, 1))
        cdot = w.scratch((b, k)) if c is not None else None
        w.vlad_normalize_backward(g, y, n, c, cdot)
        grad_x = w.output((b, m, d))
        w.matmul(a, transposed(g), grad_x)  # masked rows of a are zero
        grad_a = w.output((b, m, k))
        w.matmul(x, g, grad_a)
        if cdot is not None or s.mask is not None:
            w.set_rows(grad_a, grad_a, sub=cdot, mask=s.mask)
        grad_c = None
        if c is not None:
            grad_c = w.output((d, k))
            w.vlad_centers_gradient(g, a_sum, grad_c)
        return tuple(w.finish(t) if t is not None else None for t in (grad_x, grad_a, grad_c))


# ------------------------------------------------------------------ Soft-DBoW
def soft_dbow_forward(s):
    """l2n(sum_m a) (B, K)."""
    b, m, k = s.assign.shape
    with _call(s.dtype, assign=s.assign, mask=s.mask) as w:
        a = w.copy(s.assign, s.mask)
        out = w.output((b, k))
        w.sum_to_shape(a, out, (b, 1, k))
        w.l2n_rows(out, w.scratch((b,)), k)
        return w.finish(out)


def soft_dbow_backward(s, grad_out):
    b, m, k = s.assign.shape
    with _call(s.dtype, assign=s.assign, mask=s.mask, grad_out=grad_out) as w:
        a = w.copy(s.assign, s.mask)
        y, n = w.scratch((b, k)), w.scratch((b,))
        w.sum_to_shape(a, y, (b, 1, k))
        w.l2n_rows(y, n, k)
        g = w.copy(grad_out)
        w.l2n_rows(g, n, k, y=y)
        grad = w.output((b, m, k))
        w.set_rows(view(g, (b, m, k), (k, 0, 1)), grad, mask=s.mask)  # broadcast over samples
        return w.finish(grad)


# ------------------------------------------------------------------ NetFV
def _fv_moments(w, x, a, moments):
    """moments (B, 2, D, K) = (sum_m a x, sum_m a x^2)."""
    b, two, d, k = moments.shape
    w.matmul(transposed(x), a, view(moments, (b, d, k), (2 * d * k, k, 1)))
    w.matmul(transposed(x), a, view(moments, (b, d, k), (2 * d * k, k, 1), d * k),
             square_a=True)


def _fv_args(f, a_sum, mu, covar):
    """The FV_ARGS of f (B, 2, D, K) with its a_sum (B, K), mu and covar (D, K)."""
    b, two, d, k = f.shape
    args = np.zeros((), FV_ARGS)
    args["s"], args["a_sum"], args["mu"], args["covar"] = f.ptr, a_sum.ptr, mu.ptr, covar.ptr
    args["sets"], args["features"], args["clusters"] = b, d, k
    return args


def _fv_normalize(w, f, a, norms1, norms2):
    """(F1, F2) (B, 2, D, K) -> the NetFV output in place: F1 intra-normalised then l2n (as
    NetRVLAD), F2 l2n."""
    b, two, d, k = f.shape
    w.vlad_normalize(view(f, (b, d, k), (2 * d * k, k, 1)), a, w.scratch((b, k)), norms1,
                     set_stride=2 * d * k)
    w.l2n_rows(view(f, (b, d * k), (2 * d * k, 1), d * k), norms2, 2 * d * k)


def fv_forward(s, mu, covar):
    (b, m, d), k = s.x.shape, s.assign.shape[2]
    with _call(s.dtype, x=s.x, assign=s.assign, mask=s.mask, mu=mu, covar_weights=covar) as w:
        x, a = w.operand(s.x), w.copy(s.assign, s.mask)
        mu, covar = w.operand(mu, contiguous=True), w.operand(covar, contiguous=True)
        out = w.output((b, 2 * d * k))
        f = view(out, (b, 2, d, k), (2 * d * k, d * k, k, 1))
        _fv_moments(w, x, a, f)
        a_sum = w.scratch((b, k))
        w.sum_to_shape(a, a_sum, (b, 1, k))
        w.launch("fv_moments", _fv_args(f, a_sum, mu, covar), b * d * k)  # F1, F2 in place
        _fv_normalize(w, f, a, w.scratch((b, k + 1)), w.scratch((b,)))
        return w.finish(out)


def fv_backward(s, mu, covar, grad_out):
    """(grad_x, grad_assign, grad_mu, grad_covar_weights); the forward is recomputed."""
    (b, m, d), k = s.x.shape, s.assign.shape[2]
    dk = d * k
    with _call(s.dtype, x=s.x, assign=s.assign, mask=s.mask, mu=mu, covar_weights=covar,
               grad_out=grad_out) as w:
        x, a = w.operand(s.x), w.copy(s.assign, s.mask)
        mu, covar = w.operand(mu, contiguous=True), w.operand(covar, contiguous=True)
        # The forward: the moments (kept), F1 and F2 (kept), the output (kept).
        moments, a_sum = w.scratch((b, 2, d, k)), w.scratch((b, k))
        _fv_moments(w, x, a, moments)
        f = w.copy(view(moments, (b, 2, dk), (2 * dk, dk, 1)))
        f = view(f, (b, 2, d, k), (2 * dk, dk, k, 1))
        w.sum_to_shape(a, a_sum, (b, 1, k))
        args = _fv_args(f, a_sum, mu, covar)
        w.launch("fv_moments", args, b * dk)  # F1, F2 in place
        y = w.copy(view(f, (b, 2, dk), (2 * dk, dk, 1)))
        norms1, norms2 = w.scratch((b, k + 1)), w.scratch((b,))
        _fv_normalize(w, view(y, (b, 2, d, k), (2 * dk, dk, k, 1)), a, norms1, norms2)
        # Through the normalisations: g = (dL/dF1, dL/dF2).
        g = w.copy(grad_out)
        w.vlad_normalize_backward(view(g, (b, d, k), (2 * dk, k, 1)),
                                  view(y, (b, d, k), (2 * dk, k, 1)), norms1,
                                  set_stride=2 * dk)
        w.l2n_rows(view(g, (b, dk), (2 * dk, 1), dk), norms2, 2 * dk,
                   y=view(y, (b, dk), (2 * dk, 1), dk))
        # g -> (dL/d(sum a x), dL/d(sum a x^2)); the terms of the sums below.
        terms = w.scratch((3, b, d, k))
        args["s"], args["f"], args["s1"], args["terms"] = g.ptr, f.ptr, moments.ptr, terms.ptr
        args["set_stride"] = 2 * dk
        w.launch("fv_backward_terms", args, b * dk)
        g1, g2 = (view(g, (b, d, k), (2 * dk, k, 1), offset) for offset in (0, dk))
        grad_x = w.output((b, m, d))  # a g1^T + 2 x (a g2^T)
        w.matmul(a, transposed(g2), grad_x)
        w.set_rows(grad_x, grad_x, factor=x, scale=2.0)
        w.matmul(a, transposed(g1), grad_x, accumulate=True)
        grad_a = w.output((b, m, k))  # x g1 + x^2 g2 + dL/da_sum, masked
        w.matmul(x, g1, grad_a)
        w.matmul(x, g2, grad_a, accumulate=True, square_a=True)
        minus_g_a_sum = w.scratch((b, k))
        w.sum_to_shape(view(terms, (b, d, k), (dk, k, 1)), minus_g_a_sum, (b, 1, k))
        w.set_rows(grad_a, grad_a, sub=minus_g_a_sum, mask=s.mask)
        grad_mu, grad_covar = w.output((d, k)), w.output((d, k))
        for index, out in ((1, grad_mu), (2, grad_covar)):
            w.sum_to_shape(view(terms, (b, d, k), (dk, k, 1), index * b * dk), out, (1, d, k))
        return tuple(w.finish(t) for t in (grad_x, grad_a, grad_mu, grad_covar))


# ------------------------------------------------------------------ Context Gating
def _gating_args(w, x, z, biases):
    args = np.zeros((), GATING_ARGS)
    args["x"], args["z"], args["biases"] = x.ptr, z.ptr, biases.ptr
    args["features"], args["x_strides"] = x.shape[1], x.strides
    return args


def gating_forward(x, weights, biases):
    """x sigmoid(x W + b) over the last axis of x (any shape)."""
    with _call(x.dtype, x=x, weights=weights, biases=biases) as w:
        flat = w.as_rows(x, "x")
        weights, biases = w.operand(weights), w.operand(biases, contiguous=True)
        n_rows, n = flat.shape
        z = w.scratch((1, n_rows, n))
        w.matmul(_as_3d(flat), _as_3d(weights), z)
        y = w.output(x.shape)
        args = _gating_args(w, flat, z, biases)
        args["out"] = y.ptr
        w.launch("gating", args, n_rows * n)
        return w.finish(y)


def gating_backward(grad_out, x, weights, biases):
    """(grad_x, grad_weights, grad_biases)."""
    with _call(x.dtype, grad_out=grad_out, x=x, weights=weights, biases=biases) as w:
        flat = w.as_rows(x, "x")
        g = w.as_rows(grad_out, "grad_out")
        weights, biases = w.operand(weights), w.operand(biases, contiguous=True)
        n_rows, n = flat.shape
        z = w.scratch((1, n_rows, n))
        w.matmul(_as_3d(flat), _as_3d(weights), z)
        grad_z = w.scratch((1, n_rows, n))
        grad_x = w.output(x.shape)
        args = _gating_args(w, flat, z, biases)
        args["grad_out"], args["g_strides"] = g.ptr, g.strides
        args["out"], args["grad_z"] = grad_x.ptr, grad_z.ptr
        w.launch("gating_backward", args, n_rows * n)
        # grad_x += dL/dz W^T; grad_W = x^T dL/dz; grad_b = sum over rows of dL/dz.
        w.matmul(grad_z, _as_3d(transposed(weights)),
                 view(grad_x, (1, n_rows, n), (0, n, 1)), accumulate=True)
        grad_w = w.output((n, n))
        w.matmul(_as_3d(transposed(flat)), grad_z, _as_3d(grad_w))
        grad_b = w.output((n,))
        w.sum_to_shape(view(grad_z, (n_rows, n), (n, 1)), grad_b, (1, n))
        return tuple(w.finish(t) for t in (grad_x, grad_w, grad_b))
