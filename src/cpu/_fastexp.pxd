# cython: language_level=3
"""npool's exp for non-positive arguments, from _fastexp.h (see there: Cody-Waite reduction, a
degree-6 (float) or degree-12 (double) polynomial, 0 below the smallest normal numbers), and
the bit views of floats the kernels test for NaN and infinities with, and GeM's float log of
a ratio (npool_log_ratio_f32)."""
from cython cimport floating
from libc.stdint cimport int32_t, int64_t


cdef extern from "_fastexp.h" nogil:
    ctypedef union npool_float_bits:
        float f
        int32_t i
    ctypedef union npool_double_bits:
        double f
        int64_t i
    float npool_exp_nonpositive_f32(float z)
    double npool_exp_nonpositive_f64(double z)
    float npool_log_exponent_f32(float x)
    float npool_log_ratio_f32(float x, float ky, float ly)
    double npool_log_exponent_f64(double x)
    double npool_log_ratio_f64(double x, double ky, double ly)


ctypedef npool_float_bits float_bits
ctypedef npool_double_bits double_bits


cdef inline floating exp_nonpositive(floating z) noexcept nogil:
    """exp(z) for z <= 0 in the precision of z."""
    if floating is float:
        return npool_exp_nonpositive_f32(z)
    else:
        return npool_exp_nonpositive_f64(z)
