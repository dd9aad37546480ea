# cython: language_level=3
"""Checks every kernel entry runs before it touches memory: the kernels trust no shape, so a
buffer of the wrong size from Python raises a ValueError instead of a write past its end."""


cdef inline tuple dims(Py_ssize_t* values, int n):
    """The first n values of a memoryview's shape or strides, as a tuple."""
    cdef list out = []
    cdef int i
    for i in range(n):
        out.append(values[i])
    return tuple(out)


cdef inline bint same_strides(tuple shape, tuple a, tuple b):
    """Whether two arrays of ``shape`` with byte strides a and b lay out memory alike (axes of
    size 1 may have any stride). (No generator expressions in a .pxd: the modules that cimport
    it would lack Cython's generator support code.)"""
    cdef Py_ssize_t i
    for i in range(len(shape)):
        if shape[i] != 1 and a[i] != b[i]:
            return False
    return True


cdef inline int require(bint ok, str what) except -1:
    """Raise ValueError("npool kernel: <what>") unless ok."""
    if not ok:
        raise ValueError(f"npool kernel: {what}")
    return 0
