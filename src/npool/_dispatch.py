"""Which backend runs a call, decided by the type of its arrays (never by a global switch)."""
import numpy as np


_DLPACK_GPU_DEVICES = (2, 13)  # kDLCUDA, kDLCUDAManaged


def is_gpu_array(a):
    """True for PyCUDA GPUArrays, anything exporting ``__cuda_array_interface__``, and tensors
    exporting DLPack from GPU memory (a TensorFlow or JAX GPU tensor)."""
    if type(a).__module__.startswith("pycuda"):
        return True
    try:
        if hasattr(a, "__cuda_array_interface__"):
            return True
    except Exception:  # torch raises RuntimeError for a CUDA tensor that requires grad
        return True
    if isinstance(a, np.ndarray) or not hasattr(a, "__dlpack_device__"):
        return False
    try:
        return int(a.__dlpack_device__()[0]) in _DLPACK_GPU_DEVICES
    except Exception:
        return False


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
