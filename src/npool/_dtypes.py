"""The floating dtypes npool computes in: float16, bfloat16 (ml_dtypes'), float32 and float64.

A leaf module (NumPy only; ml_dtypes when a bfloat16 array is first met), read by the argument
checks, the CPU core and the GPU array readers alike.
"""
import functools
import sys

import numpy as np

DTYPE_NAMES = "float16, bfloat16, float32 or float64"
_NUMPY_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


# bfloat16 is ml_dtypes' (the dtype JAX and TensorFlow use). Importing ml_dtypes takes about a
# second, so npool imports it when a bfloat16 array or tensor is first met: an array can only
# have ml_dtypes' dtype once ml_dtypes is imported.
@functools.lru_cache(maxsize=None)
def bfloat16():
    """ml_dtypes' bfloat16 as a NumPy dtype (imports ml_dtypes at the first call)."""
    from ml_dtypes import bfloat16 as dtype
    return np.dtype(dtype)


def is_bfloat16(dtype):
    """Whether ``dtype`` is ml_dtypes' bfloat16 (without importing ml_dtypes)."""
    return "ml_dtypes" in sys.modules and dtype == bfloat16()


def float_dtypes():
    """The dtypes npool computes in: float16, float32, float64, and bfloat16 once ml_dtypes is
    imported (before that no array can have it)."""
    return _NUMPY_FLOATS + ((bfloat16(),) if "ml_dtypes" in sys.modules else ())


def is_float_dtype(dtype):
    """Whether npool computes in ``dtype`` (float16, bfloat16, float32, float64)."""
    return dtype in _NUMPY_FLOATS or is_bfloat16(dtype)


def is_half_dtype(dtype):
    """float16 or bfloat16: stored in 16 bits, computed in float32."""
    return dtype == np.dtype(np.float16) or is_bfloat16(dtype)
