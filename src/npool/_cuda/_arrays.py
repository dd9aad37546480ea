"""What npool reads from a GPU array: its ``__cuda_array_interface__`` (versions 0 to 3).

A PyCUDA ``GPUArray``, a CUDA torch tensor and a CuPy array all export it, so one reader serves
them all; the data is used where it lies, never copied.

bfloat16: the interface has no type code for it. ``typestr`` ``"<V2"`` (a 2-byte opaque item)
is read as bfloat16, the convention PyTorch's ``__cuda_array_interface__`` and ml_dtypes'
``bfloat16`` dtype (``numpy.dtype(ml_dtypes.bfloat16).str == "<V2"``) share.
"""
import numpy as np

from .._device_array import DeviceArray
from .._dtypes import DTYPE_NAMES, bfloat16, float_dtypes, is_bfloat16

_TYPE_SUFFIX = {np.dtype(np.float16): "f16", np.dtype(np.float32): "f32",
                np.dtype(np.float64): "f64"}
_BFLOAT16_TYPESTR = "<V2"


def type_suffix(dtype):
    """The suffix of the kernels for storage dtype ``dtype``: npool_<kernel>_<suffix>."""
    return "bf16" if is_bfloat16(dtype) else _TYPE_SUFFIX[np.dtype(dtype)]


def _interface(obj, name):
    try:
        cai = obj.__cuda_array_interface__
    except Exception as error:  # torch raises RuntimeError for tensors that require grad
        raise TypeError(f"{name}: its __cuda_array_interface__ cannot be read ({error}); for a "
                        f"torch tensor that requires grad, pass {name}.detach()") from None
    if not isinstance(cai, dict):
        raise TypeError(f"{name}.__cuda_array_interface__ must be a dict, got {type(cai).__name__}")
    return cai


def describe(obj, name, dtypes=None):
    """The DeviceArray of ``obj``, checked: a dtype in ``dtypes`` (None: npool's float dtypes),
    no mask, strides in whole elements. An object without ``__cuda_array_interface__`` that
    exports DLPack from the GPU (TensorFlow, JAX) is read through DLPack (``_dlpack``)."""
    if isinstance(obj, DeviceArray):
        array = obj
    elif not _has_interface(obj) and hasattr(obj, "__dlpack__"):
        from . import _dlpack
        array = _dlpack.read(obj, name)
    else:
        return _describe_interface(obj, name, dtypes)
    if array.dtype not in (float_dtypes() if dtypes is None else dtypes):
        raise TypeError(f"{name} must have dtype {_names(dtypes)}, got {array.dtype}")
    return array


def _names(dtypes):
    return DTYPE_NAMES if dtypes is None else " or ".join(str(d) for d in dtypes)


def _has_interface(obj):
    try:
        return hasattr(obj, "__cuda_array_interface__")
    except Exception:  # torch: a CUDA tensor that requires grad (the reader says so)
        return True


