"""npool: learnable and soft pooling operators with fast CPU (Cython/OpenMP) and CUDA kernels.

The core works on NumPy arrays::

    import numpy as np, npool
    x = np.random.rand(8, 16, 32, 32).astype(np.float32)
    y = npool.soft_pool2d_forward(x, kernel_size=2)            # (8, 16, 16, 16)
    gx = npool.soft_pool2d_backward(np.ones_like(y), x, kernel_size=2)

and on GPU arrays (PyCUDA GPUArray, or anything with ``__cuda_array_interface__``: CUDA torch
tensors, CuPy arrays) through the same functions, without copies; see ``cuda_available``.
"""
from ._cuda import cuda_available
from ._threads import get_num_threads, set_num_threads
from .global_pools import (
    global_avg_pool_backward,
    global_avg_pool_forward,
    global_gem_pool_backward,
    global_gem_pool_forward,
    global_kmax_pool_backward,
    global_kmax_pool_forward,
    global_lse_pool_backward,
    global_lse_pool_forward,
    global_max_pool_backward,
    global_max_pool_forward,
    weldon_pool_backward,
    weldon_pool_forward,
)
from .local_pools import (
    adaptive_maxent_pool1d_backward,
    adaptive_maxent_pool1d_forward,
    adaptive_maxent_pool2d_backward,
    adaptive_maxent_pool2d_forward,
    adaptive_maxent_pool3d_backward,
    adaptive_maxent_pool3d_forward,
    adaptive_soft_pool1d_backward,
    adaptive_soft_pool1d_forward,
    adaptive_soft_pool2d_backward,
    adaptive_soft_pool2d_forward,
    adaptive_soft_pool3d_backward,
    adaptive_soft_pool3d_forward,
    maxent_pool1d_backward,
    maxent_pool1d_forward,
    maxent_pool2d_backward,
    maxent_pool2d_forward,
    maxent_pool3d_backward,
    maxent_pool3d_forward,
    soft_pool1d_backward,
    soft_pool1d_forward,
    soft_pool2d_backward,
    soft_pool2d_forward,
    soft_pool3d_backward,
    soft_pool3d_forward,
)
from .set_pools import (
    context_gating_backward,
    context_gating_forward,
    netfv_pool_backward,
    netfv_pool_forward,
    netrvlad_pool_backward,
    netrvlad_pool_forward,
    netvlad_pool_backward,
    netvlad_pool_forward,
    soft_dbow_pool_backward,
    soft_dbow_pool_forward,
)

__version__ = "0.2.0"  # the one place of the version: pyproject.toml reads it (CHANGELOG.md)

__all__ = [
    "adaptive_maxent_pool1d_backward",
    "adaptive_maxent_pool1d_forward",
    "adaptive_maxent_pool2d_backward",
    "adaptive_maxent_pool2d_forward",
    "adaptive_maxent_pool3d_backward",
    "adaptive_maxent_pool3d_forward",
    "adaptive_soft_pool1d_backward",
    "adaptive_soft_pool1d_forward",
    "adaptive_soft_pool2d_backward",
    "adaptive_soft_pool2d_forward",
    "adaptive_soft_pool3d_backward",
    "adaptive_soft_pool3d_forward",
    "context_gating_backward",
    "context_gating_forward",
    "cuda_available",
    "get_num_threads",
    "global_avg_pool_backward",
    "global_avg_pool_forward",
    "global_gem_pool_backward",
    "global_gem_pool_forward",
    "global_kmax_pool_backward",
    "global_kmax_pool_forward",
    "global_lse_pool_backward",
    "global_lse_pool_forward",
    "global_max_pool_backward",
    "global_max_pool_forward",
    "maxent_pool1d_backward",
    "maxent_pool1d_forward",
    "maxent_pool2d_backward",
    "maxent_pool2d_forward",
    "maxent_pool3d_backward",
    "maxent_pool3d_forward",
    "netfv_pool_backward",
    "netfv_pool_forward",
    "netrvlad_pool_backward",
    "netrvlad_pool_forward",
    "netvlad_pool_backward",
    "netvlad_pool_forward",
    "set_num_threads",
    "soft_dbow_pool_backward",
    "soft_dbow_pool_forward",
    "soft_pool1d_forward",
    "soft_pool1d_backward",
    "soft_pool2d_forward",
    "soft_pool2d_backward",
    "soft_pool3d_forward",
    "soft_pool3d_backward",
    "weldon_pool_backward",
    "weldon_pool_forward",
]
