"""``DeviceArray``: a GPU array as npool's kernels see it (pointer, shape, element strides,
dtype, stream). A leaf module: npool._cuda's readers (``__cuda_array_interface__``, DLPack)
make them, the argument checks accept them, and nothing here imports either.
"""
import numpy as np


class DeviceArray:
    """A GPU array as npool's kernels see it.

    Attributes: ``ptr`` (device address of element 0), ``shape``, ``strides`` (in elements, may
    be negative), ``dtype``, ``stream`` (the producer's stream handle from a version-3 interface:
    1 = legacy default stream, 2 = per-thread default stream, other = a ``CUstream``; None when
    the producer names none) and ``obj`` (the object described, kept alive with the description).
    """

    __slots__ = ("ptr", "shape", "strides", "dtype", "stream", "obj")

    def __init__(self, ptr, shape, strides, dtype, stream=None, obj=None):
        self.ptr = ptr
        self.shape = tuple(shape)
        self.strides = tuple(strides)
        self.dtype = np.dtype(dtype)
        self.stream = stream
        self.obj = obj

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    def itemsize_bytes(self):
        return self.dtype.itemsize

    def __repr__(self):
        return (f"DeviceArray(ptr={self.ptr:#x}, shape={self.shape}, strides={self.strides}, "
                f"dtype={self.dtype}, stream={self.stream})")
