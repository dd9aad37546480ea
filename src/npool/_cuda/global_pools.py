"""Launch the global-pool kernels of src/cuda/global_pools.cu on GPU arrays.

Maps are read in place through strides of x seen as (N, C, n): the spatial axes must form one
strided run (C-contiguous and channels-last arrays do). One block works on one map at a time.
"""
import numpy as np

from .. import _checks
from . import _device
from ._arrays import describe, out_array, run_stride, type_suffix

ARGS = np.dtype([
    ("x", "u8"), ("grad_out", "u8"), ("out", "u8"), ("index", "u8"), ("stats", "u8"),
    ("maps", "i8"), ("n", "i8"), ("channels", "i8"), ("x_strides", "i8", 3),
    ("out_strides", "i8", 3), ("g_strides", "i8", 2), ("k", "i8"), ("k_bottom", "i8"),
    ("beta", "f8"), ("alpha", "f8"), ("count", "i8"), ("p", "u8"), ("grad_p", "u8"),
    ("p_strides", "i8", 2), ("p_type", "i8"), ("p_value", "f8"), ("eps", "f8"),
])
_SELECT_SHARED = 256 * 4 + 16 + 2 * 256 * 8  # SelectShared in global_pools.cu


class _Call:
    """One validated GPU call: x as (N, C, n) maps (see npool.global_pools._Call)."""

    def __init__(self, x):
        self.x = describe(x, "x")
        if self.x.ndim < 3:
            raise ValueError(f"x must be (N, C, *spatial) with at least one spatial axis, got "
                             f"{self.x.ndim}-D shape {self.x.shape}")
        if 0 in self.x.shape[1:]:
            raise ValueError(f"x must have non-zero channel and spatial sizes, got shape "
                             f"{self.x.shape}")
        self.shape = self.x.shape
        self.n = int(np.prod(self.shape[2:]))
        self.maps = self.shape[0] * self.shape[1]
        step = run_stride(self.shape[2:], self.x.strides[2:])
        if step is None:
            raise ValueError("on the GPU, the spatial axes of x must form one strided run (as in "
                             "C-contiguous and channels-last arrays); copy x first")
        self.x_strides = (self.x.strides[0], self.x.strides[1], step)
        self.layout = _checks.layout_of_strides(self.shape, self.x.strides) or "contiguous"
        self.suffix = type_suffix(self.x.dtype)

    def device(self, **others):
        return _device.device_for({"x": self.x, **others})

    def arguments(self, **fields):
        args = np.zeros((), ARGS)
        args["x"] = self.x.ptr
        args["maps"] = self.maps
        args["n"] = self.n
        args["channels"] = self.shape[1]
        args["x_strides"] = self.x_strides
        for name, value in fields.items():
            args[name] = value
        return args

    def output_shape(self, keepdims):
        return self.shape[:2] + ((1,) * (len(self.shape) - 2) if keepdims else ())

    def destination(self, out, shape, layout, inputs):
        """``out=`` checked for a result of ``shape`` in the dense ``layout`` the kernels
        write, as (object, DeviceArray); (None, None) without one."""
        if out is None:
            return None, None
        return out, out_array(out, shape, self.x.dtype, inputs,
                              strides=_checks.dense_strides(shape, layout))

    def output(self, call, keepdims):
        """y: (N, C) or (N, C, 1, ...), C order."""
        shape = self.output_shape(keepdims)
        return call.empty(shape, self.x.dtype, _checks.dense_strides(shape, "contiguous"))

    def indices(self, call, shape):
        return call.empty(shape, np.int64, _checks.dense_strides(shape, "contiguous"))

    def gradient(self, call):
        """grad_x in x's layout, and its strides as (N, C, n)."""
        obj, a = call.empty(self.shape, self.x.dtype,
                            _checks.dense_strides(self.shape, self.layout))
        return obj, a, (a.strides[0], a.strides[1], run_stride(self.shape[2:], a.strides[2:]))

    def grad_out(self, grad_out, keepdims):
        g = describe(grad_out, "grad_out")
        expected = self.shape[:2] + ((1,) * (len(self.shape) - 2) if keepdims else ())
        _checks.grad_out_array(g, expected, self.x)
        return g

    def shared_bytes(self, call):
        return 16 * call.block_size + _SELECT_SHARED + 16

    def kernel(self, name):
        return f"npool_global_{name}_{self.suffix}"


