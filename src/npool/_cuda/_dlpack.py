"""DLPack for npool's GPU backend: reading a framework's GPU tensor, and handing npool's results
back, without copies.

``read(obj)`` consumes ``obj.__dlpack__()`` (the legacy ``"dltensor"`` capsule every framework
exports: TensorFlow, JAX, PyTorch, CuPy) into a ``DeviceArray``, which keeps the tensor's
memory alive until it is garbage collected; bfloat16 included (DLPack has a type code for it).
``capsule(array)`` wraps an array that exports ``__cuda_array_interface__`` (a PyCUDA
``GPUArray``, npool's results) or a ``DeviceArray`` into a ``"dltensor"`` capsule for
``tf.experimental.dlpack.from_dlpack``/``jax.dlpack.from_dlpack``; the capsule holds a
reference to the array until its consumer calls the deleter (a C function:
src/cpu/_dlpack_export.pyx).

The structures are DLPack's ``DLManagedTensor`` (v0.8, unversioned), read with ctypes:
https://dmlc.github.io/dlpack/latest/c_api.html
"""
import ctypes

import numpy as np

from .._device_array import DeviceArray
from .._dtypes import bfloat16, is_bfloat16

CPU, CUDA, CUDA_HOST, CUDA_MANAGED = 1, 2, 3, 13  # DLDeviceType codes npool meets
_GPU_DEVICES = (CUDA, CUDA_MANAGED)


class _Device(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _Device), ("ndim", ctypes.c_int32),
                ("dtype", _DataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _ManagedTensor(ctypes.Structure):
    pass


_Deleter = ctypes.CFUNCTYPE(None, ctypes.POINTER(_ManagedTensor))
_ManagedTensor._fields_ = [("dl_tensor", _Tensor), ("manager_ctx", ctypes.c_void_p),
                           ("deleter", _Deleter)]

_api = ctypes.pythonapi
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_IsValid.restype = ctypes.c_int
_api.PyCapsule_IsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_SetName.restype = ctypes.c_int
_api.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]

_CODES = {(2, 16): np.dtype(np.float16), (2, 32): np.dtype(np.float32),
          (2, 64): np.dtype(np.float64), (0, 64): np.dtype(np.int64), (1, 8): np.dtype(np.bool_)}
_DTYPE_CODES = {dtype: code for code, dtype in _CODES.items()}
_DTYPE_CODES[np.dtype(np.bool_)] = (6, 8)  # kDLBool on export (read: bool as uint8 or kDLBool)
_CODES[(6, 8)] = np.dtype(np.bool_)
_BFLOAT16_CODE = (4, 16)  # kDLBfloat: ml_dtypes' bfloat16, imported when one is met


def _dtype_of_code(code):
    return bfloat16() if code == _BFLOAT16_CODE else _CODES.get(code)


def _code_of_dtype(dtype):
    return _BFLOAT16_CODE if is_bfloat16(dtype) else _DTYPE_CODES[dtype]


def device_of(obj):
    """``obj.__dlpack_device__()`` as (type, id), or None when obj does not export DLPack or
    cannot say (never raises)."""
    try:
        device_type, device_id = obj.__dlpack_device__()
        return int(device_type), int(device_id)
    except Exception:
        return None


class _Owner:
    """Holds a consumed DLManagedTensor and calls its deleter once, when collected."""

    def __init__(self, managed, source):
        self.managed = managed
        self.source = source  # the producer's object, alive as long as its memory is used

    def __del__(self):
        deleter = self.managed.contents.deleter
        if deleter:
            deleter(self.managed)


def read(obj, name, devices=_GPU_DEVICES):
    """The DeviceArray of ``obj``'s DLPack export (consumed: its memory stays alive as long as
    the DeviceArray does). ``devices``: the DLPack device types accepted."""
    device = device_of(obj)
    if device is None or device[0] not in devices:
        raise TypeError(f"{name} does not export DLPack from a GPU (device {device})")
    try:
        capsule = obj.__dlpack__()
    except Exception as error:
        raise TypeError(f"{name}.__dlpack__() failed: {error}") from None
    if not _api.PyCapsule_IsValid(capsule, b"dltensor"):
        raise TypeError(f"{name}.__dlpack__() did not give an unconsumed 'dltensor' capsule")
    managed = ctypes.cast(_api.PyCapsule_GetPointer(capsule, b"dltensor"),
                          ctypes.POINTER(_ManagedTensor))
    _api.PyCapsule_SetName(capsule, b"used_dltensor")  # ours now: the owner calls the deleter
    owner = _Owner(managed, obj)
    tensor = managed.contents.dl_tensor
    code = (tensor.dtype.code, tensor.dtype.bits)
    dtype = _dtype_of_code(code)
    if tensor.dtype.lanes != 1 or dtype is None:
        raise TypeError(f"{name} has DLPack dtype code {code[0]} with {code[1]} bits and "
                        f"{tensor.dtype.lanes} lanes, which npool does not take")
    shape = tuple(tensor.shape[i] for i in range(tensor.ndim))
    if tensor.strides:
        strides = tuple(tensor.strides[i] for i in range(tensor.ndim))
    else:
        strides, step = [], 1
        for n in reversed(shape):
            strides.append(step)
            step *= max(n, 1)
        strides = tuple(reversed(strides))
    pointer = (tensor.data or 0) + tensor.byte_offset
    return DeviceArray(pointer, shape, strides, dtype, None, owner)


def capsule(array, device=(CUDA, 0), order=None):
    """A ``"dltensor"`` capsule over ``array`` (a DeviceArray: ``_arrays.describe`` makes one
    of anything exporting ``__cuda_array_interface__``), its axes in ``order``, on DLPack
    ``device``; no copy. The capsule and its deleter are C (``npool._cpu._dlpack_export``), so
    a consumer may free it at any time, also while the interpreter shuts down."""
    from .._cpu import _dlpack_export
    if not isinstance(array, DeviceArray):
        raise TypeError(f"array must be a DeviceArray, got {type(array).__name__}")
    order = tuple(range(array.ndim)) if order is None else tuple(order)
    code, bits = _code_of_dtype(array.dtype)
    return _dlpack_export.capsule(array, array.ptr, tuple(array.shape[a] for a in order),
                                  tuple(array.strides[a] for a in order), code, bits, *device)
