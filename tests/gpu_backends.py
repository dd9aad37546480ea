"""The two GPU backends the CUDA tests run on (the ``gpu`` fixture of conftest.py):

- ``Emulated``: npool's CUDA kernels compiled for the host (cuda_emulation.py) behind npool's
  real GPU code path; runs wherever nvcc is, GPU or not;
- ``Cuda``: a real GPU through PyCUDA; skipped without PyCUDA and a GPU.

Outputs are allocated poisoned with NaN on both, so an element the kernels forget shows.
"""
import ctypes

import numpy as np
import pytest

import cuda_emulation
import npool
from npool._cuda import _device
from npool._cuda._arrays import describe


def _byte_span(shape, strides, itemsize):
    """(lowest, highest + itemsize) byte offsets an array of these byte strides touches."""
    if 0 in shape:
        return 0, 0
    low = sum(min(0, (n - 1) * s) for n, s in zip(shape, strides))
    high = sum(max(0, (n - 1) * s) for n, s in zip(shape, strides))
    return low, high + itemsize


class Emulated:
    name = "emulated"

    def __init__(self, library):
        self.device = cuda_emulation.EmulatedDevice(library)
        self._saved = _device.device_for

    def __enter__(self):
        _device.device_for = lambda arrays: self.device
        return self

    def __exit__(self, *exc):
        _device.device_for = self._saved

    def to_device(self, a, stream=None):
        return cuda_emulation.HostArray(a, stream=stream)

    def to_host(self, obj):
        assert isinstance(obj, cuda_emulation.HostArray)
        return self.read(obj)

    def read(self, obj):
        return np.array(obj.array)


class CudaArray:
    """Device memory holding a copy of a numpy array, with the array's strides (any sign)."""

    def __init__(self, cuda, a):
        low, high = _byte_span(a.shape, a.strides, a.itemsize)
        self.memory = cuda.mem_alloc(max(high - low, 1))
        if high > low:
            span = (ctypes.c_uint8 * (high - low)).from_address(a.ctypes.data + low)
            cuda.memcpy_htod(self.memory, np.ctypeslib.as_array(span))
        self.__cuda_array_interface__ = {
            "shape": a.shape, "typestr": a.dtype.str, "strides": a.strides, "version": 2,
            "data": (int(self.memory) - low if a.size else 0, False)}


class Cuda:
    name = "cuda"

    def __init__(self):
        pytest.importorskip("pycuda")
        if not npool.cuda_available():
            pytest.skip("no GPU")
        self.cuda = _device.pycuda_driver()
        self.device = _device.device_for({})
        self._saved = (_device.Session.empty, _device.Session.workspace)

    def __enter__(self):
        empty, workspace = self._saved
        cuda = self.cuda

        def poisoned_empty(session, shape, dtype, strides):
            obj, a = empty(session, shape, dtype, strides)
            if a.size:
                cuda.memset_d8(a.ptr, 0xFF, a.size * a.dtype.itemsize)
            return obj, a

        def poisoned_workspace(session, nbytes):
            ptr = workspace(session, nbytes)
            cuda.memset_d8(ptr, 0xFF, nbytes)
            return ptr

        _device.Session.empty, _device.Session.workspace = poisoned_empty, poisoned_workspace
        return self

    def __exit__(self, *exc):
        _device.Session.empty, _device.Session.workspace = self._saved

    def to_device(self, a):
        with self.device._active():
            return CudaArray(self.cuda, a)

    def to_host(self, obj):
        from pycuda import gpuarray
        assert isinstance(obj, gpuarray.GPUArray)
        return self.read(obj)

    def read(self, obj):
        """A numpy copy of any object with __cuda_array_interface__."""
        a = describe(obj, "array")
        item = a.dtype.itemsize
        byte_strides = tuple(s * item for s in a.strides)
        low, high = _byte_span(a.shape, byte_strides, item)
        memory = np.empty(max(high - low, 1), np.uint8)
        if high > low:
            self.cuda.memcpy_dtoh(memory, a.ptr + low)
        return np.array(np.lib.stride_tricks.as_strided(
            memory[-low:].view(a.dtype) if a.size else memory.view(np.uint8)[:0].view(a.dtype),
            a.shape, byte_strides))
