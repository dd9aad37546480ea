"""Launch the windowed-softmax kernels of src/cuda/windowed_softmax.cu on GPU arrays.

The kernels take one struct (``ARGS`` mirrors ``npool::windowed_softmax::Args``) and read every
array through its element strides, so any memory layout is used in place. Outputs take the
input's layout when it is C-contiguous or channels-last, and C order otherwise. Index arithmetic
is 32-bit (with division by multiplication) unless an array spans 2**31 elements or more.
"""
import numpy as np

from .. import _checks
from . import _device, reductions
from ._arrays import describe, out_array, type_suffix

_DIVISOR = [("value", "i8"), ("magic", "i8"), ("shift", "i8")]
ARGS = np.dtype([
    ("x", "u8"), ("grad_out", "u8"), ("out", "u8"), ("stats", "u8"),
    ("stats_stride", "i8"), ("count", "i8"), ("channels_last", "i8"), ("lam", "f8"),
    ("lam_values", "u8"), ("grad_lam", "u8"), ("lam_strides", "i8", 5),
    ("glam_strides", "i8", 5), ("size", "i8", 5), ("out_size", "i8", 3), ("kernel", "i8", 3), ("stride", "i8", 3),
    ("padding", "i8", 3), ("x_strides", "i8", 5), ("out_strides", "i8", 5),
    ("g_strides", "i8", 5), ("work", _DIVISOR, 4), ("stride_div", _DIVISOR, 3),
    ("dilation", "i8", 3), ("window_first", "u8", 3), ("window_count", "u8", 3),
    ("cover_lo", "u8", 3), ("cover_hi", "u8", 3),
])
_INDEX_LIMIT = 2 ** 31


def divisor(d, wide):
    """(d, magic, shift) with n // d == (mulhi32(n, magic) + n) >> shift for 0 <= n < 2**31."""
    d = int(d)
    if wide:
        return (d, 0, 0)
    shift = (d - 1).bit_length()
    magic = ((1 << 32) * ((1 << shift) - d)) // d + 1
    return (d, magic, shift)


def _extent(shape, strides):
    """Largest |element offset| of an array, plus one."""
    return 1 + sum((n - 1) * abs(s) for n, s in zip(shape, strides))


