# cython: language_level=3
"""npool's handlers for XLA's foreign function interface (``jax.ffi``): CPU and CUDA platforms.

XLA calls :c:func:`npool_xla_handler` (CPU) or :c:func:`npool_xla_cuda_handler` (CUDA) with its
own buffers (no copies) when a jitted JAX program reaches an ``ffi_call`` of npool's target.
The handler wraps each buffer as ``(address, XLA dtype code, shape)``, takes the GIL and calls
the Python function given to :func:`set_dispatch` with ``(inputs, results, attributes)`` - and
on CUDA ``stream=``, the ``CUstream`` XLA runs the call on (``XLA_FFI_Stream_Get``); that
function (``npool.jax._ffi``) runs npool's kernels over views of the buffers (NumPy arrays on
the CPU; on CUDA device arrays ordered after XLA's stream), writing the results in place. A
Python exception becomes an XLA error carrying its message (JAX raises it as a runtime error).
The CUDA handler is host code too: it needs no CUDA toolkit to build.

Built against the vendored C API header only (``src/third_party/xla``): building npool needs no
jax, and importing this module imports nothing of jax.
"""
from cpython.pycapsule cimport PyCapsule_New
from libc.stdint cimport int64_t, uint8_t

cdef extern from "xla/ffi/api/c_api.h":
    int XLA_FFI_API_MAJOR
    int XLA_FFI_API_MINOR

    ctypedef enum XLA_FFI_Extension_Type:
        XLA_FFI_Extension_Metadata

    ctypedef struct XLA_FFI_Extension_Base:
        size_t struct_size
        XLA_FFI_Extension_Type type

    ctypedef struct XLA_FFI_Api_Version:
        size_t struct_size
        XLA_FFI_Extension_Base* extension_start
        int major_version
        int minor_version

    ctypedef unsigned int XLA_FFI_Handler_Traits

    ctypedef struct XLA_FFI_Metadata:
        size_t struct_size
        XLA_FFI_Api_Version api_version
        XLA_FFI_Handler_Traits traits

    ctypedef struct XLA_FFI_Metadata_Extension:
        XLA_FFI_Extension_Base extension_base
        XLA_FFI_Metadata* metadata

    ctypedef struct XLA_FFI_Error

    ctypedef enum XLA_FFI_Error_Code:
        XLA_FFI_Error_Code_INVALID_ARGUMENT
        XLA_FFI_Error_Code_INTERNAL

    ctypedef struct XLA_FFI_Error_Create_Args:
        size_t struct_size
        XLA_FFI_Extension_Base* extension_start
        const char* message
        XLA_FFI_Error_Code errc

    size_t XLA_FFI_Error_Create_Args_STRUCT_SIZE
    size_t XLA_FFI_CallFrame_STRUCT_SIZE
    size_t XLA_FFI_Metadata_STRUCT_SIZE
    size_t XLA_FFI_Metadata_Extension_STRUCT_SIZE
    size_t XLA_FFI_Api_Version_STRUCT_SIZE

    ctypedef XLA_FFI_Error* (*XLA_FFI_Error_Create_Fn "XLA_FFI_Error_Create*")(
        XLA_FFI_Error_Create_Args* args) noexcept nogil

    ctypedef struct XLA_FFI_ExecutionContext

    ctypedef struct XLA_FFI_Stream_Get_Args:
        size_t struct_size
        XLA_FFI_Extension_Base* extension_start
        XLA_FFI_ExecutionContext* ctx
        void* stream

    size_t XLA_FFI_Stream_Get_Args_STRUCT_SIZE

    ctypedef XLA_FFI_Error* (*XLA_FFI_Stream_Get_Fn "XLA_FFI_Stream_Get*")(
        XLA_FFI_Stream_Get_Args* args) noexcept nogil

    ctypedef struct XLA_FFI_Error_GetMessage_Args:
        size_t struct_size
        XLA_FFI_Extension_Base* extension_start
        XLA_FFI_Error* error
        const char* message

    size_t XLA_FFI_Error_GetMessage_Args_STRUCT_SIZE

    ctypedef void (*XLA_FFI_Error_GetMessage_Fn "XLA_FFI_Error_GetMessage*")(
        XLA_FFI_Error_GetMessage_Args* args) noexcept nogil

    ctypedef struct XLA_FFI_Error_Destroy_Args:
        size_t struct_size
        XLA_FFI_Extension_Base* extension_start
        XLA_FFI_Error* error

    size_t XLA_FFI_Error_Destroy_Args_STRUCT_SIZE

    ctypedef void (*XLA_FFI_Error_Destroy_Fn "XLA_FFI_Error_Destroy*")(
        XLA_FFI_Error_Destroy_Args* args) noexcept nogil

    ctypedef struct XLA_FFI_Api:
        size_t struct_size
        XLA_FFI_Error_Create_Fn XLA_FFI_Error_Create
        XLA_FFI_Error_GetMessage_Fn XLA_FFI_Error_GetMessage
        XLA_FFI_Error_Destroy_Fn XLA_FFI_Error_Destroy
        XLA_FFI_Stream_Get_Fn XLA_FFI_Stream_Get

    ctypedef enum XLA_FFI_DataType:
        pass

    ctypedef struct XLA_FFI_Buffer:
        size_t struct_size
        XLA_FFI_DataType dtype
        void* data
        int64_t rank
        int64_t* dims

    ctypedef enum XLA_FFI_ArgType:
        XLA_FFI_ArgType_BUFFER

    ctypedef enum XLA_FFI_RetType:
        XLA_FFI_RetType_BUFFER

    ctypedef enum XLA_FFI_AttrType:
        XLA_FFI_AttrType_STRING

    ctypedef struct XLA_FFI_ByteSpan:
        const char* ptr
        size_t len

    ctypedef struct XLA_FFI_Args:
        int64_t size
        XLA_FFI_ArgType* types
        void** args

    ctypedef struct XLA_FFI_Rets:
        int64_t size
        XLA_FFI_RetType* types
        void** rets

    ctypedef struct XLA_FFI_Attrs:
        int64_t size
        XLA_FFI_AttrType* types
        XLA_FFI_ByteSpan** names
        void** attrs

    ctypedef enum XLA_FFI_ExecutionStage:
        XLA_FFI_ExecutionStage_EXECUTE

    ctypedef struct XLA_FFI_CallFrame:
        size_t struct_size
        XLA_FFI_Extension_Base* extension_start
        const XLA_FFI_Api* api
        XLA_FFI_ExecutionContext* ctx
        XLA_FFI_ExecutionStage stage
        XLA_FFI_Args args
        XLA_FFI_Rets rets
        XLA_FFI_Attrs attrs