def forward(kind, x, keepdims, return_indices, beta=1.0, k=0, k_bottom=0, alpha=0.0,
            out=None, return_stats=False):
    """y (and indices, or LSE's statistics) of global pool ``kind`` ("max", "avg", "lse",
    "select") on the GPU; y written into ``out`` (C-contiguous, y's shape and x's dtype) when
    given. LSE's statistics: float64 (N, C, 2), per map x* and sum exp(beta (x - x*))."""
    maps = _Call(x)
    y, y_array = maps.destination(out, maps.output_shape(keepdims), "contiguous",
                                  {"x": maps.x})
    device = maps.device(**({"out": y_array} if y_array is not None else {}))
    with device.session([maps.x.stream] + ([y_array.stream] if y is not None else [])) as call:
        if y is None:
            y, y_array = maps.output(call, keepdims)
        index, index_ptr = None, 0
        if return_indices:
            shape = y_array.shape if kind == "max" else maps.shape[:2] + (k + k_bottom,)
            index, index_array = maps.indices(call, shape)
            index_ptr = index_array.ptr
        stats, stats_ptr = None, 0
        if return_stats:
            stats, stats_array = call.empty(maps.shape[:2] + (2,), np.float64,
                                            _checks.dense_strides(maps.shape[:2] + (2,),
                                                                  "contiguous"))
            stats_ptr = stats_array.ptr
        if maps.maps:
            args = maps.arguments(out=y_array.ptr, index=index_ptr, stats=stats_ptr, beta=beta,
                                  k=k, k_bottom=k_bottom, alpha=alpha)
            call.launch_blocks(maps.kernel(kind), args[()], maps.maps, maps.shared_bytes(call))
    if return_stats:
        return y, stats
    return (y, index) if return_indices else y


def backward(kind, grad_out, x, keepdims, indices=None, beta=1.0, k=0, k_bottom=0, alpha=0.0,
             out=None, stats=None):
    """grad_x of global pool ``kind`` on the GPU; selections use ``indices`` when given, LSE
    the forward's ``stats`` (checked for any kind); grad_x is written into ``out`` (x's shape,
    dtype and dense layout) when given."""
    maps = _Call(x)
    g = maps.grad_out(grad_out, keepdims)
    statistics = None
    if stats is not None:
        statistics = describe(stats, "stats", dtypes=(np.dtype(np.float64),))
        expected = maps.shape[:2] + (2,)
        if statistics.shape != expected or _checks.layout_of_strides(
                statistics.shape, statistics.strides) != "contiguous":
            raise ValueError(f"stats must be the C-contiguous float64 array of shape {expected} "
                             f"that the forward returned, got shape {statistics.shape}")
    index = None
    if indices is not None:
        index = describe(indices, "indices", dtypes=(np.dtype(np.int64),))
        expected = g.shape if kind == "max" else maps.shape[:2] + (k + k_bottom,)
        if index.shape != tuple(expected) or _checks.layout_of_strides(
                index.shape, index.strides) != "contiguous":
            raise ValueError(f"indices must be the C-contiguous int64 array of shape "
                             f"{tuple(expected)} that the forward returned, got shape "
                             f"{index.shape}")
    grad, grad_array = maps.destination(out, maps.shape, maps.layout,
                                        {"x": maps.x, "grad_out": g, "indices": index})
    others = {name: a for name, a in (("indices", index), ("stats", statistics),
                                      ("out", grad_array)) if a is not None}
    device = maps.device(grad_out=g, **others)
    streams = [g.stream, maps.x.stream] + [a.stream for a in others.values()]
    with device.session(streams) as call:
        if grad is None:
            grad, grad_array, out_strides = maps.gradient(call)
        else:
            out_strides = (grad_array.strides[0], grad_array.strides[1],
                           run_stride(maps.shape[2:], grad_array.strides[2:]))
        if not maps.maps:
            return grad
        fields = dict(out=grad_array.ptr, grad_out=g.ptr,
                      out_strides=out_strides, g_strides=g.strides[:2], beta=beta, k=k,
                      k_bottom=k_bottom, alpha=alpha)
        shared = maps.shared_bytes(call)
        if kind == "avg":
            args = maps.arguments(count=maps.maps * maps.n, **fields)
            call.launch(maps.kernel("avg_backward"), args[()], maps.maps * maps.n)
        elif kind == "lse":
            fields.update(stats=0 if statistics is None else statistics.ptr)
            call.launch_blocks(maps.kernel("lse_backward"), maps.arguments(**fields)[()],
                               maps.maps, shared)
        else:
            if kind == "max":
                fields.update(k=1, k_bottom=0, alpha=0.0)
                if index is None:  # where the maxima are
                    _, found = maps.indices(call, (maps.maps,))
                    scratch_y = call.workspace(maps.maps * maps.x.dtype.itemsize)
                    call.launch_blocks(maps.kernel("max"), maps.arguments(
                        out=scratch_y, index=found.ptr)[()], maps.maps, shared)
                    index = found
            if index is None:
                call.launch_blocks(maps.kernel("select_backward"), maps.arguments(**fields)[()],
                                   maps.maps, shared)
            else:
                call.launch_blocks(maps.kernel("scatter_backward"),
                                   maps.arguments(index=index.ptr, **fields)[()], maps.maps,
                                   shared)
    return grad