class _Call:
    """One validated call: x and the window arguments, seen as 5-D (N, C, D, H, W)."""

    def __init__(self, x, nd, window):
        self.x = describe(x, "x")
        _checks.pool_input(self.x, nd)
        self.args = _checks.local_window(nd, self.x.shape[-nd:], **window,
                                         maps=int(np.prod(self.x.shape[:-nd])))
        self.nd = nd
        self.batched = self.x.ndim == nd + 2
        self.out_spatial = self.args.output_size(self.x.shape[-nd:])
        self.out_shape = self.x.shape[:-nd] + self.out_spatial  # the caller's view of y
        shape, strides = self.to_5d(self.x)
        self.size = shape
        self.x_strides = strides
        self.out_size = (1,) * (3 - nd) + self.out_spatial
        self.layout = _checks.layout_of_strides(shape, strides) or "contiguous"

    def to_5d(self, a):
        """Shape and element strides of a DeviceArray as (N, C, D, H, W)."""
        shape, strides = a.shape, a.strides
        if not self.batched:
            shape, strides = (1,) + shape, (0,) + strides
        pad = 3 - self.nd
        return shape[:2] + (1,) * pad + shape[2:], strides[:2] + (0,) * pad + strides[2:]

    def empty(self, call, shape):
        """A new array of the caller's ``shape`` in x's layout: (object, ptr, 5-D strides)."""
        batched_shape = shape if self.batched else (1,) + shape
        strides = _checks.dense_strides(batched_shape, self.layout)
        obj, a = call.empty(shape, self.x.dtype, strides if self.batched else strides[1:])
        return obj, a.ptr, self.to_5d(a)[1]

    def destination(self, out, shape, inputs):
        """``out=`` (any strides) as (object, DeviceArray), or (None, None)."""
        if out is None:
            return None, None
        return out, out_array(out, shape, self.x.dtype, inputs)

    def temperature(self, lam):
        """lam as (scalar, pointer, 5-D strides over the output, 5-D shape, own shape): a real
        number, or a GPU array of x's dtype that broadcasts to the output."""
        if isinstance(lam, (bool, np.bool_)):
            raise TypeError("lam must be a real number or a GPU array, got bool")
        if isinstance(lam, (int, float, np.integer, np.floating)):
            value = _checks.finite_real(lam, "lam")
            if self.x.dtype != np.float64 and abs(value) > float(np.finfo(np.float32).max):
                raise ValueError("lam must be finite (in float32, the dtype the pool computes "
                                 "in): values beyond its range are refused")
            return value, 0, (0,) * 5, (1,) * 5, ()
        if isinstance(lam, np.ndarray):
            raise TypeError("lam is a numpy array but x is on the GPU: pass lam on the GPU "
                            "(or a Python number)")
        t = describe(lam, "lam")
        if t.dtype != self.x.dtype:
            raise TypeError(f"lam must have the dtype of x ({self.x.dtype}), got {t.dtype}")
        out = self.out_shape
        if t.ndim > len(out) or any(n not in (1, m) for n, m in zip(t.shape[::-1], out[::-1])):
            raise ValueError(f"lam of shape {t.shape} does not broadcast to the output's shape "
                             f"{out} (N, C, *out)")
        strides = [0] * (len(out) - t.ndim) + [0 if n == 1 else st
                                               for n, st in zip(t.shape, t.strides)]
        shape = [1] * (len(out) - t.ndim) + list(t.shape)
        if not self.batched:
            strides, shape = [0] + strides, [1] + shape
        pad = 3 - self.nd
        return (1.0, t.ptr, tuple(strides[:2] + [0] * pad + strides[2:]),
                tuple(shape[:2] + [1] * pad + shape[2:]), t.shape)

    def general_tables(self, call):
        """The general path (dilated or adaptive windows): the per-axis tables uploaded to the device, as
        the Args fields they fill; {} for the regular windows."""
        dilation, tables = self.args.general_3d(self.x.shape[-self.nd:], self.out_spatial)
        if tables is None:
            return {}
        fields = {"dilation": dilation, "window_first": [], "window_count": [], "cover_lo": [],
                  "cover_hi": []}
        for k, table in enumerate(tables):
            first, count = table.astype(np.int64)
            last = first + (count - 1) * dilation[k]
            cells = np.arange(self.size[2 + k], dtype=np.int64)
            # candidates for the outputs whose span [first, last] holds cell i: from the first
            # output whose running-maximum last reaches i to the last whose first (as a suffix
            # minimum, which never decreases) is at most i; the kernels check each candidate (a
            # dilated window's first real cell may lie before the previous window's)
            reach = np.maximum.accumulate(last)
            start = np.minimum.accumulate(first[::-1])[::-1]
            cover_lo = np.searchsorted(reach, cells, side="left").astype(np.int64)
            cover_hi = np.searchsorted(start, cells, side="right").astype(np.int64)
            for name, values in (("window_first", first), ("window_count", count),
                                 ("cover_lo", cover_lo), ("cover_hi", cover_hi)):
                fields[name].append(call.upload(np.ascontiguousarray(values)))
        return fields

    def arguments(self, lam, general=None, **arrays):
        """The kernel argument struct; ``arrays`` maps field names to (ptr, 5-D strides);
        ``general``: ``general_tables``' fields."""
        args = np.zeros((), ARGS)
        args["dilation"] = (1, 1, 1)
        for field, value in (general or {}).items():
            args[field] = value
        kernel, stride, padding = self.args.as_3d()
        lam_scalar, lam_ptr, lam_strides = self.temperature(lam)[:3]
        args["lam"] = lam_scalar
        args["lam_values"] = lam_ptr
        args["lam_strides"] = lam_strides
        args["size"] = self.size
        args["out_size"] = self.out_size
        args["kernel"] = kernel
        args["stride"] = stride
        args["padding"] = padding
        args["channels_last"] = self.layout == "channels_last"
        args["x"] = self.x.ptr
        args["x_strides"] = self.x_strides
        for field, (ptr, strides) in arrays.items():
            args[field] = ptr
            if strides is not None:
                args[{"out": "out_strides", "grad_out": "g_strides",
                      "grad_lam": "glam_strides"}[field]] = strides
        return args

    def wide_index(self, counts, *stride_sets):
        """Whether any index may reach 2**31: then the kernels use 64-bit arithmetic."""
        extents = [_extent(self.size, s) for s in stride_sets]
        return max(counts + extents) >= _INDEX_LIMIT

    def set_work(self, args, spatial, count, wide):
        """Work items: outputs (spatial = out_size) or input cells (spatial = size[2:])."""
        c = self.size[1]
        d, h, w = spatial
        dims = (c, w, h, d) if self.layout == "channels_last" else (w, h, d, c)
        args["work"] = [divisor(n, wide) for n in dims]
        args["stride_div"] = [divisor(s, wide) for s in args["stride"]]
        args["count"] = count

    def kernel(self, name, wide):
        return (f"npool_windowed_softmax_{name}_{type_suffix(self.x.dtype)}_"
                f"{'i64' if wide else 'i32'}")

    def outputs(self):
        return self.size[0] * self.size[1] * int(np.prod(self.out_size))

    def inputs(self):
        return int(np.prod(self.size))