cdef extern from *:
    """
    #if defined(__linux__)
    #include <sys/mman.h>
    #endif
    #include <stdint.h>
    /* Ask Linux for transparent huge pages over the 2 MiB-aligned part of [address, address +
       size) - advice only, as NumPy gives for its own large arrays. 1 when given. */
    static int npool_advise_huge_pages(uintptr_t address, size_t size) {
    #if defined(__linux__) && defined(MADV_HUGEPAGE)
        const uintptr_t huge = (uintptr_t)1 << 21;
        uintptr_t start = (address + huge - 1) & ~(huge - 1);
        uintptr_t end = (address + size) & ~(huge - 1);
        if (end <= start) return 0;
        return madvise((void*)start, end - start, MADV_HUGEPAGE) == 0;
    #else
        (void)address; (void)size;
        return 0;
    #endif
    }
    """
    int npool_advise_huge_pages(size_t address, size_t size) nogil


API_VERSION = (XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR)  # of the header this module was built with
# The oldest FFI API version whose structs the handler reads (the call frame, arguments,
# results, attributes, buffers, Error_Create, the metadata extension) as they are in
# API_VERSION: checked against jaxlib 0.8.0's header (API 0.1)
OLDEST_API_VERSION = (0, 1)

cdef int _reported_minor = XLA_FFI_API_MINOR


