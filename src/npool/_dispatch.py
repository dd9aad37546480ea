"""Which backend runs a call, decided by the type of its arrays (never by a global switch)."""
import numpy as np


def _is_gpu_array(a):
    return hasattr(a, "__cuda_array_interface__") or type(a).__module__.startswith("pycuda")


def backend_of(**arrays):
    """"cpu" when every array is a numpy.ndarray; a clear error for GPU arrays or a mix."""
    gpu = [name for name, a in arrays.items() if _is_gpu_array(a)]
    if not gpu:
        return "cpu"
    cpu = [name for name, a in arrays.items() if isinstance(a, np.ndarray)]
    if cpu:
        raise TypeError(f"{', '.join(gpu)} on the GPU but {', '.join(cpu)} on the CPU: "
                        "all arrays of one call must be on the same device")
    raise NotImplementedError(
        f"{gpu[0]} is a GPU array, but npool's CUDA backend is not available in this version: "
        "pass numpy arrays (the GPU kernels are compiled into the package but not launched yet)")
