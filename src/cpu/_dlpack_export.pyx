# cython: language_level=3
"""DLPack capsules over memory npool hands out (its GPU results, for TensorFlow and JAX).

The deleter and the capsule destructor are C functions: the consumer (a framework's tensor)
may call the deleter at any time, also while the interpreter shuts down, when a callback
written in Python (ctypes) would no longer exist. Like NumPy's, the deleter does nothing once
the interpreter is finalised; otherwise it takes the GIL and releases the owner.
"""
from cpython.pycapsule cimport (PyCapsule_GetPointer, PyCapsule_IsValid, PyCapsule_New)
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint64_t
from libc.stdlib cimport free, malloc

cdef extern from "Python.h":
    int Py_IsInitialized() nogil

cdef extern from *:
    """
    typedef struct { int32_t device_type; int32_t device_id; } npool_DLDevice;
    typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } npool_DLDataType;
    typedef struct {
        void *data; npool_DLDevice device; int32_t ndim; npool_DLDataType dtype;
        int64_t *shape; int64_t *strides; uint64_t byte_offset;
    } npool_DLTensor;
    typedef struct npool_DLManagedTensor {
        npool_DLTensor dl_tensor; void *manager_ctx;
        void (*deleter)(struct npool_DLManagedTensor *);
    } npool_DLManagedTensor;
    """
    ctypedef struct DLDevice "npool_DLDevice":
        int32_t device_type
        int32_t device_id
    ctypedef struct DLDataType "npool_DLDataType":
        uint8_t code
        uint8_t bits
        uint16_t lanes
    ctypedef struct DLTensor "npool_DLTensor":
        void* data
        DLDevice device
        int32_t ndim
        DLDataType dtype
        int64_t* shape
        int64_t* strides
        uint64_t byte_offset
    ctypedef struct DLManagedTensor "npool_DLManagedTensor":
        DLTensor dl_tensor
        void* manager_ctx
        void (*deleter)(DLManagedTensor*) noexcept nogil


cdef void _release(DLManagedTensor* managed) noexcept nogil:
    if managed == NULL or not Py_IsInitialized():
        return
    with gil:
        Py_DECREF(<object>managed.manager_ctx)
    free(managed)


cdef void _destroy_capsule(object capsule) noexcept:
    # A capsule nobody consumed (still named "dltensor") releases its tensor.
    if PyCapsule_IsValid(capsule, b"dltensor"):
        _release(<DLManagedTensor*>PyCapsule_GetPointer(capsule, b"dltensor"))


def capsule(object owner, size_t data, tuple shape, tuple strides, int code, int bits,
            int device_type, int device_id):
    """A ``"dltensor"`` capsule over ``data`` (an address) with ``shape`` and element
    ``strides``, DLPack type ``code``/``bits`` on device ``device_type``/``device_id``; it
    holds a reference to ``owner`` until the consumer's deleter call (or, unconsumed, until
    the capsule is destroyed)."""
    cdef Py_ssize_t ndim = len(shape), i
    if len(strides) != ndim:
        raise ValueError(f"{ndim} axes but {len(strides)} strides")
    cdef DLManagedTensor* managed = <DLManagedTensor*>malloc(
        sizeof(DLManagedTensor) + 2 * max(ndim, 1) * sizeof(int64_t))
    if managed == NULL:
        raise MemoryError()
    cdef int64_t* sizes = <int64_t*>(<char*>managed + sizeof(DLManagedTensor))
    for i in range(ndim):
        sizes[i] = shape[i]
        sizes[ndim + i] = strides[i]
    managed.dl_tensor.data = <void*>data
    managed.dl_tensor.device.device_type = device_type
    managed.dl_tensor.device.device_id = device_id
    managed.dl_tensor.ndim = <int32_t>ndim
    managed.dl_tensor.dtype.code = <uint8_t>code
    managed.dl_tensor.dtype.bits = <uint8_t>bits
    managed.dl_tensor.dtype.lanes = 1
    managed.dl_tensor.shape = sizes
    managed.dl_tensor.strides = sizes + ndim
    managed.dl_tensor.byte_offset = 0
    Py_INCREF(owner)
    managed.manager_ctx = <void*>owner
    managed.deleter = _release
    try:
        return PyCapsule_New(<void*>managed, b"dltensor", _destroy_capsule)
    except BaseException:
        _release(managed)
        raise