# ------------------------------------------------------------------ GeM
def _gem_exponent(maps, p):
    """GeM's p on the GPU as (fields of Args, its DeviceArray or None): a real number (checked
    here), or a GPU array of float32, float64 or x's dtype that broadcasts to (N, C) (its values are checked by the kernels:
    a p that is not positive and finite gives NaN there, as reading it here would cost a
    synchronisation)."""
    if isinstance(p, (bool, np.bool_)):
        raise TypeError("p must be a real number or a GPU array, got bool")
    if isinstance(p, (int, float, np.integer, np.floating)):
        value = _checks.finite_real(p, "p")
        if value <= 0:
            raise ValueError(f"p must be positive and finite, got {p!r}")
        return dict(p=0, p_value=value, p_type=1), None
    if isinstance(p, np.ndarray):
        raise TypeError("p is a numpy array but x is on the GPU: pass p on the GPU (or a "
                        "Python number)")
    t = describe(p, "p")
    if t.dtype not in (np.dtype(np.float32), np.dtype(np.float64), maps.x.dtype):
        raise TypeError(f"p must have dtype float32, float64 or x's ({maps.x.dtype}), got "
                        f"{t.dtype}")
    grid = maps.shape[:2]
    if t.ndim > 2 or any(n not in (1, m) for n, m in zip(t.shape[::-1], grid[::-1])):
        raise ValueError(f"p of shape {t.shape} does not broadcast to the maps' shape {grid} "
                         f"(N, C)")
    strides = [0] * (2 - t.ndim) + [0 if n == 1 else st for n, st in zip(t.shape, t.strides)]
    kind = 0 if t.dtype == np.float32 else 1 if t.dtype == np.float64 else 2
    return dict(p=t.ptr, p_strides=tuple(strides), p_type=kind), t


def _gem_eps(maps, eps):
    """eps checked and rounded as the CPU core rounds it (float32 unless x is float64)."""
    eps = _checks.finite_real(eps, "eps")
    work = np.dtype(np.float64 if maps.x.dtype == np.float64 else np.float32)
    info = np.finfo(work)
    if not float(info.tiny) <= eps <= float(info.max):
        raise ValueError(f"eps must be a normal positive number of {work} (the dtype the pool "
                         f"computes in): at least {float(info.tiny):.4g}, got {eps!r}")
    return float(work.type(eps))


def gem_forward(x, p, eps, keepdims, out=None):
    """GeM's y on the GPU (see npool.global_gem_pool_forward), into ``out`` when given."""
    maps = _Call(x)
    fields, p_array = _gem_exponent(maps, p)
    eps = _gem_eps(maps, eps)
    y, y_array = maps.destination(out, maps.output_shape(keepdims), "contiguous",
                                  {"x": maps.x})
    others = {name: a for name, a in (("p", p_array), ("out", y_array)) if a is not None}
    device = maps.device(**others)
    with device.session([maps.x.stream] + [a.stream for a in others.values()]) as call:
        if y is None:
            y, y_array = maps.output(call, keepdims)
        if maps.maps:
            call.launch_blocks(maps.kernel("gem"), maps.arguments(
                out=y_array.ptr, eps=eps, **fields)[()], maps.maps, maps.shared_bytes(call))
    return y


def gem_backward(grad_out, x, p, eps, keepdims, out=None):
    """GeM's (grad_x, grad_p) on the GPU; grad_x into ``out`` when given, grad_p a new GPU
    array of p's shape and dtype (float64 0-d for a number p)."""
    from .reductions import sum_to_shape
    maps = _Call(x)
    g = maps.grad_out(grad_out, keepdims)
    fields, p_array = _gem_exponent(maps, p)
    eps = _gem_eps(maps, eps)
    grad, grad_array = maps.destination(out, maps.shape, maps.layout,
                                        {"x": maps.x, "grad_out": g, "p": p_array})
    others = {name: a for name, a in (("p", p_array), ("out", grad_array)) if a is not None}
    device = maps.device(grad_out=g, **others)
    streams = [g.stream, maps.x.stream] + [a.stream for a in others.values()]
    p_dtype = np.dtype(np.float64) if p_array is None else p_array.dtype
    p_shape = () if p_array is None else p_array.shape
    with device.session(streams) as call:
        if grad is None:
            grad, grad_array, out_strides = maps.gradient(call)
        else:
            out_strides = (grad_array.strides[0], grad_array.strides[1],
                           run_stride(maps.shape[2:], grad_array.strides[2:]))
        grad_p, grad_p_array = call.empty(p_shape, p_dtype,
                                          _checks.dense_strides(p_shape, "contiguous"))
        per_map = call.workspace(maps.maps * (8 if p_dtype == np.float64 else 4))
        if maps.maps:
            call.launch_blocks(maps.kernel("gem_backward"), maps.arguments(
                out=grad_array.ptr, grad_out=g.ptr, out_strides=out_strides,
                g_strides=g.strides[:2], grad_p=per_map, eps=eps, **fields)[()], maps.maps,
                maps.shared_bytes(call))
        # summed to p's shape (over no maps: 0)
        sum_to_shape(call, p_dtype, per_map, maps.shape[:2], grad_p_array.ptr,
                     (1,) * (2 - len(p_shape)) + tuple(p_shape))
    return grad, grad_p