def _describe_interface(obj, name, dtypes):
    cai = _interface(obj, name)
    try:
        shape = tuple(int(n) for n in cai["shape"])
        typestr = cai["typestr"]
        ptr = int(cai["data"][0])
    except (KeyError, TypeError, ValueError, IndexError):
        raise TypeError(f"{name}.__cuda_array_interface__ lacks a valid shape, typestr or data "
                        f"entry: {cai!r}") from None
    version = cai.get("version", 0)
    if not isinstance(version, int) or not 0 <= version <= 3:
        raise TypeError(f"{name}: __cuda_array_interface__ version {version!r} is not supported "
                        "(npool reads versions 0 to 3)")
    if cai.get("mask") is not None:
        raise TypeError(f"{name}: masked GPU arrays are not supported")
    try:
        dtype = bfloat16() if typestr == _BFLOAT16_TYPESTR else np.dtype(typestr)
    except TypeError:
        raise TypeError(f"{name} has an unknown typestr {typestr!r}") from None
    if dtype not in (float_dtypes() if dtypes is None else dtypes) or not dtype.isnative:
        raise TypeError(f"{name} must have dtype {_names(dtypes)}, got {typestr}")
    byte_strides = cai.get("strides")
    if byte_strides is None:  # C-contiguous
        strides, step = [], 1
        for n in reversed(shape):
            strides.append(step)
            step *= max(n, 1)
        strides = tuple(reversed(strides))
    else:
        byte_strides = tuple(int(s) for s in byte_strides)
        if len(byte_strides) != len(shape):
            raise TypeError(f"{name}.__cuda_array_interface__ has {len(byte_strides)} strides "
                            f"for {len(shape)} axes")
        if any(s % dtype.itemsize for s in byte_strides):
            raise ValueError(f"{name} has strides {byte_strides} that are not whole multiples "
                             f"of its item size {dtype.itemsize}")
        strides = tuple(s // dtype.itemsize for s in byte_strides)
    size = int(np.prod(shape, dtype=np.int64))
    if ptr == 0 and size > 0:
        raise ValueError(f"{name} has a null data pointer")
    stream = cai.get("stream") if version >= 3 else None
    if stream is not None:
        if isinstance(stream, bool) or not isinstance(stream, int) or stream <= 0:
            raise ValueError(f"{name}.__cuda_array_interface__ has stream {stream!r}; expected "
                             "None or a positive int (0 is disallowed by the protocol)")
    return DeviceArray(ptr, shape, strides, dtype, stream, obj)


def run_stride(shape, strides):
    """The element stride of axes ``shape`` (with ``strides``) walked as one run of cells in C
    order, or None when they do not form one strided run; 1 for a single cell."""
    step = None
    expected = None
    for n, s in zip(reversed(shape), reversed(strides)):
        if n == 1:
            continue
        if expected is not None and s != expected:
            return None
        step = s if step is None else step
        expected = s * n
    return 1 if step is None else step


def any_dtype():
    """The dtypes npool's GPU arrays may hold: its float dtypes, int64 (indices) and bool."""
    return float_dtypes() + (np.dtype(np.int64), np.dtype(np.bool_))


class View:
    """A DeviceArray with its axes in ``order`` and ``ones`` size-1 axes in front, seen through
    ``__cuda_array_interface__`` (version 2: no stream, so npool orders it after all work on
    the device); it keeps the memory's owner alive. GPU arrays' ``np.moveaxis``."""

    def __init__(self, array, order=None, ones=0):
        order = tuple(range(array.ndim)) if order is None else tuple(order)
        self.array = array
        itemsize = array.dtype.itemsize
        self.__cuda_array_interface__ = {
            "shape": (1,) * ones + tuple(array.shape[a] for a in order),
            "typestr": _BFLOAT16_TYPESTR if is_bfloat16(array.dtype) else array.dtype.str,
            "data": (array.ptr if array.size else 0, False),
            "strides": (0,) * ones + tuple(array.strides[a] * itemsize for a in order),
            "version": 2}

    @property
    def shape(self):
        return self.__cuda_array_interface__["shape"]

    @property
    def ndim(self):
        return len(self.shape)


def moveaxis(obj, source, destination):
    """GPU array ``obj`` with axis ``source`` moved to ``destination`` (a view)."""
    array = describe(obj, "array", any_dtype())
    order = list(range(array.ndim))
    order.insert(destination % array.ndim, order.pop(source % array.ndim))
    return View(array, order)


def with_leading_ones(obj, ndim):
    """GPU array ``obj`` with size-1 axes in front up to ``ndim`` axes (a view)."""
    array = describe(obj, "array", any_dtype())
    return View(array, ones=ndim - array.ndim)


def _span(a):
    """[first, last) byte addresses of DeviceArray ``a``'s cells (empty: (ptr, ptr))."""
    if a.size == 0:
        return a.ptr, a.ptr
    low = sum((n - 1) * s for n, s in zip(a.shape, a.strides) if s < 0)
    high = sum((n - 1) * s for n, s in zip(a.shape, a.strides) if s > 0)
    return a.ptr + low * a.itemsize_bytes(), a.ptr + (high + 1) * a.itemsize_bytes()


def out_array(out, shape, dtype, inputs, strides=None, name="out"):
    """``out=`` on the GPU: the DeviceArray of ``out``, checked to have ``shape`` and ``dtype``,
    to share no memory with ``inputs`` (name -> DeviceArray) and, with ``strides``, to have
    those element strides (kernels that write one dense layout). ``name``: the argument's name in
    errors."""
    a = describe(out, name)
    if a.dtype != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)} (the result's), got {a.dtype}")
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have the result's shape {tuple(shape)}, got {a.shape}")
    if strides is not None and a.size and any(
            n != 1 and s != t for n, s, t in zip(a.shape, a.strides, strides)):
        raise ValueError(f"{name} must have strides {tuple(strides)} (in elements) here, got "
                         f"{a.strides}")
    lo, hi = _span(a)
    for other_name, other in inputs.items():
        if other is None or other.size == 0 or a.size == 0:
            continue
        other_lo, other_hi = _span(other)
        if lo < other_hi and other_lo < hi:
            raise ValueError(f"{name} must not share memory with {other_name}")
    return a
