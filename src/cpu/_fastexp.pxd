# cython: language_level=3
"""Vectorisable exponentials for non-positive arguments.

exp(z) for z <= 0, written so that GCC turns loops calling it into SIMD code
without -ffast-math: Cody-Waite range reduction z = n*ln2 + r with |r| <= ln2/2,
a Taylor polynomial for exp(r) (degree 6 for float: rel. error < 2e-7; degree 12
for double: rel. error < 4e-16), and 2**n built from the exponent bits. Below
exp(-87) for float and exp(-708) for double (about the smallest normal
numbers) the result is 0, as an underflowing exp would give. z must not be NaN or +inf: callers
detect non-finite windows and handle them on a separate path.
"""
from cython cimport floating
from libc.stdint cimport int32_t, int64_t


cdef union float_bits:
    float f
    int32_t i


cdef union double_bits:
    double f
    int64_t i


cdef inline float exp_nonpositive_f32(float z) noexcept nogil:
    cdef float_bits rounded, scale
    cdef float n, r, p
    cdef bint underflow = z < <float>-87.0
    z = z if z > <float>-87.0 else <float>-87.0
    # Adding 1.5 * 2**23 rounds z*log2(e) to the nearest integer n, kept in the low mantissa bits.
    rounded.f = z * <float>1.44269504088896341 + <float>12582912.0
    n = rounded.f - <float>12582912.0
    r = z - n * <float>0.693359375
    r = r - n * <float>-2.12194440e-4
    p = <float>1.0 + r * (<float>1.0 + r * (<float>0.5 + r * (<float>(1.0 / 6) + r * (
        <float>(1.0 / 24) + r * (<float>(1.0 / 120) + r * <float>(1.0 / 720))))))
    scale.i = (rounded.i - 0x4B400000 + 127) << 23
    return p * scale.f if not underflow else <float>0.0


cdef inline double exp_nonpositive_f64(double z) noexcept nogil:
    cdef double_bits rounded, scale
    cdef double n, r, p
    cdef bint underflow = z < -708.0
    z = z if z > -708.0 else -708.0
    # Adding 1.5 * 2**52 rounds z*log2(e) to the nearest integer n, kept in the low mantissa bits.
    rounded.f = z * 1.4426950408889634074 + 6755399441055744.0
    n = rounded.f - 6755399441055744.0
    r = z - n * 6.93145751953125e-1
    r = r - n * 1.42860682030941723212e-6
    p = 1.0 + r * (1.0 + r * (1.0 / 2 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (
        1.0 / 720 + r * (1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880 + r * (
            1.0 / 3628800 + r * (1.0 / 39916800 + r * (1.0 / 479001600))))))))))))
    scale.i = (rounded.i - 0x4338000000000000LL + 1023) << 52
    return p * scale.f if not underflow else 0.0


cdef inline floating exp_nonpositive(floating z) noexcept nogil:
    """exp(z) for z <= 0 in the precision of z."""
    if floating is float:
        return exp_nonpositive_f32(z)
    else:
        return exp_nonpositive_f64(z)