def report_api_minor(int minor):
    """The FFI API minor version the handler tells XLA it was built for (XLA refuses handlers
    of versions it does not support): between OLDEST_API_VERSION's and API_VERSION's."""
    global _reported_minor
    if not OLDEST_API_VERSION[1] <= minor <= XLA_FFI_API_MINOR:
        raise ValueError(f"minor must be in [{OLDEST_API_VERSION[1]}, {XLA_FFI_API_MINOR}], "
                         f"got {minor}")
    _reported_minor = minor


def advise_huge_pages(size_t address, size_t size):
    """Advise transparent huge pages (Linux ``madvise(MADV_HUGEPAGE)``) for the 2 MiB-aligned
    part of a buffer not yet written: XLA's CPU result buffers come from fresh mappings whose
    4 KiB pages fault one by one on first write (~25,000 faults, ~25 ms per 100 MB here), where
    NumPy's own large arrays get this advice from NumPy. Returns whether advice was given."""
    return bool(npool_advise_huge_pages(address, size))

cdef object _dispatch = None


def set_dispatch(function):
    """Make ``function(inputs, results, attributes, stream=None)`` the Python side of the
    handlers: inputs and results are lists of ``(address, XLA dtype code, shape)``, attributes
    a dict of the call's string attributes, ``stream`` XLA's ``CUstream`` (an int; 0 for the
    default stream) on the CUDA platform."""
    global _dispatch
    _dispatch = function


def handler():
    """The CPU handler as a ``PyCapsule`` for ``jax.ffi.register_ffi_target``."""
    return PyCapsule_New(<void*>npool_xla_handler, NULL, NULL)


def cuda_handler():
    """The CUDA handler as a ``PyCapsule`` for ``jax.ffi.register_ffi_target(...,
    platform="CUDA")``."""
    return PyCapsule_New(<void*>npool_xla_cuda_handler, NULL, NULL)


cdef XLA_FFI_Error* _error(const XLA_FFI_Api* api, XLA_FFI_Error_Code code,
                           const char* message) noexcept nogil:
    cdef XLA_FFI_Error_Create_Args args
    args.struct_size = XLA_FFI_Error_Create_Args_STRUCT_SIZE
    args.extension_start = NULL
    args.message = message  # copied by XLA
    args.errc = code
    return api.XLA_FFI_Error_Create(&args)


cdef list _buffers(void** pointers, int64_t size):
    cdef XLA_FFI_Buffer* buffer
    cdef list buffers = []
    for i in range(size):
        buffer = <XLA_FFI_Buffer*>pointers[i]
        buffers.append((<size_t>buffer.data, <int>buffer.dtype,
                        tuple([buffer.dims[d] for d in range(buffer.rank)])))
    return buffers


cdef XLA_FFI_Error* _call(XLA_FFI_CallFrame* frame, bint on_device,
                          size_t stream) noexcept with gil:
    cdef XLA_FFI_ByteSpan* span
    cdef bytes message
    try:
        for i in range(frame.args.size):
            if frame.args.types[i] != XLA_FFI_ArgType_BUFFER:
                raise TypeError(f"argument {i} is not a buffer")
        for i in range(frame.rets.size):
            if frame.rets.types[i] != XLA_FFI_RetType_BUFFER:
                raise TypeError(f"result {i} is not a buffer")
        attributes = {}
        for i in range(frame.attrs.size):
            if frame.attrs.types[i] != XLA_FFI_AttrType_STRING:
                raise TypeError("npool's FFI target takes string attributes only")
            span = frame.attrs.names[i]
            name = span.ptr[:span.len].decode()
            span = <XLA_FFI_ByteSpan*>frame.attrs.attrs[i]
            attributes[name] = span.ptr[:span.len].decode()
        if _dispatch is None:
            raise RuntimeError("npool.jax's dispatch is not set (import npool.jax first)")
        inputs = _buffers(frame.args.args, frame.args.size)
        results = _buffers(frame.rets.rets, frame.rets.size)
        if on_device:
            _dispatch(inputs, results, attributes, stream=stream)
        else:
            _dispatch(inputs, results, attributes)
        return NULL
    except BaseException as error:
        message = f"npool: {type(error).__name__}: {error}".encode("utf-8", "replace")
        return _error(frame.api, XLA_FFI_Error_Code_INTERNAL, message)


