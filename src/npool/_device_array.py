"""``DeviceArray``: a GPU array as npool's kernels see it (pointer, shape, element strides,
dtype, stream). A leaf module: npool._cuda's readers (``__cuda_array_interface__``, DLPack)
make them, the argument checks accept them, and nothing here imports either. It exports
``__cuda_array_interface__`` itself and has NumPy's view operations (``transpose``,
``reshape`` where no copy is needed, integer indexing of the leading axis), so that code written
for NumPy arrays - npool.jax's kernel targets - runs unchanged on memory another framework owns
(XLA's buffers on the GPU route).
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

    @property
    def __cuda_array_interface__(self):
        """Version 3 of the interface (bfloat16's typestr is ml_dtypes' ``"<V2"``, which npool's
        reader takes as bfloat16)."""
        item = self.dtype.itemsize
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False),
                "strides": tuple(s * item for s in self.strides), "version": 3,
                "stream": self.stream}

    def _view(self, offset, shape, strides):
        return DeviceArray(self.ptr + offset * self.dtype.itemsize if self.ptr else self.ptr,
                           shape, strides, self.dtype, self.stream, self.obj)

    def transpose(self, *axes):
        """The view with its axes in the order ``axes`` (one tuple or separate ints, as
        ``numpy.ndarray.transpose``; none: reversed)."""
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        axes = tuple(range(self.ndim))[::-1] if not axes else \
            tuple(a + self.ndim if a < 0 else a for a in axes)
        if sorted(axes) != list(range(self.ndim)):
            raise ValueError(f"axes {axes} are not a permutation of {self.ndim} axes")
        return self._view(0, [self.shape[a] for a in axes], [self.strides[a] for a in axes])

    def reshape(self, shape):
        """The view of ``shape`` (one entry may be -1) over the same cells in C order; a
        ValueError where that needs a copy (NumPy would copy: npool cannot here)."""
        shape = (shape,) if isinstance(shape, int) else tuple(int(n) for n in shape)
        size = self.size
        if shape.count(-1) > 1:
            raise ValueError("reshape: at most one axis may be -1")
        if -1 in shape:
            known = int(np.prod([n for n in shape if n != -1], dtype=np.int64))
            if known == 0 or size % known:
                raise ValueError(f"cannot reshape an array of size {size} into {shape}")
            shape = tuple(size // known if n == -1 else n for n in shape)
        if int(np.prod(shape, dtype=np.int64)) != size:
            raise ValueError(f"cannot reshape an array of size {size} into {shape}")
        if size == 0:
            return self._view(0, shape, _c_strides(shape))
        # NumPy's no-copy reshape: match runs of old axes (size-1 ones dropped) to runs of new
        # axes of the same product; each old run must be one strided block
        old = [(n, s) for n, s in zip(self.shape, self.strides) if n != 1]
        new = [n for n in shape if n != 1]
        new_strides = [0] * len(new)
        oi = ni = 0
        while oi < len(old):
            oj, nj = oi + 1, ni + 1
            o, m = old[oi][0], new[ni]
            while o != m:
                if m < o:
                    m *= new[nj]
                    nj += 1
                else:
                    o *= old[oj][0]
                    oj += 1
            if any(old[k][1] != old[k + 1][0] * old[k + 1][1] for k in range(oi, oj - 1)):
                raise ValueError(f"cannot reshape {self.shape} with strides {self.strides} "
                                 f"into {shape} without a copy")
            new_strides[nj - 1] = old[oj - 1][1]
            for k in range(nj - 1, ni, -1):
                new_strides[k - 1] = new_strides[k] * new[k]
            oi, ni = oj, nj
        walk = iter(new_strides)
        strides = [0 if n == 1 else next(walk) for n in shape]
        return self._view(0, shape, strides)

    def __getitem__(self, index):
        """``a[i]`` (an int, or a tuple of ints over the leading axes): the view of one entry."""
        index = index if isinstance(index, tuple) else (index,)
        if len(index) > self.ndim or not all(isinstance(i, (int, np.integer)) for i in index):
            raise TypeError("DeviceArray takes integer indices of its leading axes only")
        offset = 0
        for axis, i in enumerate(index):
            n = self.shape[axis]
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for axis {axis} with size {n}")
            offset += (i + n if i < 0 else i) * self.strides[axis]
        k = len(index)
        return self._view(offset, self.shape[k:], self.strides[k:])

    def __repr__(self):
        return (f"DeviceArray(ptr={self.ptr:#x}, shape={self.shape}, strides={self.strides}, "
                f"dtype={self.dtype}, stream={self.stream})")


def _c_strides(shape):
    """Element strides of a C-contiguous array of ``shape``."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))
