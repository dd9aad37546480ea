"""PyCUDA side: one primary context, kernel module and stream per GPU, and the launch sessions.

npool works in the device's *primary* context, the one the CUDA runtime (and so PyTorch and
CuPy) uses, so memory passes freely between them. It never creates a context of its own (as
``pycuda.autoinit`` does).

**Stream order.** A call runs inside a session that orders it after the caller's work:

- when the input's ``__cuda_array_interface__`` names a stream (version 3, as CuPy exports), the
  kernels run on npool's own stream after an event recorded on the caller's stream, and the
  caller's stream then waits for them: nothing blocks the host, and the caller's next work on that
  stream sees the result;
- when it names none (PyCUDA's ``GPUArray``, torch's version-2 interface), npool cannot know
  which stream produced the data: it waits for all work on the device before launching and for
  its own kernels before returning, which is safe with any stream of any framework.
"""
import atexit
import contextlib
import threading
import warnings

import numpy as np

from . import _driver_api, fatbin_path, kernel_source_dir
from .._device_array import DeviceArray

_BLOCK = 256           # threads per block (the kernels' __launch_bounds__)
_BLOCKS_PER_SM = 32    # grid-stride loops: at most this many blocks per multiprocessor

_lock = threading.Lock()
_devices: "dict[int, Device]" = {}
_compile_warned = False


def pycuda_driver():
    """pycuda.driver, initialised; a clear RuntimeError when PyCUDA or a GPU is missing."""
    try:
        import pycuda.driver as cuda
    except ImportError as error:
        raise RuntimeError("npool: GPU arrays need PyCUDA, which is not installed: "
                           "pip install 'npool[cuda]' (PyCUDA builds against the CUDA toolkit)"
                           ) from error
    try:
        cuda.init()
    except cuda.Error as error:
        raise RuntimeError(f"npool: CUDA could not be initialised ({error}): no NVIDIA GPU or "
                           "driver is available") from error
    return cuda


def available():
    """True when PyCUDA is installed and sees at least one GPU. Never raises."""
    try:
        return pycuda_driver().Device.count() > 0
    except Exception:
        return False


def device_for(arrays):
    """The Device that holds every DeviceArray in ``arrays`` (a dict name -> DeviceArray)."""
    cuda = pycuda_driver()
    ordinals = {name: _driver_api.pointer_device(a.ptr) for name, a in arrays.items() if a.ptr}
    if len(set(ordinals.values())) > 1:
        where = ", ".join(f"{name} on GPU {o}" for name, o in ordinals.items())
        raise ValueError(f"all arrays of one call must be on the same GPU, got {where}")
    # Only empty arrays: nothing is launched or allocated, any device serves.
    ordinal = next(iter(ordinals.values())) if ordinals else 0
    with _lock:
        if ordinal not in _devices:
            _devices[ordinal] = Device(cuda, ordinal)
        return _devices[ordinal]


@atexit.register
def _release_devices():
    """Drop the kernels and streams while their context is current (not in random order at
    interpreter exit, where PyCUDA would warn about clean-ups on a dead context)."""
    with _lock:
        for device in _devices.values():
            try:
                with device._active():
                    device.release()
            except Exception:
                pass
        _devices.clear()


def _load_module(cuda):
    """The kernels: the prebuilt fatbin, or the sources compiled now when it is absent."""
    global _compile_warned
    path = fatbin_path()
    if path is not None:
        try:
            return cuda.module_from_buffer(path.read_bytes())
        except cuda.Error as error:
            reason = f"the prebuilt CUDA kernels do not load on this GPU ({error})"
    else:
        reason = "this build of npool has no prebuilt CUDA kernels (nvcc was absent at build time)"
    if not _compile_warned:
        _compile_warned = True
        warnings.warn(f"npool: {reason}; compiling them now with nvcc through PyCUDA "
                      "(once per process and GPU)", RuntimeWarning, stacklevel=4)
    from pycuda.compiler import SourceModule
    sources = kernel_source_dir()
    text = "".join(f'#include "{f.name}"\n' for f in sorted(sources.glob("*.cu")))
    return SourceModule(text, no_extern_c=True, include_dirs=[str(sources)],
                        options=["-std=c++17", "-O3"])


