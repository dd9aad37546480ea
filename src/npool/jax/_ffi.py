"""npool's kernels inside jitted JAX programs through XLA's foreign function interface.

``call(target, structs, *arrays, vmap_method=..., platform=...)`` is ``jax.pure_callback``'s
contract without its copies: XLA calls npool's handler (``npool._cpu._xla_ffi``, compiled C)
with its own buffers; the handler passes their addresses here, where ``target`` runs over views
of them - the inputs read-only, the results written in place (``target`` takes ``out=``, one
array per result).

- ``platform="cpu"``: NumPy views; what ``target`` returns elsewhere than ``out`` is copied in.
- ``platform="gpu"`` (a CUDA backend): ``DeviceArray`` views carrying XLA's stream, so npool's
  CUDA kernels (``npool._cuda``, through PyCUDA) run ordered after XLA's work on that stream and
  XLA's later work waits for them; ``target`` must write every result into ``out`` (a result
  elsewhere is an error: there is no copy on this route). Targets written for NumPy run
  unchanged where they use the views ``DeviceArray`` has (transpose, reshape without a copy,
  integer indexing).

The HLO holds a string attribute naming ``target``: a key built from its code and the values it
closes over (``target_key``), so that equal calls compile once (``jax.jit``'s cache keys on
it) and a key always means one behaviour. Targets are kept by key for the life of the process
(as many as distinct static configurations were traced).

Where the handler cannot be registered (an npool built without it, or a jaxlib that supports
none of the FFI API versions the handler can claim: those from ``OLDEST_API_VERSION`` to the
vendored header's), ``available("cpu")`` is False and npool.jax goes through
``jax.pure_callback`` (copies, same results); ``available("gpu")`` is False there too, and
wherever JAX has no CUDA device or npool's CUDA kernels cannot run (no PyCUDA): npool.jax then
builds the ops from standard JAX operations (the decomposition), as before the route existed.
"""
import hashlib
import threading
import types
import warnings

import jax
import ml_dtypes
import numpy as np

from .. import _checks
from .._device_array import DeviceArray

# The custom-call target's name per platform (XLA's registries are per platform)
TARGETS = {"cpu": "npool_cpu_kernels", "gpu": "npool_cuda_kernels"}
_XLA_PLATFORMS = {"cpu": "cpu", "gpu": "CUDA"}

# XLA's primitive type codes (xla_data.proto; XLA_FFI_DataType) -> NumPy dtypes
_DTYPES = {1: np.dtype(np.bool_), 2: np.dtype(np.int8), 3: np.dtype(np.int16),
           4: np.dtype(np.int32), 5: np.dtype(np.int64), 6: np.dtype(np.uint8),
           7: np.dtype(np.uint16), 8: np.dtype(np.uint32), 9: np.dtype(np.uint64),
           10: np.dtype(np.float16), 11: np.dtype(np.float32), 12: np.dtype(np.float64),
           16: np.dtype(ml_dtypes.bfloat16)}

_handler = None  # npool._cpu._xla_ffi, once registered
_targets: dict = {}
_lock = threading.Lock()
_registration: dict = {}  # platform -> registered or not; "api_version" -> (major, minor)


class _Memory:
    """A buffer of XLA's as NumPy's array interface (no copy)."""

    def __init__(self, address, dtype, shape, readonly):
        # bfloat16 has no array-interface type string: the bits as uint16, viewed back after
        typestr = "<u2" if dtype == _DTYPES[16] else dtype.str
        self.__array_interface__ = {"data": (address, readonly), "shape": shape,
                                    "typestr": typestr, "version": 3}


def _array(buffer, readonly):
    address, code, shape = buffer
    dtype = _DTYPES.get(code)
    if dtype is None:
        raise TypeError(f"XLA dtype code {code} has no NumPy dtype here")
    if address == 0 or 0 in shape:  # an empty buffer may have no address
        return np.zeros(shape, dtype)
    array = np.asarray(_Memory(address, dtype, shape, readonly))
    return array.view(dtype) if array.dtype != dtype else array


# Result buffers this large get transparent huge pages before the kernels first write them
# (NumPy's threshold for its own arrays: 4 MiB)
HUGE_PAGE_MIN_BYTES = 4 << 20


