"""Which backend runs a call, decided by the type of its arrays (never by a global switch)."""
import numpy as np


def is_gpu_array(a):
    """True for PyCUDA GPUArrays and anything exporting ``__cuda_array_interface__``."""
    if type(a).__module__.startswith("pycuda"):
        return True
    try:
        return hasattr(a, "__cuda_array_interface__")
    except Exception:  # torch raises RuntimeError for a CUDA tensor that requires grad
        return True


def backend_of(**arrays):
    """"cpu" when no array is on the GPU, "cuda" when all are; a mix is a TypeError.

    Arrays that are neither are left to the backend's own checks, which name them.
    """
    gpu = [name for name, a in arrays.items() if is_gpu_array(a)]
    if not gpu:
        return "cpu"
    cpu = [name for name, a in arrays.items() if isinstance(a, np.ndarray)]
    if cpu:
        raise TypeError(f"{', '.join(gpu)} on the GPU but {', '.join(cpu)} on the CPU: "
                        "all arrays of one call must be on the same device")
    return "cuda"
