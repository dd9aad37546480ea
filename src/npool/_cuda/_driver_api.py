"""The few CUDA driver calls PyCUDA does not wrap, through ctypes on the driver library.

PyCUDA cannot wrap a stream or an event it did not create, nor ask which device a pointer lives
on; npool needs both to work on memory and streams that belong to another framework.
"""
import ctypes
import sys

CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL = 9
CU_EVENT_DISABLE_TIMING = 2
CUDA_SUCCESS = 0
CUDA_ERROR_NOT_READY = 600

_lib = None


def _library():
    global _lib
    if _lib is None:
        _lib = ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
        for name, argtypes in {
            "cuEventCreate": (ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint),
            "cuEventRecord": (ctypes.c_void_p, ctypes.c_void_p),
            "cuEventQuery": (ctypes.c_void_p,),
            "cuEventDestroy_v2": (ctypes.c_void_p,),
            "cuStreamWaitEvent": (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint),
            "cuPointerGetAttribute": (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64),
            "cuGetErrorName": (ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)),
        }.items():
            function = getattr(_lib, name)
            function.argtypes = argtypes
            function.restype = ctypes.c_int
    return _lib


def _check(result, call):
    if result != CUDA_SUCCESS:
        name = ctypes.c_char_p()
        _library().cuGetErrorName(result, ctypes.byref(name))
        label = name.value.decode() if name.value else f"error {result}"
        raise RuntimeError(f"npool: CUDA driver call {call} failed: {label}")


def pointer_device(ptr):
    """Ordinal of the device that holds device pointer ``ptr``."""
    ordinal = ctypes.c_int()
    _check(_library().cuPointerGetAttribute(ctypes.byref(ordinal),
                                            CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, ptr),
           "cuPointerGetAttribute(DEVICE_ORDINAL)")
    return ordinal.value


class Event:
    """A CUDA event without timing, recorded on any stream handle (in the current context)."""

    def __init__(self):
        handle = ctypes.c_void_p()
        _check(_library().cuEventCreate(ctypes.byref(handle), CU_EVENT_DISABLE_TIMING),
               "cuEventCreate")
        self.handle = handle.value

    def record(self, stream):
        _check(_library().cuEventRecord(self.handle, stream), "cuEventRecord")
        return self

    def make_wait(self, stream):
        """Work queued on ``stream`` after this call waits until the event has completed."""
        _check(_library().cuStreamWaitEvent(stream, self.handle, 0), "cuStreamWaitEvent")

    def done(self):
        result = _library().cuEventQuery(self.handle)
        if result == CUDA_ERROR_NOT_READY:
            return False
        _check(result, "cuEventQuery")
        return True

    def __del__(self):
        # Destroying a recorded event is allowed: the driver releases it once it completes.
        if self.handle is not None and _lib is not None:
            _lib.cuEventDestroy_v2(self.handle)
            self.handle = None