def _dispatch(inputs, results, attributes, stream=None):
    """The handlers' Python side: ``stream`` None on the CPU, XLA's ``CUstream`` on CUDA."""
    target = _targets.get(attributes.get("call"))
    if target is None:
        raise RuntimeError(f"npool.jax: no kernel function is registered under "
                           f"{attributes.get('call')!r} in this process (a program compiled "
                           f"elsewhere? export inside npool.jax.portable())")
    if stream is not None:
        _run_on_device(target, inputs, results, stream)
        return
    arrays = [_array(b, readonly=True) for b in inputs]
    outs = tuple(_array(b, readonly=False) for b in results)
    for out in outs:
        if out.nbytes >= HUGE_PAGE_MIN_BYTES:
            _handler.advise_huge_pages(out.__array_interface__["data"][0], out.nbytes)
    returned = target(*arrays, out=outs)
    for value, out in zip(returned, outs):
        _checks.deliver(np.asarray(value), out)  # copied in unless written there


def _device_array(buffer, stream):
    """A buffer of XLA's on the GPU as a C-contiguous DeviceArray on XLA's stream (the
    interface's handle for the default stream, 0, is 1)."""
    address, code, shape = buffer
    dtype = _DTYPES.get(code)
    if dtype is None:
        raise TypeError(f"XLA dtype code {code} has no NumPy dtype here")
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return DeviceArray(address if all(shape) else 0, shape, tuple(reversed(strides)), dtype,
                       stream or 1)


def _run_on_device(target, inputs, results, stream):
    arrays = [_device_array(b, stream) for b in inputs]
    outs = tuple(_device_array(b, stream) for b in results)
    returned = target(*arrays, out=outs)
    for i, (value, out) in enumerate(zip(returned, outs)):
        written = isinstance(value, DeviceArray) and out.size == value.size and (
            out.size == 0 or (value.ptr, value.shape, value.dtype) ==
            (out.ptr, out.shape, out.dtype) and all(
                n == 1 or s == t for n, s, t in zip(out.shape, out.strides, value.strides)))
        if not written:
            raise RuntimeError(f"npool.jax: result {i} of {type(target).__name__} was not "
                               f"written into XLA's buffer on the GPU route (got "
                               f"{type(value).__name__}); its target must write every result "
                               f"into out=")


def available(platform="cpu"):
    """Whether npool's FFI handler is registered for ``platform`` ("cpu", or "gpu": a CUDA
    backend with npool's CUDA kernels usable), registering it on the first call. False where it
    cannot be: with a warning once on the CPU (npool.jax then uses ``jax.pure_callback``),
    silently on the GPU (npool.jax then uses the decomposition, which needs nothing more)."""
    with _lock:
        if platform not in _registration:
            _registration[platform] = _register(platform)
        return _registration[platform]


def _gpu_usable():
    """A CUDA device in JAX and npool's CUDA kernels runnable (PyCUDA sees a GPU)."""
    try:
        if not jax.devices("cuda"):
            return False
    except RuntimeError:  # no CUDA backend in this jaxlib
        return False
    from .._cuda import _device
    return _device.available()