def forward(x, nd, lam, window, device=None, out=None):
    """y of the windowed-softmax pool of GPU array x (see npool.local_pools; ``window``: the
    keyword arguments of ``_checks.local_window``), written into ``out`` (a GPU array of y's
    shape and x's dtype, any strides) when given."""
    pool = _Call(x, nd, window)
    y, y_array = pool.destination(out, pool.out_shape, {"x": pool.x})
    arrays = {"x": pool.x, **({"out": y_array} if y_array is not None else {})}
    device = device or _device.device_for(arrays)
    with device.session([a.stream for a in arrays.values()]) as call:
        if y is None:
            y, y_ptr, y_strides = pool.empty(call, pool.out_shape)
        else:
            y_ptr, y_strides = y_array.ptr, pool.to_5d(y_array)[1]
        count = pool.outputs()
        if count:
            wide = pool.wide_index([count], pool.x_strides, y_strides)
            args = pool.arguments(lam, pool.general_tables(call), out=(y_ptr, y_strides))
            pool.set_work(args, pool.out_size, count, wide)
            call.launch(pool.kernel("forward", wide), args[()], count)
    return y


def backward(grad_out, x, nd, lam, window, device=None, with_lam=False, out=None,
             out_lam=None):
    """grad_x of the windowed-softmax pool of GPU array x (see npool.local_pools), written into
    ``out`` (x's shape and dtype, any strides) when given, and with ``with_lam`` also dL/dlam
    summed to lam's shape (a GPUArray, 0-d for a number; written into ``out_lam``, a
    C-contiguous GPU array of lam's shape and x's dtype, when given)."""
    pool = _Call(x, nd, window)
    lam_parts = pool.temperature(lam)
    g = describe(grad_out, "grad_out")
    _checks.grad_out_array(g, pool.out_shape, pool.x)
    g_strides = pool.to_5d(g)[1]
    grad_x, gx_array = pool.destination(out, pool.x.shape, {"x": pool.x, "grad_out": g})
    lam_array = None
    if with_lam and out_lam is not None:
        lam_shape = lam_parts[4]
        inputs = {"x": pool.x, "grad_out": g, "out[0]": gx_array,
                  "lam": None if lam_parts[1] == 0 else describe(lam, "lam")}
        lam_array = out_array(out_lam, lam_shape, pool.x.dtype, inputs,
                              strides=_checks.dense_strides(lam_shape, "contiguous"),
                              name="out[1]")
    elif out_lam is not None:
        raise ValueError("out_lam is given but with_lam is False")
    arrays = {"grad_out": g, "x": pool.x, **({"out": gx_array} if gx_array is not None else {}),
              **({"out_lam": lam_array} if lam_array is not None else {})}
    device = device or _device.device_for(arrays)
    with device.session([a.stream for a in arrays.values()]) as call:
        if grad_x is None:
            grad_x, gx_ptr, gx_strides = pool.empty(call, pool.x.shape)
        else:
            gx_ptr, gx_strides = gx_array.ptr, pool.to_5d(gx_array)[1]
        outputs, inputs = pool.outputs(), pool.inputs()
        accumulator = 8 if pool.x.dtype == np.float64 else 4
        grad_lam = None
        arrays = dict(out=(gx_ptr, gx_strides), grad_out=(g.ptr, g_strides))
        if with_lam:  # dL/dlam per output, contiguous over the 5-D output, then summed
            lam_shape = lam_parts[4]
            if lam_array is None:
                grad_lam, grad_lam_array = call.empty(
                    lam_shape, pool.x.dtype, _checks.dense_strides(lam_shape, "contiguous"))
            else:
                grad_lam, grad_lam_array = out_lam, lam_array
            full_shape = pool.size[:2] + pool.out_size
            full = call.workspace(max(outputs, 1) * accumulator)
            arrays["grad_lam"] = (full, _checks.dense_strides(full_shape, "contiguous"))
        if outputs:
            general = pool.general_tables(call)
            if pool.args.disjoint:
                # Each input cell belongs to at most one window: its thread writes the cell.
                wide = pool.wide_index([outputs], pool.x_strides, gx_strides, g_strides)
                args = pool.arguments(lam, **arrays)
                pool.set_work(args, pool.out_size, outputs, wide)
                call.launch(pool.kernel("backward_disjoint", wide), args[()], outputs)
            else:
                # Pass 1 stores x*, g/S and y per output; pass 2 gathers them per input cell.
                wide = pool.wide_index([3 * outputs, inputs], pool.x_strides, gx_strides,
                                       g_strides)
                stats = call.workspace(3 * outputs * accumulator)
                args = pool.arguments(lam, general, stats=(stats, None), **arrays)
                args["stats_stride"] = outputs
                pool.set_work(args, pool.out_size, outputs, wide)
                call.launch(pool.kernel("backward_stats", wide), args[()], outputs)
                pool.set_work(args, pool.size[2:], inputs, wide)
                call.launch(pool.kernel("backward_gather", wide), args[()], inputs)
        if with_lam and grad_lam_array.size:
            reductions.sum_to_shape(call, pool.x.dtype, full, full_shape, grad_lam_array.ptr,
                                    lam_parts[3])
    return (grad_x, grad_lam) if with_lam else grad_x
