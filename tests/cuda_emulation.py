"""npool's CUDA kernels run on the host, for machines without a GPU.

``build`` compiles every kernel source of src/cuda/ with ``nvcc -DNPOOL_HOST_EMULATION``: the
per-work-item functions of the kernels, unchanged, become host functions that loop over all
work items (see src/cuda/npool_cuda.cuh). ``EmulatedDevice`` stands in for a GPU in
``npool._cuda``: it allocates host memory (poisoned with NaN, so unwritten outputs show) and
exposes it through ``__cuda_array_interface__``, so the whole GPU path - argument packing,
layouts, index widths, kernel choice - runs and can be checked against the references.
"""
import contextlib
import ctypes
import pathlib
import shutil
import subprocess

import numpy as np

from npool._checks import is_float_dtype
from npool._cuda._device import _BLOCK
from npool._device_array import DeviceArray

SOURCES = pathlib.Path(__file__).resolve().parents[1] / "src" / "cuda"


def build(directory):
    """Compile the emulation library into ``directory``; None when there is no nvcc."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    umbrella = pathlib.Path(directory) / "npool_kernels_host.cu"
    umbrella.write_text("".join(f'#include "{f}"\n' for f in sorted(SOURCES.glob("*.cu"))))
    library = pathlib.Path(directory) / "libnpool_kernels_host.so"
    subprocess.run([nvcc, "-DNPOOL_HOST_EMULATION", "-std=c++20", "-O1", "-shared",
                    "-Xcompiler", "-fPIC", "-Xcompiler", "-pthread", "-I", str(SOURCES),
                    str(umbrella), "-o", str(library)], check=True, capture_output=True)
    return ctypes.CDLL(str(library))


class HostArray:
    """A numpy array seen through ``__cuda_array_interface__`` (host memory, for emulation)."""

    def __init__(self, array, stream=None, version=3):
        self.array = array
        self.stream = stream
        self.version = version

    @property
    def __cuda_array_interface__(self):
        a = self.array
        cai = {"shape": a.shape, "typestr": a.dtype.str,
               "data": (a.ctypes.data if a.size else 0, False),
               "strides": None if a.flags.c_contiguous else a.strides,
               "version": self.version}
        if self.version >= 3:
            cai["stream"] = self.stream
        return cai


def _aligned_bytes(nbytes, alignment=256):
    """``nbytes`` of 0xFF bytes starting at a multiple of ``alignment``, as cudaMalloc gives
    (frameworks that wrap the results, TensorFlow's CPU kernels among them, may rely on it)."""
    raw = np.full(nbytes + alignment, 0xFF, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start:start + nbytes]


def poisoned(shape, dtype, strides):
    """An array of ``shape`` with element ``strides``, filled with NaN bit patterns."""
    dtype = np.dtype(dtype)
    extent = 1 + sum((n - 1) * s for n, s in zip(shape, strides)) if all(shape) else 0
    memory = _aligned_bytes(max(extent, 1) * dtype.itemsize).view(dtype)
    return np.lib.stride_tricks.as_strided(memory, shape,
                                           tuple(s * dtype.itemsize for s in strides))


class EmulatedSession:
    def __init__(self, device):
        self.device = device
        self.keep = []

    def empty(self, shape, dtype, strides):
        array = poisoned(shape, dtype, strides) if is_float_dtype(np.dtype(dtype)) else \
            np.full(shape, -7, dtype)
        out = HostArray(array)
        return out, DeviceArray(array.ctypes.data if array.size else 0, shape, strides, dtype,
                                None, out)

    def workspace(self, nbytes):
        memory = _aligned_bytes(max(nbytes, 1))
        self.keep.append(memory)
        return memory.ctypes.data

    def upload(self, array):
        memory = _aligned_bytes(max(array.nbytes, 1))
        memory[:array.nbytes] = np.frombuffer(np.ascontiguousarray(array).tobytes(), np.uint8)
        self.keep.append(memory)
        return memory.ctypes.data

    block_size = _BLOCK  # the real launches' threads per block

    def launch_blocks(self, name, args, blocks, shared_bytes):
        self.device.launches.append(name)
        buffer = ctypes.create_string_buffer(args.tobytes(), len(args.tobytes()))
        grid = min(blocks, 3)  # fewer blocks than maps: the grid-stride loops run too
        function = getattr(self.device.library, name)
        function.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int64]
        function(buffer, grid, self.block_size, shared_bytes)

    def launch(self, name, args, count):
        assert count == args["count"] and count > 0
        self.device.launches.append(name)
        buffer = ctypes.create_string_buffer(args.tobytes(), len(args.tobytes()))
        getattr(self.device.library, name)(buffer)


class EmulatedDevice:
    """A GPU for ``npool._cuda``, made of the host-compiled kernels."""

    def __init__(self, library):
        self.library = library
        self.launches = []   # kernel names, in launch order
        self.sessions = []   # the streams each session was ordered after

    @contextlib.contextmanager
    def session(self, streams):
        self.sessions.append(list(streams))
        yield EmulatedSession(self)