def _register(platform):
    if platform not in TARGETS:
        raise ValueError(f"platform must be 'cpu' or 'gpu', got {platform!r}")
    if platform == "gpu" and not _gpu_usable():
        return False
    try:
        from .._cpu import _xla_ffi
    except ImportError as error:  # an npool built before the handler existed
        if platform == "cpu":
            warnings.warn(f"npool.jax: npool's XLA FFI handler is missing ({error}); the "
                          f"kernels run through jax.pure_callback (copies)", RuntimeWarning,
                          stacklevel=3)
        return False
    global _handler
    _handler = _xla_ffi
    _xla_ffi.set_dispatch(_dispatch)
    capsule = _xla_ffi.handler() if platform == "cpu" else _xla_ffi.cuda_handler()
    # The backend first: a registration made before it starts is applied when it starts, and
    # a refusal then breaks the backend (jaxlib 0.8) instead of raising here
    jax.devices("cpu" if platform == "cpu" else "cuda")
    # XLA accepts a handler only for FFI API versions it supports: the newest the handler can
    # claim first (the structs it reads are the same since OLDEST_API_VERSION). One version
    # serves both platforms: a version taken once is the one claimed after.
    major, newest = _xla_ffi.API_VERSION
    oldest = _xla_ffi.OLDEST_API_VERSION[1]
    taken = _registration.get("api_version")
    minors = [taken[1]] if taken else range(newest, oldest - 1, -1)
    refusal = None
    for minor in minors:
        _xla_ffi.report_api_minor(minor)
        try:
            jax.ffi.register_ffi_target(TARGETS[platform], capsule,
                                        platform=_XLA_PLATFORMS[platform])
        except Exception as error:  # a jaxlib that supports none of those versions, ...
            refusal = error
            continue
        _registration["api_version"] = (major, minor)
        return True
    if platform == "cpu":
        warnings.warn(f"npool.jax: registering npool's XLA FFI handler (XLA FFI API {major}."
                      f"{oldest} to {major}.{newest}) failed: {refusal}; the kernels run "
                      f"through jax.pure_callback (copies)", RuntimeWarning, stacklevel=3)
    else:
        warnings.warn(f"npool.jax: registering npool's XLA FFI handler for CUDA failed: "
                      f"{refusal}; the windowed pools are built from JAX operations on the GPU",
                      RuntimeWarning, stacklevel=3)
    return False


def call(target, structs, *arrays, vmap_method, platform="cpu"):
    """``target(*arrays, out=tuple of result arrays) -> results`` called inside the JAX program
    on XLA's buffers (NumPy arrays on the CPU, DeviceArrays on the GPU); ``structs``: the
    results' ``jax.ShapeDtypeStruct``s."""
    key = target_key(target)
    with _lock:
        _targets.setdefault(key, target)
    return jax.ffi.ffi_call(TARGETS[platform], tuple(structs),
                            vmap_method=vmap_method)(*arrays, call=key)


# ------------------------------------------------------------------ keys
_PLAIN = (type(None), bool, int, float, str, bytes, np.dtype, type)


def target_key(function):
    """A string that determines what ``function`` does: its name and a digest of its code's
    place in the source and, recursively, of the values it closes over (numbers, strings,
    dtypes, tuples, dicts, other functions; a module-level function by its name). TypeError for
    a captured value with no such description (an array, a tracer): a target must close over
    static values only."""
    description = repr(_describe(function, 0))
    name = getattr(function, "__qualname__", type(function).__name__)
    return f"{name}#{hashlib.sha256(description.encode()).hexdigest()[:24]}"


def _code(code):
    """What a code object does: its place, bytecode, names and constants (nested code objects
    recursively), so that two functions of one line differ when their bodies do."""
    consts = tuple(_code(c) if isinstance(c, types.CodeType) else repr(c)
                   for c in code.co_consts)
    return (code.co_filename, code.co_firstlineno, code.co_code.hex(), code.co_names,
            code.co_varnames, consts)


def _describe(value, depth):
    if depth > 20:
        raise TypeError("npool.jax: a kernel target's closure is nested too deeply to key")
    if isinstance(value, _PLAIN) or isinstance(value, np.generic):
        return (type(value).__name__, repr(value))
    if isinstance(value, (tuple, list)):
        return (type(value).__name__,) + tuple(_describe(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return ("dict",) + tuple((k, _describe(v, depth + 1)) for k, v in sorted(value.items()))
    if isinstance(value, types.FunctionType):
        cells = tuple(_describe(c.cell_contents, depth + 1) for c in value.__closure__ or ())
        defaults = _describe((value.__defaults__ or (), value.__kwdefaults__ or {}), depth + 1)
        return ("function", value.__module__, value.__qualname__, _code(value.__code__),
                cells, defaults)
    if isinstance(value, types.BuiltinFunctionType) or \
            type(value).__name__ == "cython_function_or_method":
        return ("builtin", getattr(value, "__module__", None), value.__qualname__)
    if hasattr(value, "kernel_target_key"):  # an object that describes itself
        return ("object", value.kernel_target_key(depth + 1))
    raise TypeError(f"npool.jax: a kernel target closes over a {type(value).__name__}, which "
                    f"has no static description")
