"""JAX adapter: npool's ops as JAX functions (``import npool.jax``; JAX is an optional
dependency, ``pip install npool[jax]``).

On the CPU each op is a ``jax.custom_vjp`` whose forward and backward call npool's kernels
through XLA's foreign function interface (``jax.ffi``: npool's handler runs the kernels on
XLA's own buffers, no copies; ``jax.pure_callback`` where the handler cannot be registered):
they work under ``jax.jit``, ``jax.grad``/``jax.vjp``/
``jax.value_and_grad`` and ``jax.vmap`` (the pools fold vmapped axes into their batch axis, one
kernel call; ops with parameters run once per vmapped element), in forward mode and to second
order (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``: the portable decomposition's tangents of
the kernels' values and gradients), on several devices (one kernel call per shard of the
batch, the input's sharding kept; ``jax.shard_map``), in float16, bfloat16, float32 and
float64 (``jax_enable_x64``). The local and global pools take JAX's and Flax's axis order,
``(N, *spatial, C)`` (``data_format="channels_last"``), or ``"channels_first"``; the set pools
take LOUPE's ``(B, M, D)``.

Where the kernels cannot run - a GPU or TPU backend (npool does not hand JAX's device buffers
to its CUDA kernels yet), or a graph
that must stand alone (``jax.export``) inside ``npool.jax.portable()`` - the ops are built from
npool's portable decomposition (``npool/_decompositions.py``) into standard JAX operations, which JAX
differentiates itself: never a silent copy to the host. This module holds no math.
"""
from ._ops import (DATA_FORMATS, JaxOps, adaptive_maxent_pool1d, adaptive_maxent_pool2d,
                   adaptive_maxent_pool3d, adaptive_soft_pool1d, adaptive_soft_pool2d,
                   adaptive_soft_pool3d, context_gating, global_avg_pool, global_gem_pool,
                   global_kmax_pool,
                   global_lse_pool, global_max_pool, maxent_pool1d, maxent_pool2d,
                   maxent_pool3d, netfv_pool, netrvlad_pool, netvlad_pool, portable,
                   soft_dbow_pool, soft_pool1d, soft_pool2d, soft_pool3d, uses_kernels,
                   weldon_pool)

__all__ = ["soft_pool1d", "soft_pool2d", "soft_pool3d", "maxent_pool1d", "maxent_pool2d",
           "maxent_pool3d", "global_max_pool", "global_avg_pool", "global_lse_pool",
           "global_kmax_pool", "global_gem_pool", "weldon_pool", "netvlad_pool",
           "netrvlad_pool", "netfv_pool", "soft_dbow_pool", "context_gating", "portable",
           "uses_kernels", "JaxOps", "DATA_FORMATS", "adaptive_soft_pool1d",
           "adaptive_soft_pool2d", "adaptive_soft_pool3d", "adaptive_maxent_pool1d",
           "adaptive_maxent_pool2d", "adaptive_maxent_pool3d"]