cdef XLA_FFI_Error* _answer_metadata(XLA_FFI_CallFrame* frame) noexcept nogil:
    """XLA asks which FFI API the handler was built for (and its traits: none, so XLA never
    captures a call into a CUDA graph)."""
    cdef XLA_FFI_Metadata_Extension* extension = \
        <XLA_FFI_Metadata_Extension*>frame.extension_start
    extension.metadata.api_version.struct_size = XLA_FFI_Api_Version_STRUCT_SIZE
    extension.metadata.api_version.extension_start = NULL
    extension.metadata.api_version.major_version = XLA_FFI_API_MAJOR
    extension.metadata.api_version.minor_version = _reported_minor
    extension.metadata.traits = 0
    return NULL


cdef XLA_FFI_Error* _refuse_frame(XLA_FFI_CallFrame* frame) noexcept nogil:
    """An error for a frame the handler cannot serve (older struct, another stage), or NULL."""
    if frame.struct_size < XLA_FFI_CallFrame_STRUCT_SIZE:
        return _error(frame.api, XLA_FFI_Error_Code_INVALID_ARGUMENT,
                      b"npool: XLA's call frame is older than the FFI API npool was built for")
    if frame.stage != XLA_FFI_ExecutionStage_EXECUTE:
        return _error(frame.api, XLA_FFI_Error_Code_INVALID_ARGUMENT,
                      b"npool: the handler runs at the execute stage only")
    return NULL


cdef bint _is_metadata_query(XLA_FFI_CallFrame* frame) noexcept nogil:
    return frame.extension_start != NULL and \
        frame.extension_start.type == XLA_FFI_Extension_Metadata


cdef XLA_FFI_Error* _stream_error(XLA_FFI_CallFrame* frame, XLA_FFI_Error* error) noexcept with gil:
    """XLA's error from Stream_Get, wrapped with what npool was doing (XLA's error freed)."""
    cdef XLA_FFI_Error_GetMessage_Args get
    cdef XLA_FFI_Error_Destroy_Args destroy
    get.struct_size = XLA_FFI_Error_GetMessage_Args_STRUCT_SIZE
    get.extension_start = NULL
    get.error = error
    get.message = NULL
    frame.api.XLA_FFI_Error_GetMessage(&get)
    reason = b"(no message)" if get.message == NULL else <bytes>get.message
    destroy.struct_size = XLA_FFI_Error_Destroy_Args_STRUCT_SIZE
    destroy.extension_start = NULL
    destroy.error = error
    frame.api.XLA_FFI_Error_Destroy(&destroy)
    message = b"npool: XLA gave no CUDA stream for this call: " + reason
    return _error(frame.api, XLA_FFI_Error_Code_INTERNAL, message)


cdef XLA_FFI_Error* _handle(XLA_FFI_CallFrame* frame, bint on_device) noexcept nogil:
    """Both handlers: the metadata query, the frame checks, and on the device XLA's stream."""
    if _is_metadata_query(frame):
        return _answer_metadata(frame)
    cdef XLA_FFI_Error* refusal = _refuse_frame(frame)
    if refusal != NULL:
        return refusal
    if not on_device:
        return _call(frame, False, 0)
    cdef XLA_FFI_Stream_Get_Args stream
    stream.struct_size = XLA_FFI_Stream_Get_Args_STRUCT_SIZE
    stream.extension_start = NULL
    stream.ctx = frame.ctx
    stream.stream = NULL
    cdef XLA_FFI_Error* error = frame.api.XLA_FFI_Stream_Get(&stream)
    if error != NULL:
        return _stream_error(frame, error)
    return _call(frame, True, <size_t>stream.stream)


cdef XLA_FFI_Error* npool_xla_handler(XLA_FFI_CallFrame* frame) noexcept nogil:
    return _handle(frame, False)


cdef XLA_FFI_Error* npool_xla_cuda_handler(XLA_FFI_CallFrame* frame) noexcept nogil:
    return _handle(frame, True)