class Device:
    """One GPU: its primary context, the loaded kernels and npool's stream."""

    def __init__(self, cuda, ordinal):
        self.cuda = cuda
        self.ordinal = ordinal
        device = cuda.Device(ordinal)
        self.name = device.name()
        self.multiprocessors = device.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)
        self.context = device.retain_primary_context()
        self._functions = {}
        self._pending = []  # (event, workspaces): freed once the event has completed
        self._pending_lock = threading.Lock()
        with self._active():
            self.module = _load_module(cuda)
            self.stream = cuda.Stream(flags=1)  # CU_STREAM_NON_BLOCKING

    @contextlib.contextmanager
    def _active(self):
        self.context.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    def release(self):
        self._functions.clear()
        self._pending = []
        self.module = self.stream = None

    def function(self, name):
        if name not in self._functions:
            self._functions[name] = self.module.get_function(name)
        return self._functions[name]

    @contextlib.contextmanager
    def session(self, streams):
        """Launch in the order of the callers' ``streams`` (handles; None: unknown, see above)."""
        with self._active():
            with self._pending_lock:
                self._pending = [(event, w) for event, w in self._pending if not event.done()]
            known = [s for s in dict.fromkeys(streams) if s is not None]
            blocking = len(known) < len(streams) or not known
            if blocking:
                self.cuda.Context.synchronize()
            else:
                for stream in known:
                    _driver_api.Event().record(stream).make_wait(self.stream.handle)
            call = Session(self)
            yield call
            if blocking:
                self.stream.synchronize()
            else:
                done = _driver_api.Event().record(self.stream.handle)
                for stream in known:
                    done.make_wait(stream)
                if call.workspaces:  # in use until the kernels finish
                    with self._pending_lock:
                        self._pending.append((done, call.workspaces))


class Session:
    """Allocation and launches of one call, on a Device inside ``Device.session``."""

    def __init__(self, device):
        self.device = device
        self.workspaces = []

    def empty(self, shape, dtype, strides):
        """A new GPUArray of ``shape`` with element ``strides`` (a dense layout) and its
        DeviceArray description."""
        from pycuda import gpuarray
        dtype = np.dtype(dtype)
        size = int(np.prod(shape, dtype=np.int64))
        data = self.device.cuda.mem_alloc(size * dtype.itemsize) if size else None
        array = gpuarray.GPUArray(shape, dtype, gpudata=data,
                                  strides=tuple(s * dtype.itemsize for s in strides))
        return array, DeviceArray(int(data) if size else 0, shape, strides, dtype, None, array)

    def workspace(self, nbytes):
        """Device memory for this call's intermediate results; returns its address."""
        allocation = self.device.cuda.mem_alloc(max(nbytes, 1))
        self.workspaces.append(allocation)
        return int(allocation)

    def upload(self, array):
        """A copy of host ``array`` (C-contiguous) in device memory for this call; its
        address. The copy completes before this returns."""
        allocation = self.device.cuda.mem_alloc(max(array.nbytes, 1))
        self.workspaces.append(allocation)
        if array.nbytes:
            self.device.cuda.memcpy_htod(allocation, array)
        return int(allocation)

    block_size = _BLOCK

    def launch_blocks(self, name, args, blocks, shared_bytes):
        """Run block kernel ``name`` (one block per map, grid-stride over more) on ``blocks``
        work units with ``shared_bytes`` of dynamic shared memory."""
        grid = max(1, min(blocks, self.device.multiprocessors * _BLOCKS_PER_SM))
        self.device.function(name)(args, block=(_BLOCK, 1, 1), grid=(grid, 1),
                                   stream=self.device.stream, shared=shared_bytes)

    def launch(self, name, args, count):
        """Run kernel ``name`` over ``count`` work items with ``args`` (a numpy.void struct)."""
        blocks = max(1, min(-(-count // _BLOCK), self.device.multiprocessors * _BLOCKS_PER_SM))
        self.device.function(name)(args, block=(_BLOCK, 1, 1), grid=(blocks, 1),
                                   stream=self.device.stream)
